"""`tui-backfill demo servers`: the embedded servers of the demos, left running for a tour.

It starts, on 127.0.0.1, `rclone serve s3` with three buckets (`images`, empty: the image
backfill's destination; `assets`, a few objects under `lots/` for the content-hash index;
`media`, empty: the publishing worker's variants), an image origin (a supplier's server: one
image in ten or so answers 404) and a private media store with a few photos, beside a SQLite
queue database whose `auction_files` lists those photos (as the seed's database would). It
prints the `export ...` lines that point tui-backfill at them, and serves until Ctrl-C or
SIGTERM; then it stops them and removes their data (a temporary directory, printed).
"""

from __future__ import annotations

import asyncio
import hashlib
import shlex
import signal
import sys
import tempfile
from pathlib import Path

from tui_backfill.seams.templates import DEFAULT_KEY_TEMPLATE
from tui_backfill.servers.images import many_images
from tui_backfill.servers.origin import OriginFaults, OriginServer
from tui_backfill.servers.publish_files import insert_files
from tui_backfill.servers.raid import RaidServer
from tui_backfill.servers.rclone_s3 import RcloneS3

IMAGES_BUCKET, ASSETS_BUCKET, MEDIA_BUCKET = "images", "assets", "media"
ASSETS_PREFIX = "lots/"
ASSETS = 6  # objects under lots/ in the assets bucket
PHOTOS = 3  # photos in the private store, each a file of the queue database
MISSING_FRACTION = 0.1  # of the origin's images: 404
ACCESS_KEY, SECRET_KEY = "demo-access", "demo-secret-key"
STORE_TOKEN = "demo-store-secret"
CDN = "https://cdn.example.invalid"
READY = "# servers running: paste the export lines above into your shell; Ctrl-C stops them"


def _write_assets(bucket_dir: Path) -> None:
    """Objects straight into the directory rclone serves as the bucket (its files are objects)."""
    for i in range(ASSETS):
        path = bucket_dir / f"{ASSETS_PREFIX}{1001 + i // 2}/{i % 2 + 1}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(hashlib.sha256(f"asset {i}".encode()).hexdigest().encode() * (i + 1))


async def _fill_queue(database_url: str, keys: list[str]) -> None:
    from tui_backfill.seams.queue import open_queue

    queue = await open_queue(database_url)
    try:
        await queue.init_db()
    finally:
        await queue.close()
    insert_files(Path(database_url.removeprefix("sqlite:///")), _files(keys))


def _files(keys: list[str]) -> list[tuple[int, int, str]]:
    return [(i + 1, 1001 + i, key) for i, key in enumerate(keys)]


def _export(**values: str) -> str:
    return "export " + " ".join(f"{name}={shlex.quote(value)}" for name, value in values.items())


async def _serve(data: Path) -> int:
    photos = many_images(PHOTOS, seed=7)
    _write_assets(data / "s3" / ASSETS_BUCKET)
    # `rclone serve s3` answers 500 now and then when PUTs race to create the first object of
    # a directory (FIELD-NOTES): the tool retries them, but the tour's output would show them.
    # The default key prefix exists from the start (a directory is no key: listings ignore it).
    (data / "s3" / IMAGES_BUCKET / DEFAULT_KEY_TEMPLATE.rsplit("/", 1)[0]).mkdir(parents=True)
    database_url = f"sqlite:///{data / 'queue.sqlite3'}"
    await _fill_queue(database_url, sorted(photos))
    s3 = RcloneS3(
        data / "s3",
        access_key=ACCESS_KEY,
        secret_key=SECRET_KEY,
        buckets=(IMAGES_BUCKET, ASSETS_BUCKET, MEDIA_BUCKET),
    )
    async with (
        s3,
        OriginServer(OriginFaults(missing_fraction=MISSING_FRACTION)) as origin,
        RaidServer(photos, token=STORE_TOKEN) as store,
    ):
        lines = [
            f"# S3 (rclone serve s3) at {s3.endpoint_url}, data in {data}",
            f"#   buckets: {IMAGES_BUCKET} (empty), {ASSETS_BUCKET} ({ASSETS} objects under "
            f"{ASSETS_PREFIX}), {MEDIA_BUCKET} (empty)",
            _export(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY),
            _export(AWS_ENDPOINT_URL=s3.endpoint_url, AWS_DEFAULT_REGION=s3.region),
            _export(TUI_BACKFILL_PATH_STYLE="true"),
            "# image origin: <SKU>_<angle> for any SKU; about one image in ten is missing (404)",
            _export(DEMO_ORIGIN=origin.url_template),
            f"# publishing: a private store of {PHOTOS} photos, a queue database listing them",
            _export(RAID_PUB_ENDPOINT=store.endpoint, RAID_PUBLISHER_SECRET=STORE_TOKEN),
            _export(DATABASE_URL=database_url, CDN_BASE_URL=CDN),
            _export(
                B2_KEY_ID=ACCESS_KEY,
                B2_APP_KEY=SECRET_KEY,
                B2_BUCKET=MEDIA_BUCKET,
                B2_ENDPOINT=s3.endpoint_url,
            ),
            READY,
        ]
        print("\n".join(lines), flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    print("# servers stopped", file=sys.stderr, flush=True)
    return 0


def run_demo_servers() -> int:
    with tempfile.TemporaryDirectory(prefix="tui-backfill-servers-") as data:
        return asyncio.run(_serve(Path(data)))
