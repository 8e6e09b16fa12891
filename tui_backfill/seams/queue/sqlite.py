"""The publish queue on one SQLite file: several worker processes on one machine.

WAL mode and a busy timeout; every write is one `BEGIN IMMEDIATE` transaction (the claim
reclaims expired leases and leases due jobs in the same one), so two processes never lease one
job. Times are SQLite's own clock, stored as ISO-8601 UTC text `YYYY-MM-DDTHH:MM:SS.fffZ`
(fixed width: text order is time order); arithmetic goes through `julianday()`. There is no
NOTIFY: `wait_for_work` sleeps (the polling fallback).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from tui_backfill.outcomes import ConfigError
from tui_backfill.seams.queue.base import (
    DEFAULT_RETRY_POLICY,
    AttemptOutcome,
    AttentionJob,
    ClaimedJob,
    Published,
    QueueFigures,
    RetryPolicy,
    WorkerRow,
)
from tui_backfill.seams.queue.schema import (
    ATTENTION_INDEX,
    INDEX_NAMES,
    INDEXES,
    NEEDS_ATTENTION,
    OPEN_INDEX,
    SQLITE_TABLES,
    WORKER_COLUMNS_SQLITE,
    claimable,
    enqueue_sql,
    identity_key,
    missing_schema_error,
)

__all__ = ["SqliteQueue"]

BUSY_TIMEOUT_MS = 30_000
_FMT = "'%Y-%m-%dT%H:%M:%fZ'"
NOW = f"strftime({_FMT}, 'now')"


def later(seconds_sql: str) -> str:
    """SQL for the time `seconds_sql` seconds from now, in the stored representation."""
    return f"strftime({_FMT}, julianday('now') + ({seconds_sql}) / 86400.0)"


# The retry delay for a job whose retry_count (before this failure) is `retry_count`:
# min(cap, base × 2^retry_count) × uniform(1 − jitter, 1 + jitter).
BACKOFF = (
    "min(:cap, :base * (1 << min(retry_count, 40)))"
    " * (1 - :jitter + 2 * :jitter * ((abs(random()) % 1000000) / 1000000.0))"
)
CLAIMABLE = claimable(NOW)

# SQLite keeps no statistics until someone runs ANALYZE (the worker never does), and then only
# averages (status: a few values, so "half the table each"). Either way its planner can choose
# badly for the few rows of one status among many: without statistics the claim read every open
# job and sorted them (54 ms at 100,000 pending); with them, the expired-lease look-up walked
# the whole history in id order (11 ms at 200,000 finished). So each query names its index
# (`{by}`: `INDEXED BY ...` when the queue has it; `init_db` makes them) or is ordered as its
# index is: expired leases oldest first, the order of the (status, locked_until) index.
EXPIRED = (
    "SELECT id FROM publish_jobs WHERE status = 'processing'"
    f" AND locked_until < {NOW} ORDER BY locked_until, id LIMIT ?"
)
CANDIDATES = f"SELECT id FROM publish_jobs{{by}} WHERE {CLAIMABLE} ORDER BY id LIMIT :limit"
ATTENTION = (
    "SELECT id, file_id, retry_count, COALESCE(last_error, '') FROM publish_jobs{by}"
    f" WHERE {NEEDS_ATTENTION} ORDER BY id LIMIT ?"
)


def _quoted(name: str) -> str:
    """A table name as an SQL identifier (any name a SQLite file may hold)."""
    return '"' + name.replace('"', '""') + '"'


def _same_owner(fd: int, database: str) -> None:
    """A lock file made by root goes to the database file's owner, as SQLite does with its
    own -wal and -shm files: the service's user can open it after a worker run as root."""
    if os.geteuid() != 0:
        return
    with contextlib.suppress(OSError):
        owner = os.stat(database)
        os.fchown(fd, owner.st_uid, owner.st_gid)


