"""A claim's cost as the publish queue's history grows, with and without the open-jobs index.

A queue keeps its finished jobs (the seed's monitoring reads them), so after months a claim
runs beside hundreds of thousands of completed rows. A claim takes the open jobs in id order:
with the partial index `publish_jobs_open` (`init-db` creates it) it reads only those; without
it (a schema from an older `init-db`) it walks the primary key past every finished job.

For each dialect (SQLite: a file, as the embedded queue; PostgreSQL: a server started here on
127.0.0.1) and each history size H: a fresh database made by `init_db`, H completed jobs and
then 1,000 pending ones inserted by plain SQL, ANALYZE; then `claim(limit=2)` through the
queue's own code, timed 40 times (median and max quoted; the claimed jobs stay claimed, so each
claim reads past the earlier ones, as a busy queue does); then the index dropped, ANALYZE, and
the same again.

    .venv/bin/python bench/queue_history.py [--history 0,20000,200000] [--claims 40]

Prints a Markdown section for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from tui_backfill.seams.queue import open_queue
from tui_backfill.seams.queue.base import JobQueue, RetryPolicy
from tui_backfill.servers.postgres import PostgresServer

PENDING = 1_000
POLICY = RetryPolicy(base=0.0, cap=0.0, jitter=0.0)


async def fill(url: str, history: int) -> None:
    """`history` completed jobs, then PENDING pending ones, each of its own file; ANALYZE."""
    files = history + PENDING
    status = f"CASE WHEN {{n}} <= {history} THEN 'completed' ELSE 'pending' END"
    if url.startswith("sqlite:"):
        import sqlite3

        db = sqlite3.connect(url.removeprefix("sqlite:///"))
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
        db.execute("ANALYZE")
        # the history folded into the database file, as a long-lived queue's is (its WAL is
        # checkpointed as it goes), not left in a WAL of one huge transaction
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


async def drop_index(url: str) -> None:
    if url.startswith("sqlite:"):
        import sqlite3

        db = sqlite3.connect(url.removeprefix("sqlite:///"))
        db.execute("DROP INDEX publish_jobs_open")
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


async def claims(queue: JobQueue, n: int) -> list[float]:
    """`n` claims of two jobs each, in ms; each must claim two."""
    times = []
    for i in range(n):
        started = time.perf_counter()
        got = await queue.claim(f"bench-{i}", 2, 600.0, policy=POLICY)
        times.append((time.perf_counter() - started) * 1000)
        if len(got) != 2:
            raise SystemExit(f"claim {i} got {len(got)} jobs")
    return times


async def measure(url: str, history: int, n: int) -> dict[str, list[float]]:
    queue = await open_queue(url)
    try:
        await queue.init_db()
        await fill(url, history)
        with_index = await claims(queue, n)
        await drop_index(url)
        if await queue.missing_indexes() != ["publish_jobs_open"]:
            raise SystemExit("the index was not dropped")
        without = await claims(queue, n)
    finally:
        await queue.close()
    return {"with": with_index, "without": without}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--history", default="0,20000,200000", help="completed jobs, comma-separated")
    p.add_argument("--claims", type=int, default=40, help="claims timed per case")
    args = p.parse_args()
    sizes = [int(x) for x in args.history.split(",")]
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="queue-history-") as tmp, PostgresServer() as pg:
        for history in sizes:
            for dialect in ("sqlite", "postgres"):
                if dialect == "sqlite":
                    url = f"sqlite:///{Path(tmp) / f'q-{history}.sqlite3'}"
                else:
                    url = pg.create_database(f"h{history}")
                result = asyncio.run(measure(url, history, args.claims))
                w, wo = result["with"], result["without"]
                rows.append(
                    f"| {dialect} | {history:,} | {statistics.median(w):.2f} ({max(w):.2f}) |"
                    f" {statistics.median(wo):.2f} ({max(wo):.2f}) |"
                    f" {statistics.median(wo) / statistics.median(w):.1f}x |"
                )
                print(rows[-1], file=sys.stderr, flush=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    command = " ".join(["bench/queue_history.py", *sys.argv[1:]])
    print(f"## `{command}`\n")
    print(
        f"{stamp}; {os.cpu_count()} CPUs; Python {platform.python_version()}; {PENDING:,} pending"
        f" jobs after the history; {args.claims} claims of 2 jobs per case\n"
    )
    print(
        "| queue | completed jobs before | claim ms, index (max) | claim ms, no index (max) | no index / index |"
    )
    print("|---|---:|---:|---:|---:|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
