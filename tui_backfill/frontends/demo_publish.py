"""`tui-backfill demo publish`: the media publishing worker on embedded servers, nothing to
configure.

It starts `rclone serve s3` (`state/demo-publish/s3`, bucket `IBA-Lot-Media`) and a RAID-like
private store on 127.0.0.1 serving 300 generated photos (`--files N`) plus a corrupt file, a decompression
bomb and a source that answers 404; it fills a SQLite queue (`state/demo-publish/queue.sqlite3`:
the seed's `auction_files`, `publish_jobs`, `publish_attempts`) with a job for each file, and
runs one worker (job `demo-publish`) under the console, or headless with `--no-ui` (then with
`--burst`: it exits when the queue is drained). Run it again to continue: published files stay
published; `--fresh` starts over. Everything it started is stopped at the end.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

from tui_backfill.outcomes import ConfigError
from tui_backfill.servers.images import many_images, sample_images
from tui_backfill.servers.publish_files import insert_files
from tui_backfill.servers.raid import RaidServer
from tui_backfill.servers.rclone_s3 import RcloneS3

DEMO_DIR = Path("state/demo-publish")
DEMO_S3 = DEMO_DIR / "s3"
DEMO_QUEUE = DEMO_DIR / "queue.sqlite3"
DEMO_JOB = "demo-publish"
DEMO_BUCKET = "IBA-Lot-Media"
DEMO_FILES = 300
DEMO_TOKEN = "demo-raid-secret"
DEMO_CDN = "https://cdn.demo.invalid"


def _say(text: str) -> None:
    print(f"demo: {text}", file=sys.stderr, flush=True)


def _catalog(files: int) -> dict[str, bytes]:
    images = many_images(files, seed=1)
    samples = sample_images()
    images.update(
        {"broken/corrupt.jpg": samples["corrupt.jpg"], "broken/bomb.png": samples["bomb.png"]}
    )
    return images


def _fill_queue(keys: list[str]) -> int:
    """The seed's files, one per source (and one whose source is missing)."""
    files = [(i + 1, 1000 + i // 12, key) for i, key in enumerate([*keys, "missing/none.jpg"])]
    return insert_files(DEMO_QUEUE, files)


async def _demo(no_ui: bool, files: int) -> int:
    from tui_backfill.frontends.publish import run_worker_console, run_worker_headless
    from tui_backfill.pipelines.publish.settings import resolve_publish
    from tui_backfill.seams.queue import open_queue

    DEMO_DIR.mkdir(parents=True, exist_ok=True)
    images = _catalog(files)
    async with RaidServer(images, token=DEMO_TOKEN) as raid:
        with RcloneS3(DEMO_S3, buckets=(DEMO_BUCKET,)) as s3:
            env = {
                "DATABASE_URL": f"sqlite:///{DEMO_QUEUE}",
                "RAID_PUB_ENDPOINT": raid.endpoint,
                "RAID_PUBLISHER_SECRET": DEMO_TOKEN,
                "B2_KEY_ID": s3.access_key,
                "B2_APP_KEY": s3.secret_key,
                "B2_BUCKET": DEMO_BUCKET,
                "B2_ENDPOINT": s3.endpoint_url,
                "CDN_BASE_URL": DEMO_CDN,
                "WORKER_POLL_INTERVAL": "1000",
                "TUI_BACKFILL_PATH_STYLE": "true",
                "TUI_BACKFILL_RETRY_BASE": "1",
                "TUI_BACKFILL_LEASE": "15",
                "TUI_BACKFILL_SHUTDOWN_TIMEOUT": "10",
            }
            settings = resolve_publish({}, env=env, job=DEMO_JOB)
            queue = await open_queue(settings.database_url)
            try:
                await queue.init_db()
                files = _fill_queue(sorted(images))
                created = await queue.enqueue(max_retries=3)
                figures = await queue.figures()
            finally:
                await queue.close()
            _say(
                f"S3 at {s3.endpoint_url} (bucket {DEMO_BUCKET}), private store at "
                f"{raid.endpoint}, queue {DEMO_QUEUE} ({files} files, {created} new jobs; "
                f"{figures.pending} pending, {figures.completed} completed)"
            )
            if no_ui:  # headless, the demo drains the queue and exits
                code = await run_worker_headless(settings, burst=True)
            else:
                code = await run_worker_console(settings, burst=False)
    _say(
        "try next:\n"
        f'  sqlite3 -header {DEMO_QUEUE} "SELECT publish_status, COUNT(*) FROM auction_files GROUP BY 1"\n'
        f"  sqlite3 -header {DEMO_QUEUE} \"SELECT id, file_id, retry_count, last_error FROM publish_jobs WHERE status = 'failed'\"\n"
        "  tui-backfill demo publish --fresh   (start over)"
    )
    return code


def run_demo_publish(*, no_ui: bool = False, fresh: bool = False, files: int = DEMO_FILES) -> int:
    if fresh:
        shutil.rmtree(DEMO_DIR, ignore_errors=True)
    if not no_ui:
        from tui_backfill.frontends.running import has_terminal

        if not has_terminal():
            raise ConfigError("--no-ui", "the console needs a terminal; add --no-ui")
    return asyncio.run(_demo(no_ui, files))
