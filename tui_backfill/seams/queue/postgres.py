"""The publish queue on PostgreSQL (asyncpg): many workers on many machines.

A small pool (1 to 4 connections). A claim is one short transaction: expired leases among the
candidates are reclaimed (a failed attempt of their holder), then due jobs are leased with
`UPDATE ... WHERE id IN (SELECT ... FOR UPDATE SKIP LOCKED LIMIT n) RETURNING`, each with a
`publish_attempts` row. Completion and failure check `locked_by` and `status` in the UPDATE's
WHERE, so a worker whose lease was taken cannot finish the job. `wait_for_work` LISTENs on
channel `publish_jobs` on a dedicated connection (the trigger `init_db` installs NOTIFYs on
insert and whenever a job becomes pending and due). Times are the server's `now()`.

Round trips: a job's completion (or failure) is one statement, its writes in data-modifying
CTEs: one implicit transaction, no BEGIN/COMMIT of their own (a hand-back at shutdown is still
two statements in one transaction). A claim is one
statement too when no lease has expired (the statement checks, and leases nothing when one
has); else the reclaim and the claim run as two statements in one transaction, as before. The
pool does not reset a connection it gets back (asyncpg's default sends `RESET ALL`, `UNLISTEN
*`, `CLOSE ALL` and `pg_advisory_unlock_all()` at every release): nothing here leaves session
state behind (no SET, no LISTEN, no cursor, advisory locks only `_xact_`), and an open
transaction is still rolled back by the pool. Before: about 7.5 round trips a job; now 1.3
(bench/publish_worker.py, PostgreSQL's CPU a job about halved).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import asyncpg

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
    INDEX_NAMES,
    INDEXES,
    NEEDS_ATTENTION,
    PG_NOTIFY,
    PG_TABLES,
    REQUIRED,
    WORKER_COLUMNS_PG,
    claimable,
    enqueue_sql,
    identity_key,
    missing_schema_error,
)

__all__ = ["CHANNEL", "PostgresQueue"]

CHANNEL = "publish_jobs"
CONNECT_TIMEOUT = 10.0
IDENTITY_WAIT = 2.0  # seconds a worker id held by a session that is ending is asked for again
# Serialises init_db (CREATE TABLE IF NOT EXISTS races) and enqueue (idempotence) between
# processes: pg_advisory_xact_lock keys.
_INIT_LOCK = 0x7075626C  # "publ"
_ENQUEUE_LOCK = 0x70756265

# min(cap, base × 2^retry_count) × uniform(1 − jitter, 1 + jitter), retry_count before this one.
BACKOFF = (
    "make_interval(secs => LEAST($cap::float8, $base::float8 * power(2::float8,"
    " LEAST(j.retry_count, 40))) * (1 - $jitter::float8 + 2 * $jitter::float8 * random()))"
)

RECLAIM = f"""
WITH expired AS (
    SELECT id FROM publish_jobs
    WHERE status = 'processing' AND locked_until < now()
    ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
), closed AS (
    UPDATE publish_attempts a
    SET outcome = 'lease_expired', ended_at = now(),
        error = 'lease expired (held by ' || a.worker || ')'
    FROM expired WHERE a.job_id = expired.id AND a.ended_at IS NULL
)
UPDATE publish_jobs j
SET retry_count = j.retry_count + 1,
    last_error = 'lease expired (held by ' || COALESCE(j.locked_by, '?') || ')',
    status = CASE WHEN j.retry_count + 1 < j.max_retries THEN 'pending' ELSE 'failed' END,
    next_attempt_at = CASE WHEN j.retry_count + 1 < j.max_retries
        THEN now() + {BACKOFF.replace("$cap", "$2").replace("$base", "$3").replace("$jitter", "$4")}
        ELSE NULL END,
    completed_at = CASE WHEN j.retry_count + 1 < j.max_retries THEN NULL ELSE now() END,
    locked_by = NULL, locked_until = NULL
