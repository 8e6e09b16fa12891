"""What one ListObjectsV2 request costs `rclone serve s3`, and what asking for pages side by
side buys: the ground under the hash index's re-run goal.

Writes N small files (default 30,000 x 4 KiB, as the `rerun` case of bench/hash_index.py) into
one directory of a fresh `rclone serve s3`, then, with the floor's client (bench/hash_floor.py:
aiohttp and a hand-made SigV4, nothing else):

- times 5 requests of each kind, after one to warm up: a page from the start, with
  `encoding-type=url`, with `StartAfter` in the middle and near the end, with `MaxKeys` 100,
  and with a prefix that matches 1,000 keys of the directory;
- lists all pages (1,000 keys each, each after the last key of the one before it, as known in
  advance) 1, 2, 3, 4 and 8 at a time, and times each.

Prints one line per measurement. Not part of the tests.

    .venv/bin/python bench/list_cost.py [N]
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from hash_floor import PAGE, Signer, list_page  # bench/, beside this script

from tui_backfill.servers.rclone_s3 import RcloneS3

BUCKET = "bench"
PREFIX = "rerun/"


def key(n: int) -> str:
    return f"{PREFIX}obj-{n:06d}.bin"


async def measure(endpoint: str, access_key: str, secret_key: str, count: int) -> None:
    signer = Signer(endpoint, "us-east-1", access_key, secret_key)
    base = endpoint.rstrip("/")
    async with aiohttp.ClientSession() as http:

        async def page(query: dict[str, str]) -> int:
            listed, _ = await list_page(http, signer, base, BUCKET, query)
            return len(listed)

        plain = {"list-type": "2", "prefix": PREFIX, "max-keys": str(PAGE)}
        kinds = {
            "a page from the start": {},
            "encoding-type=url": {"encoding-type": "url"},
            "StartAfter in the middle": {"start-after": key(count // 2)},
            "StartAfter near the end": {"start-after": key(max(0, count - PAGE - 1))},
            "MaxKeys 100": {"max-keys": "100"},
            "a prefix matching 1,000 keys": {"prefix": key(count // 2)[: -len("000.bin")]},
        }
        for name, extra in kinds.items():
            query = {**plain, **extra}
            await page(query)
            started = time.perf_counter()
            for _ in range(5):
                await page(query)
            print(f"{name}: {(time.perf_counter() - started) / 5 * 1000:.0f} ms a request")

        after: list[str | None] = [None] + [key(n - 1) for n in range(PAGE, count, PAGE)]
        for at_once in (1, 2, 3, 4, 8):
            slots = asyncio.Semaphore(at_once)

            async def one(start: str | None, slots: asyncio.Semaphore = slots) -> int:
                async with slots:
                    query = dict(plain)
                    if start is not None:
                        query["start-after"] = start
                    return await page(query)

            started = time.perf_counter()
            listed = sum(await asyncio.gather(*(one(start) for start in after)))
            seconds = time.perf_counter() - started
            print(f"{len(after)} pages, {at_once} at a time: {seconds:.2f} s ({listed:,} keys)")


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 30_000
    with tempfile.TemporaryDirectory(prefix="list-cost-") as tmp:
        folder = Path(tmp) / BUCKET / PREFIX
        folder.mkdir(parents=True)
        block = os.urandom(4096)
        for n in range(count):
            (Path(tmp) / BUCKET / key(n)).write_bytes(block)
        with RcloneS3(tmp) as s3:
            asyncio.run(measure(s3.endpoint_url, s3.access_key, s3.secret_key, count))


if __name__ == "__main__":
    main()
