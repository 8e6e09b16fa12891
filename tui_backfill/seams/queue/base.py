"""The publish queue's contract: what the worker asks of a jobs table, whatever its database.

Two implementations share it and one contract test suite (tests/test_queue.py) runs against
both on real servers: PostgreSQL through asyncpg (many workers on many machines; claims with
`FOR UPDATE SKIP LOCKED`, wake-up by LISTEN/NOTIFY) and SQLite (one machine, several
processes; claims under `BEGIN IMMEDIATE`, wake-up by polling).

Tables (the seed's, which its monitoring SQL reads): `auction_files` (the media), `publish_jobs`
(the queue), `publish_attempts` (the audit: one row an attempt), plus the worker's own
`publish_workers` (one row an instance session, with its heartbeat) and `publish_commands`
(pause/resume addressed to a job or one instance).

Times are the database's clock (`now()` on PostgreSQL, `julianday('now')` arithmetic on
SQLite), so workers on machines with skewed clocks agree on leases and backoff.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol


class JobStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"


class AttemptOutcome(enum.StrEnum):
    """How one attempt ended, as `publish_attempts.outcome` records it."""

    PUBLISHED = "published"  # variants written, URLs recorded, job completed
    SKIPPED = "skipped"  # the file was already published or soft-deleted: completed, no download
    FAILED = "failed"  # a retryable failure: the job waits for its backoff (or ends failed)
    PERMANENT = "permanent"  # corrupt, unsupported, 404, too large: failed at once
    LEASE_EXPIRED = "lease_expired"  # reclaimed from a worker that stopped renewing
    REFUSED = "refused"  # its worker had lost the lease: the completion was refused
    RELEASED = "released"  # handed back unstarted (SIGTERM): no attempt counted
    INTERRUPTED = "interrupted"  # cut off mid-way at the shutdown bound, handed back: no attempt
    # counted, but its variants may exist (the next attempt asks the bucket first)


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    """A job leased to one worker, with what its file row says."""

    id: int
    file_id: int
    lot_id: int | None
    source_key: str
    retry_count: int  # failed attempts before this one
    max_retries: int
    attempt_id: int  # its `publish_attempts` row
    publish_status: str | None = None
    deleted: bool = False  # `auction_files.deleted_at` is set
    interrupted: bool = False  # an earlier attempt was cut off mid-way and handed back


@dataclass(frozen=True, slots=True)
class Published:
    """What a completed job records on its file, in the completion's transaction."""

    thumb_url: str
    display_url: str


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`next_attempt_at = now + base × 2^(retry_count−1)` ± `jitter`, at most `cap` seconds."""

    base: float = 30.0
    cap: float = 3600.0
    jitter: float = 0.2


DEFAULT_RETRY_POLICY = RetryPolicy()


@dataclass(frozen=True, slots=True)
class QueueFigures:
    """The seed's key metrics, read from the database (so any machine can show them)."""

    pending: int = 0  # claimable now or waiting for a backoff
    waiting_backoff: int = 0  # pending with next_attempt_at in the future
    processing: int = 0
    completed: int = 0
    failed: int = 0
    needing_attention: int = 0  # failed with retry_count >= max_retries
    avg_processing_seconds: float | None = None  # completed jobs: completed_at - started_at
    publish_status: dict[str, int] = field(default_factory=dict)  # auction_files summary


@dataclass(frozen=True, slots=True)
class AttentionJob:
    """A job needing attention, for the console's list."""

    id: int
    file_id: int
    retry_count: int
    last_error: str


@dataclass(frozen=True, slots=True)
class WorkerRow:
    """One instance session of a job (`runs` lists them; live ones have a fresh heartbeat)."""

    id: str  # host:pid (plus a suffix when a pid is reused)
    job: str
    started_at: str
    heartbeat_at: str
    stopped_at: str | None
    state: str  # running | held | stopping | stopped | lost (heartbeat older than the lease)
    stats: str  # the instance's counters as JSON, written with its heartbeat


