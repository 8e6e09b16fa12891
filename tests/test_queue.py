"""The publish queue's contract suite, run against both implementations on real databases.

`sqlite`: a temporary file; `postgres`: a fresh database on the session's PostgreSQL server
(tests/conftest.py `pg_url`). Test setup and inspection use plain SQL through a second
connection, as the seed's edge function and an operator's psql would.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from tui_backfill.outcomes import ConfigError
from tui_backfill.seams.queue import (
    ClaimedJob,
    JobQueue,
    Published,
    RetryPolicy,
    open_queue,
    redact_url,
    sqlite_path,
)
from tui_backfill.seams.queue.postgres import FAST_CLAIM
from tui_backfill.seams.queue.sqlite import ATTENTION as SQLITE_ATTENTION
from tui_backfill.seams.queue.sqlite import CANDIDATES as SQLITE_CANDIDATES
from tui_backfill.seams.queue.sqlite import EXPIRED as SQLITE_EXPIRED

NOW_POLICY = RetryPolicy(base=0.0, cap=0.0, jitter=0.0)  # failed jobs are due again at once


class Raw:
    """Plain SQL on a second connection, `?` placeholders in both dialects."""

    dialect: str
    serial: str
    ts: str

    async def execute(self, sql: str, *args: Any) -> None:
        raise NotImplementedError

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    async def val(self, sql: str, *args: Any) -> Any:
        rows = await self.fetch(sql, *args)
        return rows[0][0] if rows else None

    def secs_until(self, column: str) -> str:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class RawSqlite(Raw):
    dialect = "sqlite"
    serial = "INTEGER PRIMARY KEY AUTOINCREMENT"
    ts = "TEXT"

    def __init__(self, path: str) -> None:
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None)

    async def execute(self, sql: str, *args: Any) -> None:
        self.db.execute(sql, args)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in self.db.execute(sql, args).fetchall()]

    def secs_until(self, column: str) -> str:
        return f"(julianday({column}) - julianday('now')) * 86400.0"

    async def close(self) -> None:
        self.db.close()


class RawPostgres(Raw):
    dialect = "postgres"
    serial = "BIGSERIAL PRIMARY KEY"
    ts = "TIMESTAMPTZ"

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @staticmethod
    def _sql(sql: str) -> str:
        parts = sql.split("?")
        return parts[0] + "".join(f"${i}{p}" for i, p in enumerate(parts[1:], 1))

    async def execute(self, sql: str, *args: Any) -> None:
        await self.conn.execute(self._sql(sql), *args)

    async def fetch(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return [tuple(r) for r in await self.conn.fetch(self._sql(sql), *args)]

    def secs_until(self, column: str) -> str:
        return f"EXTRACT(EPOCH FROM ({column} - now()))::float8"

    async def close(self) -> None:
        await self.conn.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def db(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[Callable[[], Awaitable[JobQueue]], Raw]]:
    """(make_queue, raw): `await make_queue()` opens one more queue (a worker) on one fresh,
    empty database; `raw` runs plain SQL on it."""
    if request.param == "sqlite":
        path = tmp_path / "queue.sqlite3"
        url = f"sqlite:///{path}"  # an absolute path: sqlite:////tmp/...
        raw: Raw = RawSqlite(str(path))
    else:
        import asyncpg

        url = request.getfixturevalue("pg_url")
        raw = RawPostgres(await asyncpg.connect(url))
    queues: list[JobQueue] = []

    async def make() -> JobQueue:
        queue = await open_queue(url)
        queues.append(queue)
        return queue

    try:
        yield make, raw
    finally:
        for queue in queues:
            await queue.close()
        await raw.close()


async def ready(
    db: tuple[Callable[[], Awaitable[JobQueue]], Raw], files: int = 0
) -> tuple[JobQueue, Raw]:
    make, raw = db
    queue = await make()
    await queue.init_db()
    for i in range(1, files + 1):
        await raw.execute(
            "INSERT INTO auction_files (id, lot_id, source_key, publish_status)"
            " VALUES (?, ?, ?, 'pending')",
            i,
            100 + i,
            f"uploads/{i}.jpg",
        )
    return queue, raw


async def job_row(raw: Raw, job_id: int) -> dict[str, Any]:
    cols = "status, retry_count, max_retries, last_error, locked_by, file_id"
    (row,) = await raw.fetch(f"SELECT {cols} FROM publish_jobs WHERE id = ?", job_id)
    return dict(zip(cols.split(", "), row, strict=True))


async def attempts(raw: Raw, job_id: int) -> list[tuple[str, str | None]]:
    rows = await raw.fetch(
        "SELECT worker, outcome FROM publish_attempts WHERE job_id = ? ORDER BY id", job_id
    )
    return [(str(w), o) for w, o in rows]


async def claim_one(queue: JobQueue, worker: str, lease: float = 30.0) -> ClaimedJob:
    (job,) = await queue.claim(worker, 1, lease, policy=NOW_POLICY)
    return job


# -- schema -----------------------------------------------------------------------------------


async def test_init_db_creates_tables_and_is_idempotent(db: Any) -> None:
    make, raw = db
    queue = await make()
    with pytest.raises(ConfigError) as err:
        await queue.check_schema()
    assert "publish_jobs" in str(err.value) and "init-db" in str(err.value)
    assert "\n" not in str(err.value)
    await queue.init_db()
    await queue.init_db()
    await queue.check_schema()
    await raw.execute(
        "INSERT INTO auction_files (id, lot_id, source_key, publish_status) VALUES (1, 2, 'k', 'pending')"
    )
    assert await queue.enqueue() == 1
    await queue.init_db()  # data survives
    assert await raw.val("SELECT COUNT(*) FROM publish_jobs") == 1


async def test_init_db_upgrades_a_seed_schema(db: Any) -> None:
    make, raw = db
    await raw.execute(
        "CREATE TABLE auction_files (id BIGINT PRIMARY KEY, lot_id BIGINT,"
        " source_key TEXT NOT NULL, publish_status TEXT DEFAULT 'pending')"
    )
    await raw.execute(
        f"CREATE TABLE publish_jobs (id {raw.serial},"
        " file_id BIGINT NOT NULL REFERENCES auction_files(id),"
        " status TEXT NOT NULL DEFAULT 'pending', retry_count INT NOT NULL DEFAULT 0,"
        f" max_retries INT NOT NULL DEFAULT 5, last_error TEXT, created_at {raw.ts},"
        f" started_at {raw.ts}, completed_at {raw.ts})"
    )
    await raw.execute(
        "INSERT INTO auction_files (id, lot_id, source_key, publish_status) VALUES (7, 70, 'a.jpg', 'pending')"
    )
    await raw.execute("INSERT INTO publish_jobs (file_id) VALUES (7)")
    queue = await make()
    with pytest.raises(ConfigError) as err:
        await queue.check_schema()
    message = str(err.value)
    assert message.startswith("DATABASE_URL: ")
    for name in ("locked_by", "locked_until", "next_attempt_at", "thumb_url", "deleted_at"):
        assert name in message
    assert "publish init-db" in message and "\n" not in message
    await queue.init_db()
    await queue.check_schema()
    await queue.init_db()
    job = await claim_one(queue, "w1")
    assert (job.file_id, job.lot_id, job.source_key, job.deleted) == (7, 70, "a.jpg", False)
    assert await queue.complete("w1", job, Published("t", "d"))
    assert await raw.val("SELECT thumb_url FROM auction_files WHERE id = 7") == "t"


async def test_the_claim_reads_open_jobs_only_however_long_the_history(db: Any) -> None:
    """20,000 completed jobs before three pending ones: the claim's scan goes through the
    partial index of open jobs (a plan naming `publish_jobs_open`), not through the history or
    every open job, and SQLite's look-ups of expired leases and of jobs needing attention never
    walk the table; on SQLite both with no statistics (as a worker leaves it) and after
    ANALYZE. A schema without the index is named by `missing_indexes` until `init-db` adds it
    back."""
    queue, raw = await ready(db)
    history, files = 20_000, 20_003
    if raw.dialect == "sqlite":
        series = (
            f"WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {files})"
        )
        await raw.execute(
            f"{series} INSERT INTO auction_files (id, lot_id, source_key, publish_status)"
            " SELECT i, 1, 'k' || i, 'pending' FROM n"
        )
        await raw.execute(
            f"{series} INSERT INTO publish_jobs (file_id, status)"
            f" SELECT i, CASE WHEN i <= {history} THEN 'completed' ELSE 'pending' END FROM n"
        )
    else:
        await raw.execute(
            "INSERT INTO auction_files (id, lot_id, source_key, publish_status)"
            f" SELECT g, 1, 'k' || g, 'pending' FROM generate_series(1, {files}) g"
        )
        await raw.execute(
            "INSERT INTO publish_jobs (file_id, status) SELECT g,"
            f" CASE WHEN g <= {history} THEN 'completed' ELSE 'pending' END"
            f" FROM generate_series(1, {files}) g"
        )

    async def details(sql: str, *args: Any) -> list[str]:
        return [str(row[3]) for row in await raw.fetch(f"EXPLAIN QUERY PLAN {sql}", *args)]

    # SQLite with no statistics (as a worker leaves it: nothing runs ANALYZE), then with them
    for analyzed in (False, True) if raw.dialect == "sqlite" else (True,):
        if analyzed:
            await raw.execute("ANALYZE")
        if raw.dialect == "sqlite":  # the queue's own statements, with the index it names
            candidates = SQLITE_CANDIDATES.format(by=await queue.index_hint("publish_jobs_open"))
            plan = " ".join(await details(candidates.replace(":limit", "?"), 2))
            attention = SQLITE_ATTENTION.format(by=await queue.index_hint("publish_jobs_attention"))
            for sql in (SQLITE_EXPIRED, attention):  # never a walk through the whole table
                assert "SCAN publish_jobs" not in await details(sql, 5), (analyzed, sql)
        else:  # the very statement a claim sends, planned (not run)
            rows = await raw.fetch(f"EXPLAIN {FAST_CLAIM}", "w1", 2, 30.0)
            plan = " ".join(str(part) for row in rows for part in row)
        assert "publish_jobs_open" in plan, (analyzed, plan)
    claimed = await queue.claim("w1", 5, 30.0, policy=NOW_POLICY)
    assert [job.file_id for job in claimed] == [20_001, 20_002, 20_003]
    assert await queue.missing_indexes() == []
    await raw.execute("DROP INDEX publish_jobs_open")
    assert await queue.missing_indexes() == ["publish_jobs_open"]
    await queue.init_db()
    assert await queue.missing_indexes() == []


# -- enqueue ----------------------------------------------------------------------------------


async def test_enqueue_eligible_files_idempotently(db: Any) -> None:
    queue, raw = await ready(db, files=6)
    await raw.execute("UPDATE auction_files SET publish_status = 'published' WHERE id = 2")
    await raw.execute("UPDATE auction_files SET deleted_at = created_at WHERE id = 3")
    await raw.execute("INSERT INTO publish_jobs (file_id) VALUES (4)")  # the seed's plain insert
    await raw.execute("UPDATE auction_files SET publish_status = NULL WHERE id = 5")
    await raw.execute("INSERT INTO publish_jobs (file_id, status) VALUES (6, 'completed')")
    assert await queue.enqueue(max_retries=3) == 3  # files 1, 5, 6
    assert await queue.enqueue() == 0
    rows = await raw.fetch("SELECT file_id, max_retries FROM publish_jobs WHERE id > 2 ORDER BY 1")
    assert rows == [(1, 3), (5, 3), (6, 3)]
    await raw.execute(
        "INSERT INTO auction_files (id, lot_id, source_key) VALUES (8, 1, 'b.jpg'), (9, 1, 'c.jpg')"
    )
    assert await queue.enqueue(file_id=2) == 0  # published
    assert await queue.enqueue(file_id=9) == 1
    assert await queue.enqueue(file_id=9) == 0
    assert await queue.enqueue() == 1  # file 8
    # A second job for a queued file, by plain SQL, is simply a second job (no unique key).
    await raw.execute("INSERT INTO publish_jobs (file_id) VALUES (1)")
    assert await raw.val("SELECT COUNT(*) FROM publish_jobs WHERE file_id = 1") == 2


# -- claim and leases -------------------------------------------------------------------------


async def test_concurrent_claimers_never_share_a_job(db: Any) -> None:
    make, raw = db
    queue, raw = await ready(db, files=200)
    assert await queue.enqueue() == 200
    workers = [queue, await make(), await make()]

    async def drain(q: JobQueue, name: str) -> list[int]:
        got: list[int] = []
        while batch := await q.claim(name, 7, 30.0):
            got.extend(j.id for j in batch)
            assert all(j.retry_count == 0 and j.max_retries == 5 for j in batch)
        return got

    results = await asyncio.gather(*(drain(q, f"w{i}") for i, q in enumerate(workers)))
    every = [i for r in results for i in r]
    assert len(every) == len(set(every)) == 200
    assert await raw.val("SELECT COUNT(*) FROM publish_attempts") == 200
    assert await raw.val("SELECT COUNT(*) FROM publish_jobs WHERE status = 'processing'") == 200
    assert await queue.claim("w9", 10, 30.0) == []


async def test_claim_returns_the_file_row(db: Any) -> None:
    queue, raw = await ready(db, files=2)
    await queue.enqueue()
    await raw.execute(
        "UPDATE auction_files SET publish_status = 'published', deleted_at = created_at WHERE id = 2"
    )
    jobs = await queue.claim("w1", 5, 30.0)
    assert [(j.file_id, j.lot_id, j.source_key) for j in jobs] == [
        (1, 101, "uploads/1.jpg"),
        (2, 102, "uploads/2.jpg"),
    ]
    assert [(j.publish_status, j.deleted) for j in jobs] == [
        ("pending", False),
        ("published", True),
    ]
    assert len({j.attempt_id for j in jobs}) == 2
    row = await job_row(raw, jobs[0].id)
    assert (row["status"], row["locked_by"]) == ("processing", "w1")


async def test_a_duplicate_job_waits_for_its_files_earlier_job(db: Any) -> None:
    """Jobs inserted by plain SQL for a file already queued: one job of a file at a time, so
    the duplicate is claimed only after the first one ended (and then sees it published)."""
    queue, raw = await ready(db, files=2)
    assert await queue.enqueue() == 2
    await raw.execute("INSERT INTO publish_jobs (file_id) VALUES (1)")
    await raw.execute("INSERT INTO publish_jobs (file_id) VALUES (1)")
    first = await queue.claim("w1", 10, 30.0)
    assert [j.file_id for j in first] == [1, 2]  # not the duplicates of file 1
    assert await queue.claim("w2", 10, 30.0) == []
    await queue.complete("w1", first[0], Published("https://c/t", "https://c/d"))
    (dup,) = await queue.claim("w2", 10, 30.0)  # the next one only
    assert (dup.file_id, dup.publish_status) == (1, "published")
    assert await queue.claim("w3", 10, 30.0) == []


async def test_a_reopened_job_and_a_newer_one_of_its_file_never_run_together(db: Any) -> None:
    """A job failed for good, a new job enqueued for the still unpublished file, then the old
    one re-opened by raising max_retries: one claim takes only one of them."""
    queue, raw = await ready(db, files=1)
    assert await queue.enqueue(max_retries=1) == 1
    job = await claim_one(queue, "w1")
    await queue.fail("w1", job, "http_503: down", permanent=False, policy=NOW_POLICY)
    assert await queue.enqueue(max_retries=5) == 1
    await raw.execute("UPDATE publish_jobs SET max_retries = 5 WHERE id = 1")
    got = await queue.claim("w1", 4, 30.0, policy=NOW_POLICY)
    assert [j.id for j in got] == [1]


async def test_renew_extends_only_held_leases(db: Any) -> None:
    make, _ = db
    queue, _raw = await ready(db, files=2)
    await queue.enqueue()
    jobs = await queue.claim("w1", 2, 0.3)
    other = await make()
    assert await other.renew("w2", [j.id for j in jobs], 30.0) == set()
    assert await queue.renew("w1", [j.id for j in jobs], 30.0) == {j.id for j in jobs}
    await asyncio.sleep(0.4)
    assert await other.claim("w2", 5, 30.0) == []  # still leased to w1
    assert await queue.renew("w1", [], 30.0) == set()


async def test_expired_lease_is_reclaimed_as_a_failed_attempt(db: Any) -> None:
    make, _ = db
    queue, raw = await ready(db, files=1)
    await queue.enqueue()
    stale = await claim_one(queue, "w1", lease=0.05)
    await asyncio.sleep(0.15)
    other = await make()
    fresh = await claim_one(other, "w2")  # reclaims, then (backoff 0) claims it again
    assert await other.claim("w3", 1, 30.0, policy=NOW_POLICY) == []
    assert fresh.id == stale.id and fresh.retry_count == 1
    row = await job_row(raw, stale.id)
    assert row["retry_count"] == 1 and row["locked_by"] == "w2"
    assert "lease expired" in row["last_error"] and "w1" in row["last_error"]
    assert await attempts(raw, stale.id) == [("w1", "lease_expired"), ("w2", None)]
    # w1 comes back late: its completion is refused and writes nothing but that.
    assert not await queue.complete("w1", stale, Published("t1", "d1"))
    assert not await queue.fail("w1", stale, "boom", permanent=False, policy=NOW_POLICY)
    assert await raw.val("SELECT thumb_url FROM auction_files WHERE id = 1") is None
    row = await job_row(raw, stale.id)
    assert (row["status"], row["locked_by"], row["retry_count"]) == ("processing", "w2", 1)
    assert await attempts(raw, stale.id) == [("w1", "refused"), ("w2", None)]
    assert await other.complete("w2", fresh, Published("t2", "d2"))
    assert await raw.val("SELECT thumb_url FROM auction_files WHERE id = 1") == "t2"


async def test_expired_lease_of_a_last_attempt_fails_the_job(db: Any) -> None:
    queue, raw = await ready(db, files=1)
    await queue.enqueue(max_retries=1)
    job = await claim_one(queue, "w1", lease=0.05)
    await asyncio.sleep(0.15)
    assert await queue.claim("w2", 1, 30.0, policy=NOW_POLICY) == []
    row = await job_row(raw, job.id)
    assert (row["status"], row["retry_count"], row["locked_by"]) == ("failed", 1, None)
    assert [a.id for a in await queue.attention()] == [job.id]


# -- outcomes ---------------------------------------------------------------------------------


async def test_complete_records_the_publication_in_one_go(db: Any) -> None:
    queue, raw = await ready(db, files=2)
    await queue.enqueue()
    first, second = await queue.claim("w1", 2, 30.0)
    assert await queue.complete("w1", first, Published("https://cdn/t.webp", "https://cdn/d.webp"))
    row = await raw.fetch(
        "SELECT thumb_url, display_url, publish_status, published_at IS NOT NULL"
        " FROM auction_files WHERE id = ?",
        first.file_id,
    )
    assert row == [("https://cdn/t.webp", "https://cdn/d.webp", "published", True)]
    job = await raw.fetch(
        "SELECT status, locked_by, locked_until, completed_at IS NOT NULL FROM publish_jobs"
        " WHERE id = ?",
        first.id,
    )
    assert job == [("completed", None, None, True)]
    assert await attempts(raw, first.id) == [("w1", "published")]
    # Skipped: completed, the file untouched.
    assert await queue.complete("w1", second, None)
    assert await raw.fetch(
        "SELECT thumb_url, publish_status FROM auction_files WHERE id = ?", second.file_id
    ) == [(None, "pending")]
    assert (await job_row(raw, second.id))["status"] == "completed"
    assert await attempts(raw, second.id) == [("w1", "skipped")]
    # A second completion of a finished job is refused.
    assert not await queue.complete("w1", second, None)


async def test_fail_backs_off_exponentially(db: Any) -> None:
    queue, raw = await ready(db, files=1)
    await queue.enqueue()
    policy = RetryPolicy(base=10.0, cap=3600.0, jitter=0.2)
    for n in (1, 2, 3):
        job = await claim_one(queue, "w1")
        assert job.retry_count == n - 1
        assert await queue.fail("w1", job, f"timeout {n}", permanent=False, policy=policy)
        row = await job_row(raw, job.id)
        assert (row["status"], row["retry_count"], row["last_error"]) == (
            "pending",
            n,
            f"timeout {n}",
        )
        wait = await raw.val(f"SELECT {raw.secs_until('next_attempt_at')} FROM publish_jobs")
        expected = 10.0 * 2 ** (n - 1)
        assert expected * 0.8 - 1 <= wait <= expected * 1.2 + 0.1
        assert await queue.claim("w1", 1, 30.0) == []  # not before its time
        figures = await queue.figures()
        assert (figures.pending, figures.waiting_backoff) == (1, 1)
        await raw.execute("UPDATE publish_jobs SET next_attempt_at = NULL")
    assert [a for _, a in await attempts(raw, job.id)] == ["failed", "failed", "failed"]
    # The cap.
    job = await claim_one(queue, "w1")
    await queue.fail("w1", job, "x", permanent=False, policy=RetryPolicy(base=10, cap=15, jitter=0))
    wait = await raw.val(f"SELECT {raw.secs_until('next_attempt_at')} FROM publish_jobs")
    assert 14 <= wait <= 15.1


async def test_retries_run_out_then_raising_max_retries_reopens(db: Any) -> None:
    queue, raw = await ready(db, files=2)
    await queue.enqueue(max_retries=2)
    for _ in range(2):
        job = await claim_one(queue, "w1")
        assert job.file_id == 1
        assert await queue.fail("w1", job, "HTTP 503", permanent=False, policy=NOW_POLICY)
    row = await job_row(raw, job.id)
    assert (row["status"], row["retry_count"]) == ("failed", 2)
    attention = await queue.attention()
    assert [(a.id, a.file_id, a.retry_count, a.last_error) for a in attention] == [
        (job.id, 1, 2, "HTTP 503")
    ]
    figures = await queue.figures()
    assert (figures.failed, figures.needing_attention, figures.pending) == (1, 1, 1)
    other = await claim_one(queue, "w1")
    assert other.file_id == 2  # the failed job is not claimable
    assert await queue.claim("w1", 1, 30.0) == []
    # An operator raises max_retries by plain SQL: the job is claimable again.
    await raw.execute("UPDATE publish_jobs SET max_retries = 10 WHERE id = ?", job.id)
    again = await claim_one(queue, "w1")
    assert (again.id, again.retry_count, again.max_retries) == (job.id, 2, 10)
    assert await queue.attention() == []


async def test_permanent_failure_needs_attention_at_once(db: Any) -> None:
    queue, raw = await ready(db, files=1)
    await queue.enqueue(max_retries=5)
    job = await claim_one(queue, "w1")
    assert await queue.fail("w1", job, "corrupt image", permanent=True, policy=NOW_POLICY)
    row = await job_row(raw, job.id)
    assert (row["status"], row["retry_count"], row["last_error"]) == ("failed", 5, "corrupt image")
    assert await attempts(raw, job.id) == [("w1", "permanent")]
    assert [a.id for a in await queue.attention()] == [job.id]
    assert await queue.claim("w1", 1, 30.0) == []
    assert (await queue.figures()).needing_attention == 1


async def test_release_counts_no_attempt(db: Any) -> None:
    queue, raw = await ready(db, files=2)
    await queue.enqueue()
    jobs = await queue.claim("w1", 2, 30.0)
    await queue.release("w1", jobs)
    for job in jobs:
        row = await job_row(raw, job.id)
        assert (row["status"], row["retry_count"], row["locked_by"]) == ("pending", 0, None)
        assert await attempts(raw, job.id) == [("w1", "released")]
    assert await raw.val("SELECT COUNT(*) FROM publish_jobs WHERE started_at IS NOT NULL") == 0
    again = await queue.claim("w2", 5, 30.0)
    assert sorted(j.id for j in again) == sorted(j.id for j in jobs)
    assert all(j.retry_count == 0 for j in again)
    await queue.release("w1", again)  # not w1's any more: nothing happens
    assert (await job_row(raw, again[0].id))["locked_by"] == "w2"


async def test_figures(db: Any) -> None:
    queue, raw = await ready(db, files=6)
    await raw.execute("UPDATE auction_files SET publish_status = 'published' WHERE id = 6")
    assert await queue.enqueue() == 5
    a, b, c, d = await queue.claim("w1", 4, 30.0)
    await asyncio.sleep(0.05)
    await queue.complete("w1", a, Published("t", "d"))
    await queue.complete("w1", b, None)
    await queue.fail("w1", c, "x", permanent=True, policy=NOW_POLICY)
    figures = await queue.figures()
    assert (figures.pending, figures.waiting_backoff, figures.processing) == (1, 0, 1)
    assert (figures.completed, figures.failed, figures.needing_attention) == (2, 1, 1)
    assert figures.avg_processing_seconds is not None
    assert 0.04 <= figures.avg_processing_seconds < 10
    assert figures.publish_status == {"pending": 4, "published": 2}
    await queue.fail("w1", d, "y", permanent=False, policy=RetryPolicy(base=60))
    figures = await queue.figures()
    assert (figures.pending, figures.waiting_backoff, figures.processing) == (2, 1, 0)


# -- instances and commands -------------------------------------------------------------------


async def test_workers_heartbeats_and_lost_sessions(db: Any) -> None:
    queue, _ = await ready(db)
    await queue.register_worker("host:1", "publish")
    await asyncio.sleep(0.01)
    await queue.register_worker("host:2", "publish")
    await queue.register_worker("host:3", "other")
    await queue.heartbeat("host:1", "held", '{"published": 3}')
    await queue.stop_worker("host:2", '{"published": 1}')
    rows = await queue.workers("publish", live_within=60)
    assert [(w.id, w.state, w.stats) for w in rows] == [
        ("host:2", "stopped", '{"published": 1}'),
        ("host:1", "held", '{"published": 3}'),
    ]
    assert rows[0].stopped_at is not None and rows[1].stopped_at is None
    assert rows[1].heartbeat_at >= rows[1].started_at
    await asyncio.sleep(0.3)
    rows = await queue.workers("publish", live_within=0.2)
    assert [(w.id, w.state) for w in rows] == [("host:2", "stopped"), ("host:1", "lost")]
    await queue.heartbeat("host:1", "running", "{}")
    rows = await queue.workers("publish", live_within=0.2)
    assert [(w.id, w.state) for w in rows] == [("host:2", "stopped"), ("host:1", "running")]


async def test_commands_reach_the_job_or_one_worker(db: Any) -> None:
    queue, _ = await ready(db)
    assert await queue.take_commands("host:1", "publish", 0) == (0, [])
    await queue.post_command("publish", "pause")
    await queue.post_command("publish", "resume", worker="host:2")
    await queue.post_command("other", "pause")
    last1, got1 = await queue.take_commands("host:1", "publish", 0)
    last2, got2 = await queue.take_commands("host:2", "publish", 0)
    assert got1 == ["pause"] and got2 == ["pause", "resume"]
    assert await queue.take_commands("host:1", "publish", last1) == (last1, [])
    assert await queue.take_commands("host:2", "publish", last2) == (last2, [])
    await queue.post_command("publish", "resume")
    last, got = await queue.take_commands("host:1", "publish", last1)
    assert got == ["resume"] and last > last2


# -- URLs -------------------------------------------------------------------------------------


def test_urls_and_redaction() -> None:
    assert sqlite_path("sqlite:///state/queue.sqlite3") == "state/queue.sqlite3"
    assert sqlite_path("sqlite:////tmp/q.sqlite3") == "/tmp/q.sqlite3"
    for bad in ("sqlite://", "sqlite:///", "sqlite:///:memory:"):
        with pytest.raises(ConfigError, match="DATABASE_URL"):
            sqlite_path(bad)
    assert (
        redact_url("postgresql://pub:s3cr%40t@db.example:5433/x?sslmode=require")
        == "postgresql://pub:***@db.example:5433/x?sslmode=require"
    )
    assert "hunter2" not in redact_url("postgresql://db/x?user=a&password=hunter2")
    assert redact_url("sqlite:///a.sqlite3") == "sqlite:///a.sqlite3"


@pytest.mark.parametrize(
    "url", ["", "mysql://u:hunter2@h/db", "queue.sqlite3", "http://u:hunter2@x/"]
)
async def test_unsupported_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        await open_queue(url)
    message = str(err.value)
    assert message.startswith("DATABASE_URL: ") and "sqlite:///" in message
    assert "hunter2" not in message and "\n" not in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://pub:hunter2@127.0.0.1:99999/db",  # port beyond 65535
        "postgresql://pub:hun/ter2@127.0.0.1/db",  # an unencoded / in the password
        "postgresql://pub:hun?ter2@127.0.0.1/db",
    ],
)
async def test_malformed_postgres_urls_are_one_line_without_the_password(url: str) -> None:
    with pytest.raises(ConfigError) as err:
        await open_queue(url)
    message = str(err.value)
    assert message.startswith("DATABASE_URL: ") and "\n" not in message
    for piece in ("hunter2", "hun", "ter2"):
        assert piece not in message, message


async def test_a_table_with_an_odd_name_beside_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute('CREATE TABLE "my-notes" (x)')
    queue = await open_queue(f"sqlite:///{path}")
    try:
        await queue.init_db()
        await queue.check_schema()
    finally:
        await queue.close()


async def test_relative_sqlite_url_is_under_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    queue = await open_queue("sqlite:///sub/q.sqlite3")
    try:
        await queue.init_db()
    finally:
        await queue.close()
    assert (tmp_path / "sub" / "q.sqlite3").is_file()


# -- PostgreSQL only --------------------------------------------------------------------------


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[tuple[JobQueue, Any, str]]:
    import asyncpg

    queue = await open_queue(pg_url)
    await queue.init_db()
    conn = await asyncpg.connect(pg_url)
    try:
        yield queue, conn, pg_url
    finally:
        await conn.close()
        await queue.close()


async def test_pg_insert_wakes_a_waiting_worker(pg: tuple[JobQueue, Any, str]) -> None:
    queue, conn, _ = pg
    await conn.execute("INSERT INTO auction_files (id, lot_id, source_key) VALUES (1, 1, 'a')")
    await queue.wait_for_work(0.01)  # starts listening
    started = time.monotonic()
    waiting = asyncio.create_task(queue.wait_for_work(60))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await conn.execute("INSERT INTO publish_jobs (file_id) VALUES (1)")
    await asyncio.wait_for(waiting, 1.0)
    assert time.monotonic() - started < 1.5
    # A job put back to pending wakes too; one waiting for a backoff does not.
    (job,) = await queue.claim("w1", 1, 30.0)
    await queue.wait_for_work(0.01)  # drains
    waiting = asyncio.create_task(queue.wait_for_work(60))
    await queue.release("w1", [job])
    await asyncio.wait_for(waiting, 1.0)
    (job,) = await queue.claim("w1", 1, 30.0)
    await queue.wait_for_work(0.01)
    started = time.monotonic()
    await queue.fail("w1", job, "x", permanent=False, policy=RetryPolicy(base=60))
    await queue.wait_for_work(0.3)
    assert time.monotonic() - started >= 0.25


async def test_pg_monitoring_sql_runs_unchanged(pg: tuple[JobQueue, Any, str]) -> None:
    queue, conn, _ = pg
    for i in range(1, 6):
        await conn.execute(
            "INSERT INTO auction_files (id, lot_id, source_key, publish_status)"
            " VALUES ($1, 1, $2, 'pending')",
            i,
            f"k{i}",
        )
    await queue.enqueue(max_retries=3)
    a, b, c = await queue.claim("w1", 3, 30.0)
    await queue.complete("w1", a, Published("t", "d"))
    await queue.complete("w1", b, Published("t", "d"))
    await queue.fail("w1", c, "corrupt JPEG", permanent=True, policy=NOW_POLICY)
    text = (Path(__file__).parent.parent / "tui_backfill/seams/queue/monitoring.sql").read_text()
    statements = [s for s in split_sql(text) if s]
    assert len(statements) == 4
    pending, attention, average, summary = [await conn.fetch(s) for s in statements]
    assert pending[0][0] == 2
    assert [tuple(r) for r in attention] == [(c.id, c.file_id, 3, "corrupt JPEG")]
    assert average[0][0] is not None and float(average[0][0]) >= 0
    assert {r[0]: r[1] for r in summary} == {"pending": 3, "published": 2}


def split_sql(text: str) -> list[str]:
    """Statements of a psql script: comments dropped, split on `;`."""
    lines = [line.split("--", 1)[0] for line in text.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";")]


async def test_pg_unreachable_server_names_host_not_password(unused_port: int) -> None:
    url = f"postgresql://publisher:hunter2secret@127.0.0.1:{unused_port}/publish"
    with pytest.raises(ConfigError) as err:
        await open_queue(url)
    message = str(err.value)
    assert message.startswith("DATABASE_URL: ") and f"127.0.0.1:{unused_port}" in message
    assert "hunter2secret" not in message and "\n" not in message


async def test_pg_wrong_password_is_a_config_error(pg_url: str) -> None:
    bad = pg_url.replace(":" + pg_url.split(":")[2].split("@")[0] + "@", ":wrong-pass-42@")
    with pytest.raises(ConfigError) as err:
        await open_queue(bad)
    assert "wrong-pass-42" not in str(err.value) and "DATABASE_URL" in str(err.value)
    real = pg_url.split(":")[2].split("@")[0]
    assert real not in str(err.value)


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
