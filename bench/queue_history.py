"""A claim's cost as the publish queue grows: a long history of finished jobs, a long backlog
of open ones; with and without the open-jobs index.

A queue keeps its finished jobs (the seed's monitoring reads them), so after months a claim
runs beside hundreds of thousands of completed rows; and a queue filled faster than it drains
holds a long backlog. A claim takes the first open jobs in id order: through the partial index
`publish_jobs_open` (`init-db` creates it) it reads just those; without it PostgreSQL walks the
primary key past every finished job, and SQLite reads every open job and sorts them, or (with
ANALYZE's statistics) walks the whole table.

Cases: (finished, open) = (0, 1,000), (20,000, 1,000), (200,000, 1,000) and (0, 100,000). For
each dialect (SQLite: a file, the embedded queue; PostgreSQL: a server started here on
127.0.0.1) and case: a fresh database made by `init_db`, the finished jobs and then the open
ones inserted by plain SQL; PostgreSQL analysed (as autovacuum does), SQLite both as a worker
leaves it (no statistics: nothing runs ANALYZE) and after ANALYZE. Then `claim(limit=2)`
through the queue's own code on a fresh connection, timed N times (median and max quoted; the
claimed jobs stay claimed, as in a busy queue); then the index dropped and the same again.

    .venv/bin/python bench/queue_history.py [--claims 40]

Prints a Markdown section for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tui_backfill.seams.queue import open_queue
from tui_backfill.seams.queue.base import RetryPolicy
from tui_backfill.servers.postgres import PostgresServer

CASES = ((0, 1_000), (20_000, 1_000), (200_000, 1_000), (0, 100_000))
POLICY = RetryPolicy(base=0.0, cap=0.0, jitter=0.0)


def _sqlite(url: str) -> sqlite3.Connection:
    return sqlite3.connect(url.removeprefix("sqlite:///"))


async def fill(url: str, finished: int, pending: int, analyze: bool) -> None:
    """`finished` completed jobs, then `pending` pending ones, each of its own file."""
    files = finished + pending
    status = f"CASE WHEN {{n}} <= {finished} THEN 'completed' ELSE 'pending' END"
    if url.startswith("sqlite:"):
        db = _sqlite(url)
        series = (
            f"WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < {files})"
        )
        db.execute(
            f"{series} INSERT INTO auction_files (id, lot_id, source_key, publish_status)"
            " SELECT n, n % 1000, 'k' || n, 'pending' FROM s"
        )
        db.execute(
            f"{series} INSERT INTO publish_jobs (file_id, status)"
            f" SELECT n, {status.format(n='n')} FROM s"
        )
        db.commit()
        if analyze:
            db.execute("ANALYZE")
        # the rows folded into the database file, as a long-lived queue's are (its WAL is
        # checkpointed as it goes), not left in the WAL of one huge transaction
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        db.close()
        return
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(
            "INSERT INTO auction_files (id, lot_id, source_key, publish_status)"
            f" SELECT g, g % 1000, 'k' || g, 'pending' FROM generate_series(1, {files}) g"
        )
        await conn.execute(
            "INSERT INTO publish_jobs (file_id, status)"
            f" SELECT g, {status.format(n='g')} FROM generate_series(1, {files}) g"
        )
        await conn.execute("VACUUM ANALYZE publish_jobs")
        await conn.execute("ANALYZE auction_files")
    finally:
        await conn.close()


async def drop_index(url: str, analyze: bool) -> None:
    if url.startswith("sqlite:"):
        db = _sqlite(url)
        db.execute("DROP INDEX publish_jobs_open")
        if analyze:
            db.execute("ANALYZE")
        db.commit()
        db.close()
        return
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        await conn.execute("DROP INDEX publish_jobs_open")
        await conn.execute("ANALYZE publish_jobs")
    finally:
        await conn.close()


async def claims(url: str, n: int) -> list[float]:
    """`n` claims of two jobs each on a queue opened afresh (it reads which indexes exist), in
    ms; each must claim two."""
    queue = await open_queue(url)
    try:
        times = []
        for i in range(n):
            started = time.perf_counter()
            got = await queue.claim(f"bench-{i}", 2, 600.0, policy=POLICY)
            times.append((time.perf_counter() - started) * 1000)
            if len(got) != 2:
                raise SystemExit(f"claim {i} got {len(got)} jobs")
    finally:
        await queue.close()
    return times


async def measure(
    url: str, finished: int, pending: int, analyze: bool, n: int
) -> tuple[list[float], list[float]]:
    """The claims' times with the index, then without it."""
    queue = await open_queue(url)
    try:
        await queue.init_db()
    finally:
        await queue.close()
    await fill(url, finished, pending, analyze)
    with_index = await claims(url, n)
    await drop_index(url, analyze)
    return with_index, await claims(url, n)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--claims", type=int, default=40, help="claims timed per case")
    args = p.parse_args()
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="queue-history-") as tmp, PostgresServer() as pg:
        for n_case, (finished, pending) in enumerate(CASES):
            runs = [("sqlite", False), ("sqlite", True), ("postgres", True)]
            for dialect, analyze in runs:
                if dialect == "sqlite":
                    url = f"sqlite:///{Path(tmp) / f'q-{n_case}-{int(analyze)}.sqlite3'}"
                else:
                    url = pg.create_database(f"h{n_case}")
                w, wo = asyncio.run(measure(url, finished, pending, analyze, args.claims))
                stats = "analysed" if analyze else "none (as a worker leaves it)"
                rows.append(
                    f"| {dialect} | {stats} | {finished:,} | {pending:,} |"
                    f" {statistics.median(w):.2f} ({max(w):.2f}) |"
                    f" {statistics.median(wo):.2f} ({max(wo):.2f}) |"
                    f" {statistics.median(wo) / statistics.median(w):.1f}x |"
                )
                print(rows[-1], file=sys.stderr, flush=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(["bench/queue_history.py", *sys.argv[1:]])
    print(f"## `{command}`\n")
    print(
        f"{stamp}; {os.cpu_count()} CPUs; Python {platform.python_version()};"
        f" {args.claims} claims of 2 jobs per case\n"
    )
    print(
        "| queue | statistics | finished jobs | open jobs | claim ms, index (max)"
        " | claim ms, no index (max) | no index / index |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