FROM expired WHERE j.id = expired.id
"""

# The jobs of `candidates` leased to worker $1 for $3 seconds, an attempt opened for each:
# CLAIM's and FAST_CLAIM's common part
_LEASE_AND_OPEN = """leased AS (
    UPDATE publish_jobs j
    SET status = 'processing', locked_by = $1,
        locked_until = now() + make_interval(secs => $3::float8),
        started_at = now(), completed_at = NULL
    FROM candidates WHERE j.id = candidates.id
    RETURNING j.id, j.file_id, j.retry_count, j.max_retries
), opened AS (
    INSERT INTO publish_attempts (job_id, worker, started_at)
    SELECT id, $1, now() FROM leased
    RETURNING id, job_id
)"""

# What a claim answers of each job leased: its job, file and attempt
_CLAIMED = """SELECT l.id, l.file_id, f.lot_id, f.source_key, l.retry_count, l.max_retries,
       o.id AS attempt_id, f.publish_status, f.deleted_at IS NOT NULL AS deleted,
       EXISTS (SELECT 1 FROM publish_attempts a
               WHERE a.job_id = l.id AND a.outcome = 'interrupted') AS interrupted
FROM leased l
JOIN opened o ON o.job_id = l.id
JOIN auction_files f ON f.id = l.file_id"""

CLAIM = f"""
WITH candidates AS (
    SELECT id FROM publish_jobs
    WHERE {claimable("now()")}
    ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
), {_LEASE_AND_OPEN}
{_CLAIMED}
ORDER BY l.id
"""

# The claim alone, in one statement, when no lease has expired: what RECLAIM then CLAIM do when
# RECLAIM finds nothing. `stale` says whether an expired lease is there (locked or not); then
# nothing is leased and the caller runs RECLAIM and CLAIM in one transaction. One row at least:
# the flag, with the leased jobs (none: one row of NULLs).
FAST_CLAIM = f"""
WITH stale AS (
    SELECT EXISTS (SELECT 1 FROM publish_jobs
                   WHERE status = 'processing' AND locked_until < now()) AS found
), candidates AS (
    SELECT id FROM publish_jobs
    WHERE {claimable("now()")} AND NOT (SELECT found FROM stale)
    ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED
), {_LEASE_AND_OPEN}, claimed AS (
{_CLAIMED}
)
SELECT s.found AS stale, c.* FROM stale s LEFT JOIN claimed c ON true ORDER BY c.id
"""


def _ending(job: str, attempt: str, outcome: str, error: str, refused: str, also: str = "") -> str:
    """How an attempt ends, in one statement (one implicit transaction): `job` (an UPDATE of
    publish_jobs that checks `locked_by` and RETURNs file_id) and the CTEs `also` (reading
    `done`); the attempt row (id `attempt`) gets `outcome` and `error` when the job was
    updated, else, the lease lost, only 'refused', its end and, unless it has one, `refused`
    as its error. Answers whether the job was updated."""
    return f"""
