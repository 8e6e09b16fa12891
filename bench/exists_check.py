"""Existence by listing vs by HEAD: requests at the S3 server and wall time, same run.

Fills a bucket with N SKUs x 3 angles, then re-runs the finished job with `--from-start` in
each mode, interleaved, and reports medians. Usage: .venv/bin/python bench/exists_check.py [N] [REPS]
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time

from common import run_argv  # bench/, beside this script

from tui_backfill.servers.catalog import make_catalog
from tui_backfill.servers.origin import OriginFaults, OriginServer
from tui_backfill.servers.proxy import ReverseProxy
from tui_backfill.servers.rclone_s3 import RcloneS3


async def _run(cmd: list[str], env: dict[str, str]) -> dict:
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    return json.loads(out)


async def main(skus: int, reps: int) -> None:
    tmp = tempfile.mkdtemp(prefix="bench-exists-")
    make_catalog(f"{tmp}/catalog.sqlite3", skus, 0)
    async with RcloneS3(buckets=("bench",)) as s3, OriginServer(OriginFaults(missing_fraction=0.03)) as origin:
        async with ReverseProxy(s3.endpoint_url) as proxy:
            env = dict(os.environ, **s3.env())
            base = run_argv(state=f"{tmp}/state.sqlite3", catalog=f"{tmp}/catalog.sqlite3", origin=origin.url_template,
                            bucket="bench", endpoint_url=proxy.endpoint_url, skus=skus, concurrency=6, progress_interval=60)
            await _run(base, env)  # fill
            results: dict[str, list[tuple[float, int, int]]] = {"list": [], "head": []}
            for _ in range(reps):
                for mode in ("list", "head"):
                    proxy.reset_counters()
                    started = time.perf_counter()
                    snap = await _run([*base, "--from-start", "--exists-check", mode], env)
                    elapsed = time.perf_counter() - started
                    assert snap["uploaded"] == 0, snap
                    results[mode].append((elapsed, proxy.count("list"), proxy.count("head_object")))
            items = skus * 3
            print(f"re-run of a finished job: {skus} SKUs x 3 angles = {items} items, {reps} interleaved repetitions")
            for mode, rows in results.items():
                wall = statistics.median(r[0] for r in rows)
                print(f"  {mode:4}: median {wall:.2f} s, {rows[0][1]} listing requests, {rows[0][2]} HEADs")
            ratio = statistics.median(r[0] for r in results["head"]) / statistics.median(r[0] for r in results["list"])
            print(f"  head/list wall-time ratio: {ratio:.1f}x")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000, int(sys.argv[2]) if len(sys.argv) > 2 else 3))
