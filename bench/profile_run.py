"""Where a run's CPU goes: cProfile of one headless run, grouped by the code that spent it.

Starts `rclone serve s3` and the origin in child processes (so the profile sees only the
client), then runs `tui-backfill run --no-ui` in this process under cProfile at zero origin
latency and C = 32 (the CPU-bound case of the peers benchmark), and prints the profile's own
time grouped by package: the S3 client (aiobotocore + botocore), aiohttp, the asyncio loop,
SQLite (aiosqlite), tenacity, tui-backfill's own modules, the rest. cProfile inflates small
Python calls, so read the shares, not the milliseconds. Not part of the tests.

    .venv/bin/python bench/profile_run.py [SKUS]        # default 1000 SKUs x 3 angles
"""

from __future__ import annotations

import cProfile
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import run_args  # bench/, beside this script

from tui_backfill.frontends import cli
from tui_backfill.servers.catalog import make_catalog
from tui_backfill.servers.rclone_s3 import RcloneS3

GROUPS = (
    ("S3 client (aiobotocore, botocore)", ("/aiobotocore/", "/botocore/", "/urllib3/", "/dateutil/")),
    ("aiohttp (origin GETs and the S3 client's HTTP)", ("/aiohttp/", "/multidict/", "/yarl/")),
    ("asyncio event loop", ("/asyncio/", "selectors.py", "select.epoll")),
    ("SQLite state (aiosqlite, sqlite3)", ("/aiosqlite/", "sqlite3")),
    ("tenacity", ("/tenacity/",)),
    ("tui-backfill", ("/tui_backfill/",)),
    ("socket and hashing builtins", ("_socket", "_hashlib", "_ssl")),
)

OTHER = "other (stdlib, builtins, imports)"


def group_of(filename: str, name: str) -> str:
    where = f"{filename} {name}"
    for label, needles in GROUPS:
        if any(n in where for n in needles):
            return label
    return OTHER


def grouped(table: dict) -> dict[str, float]:
    """Own time per group; time in the stdlib and builtins goes to the group that called them
    (walking up through stdlib callers, split by how much each caller spent there)."""
    memo: dict[tuple, dict[str, float]] = {}

    def share(func: tuple, depth: int) -> dict[str, float]:
        label = group_of(func[0], func[2])
        if label != OTHER or depth > 6:
            return {label: 1.0}
        if func in memo:
            return memo[func]
        memo[func] = {OTHER: 1.0}  # cycles: stop here
        callers = table[func][4] if func in table else {}
        weights = {caller: entry[2] or entry[3] for caller, entry in callers.items()}
        total = sum(weights.values())
        if not total:
            return {OTHER: 1.0}
        out: dict[str, float] = {}
        for caller, weight in weights.items():
            for lab, frac in share(caller, depth + 1).items():
                out[lab] = out.get(lab, 0.0) + frac * weight / total
        memo[func] = out
        return out

    totals: dict[str, float] = {}
    for func, (_cc, _nc, tottime, _ct, _callers) in table.items():
        for label, frac in share(func, 0).items():
            totals[label] = totals.get(label, 0.0) + tottime * frac
    return totals


def main(skus: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-profile-"))
    make_catalog(tmp / "catalog.sqlite3", skus, 0)
    with RcloneS3(tmp / "s3", buckets=("profile",)) as s3:
        origin = subprocess.Popen(
            [sys.executable, "-m", "tui_backfill.servers.origin", "--object-size", "65536", "--missing-fraction", "0.03"],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert origin.stdout is not None
            base_url = origin.stdout.readline().split()[1]
            os.environ.update(s3.env())
            argv = run_args(state=tmp / "state.sqlite3", catalog=tmp / "catalog.sqlite3", origin=base_url + "/img/{sku}_{angle}.jpg",
                            bucket="profile", endpoint_url=s3.endpoint_url, skus=skus, concurrency=32, upload_concurrency=32)
            profile = cProfile.Profile()
            started, cpu = time.perf_counter(), time.process_time()
            real_stdout = sys.stdout
            sys.stdout = open(os.devnull, "w")
            try:
                profile.runcall(cli.main, argv)
            finally:
                sys.stdout.close()
                sys.stdout = real_stdout
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        finally:
            origin.terminate()
            origin.wait()
    stats = pstats.Stats(profile)
    totals = grouped(stats.stats)  # type: ignore[attr-defined]
    total = sum(totals.values())
    items = skus * 3
    print(f"{skus} SKUs x 3 angles = {items} items, C = 32, zero latency: {wall:.1f} s, "
          f"{cpu * 1000 / items:.2f} ms CPU per item under the profiler (it roughly doubles the cost)")
    print("own time by group (share of the profiled total; stdlib and builtins counted to their callers;"
          " the SQLite thread is not profiled):")
    for label, seconds in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {100 * seconds / total:5.1f} %  {label}")
    print("top functions by own time:")
    stats.sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
