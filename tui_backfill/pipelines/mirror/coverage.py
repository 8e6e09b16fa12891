"""Coverage (the seed's stats and gap): expected keys of the whole source x angles, present keys
from one bucket listing (one request per 1,000 keys, not a HEAD per key), and the gap. The
fillable part of the gap leaves out the keys the origin is known not to have: those whose
latest attempt, in any run of the job, was a 404 (`noRemote`; kept in the state). A state
upgraded from schema 2 knows only the 404s seen since: the report says how many came before.

The listing goes into a temporary SQLite table and the catalog is walked in pages, so memory
stays flat whatever the catalog's size.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, TextIO

from tui_backfill.core.textfit import pack
from tui_backfill.pipelines.config import Resolved, Settings, validate_for_run
from tui_backfill.seams.keys import sku_problem
from tui_backfill.seams.keysets import ScratchKeys
from tui_backfill.seams.sources import check_source, sku_batches
from tui_backfill.seams.templates import MAX_KEY_BYTES, key_template

PAGE = 1000


async def _settings_for(resolved: Resolved) -> Settings:
    """Flags/env/TOML, falling back to the job's latest run for what they leave unset."""
    settings = resolved.settings
    if Path(settings.state).exists():
        from tui_backfill.pipelines.continuing import settings_from_stored
        from tui_backfill.state.sqlite import open_state

        async with open_state(settings.state) as store:
            run = await store.latest_run(settings.job, include_dry=False)
        if run is not None:
            stored = {k: v for k, v in run.settings.items() if k not in resolved.explicit}
            merged = {**settings.stored(), **stored}
            settings = settings_from_stored(merged, settings, resolved.explicit)
    validate_for_run(settings, resolved.explicit, origin=False)  # nothing is fetched
    return settings


async def _open_for_writing(stack: contextlib.AsyncExitStack, path: str) -> TextIO:
    """`path` opened (and later closed, flushing) in a thread: `serve` computes coverage on
    its event loop, which file work must not hold up."""
    handle = await asyncio.to_thread(open, path, "w", encoding="utf-8")
    stack.push_async_callback(asyncio.to_thread, handle.close)
    return handle


async def _load_absent(scratch: ScratchKeys, settings: Settings) -> int:
    """The job's keys known to be absent at the origin, from its state (none without one);
    returns the 404s of its runs from before the state kept them (unknown to `fillable`)."""
    if not Path(settings.state).exists():
        return 0
    from tui_backfill.state.sqlite import open_state

    async with open_state(settings.state) as store:
        after = ""
        while keys := await store.absent_keys(settings.job, after, PAGE):
            await scratch.add("absent", keys)
            after = keys[-1]
        return await store.untracked_no_remote(settings.job)


async def coverage_report(
    resolved: Resolved, *, gap_file: str | None = None, fillable_file: str | None = None
) -> dict[str, Any]:
    settings = await _settings_for(resolved)
    await asyncio.to_thread(check_source, settings)
    angles = settings.angle_list
    template = key_template(settings.key_template)
    from tui_backfill.pipelines.continuing import bucket_of

    async with ScratchKeys(("skus", "present", "absent")) as scratch:
        async for batch in sku_batches(settings):
            await scratch.add("skus", batch)
        untracked = await _load_absent(scratch, settings)
        requests = 0
        async with bucket_of(settings, pool_size=2) as bucket:
            await bucket.preflight()
            async for keys in bucket.list_keys(template.literal_prefix):
                requests += 1
                await scratch.add("present", keys)
        await scratch.commit()
        expected = present = catalog = unusable = fillable = 0
        async with contextlib.AsyncExitStack() as stack:
            gap = await _open_for_writing(stack, gap_file) if gap_file else None
            fill = await _open_for_writing(stack, fillable_file) if fillable_file else None
            after = ""
            while skus := await scratch.page("skus", after, PAGE):
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
                found = await scratch.present("present", keys)
                expected += len(keys)
                present += len(found)
                missing_keys = [key for key in keys if key not in found]
                absent = await scratch.present("absent", missing_keys)
                fillable_keys = [key for key in missing_keys if key not in absent]
                fillable += len(fillable_keys)
                if gap is not None:
                    await asyncio.to_thread(gap.writelines, [f"{k}\n" for k in missing_keys])
                if fill is not None:
                    await asyncio.to_thread(fill.writelines, [f"{k}\n" for k in fillable_keys])
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
        "fillable": fillable,  # missing, and not known to be absent at the origin
        # 404s from before the state kept them, within `fillable` (a run's count: at most it)
        "noRemoteUntracked": min(untracked, fillable),
        "unusable": unusable,
        "coveragePercent": round(100.0 * present / expected, 2) if expected else 100.0,
        "listRequests": requests,
        "gapFile": gap_file,
        "fillableFile": fillable_file,
    }


def coverage_text(report: dict[str, Any], width: int = 80) -> str:
    """The report in words, its clauses on lines of at most `width`."""
    clauses = [
        f"{report['present']:,} of {report['expected']:,} expected objects present "
        f"({report['coveragePercent']}%)",
        f"{report['missing']:,} missing ({report['fillable']:,} fillable, "
        f"{report['missing'] - report['fillable']:,} absent at the origin)",
        f"fillable may include up to {report['noRemoteUntracked']:,} 404s from before the state "
        "upgrade"
        if report.get("noRemoteUntracked")
        else "",
        f"{report['catalogSkus']:,} SKUs x angles {report['anglesPlanned']}",
        f"{report['listRequests']} listing requests",
        f"{report['unusable']:,} items of unusable SKUs or keys not counted"
        if report.get("unusable")
        else "",
        f"gap written to {report['gapFile']}" if report.get("gapFile") else "",
        f"fillable keys to {report['fillableFile']}" if report.get("fillableFile") else "",
    ]
    return "\n".join(pack(clauses, width, sep="; "))
