"""`tui-backfill demo`: the image backfill against embedded servers, nothing to configure.

It starts `rclone serve s3` (data under `state/demo/s3`), an aiohttp origin with real small
JPEGs, a few 404s, slow answers and 5xx, and a synthetic catalog of 30,392 active SKUs (plus
inactive ones the query excludes), then runs the job `demo` with its own state file
(`state/demo.sqlite3`). Each invocation continues the demo job: an unfinished run resumes, a
finished one is followed by the next 2,000 SKUs. Everything it started is stopped at the end.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

from tui_backfill.frontends.demo_names import IMAGES_JOB, IMAGES_STATE
from tui_backfill.pipelines.config import resolve
from tui_backfill.pipelines.prepare import RunRequest
from tui_backfill.servers.catalog import ACTIVE_SKUS_QUERY, make_catalog
from tui_backfill.servers.origin import OriginFaults, OriginServer
from tui_backfill.servers.rclone_s3 import RcloneS3

DEMO_DIR = Path("state/demo")
DEMO_STATE, DEMO_JOB = IMAGES_STATE, IMAGES_JOB
DEMO_BUCKET = "demo-bucket"
ACTIVE_SKUS = 30_392
INACTIVE_SKUS = 1_608


def demo_faults() -> OriginFaults:
    """A third-party origin on a fair day: some 404s, some slow answers, some 5xx."""
    return OriginFaults(
        missing_fraction=0.03,
        latency=0.004,
        slow_fraction=0.005,
        slow_delay=1.5,
        error_rate=0.01,
    )


def _wipe() -> None:
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    for suffix in ("", "-wal", "-shm", f".{DEMO_JOB}.lock"):
        Path(DEMO_STATE + suffix).unlink(missing_ok=True)


async def _demo(no_ui: bool, limit_skus: int | None) -> int:
    from tui_backfill.frontends.running import run_console, run_headless, wants_console

    catalog = DEMO_DIR / "catalog.sqlite3"
    if not catalog.exists():
        DEMO_DIR.mkdir(parents=True, exist_ok=True)
        print(
            f"demo: writing a catalog of {ACTIVE_SKUS:,} active SKUs to {catalog}", file=sys.stderr
        )
        make_catalog(str(catalog), ACTIVE_SKUS, INACTIVE_SKUS)
    async with (
        RcloneS3(DEMO_DIR / "s3", buckets=(DEMO_BUCKET,)) as s3,
        OriginServer(demo_faults(), seed=os.getpid()) as origin,
    ):
        # The demo's own credentials, in this process only (the standard AWS chain reads them).
        os.environ.update(s3.env())
        os.environ.pop("AWS_PROFILE", None)
        flags = {
            "job": DEMO_JOB,
            "state": DEMO_STATE,
            "skus_db": str(catalog),
            "skus_query": ACTIVE_SKUS_QUERY,
            "origin": origin.url_template,
            "bucket": DEMO_BUCKET,
            "endpoint_url": s3.endpoint_url,
            "path_style": True,
            "timeout": 5.0,
            "backoff": 0.2,
            "limit_skus": limit_skus,
        }
        resolved = resolve(flags, env={})
        print(
            f"demo: S3 at {s3.endpoint_url} (bucket {DEMO_BUCKET}), origin at {origin.base_url}, "
            f"state {DEMO_STATE} (job {DEMO_JOB})",
            file=sys.stderr,
        )
        # An unfinished demo run continues with its own settings (the servers' ports change).
        from tui_backfill.state.sqlite import StateStore

        store = await StateStore.open(DEMO_STATE)
        try:
            unfinished = await store.unfinished_run(DEMO_JOB)
            if unfinished is not None:
                await store.update_settings(
                    unfinished.id, {"origin": origin.url_template, "endpoint_url": s3.endpoint_url}
                )
        finally:
            await store.close()
        request = RunRequest(resolved)
        if wants_console(no_ui):
            return await run_console(request)
        return await run_headless(request)


def run_demo(*, no_ui: bool = False, limit_skus: int | None = None, fresh: bool = False) -> int:
    if fresh:
        _wipe()
    return asyncio.run(_demo(no_ui, limit_skus))