WITH done AS ({job}){also}, attempt AS (
    UPDATE publish_attempts a SET
        outcome = CASE WHEN (SELECT count(*) FROM done) > 0 THEN {outcome} ELSE 'refused' END,
        ended_at = CASE WHEN (SELECT count(*) FROM done) > 0 THEN now()
            ELSE COALESCE(a.ended_at, now()) END,
        error = CASE WHEN (SELECT count(*) FROM done) > 0 THEN {error}
            ELSE COALESCE(a.error, {refused}) END
    WHERE a.id = {attempt}
)
SELECT (SELECT count(*) FROM done) > 0
"""


# complete(): $1 job, $2 worker, $3 attempt, ($4, $5 the URLs).
_COMPLETE_JOB = """
    UPDATE publish_jobs SET status = 'completed', completed_at = now(),
        locked_by = NULL, locked_until = NULL, next_attempt_at = NULL
    WHERE id = $1 AND locked_by = $2 AND status = 'processing'
    RETURNING file_id"""
_PUBLISH_FILE = """, published AS (
    UPDATE auction_files f SET thumb_url = $4, display_url = $5,
        publish_status = 'published', published_at = now()
    FROM done WHERE f.id = done.file_id
)"""
_LOST_COMPLETING = "'lease lost before completion'"
COMPLETE_PUBLISHED = _ending(
    _COMPLETE_JOB, "$3", f"'{AttemptOutcome.PUBLISHED}'", "a.error", _LOST_COMPLETING, _PUBLISH_FILE
)
COMPLETE_SKIPPED = _ending(
    _COMPLETE_JOB, "$3", f"'{AttemptOutcome.SKIPPED}'", "a.error", _LOST_COMPLETING
)
# fail(): $1 job, $2 worker, $3 error, $4 attempt, ($5, $6, $7 the backoff's cap, base, jitter).
FAIL_PERMANENT = _ending(
    "UPDATE publish_jobs j SET status = 'failed', retry_count = max_retries,"
    " last_error = $3, next_attempt_at = NULL,"
    " locked_by = NULL, locked_until = NULL, completed_at = now()"
    " WHERE j.id = $1 AND j.locked_by = $2 AND j.status = 'processing' RETURNING j.file_id",
    "$4",
    f"'{AttemptOutcome.PERMANENT}'",
    "$3",
    "'lease lost before failing: ' || $3",
)
FAIL_RETRY = _ending(
    "UPDATE publish_jobs j SET retry_count = j.retry_count + 1, last_error = $3,"
    " status = CASE WHEN j.retry_count + 1 < j.max_retries THEN 'pending' ELSE 'failed' END,"
    " next_attempt_at = CASE WHEN j.retry_count + 1 < j.max_retries"
    f"   THEN now() + {BACKOFF.replace('$cap', '$5').replace('$base', '$6').replace('$jitter', '$7')}"
    "   ELSE NULL END,"
    " completed_at = CASE WHEN j.retry_count + 1 < j.max_retries THEN NULL ELSE now() END,"
    " locked_by = NULL, locked_until = NULL"
    " WHERE j.id = $1 AND j.locked_by = $2 AND j.status = 'processing' RETURNING j.file_id",
    "$4",
    f"'{AttemptOutcome.FAILED}'",
    "$3",
    "'lease lost before failing: ' || $3",
)


def iso(value: dt.datetime | None) -> str:
    """A timestamptz as the SQLite queue writes times: `YYYY-MM-DDTHH:MM:SS.fffZ`."""
    if value is None:
        return ""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _refused(url: str, doing: str, exc: BaseException) -> ConfigError:
    """A DATABASE_URL error of one line: what failed, and the driver's reason with the URL's
    password never in it."""
    reason = " ".join(str(exc).split()) or type(exc).__name__
    _, _, password = _where(url)
    if password:
        reason = reason.replace(password, "***")
    return ConfigError("DATABASE_URL", f"{doing}: {reason[:300]}")


def _where(url: str) -> tuple[str, str, str]:
    """(host:port, user, password) of a postgresql:// URL, for messages and redaction."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = parts.port or 5432
        user = unquote(parts.username or "")
        password = unquote(parts.password or "")
    except ValueError:
        return "(unparsable host)", "", ""
    return f"{host}:{port}", user, password


async def _keep_session(_conn: Any) -> None:
    """A connection back in the pool keeps its session as it is: this module leaves nothing in
    one (no SET, no LISTEN on a pooled connection, no cursor, only transaction-scoped advisory
    locks), and the pool still rolls back a transaction left open. asyncpg's default reset is
    one more round trip at every release (RESET ALL, UNLISTEN *, CLOSE ALL and
    pg_advisory_unlock_all())."""


