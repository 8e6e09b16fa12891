"""Coverage (the seed's stats and gap): expected keys of the whole source x angles, present keys
from one bucket listing (one request per 1,000 keys, not a HEAD per key), and the gap.

The listing goes into a temporary SQLite table and the catalog is walked in pages, so memory
stays flat whatever the catalog's size.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

import aiosqlite

from tui_backfill.config import Resolved, Settings, validate_for_run
from tui_backfill.pipelines.mirror.angles import parse_angles
from tui_backfill.pipelines.mirror.keys import sku_problem
from tui_backfill.pipelines.mirror.templates import MAX_KEY_BYTES, key_template
from tui_backfill.seams.sources import check_source, sku_batches

PAGE = 1000


async def _settings_for(resolved: Resolved) -> Settings:
    """Flags/env/TOML, falling back to the job's latest run for what they leave unset."""
    settings = resolved.settings
    if Path(settings.state).exists():
        from tui_backfill.pipelines.prepare import settings_from_stored
        from tui_backfill.state.sqlite import open_state

        async with open_state(settings.state) as store:
            run = await store.latest_run(settings.job, include_dry=False)
        if run is not None:
            stored = {k: v for k, v in run.settings.items() if k not in resolved.explicit}
            merged = {**settings.stored(), **stored}
            settings = settings_from_stored(merged, settings, resolved.explicit)
    validate_for_run(settings, resolved.explicit)
    return settings


@contextlib.asynccontextmanager
async def _temporary_directory(prefix: str) -> AsyncIterator[str]:
    """A temporary directory made and removed in a thread: `serve` computes coverage on its
    event loop, which file work must not hold up."""
    directory = await asyncio.to_thread(tempfile.TemporaryDirectory, prefix=prefix)
    try:
        yield directory.name
    finally:
        await asyncio.to_thread(directory.cleanup)


async def _open_for_writing(stack: contextlib.AsyncExitStack, path: str) -> TextIO:
    """`path` opened (and later closed, flushing) in a thread, for the same reason."""
    handle = await asyncio.to_thread(open, path, "w", encoding="utf-8")
    stack.push_async_callback(asyncio.to_thread, handle.close)
    return handle


async def coverage_report(resolved: Resolved, *, gap_file: str | None = None) -> dict[str, Any]:
    settings = await _settings_for(resolved)
    await asyncio.to_thread(check_source, settings)
    angles = parse_angles(settings.angles)
    template = key_template(settings.key_template)
    from tui_backfill.seams.bucket import Bucket

    async with _temporary_directory("tui-backfill-coverage-") as tmp:
        db = await aiosqlite.connect(str(Path(tmp) / "coverage.sqlite3"))
        try:
            await db.execute("PRAGMA journal_mode = OFF")
            await db.execute("CREATE TABLE skus (sku TEXT PRIMARY KEY) WITHOUT ROWID")
            await db.execute("CREATE TABLE present (key TEXT PRIMARY KEY) WITHOUT ROWID")
            async for batch in sku_batches(settings):
                await db.executemany("INSERT OR IGNORE INTO skus VALUES (?)", ((s,) for s in batch))
            requests = 0
            async with Bucket(
                settings.bucket or "",
                endpoint_url=settings.endpoint_url,
                region=settings.region,
                path_style=settings.path_style,
                timeout=settings.timeout,
                pool_size=2,
            ) as bucket:
                await bucket.preflight()
                async for keys in bucket.list_keys(template.literal_prefix):
                    requests += 1
                    await db.executemany(
                        "INSERT OR IGNORE INTO present VALUES (?)", ((k,) for k in keys)
                    )
            await db.commit()
            expected = present = catalog = unusable = 0
            async with contextlib.AsyncExitStack() as stack:
                gap = await _open_for_writing(stack, gap_file) if gap_file else None
                after = ""
                while True:
                    async with db.execute(
                        "SELECT sku FROM skus WHERE sku > ? ORDER BY sku LIMIT ?", (after, PAGE)
                    ) as cur:
                        skus = [row[0] for row in await cur.fetchall()]
                    if not skus:
                        break
                    after = skus[-1]
                    catalog += len(skus)
                    # Items a run would fail as bad_sku / bad_key are never expected objects
                    # (nor lines of the gap file: their keys may hold line breaks).
                    rendered = [
                        template.render(sku, angle)
                        for sku in skus
                        if sku_problem(sku) is None
                        for angle in angles
                    ]
                    keys = [key for key in rendered if len(key.encode()) <= MAX_KEY_BYTES]
                    unusable += len(skus) * len(angles) - len(keys)
                    found: set[str] = set()
                    for start in range(0, len(keys), 500):
                        chunk = keys[start : start + 500]
                        sql = f"SELECT key FROM present WHERE key IN ({','.join('?' * len(chunk))})"
                        async with db.execute(sql, chunk) as cur:
                            found.update(row[0] for row in await cur.fetchall())
                    expected += len(keys)
                    present += len(found)
                    if gap is not None:
                        lines = [f"{key}\n" for key in keys if key not in found]
                        await asyncio.to_thread(gap.writelines, lines)
        finally:
            await db.close()
    missing = expected - present
    return {
        "job": settings.job,
        "bucket": settings.bucket,
        "keyTemplate": settings.key_template,
        "anglesPlanned": settings.angles,
        "catalogSkus": catalog,
        "total": expected,
        "expected": expected,
        "present": present,
        "missing": missing,
        "unusable": unusable,
        "coveragePercent": round(100.0 * present / expected, 2) if expected else 100.0,
        "listRequests": requests,
        "gapFile": gap_file,
    }


def coverage_text(report: dict[str, Any]) -> str:
    return (
        f"{report['present']:,} of {report['expected']:,} expected objects present "
        f"({report['coveragePercent']}%), {report['missing']:,} missing; "
        f"{report['catalogSkus']:,} SKUs x angles {report['anglesPlanned']}; "
        f"{report['listRequests']} listing requests"
        + (
            f"; {report['unusable']:,} items of unusable SKUs or keys not counted"
            if report.get("unusable")
            else ""
        )
        + (f"; gap written to {report['gapFile']}" if report.get("gapFile") else "")
    )
