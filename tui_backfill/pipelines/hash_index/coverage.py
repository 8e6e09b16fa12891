"""Coverage of a hash-index job: the seed's query over its index table (`total` rows,
`with_hash`, `coverage_percent` to two decimals), plus the orphans its latest run counted.

The table and prefix are the job's latest run's; the index is opened read-only (a missing
file or table reads as empty), and nothing is asked of the bucket.
"""

from __future__ import annotations

from typing import Any

from tui_backfill.core.records import RunRecord
from tui_backfill.core.textfit import pack
from tui_backfill.seams.index_table import IndexTable


async def hash_coverage(run: RunRecord) -> dict[str, Any]:
    settings = run.settings
    index_db = str(settings.get("index_db") or "")
    table = str(settings.get("index_table") or "files")
    prefix = str(settings.get("prefix") or "")
    index = await IndexTable.open(index_db, table, create=False)
    try:
        whole = await index.coverage()
        under = await index.coverage(prefix) if prefix else whole
    finally:
        await index.close()
    report: dict[str, Any] = {
        "job": run.job,
        "pipeline": run.pipeline,
        "index": f"{index_db}:{table}",
        **whole.to_json(),
        "orphans": getattr(run.counters, "orphans", 0),
        "orphansFromRun": run.id,
    }
    if prefix:
        report["prefix"] = {"prefix": prefix, **under.to_json()}
    return report


def hash_coverage_text(report: dict[str, Any], width: int = 80) -> str:
    """The report in words, on lines of at most `width`."""
    lines = [
        [f"index {report['index']}", f"(job {report['job']})"],
        [
            f"total {report['total']:,}",
            f"with_hash {report['with_hash']:,}",
            f"coverage_percent {report['coverage_percent']:.2f}",
        ],
        [
            f"orphans {report['orphans']:,}",
            f"(rows with no object, as run {report['orphansFromRun']} found)",
        ],
    ]
    under = report.get("prefix")
    if under:
        lines.append(
            [
                f"under {under['prefix']!r}:",
                f"total {under['total']:,}",
                f"with_hash {under['with_hash']:,}",
                f"coverage_percent {under['coverage_percent']:.2f}",
            ]
        )
    return "\n".join(out for fields in lines for out in pack(fields, width))