class PostgresQueue:
    """A pool of 1 to 4 connections, plus one LISTEN connection once `wait_for_work` runs and
    one that holds the worker's id (`hold_identity`): at most 6 connections a worker."""

    def __init__(self, url: str, pool: Any) -> None:
        self._url = url
        self._pool = pool
        self._listener: Any = None
        self._identity: Any = None  # the connection that holds this instance's id
        self._wake = asyncio.Event()

    @classmethod
    async def open(cls, url: str) -> PostgresQueue:
        userinfo = url.split("://", 1)[-1].rpartition("@")[0]
        if any(c in userinfo for c in "/?#"):
            # The URL parser would split the password there and show pieces of it.
            raise ConfigError(
                "DATABASE_URL",
                "its user or password holds / ? or # unencoded; percent-encode them (%2F %3F %23)",
            )
        where, user, _ = _where(url)
        try:
            pool = await asyncpg.create_pool(
                url,
                min_size=1,
                max_size=4,
                timeout=CONNECT_TIMEOUT,
                command_timeout=60,
                reset=_keep_session,
            )
        except (
            OSError,
            TimeoutError,
            ValueError,
            OverflowError,  # a port beyond 65535
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
        ) as exc:
            who = f" as {user}" if user else ""
            raise _refused(url, f"cannot connect to PostgreSQL at {where}{who}", exc) from None
        return cls(url, pool)

    async def close(self) -> None:
        for conn in (self._listener, self._identity):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close(timeout=5)
        self._listener = self._identity = None
        await self._pool.close()

    async def hold_identity(self, worker: str) -> bool:
        """A session-level advisory lock on the id, on a connection of its own (named
        `tui-backfill worker <id>` in pg_stat_activity): PostgreSQL lets it go when that
        session ends, so a killed worker's id is free again (a frozen one keeps it: it is
        alive). Asked again for up to IDENTITY_WAIT seconds: the session of a worker killed a
        moment ago may not have ended yet (a service manager restarting it at once)."""
        try:
            if self._identity is None or self._identity.is_closed():
                self._identity = await asyncpg.connect(
                    self._url,
                    timeout=CONNECT_TIMEOUT,
                    server_settings={"application_name": f"tui-backfill worker {worker}"[:63]},
                )
            key = identity_key(worker)
            deadline = asyncio.get_running_loop().time() + IDENTITY_WAIT
            while not await self._identity.fetchval("SELECT pg_try_advisory_lock($1::bigint)", key):
                if asyncio.get_running_loop().time() >= deadline:
                    return False
                await asyncio.sleep(0.2)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            where, _, _ = _where(self._url)
            raise _refused(self._url, f"cannot open a session at {where}", exc) from None
        return True

    async def keep_identity(self, worker: str) -> bool:
        if self._identity is not None and not self._identity.is_closed():
            return True
        return await self.hold_identity(worker)

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[Any]:
        async with self._pool.acquire() as conn, conn.transaction():
            yield conn

    # -- schema -------------------------------------------------------------------------------

    async def check_schema(self) -> None:
        rows = await self._pool.fetch(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = ANY($1::text[])",
            list(REQUIRED),
        )
        present: dict[str, set[str]] = {}
        for row in rows:
            present.setdefault(str(row[0]), set()).add(str(row[1]))
        error = missing_schema_error(present)
        if error is not None:
            raise error

    async def missing_indexes(self) -> list[str]:
        rows = await self._pool.fetch(
            "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()"
            " AND indexname = ANY($1::text[])",
            list(INDEX_NAMES),
        )
        have = {str(r[0]) for r in rows}
        return [name for name in INDEX_NAMES if name not in have]

    async def init_db(self) -> None:
        async with self._tx() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _INIT_LOCK)
            for ddl in PG_TABLES.values():
                await conn.execute(ddl)
            for table, columns in WORKER_COLUMNS_PG.items():
                for column, decl in columns.items():
                    await conn.execute(
                        f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {decl}"
                    )
            for ddl in INDEXES:
                await conn.execute(ddl)
            for ddl in PG_NOTIFY:
                await conn.execute(ddl)

    # -- jobs ---------------------------------------------------------------------------------

    async def enqueue(self, *, file_id: int | None = None, max_retries: int = 5) -> int:
        args: list[Any] = [max_retries] if file_id is None else [max_retries, file_id]
        sql = enqueue_sql("$1", None if file_id is None else "$2")
        async with self._tx() as conn:
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _ENQUEUE_LOCK)
            status = await conn.execute(sql, *args)
        return int(str(status).rsplit(" ", 1)[-1])

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
        rows = await self._pool.fetch(FAST_CLAIM, worker, limit, float(lease_seconds))
        if rows[0]["stale"]:  # an expired lease: reclaimed first, in the claim's transaction
            async with self._tx() as conn:
                await conn.execute(
                    RECLAIM, limit, float(policy.cap), float(policy.base), float(policy.jitter)
                )
                rows = await conn.fetch(CLAIM, worker, limit, float(lease_seconds))
        else:
            rows = [r for r in rows if r["id"] is not None]
        return [
            ClaimedJob(
                id=int(r["id"]),
                file_id=int(r["file_id"]),
                lot_id=None if r["lot_id"] is None else int(r["lot_id"]),
                source_key=str(r["source_key"]),
                retry_count=int(r["retry_count"]),
                max_retries=int(r["max_retries"]),
                attempt_id=int(r["attempt_id"]),
                publish_status=None if r["publish_status"] is None else str(r["publish_status"]),
                deleted=bool(r["deleted"]),
                interrupted=bool(r["interrupted"]),
            )
            for r in rows
        ]

    async def renew(self, worker: str, job_ids: Sequence[int], lease_seconds: float) -> set[int]:
        if not job_ids:
            return set()
        rows = await self._pool.fetch(
            "UPDATE publish_jobs SET locked_until = now() + make_interval(secs => $3::float8)"
            " WHERE id = ANY($1::bigint[]) AND locked_by = $2 AND status = 'processing'"
            " RETURNING id",
            [int(i) for i in job_ids],
            worker,
            float(lease_seconds),
        )
        return {int(r[0]) for r in rows}

    async def complete(self, worker: str, job: ClaimedJob, published: Published | None) -> bool:
        if published is None:
            done = await self._pool.fetchval(COMPLETE_SKIPPED, job.id, worker, job.attempt_id)
        else:
            done = await self._pool.fetchval(
                COMPLETE_PUBLISHED,
                job.id,
                worker,
                job.attempt_id,
                published.thumb_url,
                published.display_url,
            )
        return bool(done)

    async def fail(
        self, worker: str, job: ClaimedJob, error: str, *, permanent: bool, policy: RetryPolicy
    ) -> bool:
        if permanent:
            done = await self._pool.fetchval(FAIL_PERMANENT, job.id, worker, error, job.attempt_id)
        else:
            done = await self._pool.fetchval(
                FAIL_RETRY,
                job.id,
                worker,
                error,
                job.attempt_id,
                float(policy.cap),
                float(policy.base),
                float(policy.jitter),
            )
        return bool(done)

    async def release(
        self, worker: str, jobs: Sequence[ClaimedJob], *, started: bool = False
    ) -> None:
        if not jobs:
            return
        outcome = "interrupted" if started else "released"
        attempt_of = {job.id: job.attempt_id for job in jobs}
        async with self._tx() as conn:
            rows = await conn.fetch(
                "UPDATE publish_jobs SET status = 'pending', locked_by = NULL,"
                " locked_until = NULL, started_at = NULL"
                " WHERE id = ANY($1::bigint[]) AND locked_by = $2 AND status = 'processing'"
                " RETURNING id",
                list(attempt_of),
                worker,
            )
            released = [attempt_of[int(r[0])] for r in rows]
            if released:
                await conn.execute(
                    "UPDATE publish_attempts SET outcome = $2, ended_at = now()"
                    " WHERE id = ANY($1::bigint[])",
                    released,
                    outcome,
                )

    # -- wake-ups -----------------------------------------------------------------------------

    def _notified(self, *_: Any) -> None:
        self._wake.set()

    def _listener_lost(self, *_: Any) -> None:
        self._listener = None
        self._wake.set()  # claim once now: notifications may have been missed

    async def _listen(self, timeout: float) -> bool:
        if self._listener is not None and not self._listener.is_closed():
            return True
        try:
            conn = await asyncpg.connect(self._url, timeout=max(1.0, min(timeout, CONNECT_TIMEOUT)))
            await conn.add_listener(CHANNEL, self._notified)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return False
        conn.add_termination_listener(self._listener_lost)
        self._listener = conn
        return True

    async def wait_for_work(self, timeout: float) -> None:
        started = asyncio.get_running_loop().time()
        await self._listen(timeout)
        remaining = max(0.0, timeout - (asyncio.get_running_loop().time() - started))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), remaining)
        self._wake.clear()

    # -- figures ------------------------------------------------------------------------------

    async def figures(self) -> QueueFigures:
        row = await self._pool.fetchrow(
            "SELECT"
            " count(*) FILTER (WHERE status = 'pending'),"
            " count(*) FILTER (WHERE status = 'pending' AND next_attempt_at > now()),"
            " count(*) FILTER (WHERE status = 'processing'),"
            " count(*) FILTER (WHERE status = 'completed'),"
            " count(*) FILTER (WHERE status = 'failed'),"
            " count(*) FILTER (WHERE status = 'failed' AND retry_count >= max_retries),"
            " avg(EXTRACT(EPOCH FROM completed_at - started_at))"
            "   FILTER (WHERE status = 'completed')::float8"
            " FROM publish_jobs"
        )
        summary = await self._pool.fetch(
            "SELECT COALESCE(publish_status, 'null'), count(*) FROM auction_files"
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
            publish_status={str(r[0]): int(r[1]) for r in summary},
        )

    async def attention(self, limit: int = 20) -> list[AttentionJob]:
        rows = await self._pool.fetch(
            "SELECT id, file_id, retry_count, COALESCE(last_error, '') FROM publish_jobs"
            f" WHERE {NEEDS_ATTENTION} ORDER BY id LIMIT $1",
            limit,
        )
        return [AttentionJob(int(r[0]), int(r[1]), int(r[2]), str(r[3])) for r in rows]

    # -- instances and commands ---------------------------------------------------------------

    async def register_worker(self, worker: str, job: str) -> None:
        await self._pool.execute(
            "INSERT INTO publish_workers (id, job, started_at, heartbeat_at, state, stats)"
            " VALUES ($1, $2, now(), now(), 'running', '{}')"
            " ON CONFLICT (id) DO UPDATE SET job = EXCLUDED.job,"
            " started_at = EXCLUDED.started_at, heartbeat_at = EXCLUDED.heartbeat_at,"
            " stopped_at = NULL, state = 'running', stats = '{}'",
            worker,
            job,
        )

    async def heartbeat(self, worker: str, state: str, stats: str) -> None:
        await self._pool.execute(
            "UPDATE publish_workers SET heartbeat_at = now(), state = $2, stats = $3 WHERE id = $1",
            worker,
            state,
            stats,
        )

    async def stop_worker(self, worker: str, stats: str) -> None:
        await self._pool.execute(
            "UPDATE publish_workers SET heartbeat_at = now(), stopped_at = now(),"
            " state = 'stopped', stats = $2 WHERE id = $1",
            worker,
            stats,
        )

    async def workers(self, job: str, *, live_within: float) -> list[WorkerRow]:
        rows = await self._pool.fetch(
            "SELECT id, job, started_at, heartbeat_at, stopped_at,"
            " CASE WHEN stopped_at IS NULL"
            "   AND heartbeat_at < now() - make_interval(secs => $2::float8)"
            "   THEN 'lost' ELSE state END, stats"
            " FROM publish_workers WHERE job = $1 ORDER BY started_at DESC, id DESC",
            job,
            float(live_within),
        )
        return [
            WorkerRow(
                id=str(r[0]),
                job=str(r[1]),
                started_at=iso(r[2]),
                heartbeat_at=iso(r[3]),
                stopped_at=None if r[4] is None else iso(r[4]),
                state=str(r[5]),
                stats=str(r[6]),
            )
            for r in rows
        ]

    async def post_command(self, job: str, command: str, worker: str | None = None) -> None:
        await self._pool.execute(
            "INSERT INTO publish_commands (job, worker, command) VALUES ($1, $2, $3)",
            job,
            worker,
            command,
        )

    async def take_commands(self, worker: str, job: str, after: int) -> tuple[int, list[str]]:
        rows = await self._pool.fetch(
            "SELECT id, command FROM publish_commands WHERE job = $1 AND id > $2"
            " AND (worker IS NULL OR worker = $3) ORDER BY id",
            job,
            after,
            worker,
        )
        if not rows:
            return after, []
        return int(rows[-1][0]), [str(r[1]) for r in rows]