class SqliteQueue:
    """One aiosqlite connection; coroutines of one process take turns on it."""

    def __init__(self, path: str, db: aiosqlite.Connection) -> None:
        self.path = path
        self._db = db
        self._lock = asyncio.Lock()
        self._identity: int | None = None  # the open `-workers` file that holds this id
        self._indexes: frozenset[str] | None = None  # the worker's indexes present, once read

    @classmethod
    async def open(cls, path: str) -> SqliteQueue:
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                "DATABASE_URL", f"cannot open the SQLite queue {path}: {exc}"
            ) from None
        try:
            await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as exc:
            await db.close()
            raise ConfigError(
                "DATABASE_URL", f"cannot open the SQLite queue {path}: {exc}"
            ) from None
        return cls(path, db)

    async def close(self) -> None:
        if self._identity is not None:
            os.close(self._identity)  # and with it the lock on the id
            self._identity = None
        await self._db.close()

    async def hold_identity(self, worker: str) -> bool:
        """A lock on one byte of `<queue>-workers` (an empty file beside the queue's own), at
        the id's offset: the kernel lets it go when the process ends, however it ends. POSIX
        locks belong to the process and go with the first descriptor of the file it closes:
        the file is opened once, and held open while the queue is (one queue a process).
        A file that cannot be opened or locked at all is a ConfigError naming it."""
        if self.path == ":memory:":
            return True
        where = f"{self.path}-workers"
        if self._identity is None:
            try:
                self._identity = os.open(where, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise ConfigError(
                    "DATABASE_URL", f"cannot open {where} (the worker ids' locks): {exc.strerror}"
                ) from None
            _same_owner(self._identity, self.path)
        try:
            fcntl.lockf(
                self._identity, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, identity_key(worker), os.SEEK_SET
            )
        except (BlockingIOError, PermissionError):  # EAGAIN / EACCES: a live process holds it
            return False
        except OSError as exc:  # no locks on this file system (ENOLCK), ...
            raise ConfigError(
                "DATABASE_URL", f"cannot lock {where} (the worker ids' locks): {exc.strerror}"
            ) from None
        return True

    async def keep_identity(self, worker: str) -> bool:
        return True  # the lock lives as long as the process and its open file

    # -- plumbing -----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._lock:
            # Shielded: cancelled while waiting for the write lock, the BEGIN still runs in
            # aiosqlite's thread; roll it back then, or the connection stays in a transaction.
            begin = asyncio.ensure_future(self._db.execute("BEGIN IMMEDIATE"))
            try:
                await asyncio.shield(begin)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await begin
                    await self._rollback()
                raise
            try:
                yield self._db
                await asyncio.shield(self._db.execute("COMMIT"))
            except BaseException:
                await asyncio.shield(self._rollback())
                raise

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            await self._db.execute("ROLLBACK")

    async def _all(
        self, sql: str, params: Sequence[Any] | dict[str, Any] = ()
    ) -> list[sqlite3.Row]:
        async with self._lock, self._db.execute(sql, params) as cur:
            return list(await cur.fetchall())

    @staticmethod
    async def _rows(
        db: aiosqlite.Connection, sql: str, params: Sequence[Any] | dict[str, Any] = ()
    ) -> list[sqlite3.Row]:
        async with db.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def _columns(self) -> dict[str, set[str]]:
        tables = await self._all("SELECT name FROM sqlite_master WHERE type = 'table'")
        present: dict[str, set[str]] = {}
        for (name,) in tables:
            cols = await self._all(f"PRAGMA table_info({_quoted(name)})")
            present[str(name)] = {str(c[1]) for c in cols}
        return present

    # -- schema -------------------------------------------------------------------------------

    async def check_schema(self) -> None:
        error = missing_schema_error(await self._columns())
        if error is not None:
            raise error

    async def index_hint(self, name: str) -> str:
        """` INDEXED BY name` when the queue has that index, else nothing (a queue made before
        it, read by `status` before any worker's `init_db` added it). It may read the schema:
        never call it inside `_tx` (the queue's lock is not re-entrant)."""
        if self._indexes is None:
            await self.missing_indexes()
        assert self._indexes is not None
        return f" INDEXED BY {name}" if name in self._indexes else ""

    async def missing_indexes(self) -> list[str]:
        rows = await self._all("SELECT name FROM sqlite_master WHERE type = 'index'")
        self._indexes = frozenset(INDEX_NAMES) & {str(r[0]) for r in rows}  # index_hint's
        return [name for name in INDEX_NAMES if name not in self._indexes]

    async def unrelated_tables(self) -> list[str]:
        """The tables of a database that has some and none of the queue's (`auction_files`,
        `publish_jobs`): most likely a DATABASE_URL naming the wrong file, which a worker's
        first start must not fill with queue tables. Empty otherwise."""
        names = sorted(str(name) for (name,) in await self._all(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ))  # fmt: skip
        if not names or {"auction_files", "publish_jobs"} & set(names):
            return []
        return names

    async def init_db(self) -> None:
        async with self._tx() as db:
            for ddl in SQLITE_TABLES.values():
                await db.execute(ddl)
            for table, columns in WORKER_COLUMNS_SQLITE.items():
                pragma = f"PRAGMA table_info({_quoted(table)})"
                have = {str(c[1]) for c in await self._rows(db, pragma)}
                for column, decl in columns.items():
                    if column not in have:
                        await db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            for ddl in INDEXES:
                await db.execute(ddl)
        self._indexes = None  # read again: they are all there now

    # -- jobs ---------------------------------------------------------------------------------

    async def enqueue(self, *, file_id: int | None = None, max_retries: int = 5) -> int:
        params: list[Any] = [max_retries] if file_id is None else [max_retries, file_id]
        sql = enqueue_sql("?", None if file_id is None else "?")
        async with self._tx() as db:
            cur = await db.execute(sql, params)
            return int(cur.rowcount)

    async def claim(
        self,
        worker: str,
        limit: int,
        lease_seconds: float,
        *,
        policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    ) -> list[ClaimedJob]:
        if limit <= 0:
            return []
        backoff = {"base": policy.base, "cap": policy.cap, "jitter": policy.jitter}
        candidates = CANDIDATES.format(by=await self.index_hint(OPEN_INDEX))  # before the lock
        async with self._tx() as db:
            expired = [int(r[0]) for r in await self._rows(db, EXPIRED, (limit,))]
            if expired:
                await self._reclaim(db, expired, backoff)
            rows = await self._rows(
                db,
                f"UPDATE publish_jobs SET status = 'processing', locked_by = :worker,"
                f" locked_until = {later(':lease')}, started_at = {NOW}, completed_at = NULL"
                f" WHERE id IN ({candidates}) RETURNING id",
                {"worker": worker, "lease": lease_seconds, "limit": limit},
            )
            ids = sorted(int(r[0]) for r in rows)
            claimed: list[ClaimedJob] = []
            for job_id in ids:
                cur = await db.execute(
                    f"INSERT INTO publish_attempts (job_id, worker, started_at) VALUES (?, ?, {NOW})",
                    (job_id, worker),
                )
                attempt_id = int(cur.lastrowid or 0)
                (row,) = await self._rows(
                    db,
                    "SELECT j.id, j.file_id, f.lot_id, f.source_key, j.retry_count,"
                    " j.max_retries, f.publish_status, f.deleted_at IS NOT NULL,"
                    " EXISTS (SELECT 1 FROM publish_attempts a WHERE a.job_id = j.id"
                    " AND a.outcome = 'interrupted')"
                    " FROM publish_jobs j JOIN auction_files f ON f.id = j.file_id"
                    " WHERE j.id = ?",
                    (job_id,),
                )
                claimed.append(
                    ClaimedJob(
                        id=int(row[0]),
                        file_id=int(row[1]),
                        lot_id=None if row[2] is None else int(row[2]),
                        source_key=str(row[3]),
                        retry_count=int(row[4]),
                        max_retries=int(row[5]),
                        attempt_id=attempt_id,
                        publish_status=None if row[6] is None else str(row[6]),
                        deleted=bool(row[7]),
                        interrupted=bool(row[8]),
                    )
                )
            return claimed

    async def _reclaim(
        self, db: aiosqlite.Connection, ids: Iterable[int], backoff: dict[str, float]
    ) -> None:
        """Expired leases count as a failed attempt of their holder."""
        marks = ",".join(str(int(i)) for i in ids)
        await db.execute(
            f"UPDATE publish_attempts SET outcome = 'lease_expired', ended_at = {NOW},"
            " error = 'lease expired (held by ' || worker || ')'"
            f" WHERE ended_at IS NULL AND job_id IN ({marks})"
        )
        await db.execute(
            "UPDATE publish_jobs SET retry_count = retry_count + 1,"
            " last_error = 'lease expired (held by ' || COALESCE(locked_by, '?') || ')',"
            " status = CASE WHEN retry_count + 1 < max_retries THEN 'pending' ELSE 'failed' END,"
            " next_attempt_at = CASE WHEN retry_count + 1 < max_retries"
            f"   THEN {later(BACKOFF)} ELSE NULL END,"
            f" completed_at = CASE WHEN retry_count + 1 < max_retries THEN NULL ELSE {NOW} END,"
            " locked_by = NULL, locked_until = NULL"
            f" WHERE id IN ({marks}) AND status = 'processing'",
            backoff,
        )

    async def renew(self, worker: str, job_ids: Sequence[int], lease_seconds: float) -> set[int]:
        if not job_ids:
            return set()
        marks = ",".join(str(int(i)) for i in job_ids)
        async with self._tx() as db:
            rows = await self._rows(
                db,
                f"UPDATE publish_jobs SET locked_until = {later('?')}"
                f" WHERE id IN ({marks}) AND locked_by = ? AND status = 'processing'"
                " RETURNING id",
                (lease_seconds, worker),
            )
        return {int(r[0]) for r in rows}

    async def _refuse(self, db: aiosqlite.Connection, job: ClaimedJob, why: str) -> None:
        await db.execute(
            f"UPDATE publish_attempts SET outcome = 'refused', ended_at = COALESCE(ended_at, {NOW}),"
            " error = COALESCE(error, ?) WHERE id = ?",
            (why, job.attempt_id),
        )

    async def complete(self, worker: str, job: ClaimedJob, published: Published | None) -> bool:
        async with self._tx() as db:
            rows = await self._rows(
                db,
                f"UPDATE publish_jobs SET status = 'completed', completed_at = {NOW},"
                " locked_by = NULL, locked_until = NULL, next_attempt_at = NULL"
                " WHERE id = ? AND locked_by = ? AND status = 'processing' RETURNING file_id",
                (job.id, worker),
            )
            if not rows:
                await self._refuse(db, job, "lease lost before completion")
                return False
            if published is not None:
                await db.execute(
                    "UPDATE auction_files SET thumb_url = ?, display_url = ?,"
                    f" publish_status = 'published', published_at = {NOW} WHERE id = ?",
                    (published.thumb_url, published.display_url, int(rows[0][0])),
                )
            outcome = AttemptOutcome.SKIPPED if published is None else AttemptOutcome.PUBLISHED
            await db.execute(
                f"UPDATE publish_attempts SET outcome = ?, ended_at = {NOW} WHERE id = ?",
                (str(outcome), job.attempt_id),
            )
        return True

    async def fail(
        self, worker: str, job: ClaimedJob, error: str, *, permanent: bool, policy: RetryPolicy
    ) -> bool:
        params: dict[str, Any] = {
            "id": job.id,
            "worker": worker,
            "error": error,
            "base": policy.base,
            "cap": policy.cap,
            "jitter": policy.jitter,
        }
        if permanent:
            sql = (
                "UPDATE publish_jobs SET status = 'failed', retry_count = max_retries,"
                " last_error = :error, next_attempt_at = NULL,"
                f" locked_by = NULL, locked_until = NULL, completed_at = {NOW}"
            )
        else:
            sql = (
                "UPDATE publish_jobs SET retry_count = retry_count + 1, last_error = :error,"
                " status = CASE WHEN retry_count + 1 < max_retries THEN 'pending' ELSE 'failed' END,"
                " next_attempt_at = CASE WHEN retry_count + 1 < max_retries"
                f"   THEN {later(BACKOFF)} ELSE NULL END,"
                " completed_at = CASE WHEN retry_count + 1 < max_retries"
                f"   THEN NULL ELSE {NOW} END,"
                " locked_by = NULL, locked_until = NULL"
            )
        sql += " WHERE id = :id AND locked_by = :worker AND status = 'processing' RETURNING id"
        async with self._tx() as db:
            if not await self._rows(db, sql, params):
                await self._refuse(db, job, f"lease lost before failing: {error}")
                return False
            outcome = AttemptOutcome.PERMANENT if permanent else AttemptOutcome.FAILED
            await db.execute(
                f"UPDATE publish_attempts SET outcome = ?, ended_at = {NOW}, error = ? WHERE id = ?",
                (str(outcome), error, job.attempt_id),
            )
        return True

    async def release(
        self, worker: str, jobs: Sequence[ClaimedJob], *, started: bool = False
    ) -> None:
        if not jobs:
            return
        outcome = "interrupted" if started else "released"
        async with self._tx() as db:
            for job in jobs:
                rows = await self._rows(
                    db,
                    "UPDATE publish_jobs SET status = 'pending', locked_by = NULL,"
                    " locked_until = NULL, started_at = NULL"
                    " WHERE id = ? AND locked_by = ? AND status = 'processing' RETURNING id",
                    (job.id, worker),
                )
                if rows:
                    await db.execute(
                        f"UPDATE publish_attempts SET outcome = ?, ended_at = {NOW} WHERE id = ?",
                        (outcome, job.attempt_id),
                    )

    async def wait_for_work(self, timeout: float) -> None:
        await asyncio.sleep(max(0.0, timeout))

    # -- figures ------------------------------------------------------------------------------

    async def figures(self) -> QueueFigures:
        (row,) = await self._all(
            "SELECT"
            " COALESCE(SUM(status = 'pending'), 0),"
            f" COALESCE(SUM(status = 'pending' AND next_attempt_at > {NOW}), 0),"
            " COALESCE(SUM(status = 'processing'), 0),"
            " COALESCE(SUM(status = 'completed'), 0),"
            " COALESCE(SUM(status = 'failed'), 0),"
            " COALESCE(SUM(status = 'failed' AND retry_count >= max_retries), 0),"
            " AVG(CASE WHEN status = 'completed' AND started_at IS NOT NULL"
            "   AND completed_at IS NOT NULL"
            "   THEN (julianday(completed_at) - julianday(started_at)) * 86400.0 END)"
            " FROM publish_jobs"
        )
        summary = await self._all(
            "SELECT COALESCE(publish_status, 'null'), COUNT(*) FROM auction_files"
            " GROUP BY 1 ORDER BY 1"
        )
        return QueueFigures(
            pending=int(row[0]),
            waiting_backoff=int(row[1]),
            processing=int(row[2]),
            completed=int(row[3]),
            failed=int(row[4]),
            needing_attention=int(row[5]),
            avg_processing_seconds=None if row[6] is None else float(row[6]),
            publish_status={str(s): int(n) for s, n in summary},
        )

    async def attention(self, limit: int = 20) -> list[AttentionJob]:
        by = await self.index_hint(ATTENTION_INDEX)
        rows = await self._all(ATTENTION.format(by=by), (limit,))
        return [AttentionJob(int(a), int(b), int(c), str(d)) for a, b, c, d in rows]

    # -- instances and commands ---------------------------------------------------------------

    async def register_worker(self, worker: str, job: str) -> None:
        async with self._tx() as db:
            await db.execute(
                "INSERT INTO publish_workers (id, job, started_at, heartbeat_at, state, stats)"
                f" VALUES (?, ?, {NOW}, {NOW}, 'running', '{{}}')"
                " ON CONFLICT (id) DO UPDATE SET job = excluded.job,"
                " started_at = excluded.started_at, heartbeat_at = excluded.heartbeat_at,"
                " stopped_at = NULL, state = 'running', stats = '{}'",
                (worker, job),
            )

    async def heartbeat(self, worker: str, state: str, stats: str) -> None:
        async with self._tx() as db:
            await db.execute(
                f"UPDATE publish_workers SET heartbeat_at = {NOW}, state = ?, stats = ?"
                " WHERE id = ?",
                (state, stats, worker),
            )

    async def stop_worker(self, worker: str, stats: str) -> None:
        async with self._tx() as db:
            await db.execute(
                f"UPDATE publish_workers SET heartbeat_at = {NOW}, stopped_at = {NOW},"
                " state = 'stopped', stats = ? WHERE id = ?",
                (stats, worker),
            )

    async def workers(self, job: str, *, live_within: float) -> list[WorkerRow]:
        rows = await self._all(
            "SELECT id, job, started_at, heartbeat_at, stopped_at,"
            f" CASE WHEN stopped_at IS NULL AND heartbeat_at < {later('-?')}"
            "   THEN 'lost' ELSE state END, stats"
            " FROM publish_workers WHERE job = ? ORDER BY started_at DESC, id DESC",
            (live_within, job),
        )
        return [
            WorkerRow(
                id=str(r[0]),
                job=str(r[1]),
                started_at=str(r[2]),
                heartbeat_at=str(r[3]),
                stopped_at=None if r[4] is None else str(r[4]),
                state=str(r[5]),
                stats=str(r[6]),
            )
            for r in rows
        ]

    async def post_command(self, job: str, command: str, worker: str | None = None) -> None:
        async with self._tx() as db:
            await db.execute(
                f"INSERT INTO publish_commands (job, worker, command, created_at)"
                f" VALUES (?, ?, ?, {NOW})",
                (job, worker, command),
            )

    async def take_commands(self, worker: str, job: str, after: int) -> tuple[int, list[str]]:
        rows = await self._all(
            "SELECT id, command FROM publish_commands WHERE job = ? AND id > ?"
            " AND (worker IS NULL OR worker = ?) ORDER BY id",
            (job, after, worker),
        )
        if not rows:
            return after, []
        return int(rows[-1][0]), [str(r[1]) for r in rows]