class JobQueue(Protocol):
    """One connection pool to the queue database."""

    async def close(self) -> None: ...

    async def check_schema(self) -> None:
        """Raise ConfigError naming the missing tables/columns and `publish init-db`."""
        ...

    async def hold_identity(self, worker: str) -> bool:
        """Take `worker` as this process's instance id until the queue is closed (or the
        process dies); False when a live process holds it. Two live instances with one id
        would share their leases: a frozen one, thawed, could complete a job its twin had
        taken over."""
        ...

    async def keep_identity(self, worker: str) -> bool:
        """Whether this process still holds `worker` (after `hold_identity`), taking it again
        when what held it was lost (PostgreSQL: the session dropped, a failover, a
        pg_terminate_backend); False when another live process took it meanwhile."""
        ...

    async def missing_indexes(self) -> list[str]:
        """The worker's indexes the database lacks (a schema made by an older `init-db`):
        the worker runs without them, its claims slower as the jobs table grows."""
        ...

    async def init_db(self) -> None:
        """Create the tables, or add the worker's columns to an existing seed schema, and
        (PostgreSQL) install the NOTIFY trigger. Idempotent."""
        ...

    async def enqueue(self, *, file_id: int | None = None, max_retries: int = 5) -> int:
        """A pending job for every unpublished, undeleted file with no pending or processing
        job (or that one file); idempotent. The number of jobs created."""
        ...

    async def claim(
        self,
        worker: str,
        limit: int,
        lease_seconds: float,
        *,
        policy: RetryPolicy = DEFAULT_RETRY_POLICY,
    ) -> list[ClaimedJob]:
        """Up to `limit` claimable jobs (pending and due, or processing with an expired lease:
        that counts as a failed attempt of its holder), leased to `worker` in one short
        transaction, each with a new `publish_attempts` row.

        Expired leases among the candidates are reclaimed first, in the same transaction:
        retry_count + 1, `last_error` 'lease expired (held by W)', the holder's attempt
        `lease_expired`, then pending after `policy`'s backoff (or failed when retries ran
        out). A job `failed` with retry_count < max_retries (an operator raised max_retries)
        is claimable again once due."""
        ...

    async def renew(self, worker: str, job_ids: Sequence[int], lease_seconds: float) -> set[int]:
        """Extend the leases this worker still holds; the ids it still holds."""
        ...

    async def complete(self, worker: str, job: ClaimedJob, published: Published | None) -> bool:
        """In one transaction: the job completed (`published` None: skipped), the file's URLs,
        `publish_status` 'published' and `published_at`, the attempt's outcome. False (nothing
        written but the attempt's `refused`) when the worker no longer holds the lease."""
        ...

    async def fail(
        self, worker: str, job: ClaimedJob, error: str, *, permanent: bool, policy: RetryPolicy
    ) -> bool:
        """A failed attempt: `retry_count` + 1 and `last_error`; pending again after the
        backoff while retry_count < max_retries, else failed (permanent: failed at once with
        retry_count = max_retries). False when the lease was lost."""
        ...

    async def release(
        self, worker: str, jobs: Sequence[ClaimedJob], *, started: bool = False
    ) -> None:
        """Hand claims back: pending, no attempt counted; the attempt `released` (unstarted)
        or, with `started`, `interrupted` (cut off mid-way: a later claim says so)."""
        ...

    async def wait_for_work(self, timeout: float) -> None:
        """Return when a job may have become claimable (NOTIFY on PostgreSQL) or after
        `timeout` seconds (the polling fallback)."""
        ...

    async def figures(self) -> QueueFigures: ...

    async def attention(self, limit: int = 20) -> list[AttentionJob]: ...

    # Instances and commands.
    async def register_worker(self, worker: str, job: str) -> None: ...

    async def heartbeat(self, worker: str, state: str, stats: str) -> None: ...

    async def stop_worker(self, worker: str, stats: str) -> None: ...

    async def workers(self, job: str, *, live_within: float) -> list[WorkerRow]:
        """The job's instance sessions, newest first; `state` is `lost` for a session whose
        heartbeat is older than `live_within` seconds and that never stopped."""
        ...

    async def post_command(self, job: str, command: str, worker: str | None = None) -> None:
        """`pause` or `resume` for every instance of the job, or one."""
        ...

    async def take_commands(self, worker: str, job: str, after: int) -> tuple[int, list[str]]:
        """Commands for this worker (or its whole job) with id > `after`: (last id, commands)."""
        ...
