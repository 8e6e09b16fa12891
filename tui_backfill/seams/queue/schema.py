"""The queue's tables for both dialects, and the columns the worker needs on a seed database.

The seed's database already has `auction_files` and `publish_jobs` (its monitoring SQL reads
them) but may lack the columns a leasing worker needs. `init_db` creates what is missing and
adds missing columns (`ADD COLUMN IF NOT EXISTS` on PostgreSQL, checked with `PRAGMA
table_info` on SQLite); `check_schema` names what is still missing.

Times on SQLite are ISO-8601 UTC text with milliseconds, `YYYY-MM-DDTHH:MM:SS.fffZ`
(`strftime('%Y-%m-%dT%H:%M:%fZ', ...)`): one fixed width, so text order is time order, and
`julianday()` reads it back for arithmetic. On PostgreSQL they are `timestamptz`.
"""

from __future__ import annotations

import hashlib

from tui_backfill.outcomes import ConfigError

__all__ = [
    "ATTENTION_INDEX",
    "INDEXES",
    "INDEX_NAMES",
    "NEEDS_ATTENTION",
    "OPEN_INDEX",
    "PG_NOTIFY",
    "PG_TABLES",
    "REQUIRED",
    "SQLITE_TABLES",
    "WORKER_COLUMNS_PG",
    "WORKER_COLUMNS_SQLITE",
    "claimable",
    "enqueue_sql",
    "identity_key",
    "missing_schema_error",
]


# -- the queries both dialects run alike (their clocks and placeholders differ) --------------

# The jobs that may run again some time: pending, or failed with attempts left. The first term
# of `claimable` and the predicate of the partial index OPEN_INDEX, word for word, so that both
# planners see the index serves the claim.
OPEN = "(status = 'pending' OR (status = 'failed' AND retry_count < max_retries))"
# The jobs needing attention: failed with no attempt left (the seed's monitoring query's own
# condition); the predicate of the partial index ATTENTION_INDEX.
NEEDS_ATTENTION = "status = 'failed' AND retry_count >= max_retries"


def claimable(now: str) -> str:
    """Which `publish_jobs` rows a claim may take; `now` is the dialect's clock. Pending, or
    failed with attempts left (raising `max_retries` re-opens a job), and due; and no other job
    of its file processing, nor an earlier one waiting: one job of a file at a time, so a
    duplicate waits for the earlier one, then finds the file published and skips."""
    return (
        f"{OPEN} AND (next_attempt_at IS NULL OR next_attempt_at <= {now})"
        " AND NOT EXISTS (SELECT 1 FROM publish_jobs o WHERE o.file_id = publish_jobs.file_id"
        " AND o.id <> publish_jobs.id"
        " AND (o.status = 'processing' OR (o.id < publish_jobs.id AND (o.status = 'pending'"
        " OR (o.status = 'failed' AND o.retry_count < o.max_retries)))))"
    )


def identity_key(worker: str) -> int:
    """A worker instance's id as a number below 2^55, the same in every process and on every
    machine: the key of the lock an instance holds on its id while it runs (a PostgreSQL
    advisory lock, a byte of the SQLite queue's `-workers` file)."""
    digest = hashlib.blake2b(f"tui-backfill worker {worker}".encode(), digest_size=7).digest()
    return int.from_bytes(digest, "big") >> 1


def enqueue_sql(max_retries: str, file_id: str | None) -> str:
    """A job for every unpublished, undeleted file with no pending or processing job (or for
    the one file `file_id` names); the arguments are the dialect's placeholders."""
    sql = (
        "INSERT INTO publish_jobs (file_id, max_retries)"
        f" SELECT f.id, {max_retries} FROM auction_files f"
        " WHERE COALESCE(f.publish_status, '') <> 'published' AND f.deleted_at IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM publish_jobs j WHERE j.file_id = f.id"
        " AND j.status IN ('pending', 'processing'))"
    )
    if file_id is not None:
        sql += f" AND f.id = {file_id}"
    return sql + " ORDER BY f.id"


# What a worker reads and writes, table by table (check_schema names any that is missing).
REQUIRED: dict[str, tuple[str, ...]] = {
    "auction_files": (
        "id",
        "lot_id",
        "source_key",
        "publish_status",
        "thumb_url",
        "display_url",
        "published_at",
        "deleted_at",
    ),
    "publish_jobs": (
        "id",
        "file_id",
        "status",
        "retry_count",
        "max_retries",
        "last_error",
        "next_attempt_at",
        "locked_by",
        "locked_until",
        "created_at",
        "started_at",
        "completed_at",
    ),
    "publish_attempts": ("id", "job_id", "worker", "started_at", "ended_at", "outcome", "error"),
    "publish_workers": (
        "id",
        "job",
        "started_at",
        "heartbeat_at",
        "stopped_at",
        "state",
        "stats",
    ),
    "publish_commands": ("id", "job", "worker", "command", "created_at"),
}

PG_TABLES: dict[str, str] = {
    "auction_files": """
        CREATE TABLE IF NOT EXISTS auction_files (
            id BIGINT PRIMARY KEY,
            lot_id BIGINT,
            source_key TEXT NOT NULL,
            publish_status TEXT DEFAULT 'pending',
            thumb_url TEXT,
            display_url TEXT,
            published_at TIMESTAMPTZ,
            deleted_at TIMESTAMPTZ,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
    "publish_jobs": """
        CREATE TABLE IF NOT EXISTS publish_jobs (
            id BIGSERIAL PRIMARY KEY,
            file_id BIGINT NOT NULL REFERENCES auction_files(id),
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
            retry_count INT NOT NULL DEFAULT 0,
            max_retries INT NOT NULL DEFAULT 5,
            last_error TEXT,
            next_attempt_at TIMESTAMPTZ,
            locked_by TEXT,
            locked_until TIMESTAMPTZ,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            started_at TIMESTAMPTZ,
            completed_at TIMESTAMPTZ
        )""",
    "publish_attempts": """
        CREATE TABLE IF NOT EXISTS publish_attempts (
            id BIGSERIAL PRIMARY KEY,
            job_id BIGINT NOT NULL,
            worker TEXT NOT NULL,
            started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            ended_at TIMESTAMPTZ,
            outcome TEXT,
            error TEXT
        )""",
    "publish_workers": """
        CREATE TABLE IF NOT EXISTS publish_workers (
            id TEXT PRIMARY KEY,
            job TEXT NOT NULL,
            started_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now(),
            stopped_at TIMESTAMPTZ,
            state TEXT NOT NULL DEFAULT 'running',
            stats TEXT NOT NULL DEFAULT '{}'
        )""",
    "publish_commands": """
        CREATE TABLE IF NOT EXISTS publish_commands (
            id BIGSERIAL PRIMARY KEY,
            job TEXT NOT NULL,
            worker TEXT,
            command TEXT NOT NULL,
            created_at TIMESTAMPTZ NOT NULL DEFAULT now()
        )""",
}

_NOW = "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"

SQLITE_TABLES: dict[str, str] = {
    "auction_files": f"""
        CREATE TABLE IF NOT EXISTS auction_files (
            id INTEGER PRIMARY KEY,
            lot_id INTEGER,
            source_key TEXT NOT NULL,
            publish_status TEXT DEFAULT 'pending',
            thumb_url TEXT,
            display_url TEXT,
            published_at TEXT,
            deleted_at TEXT,
            created_at TEXT NOT NULL DEFAULT {_NOW}
        )""",
    "publish_jobs": f"""
        CREATE TABLE IF NOT EXISTS publish_jobs (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            file_id INTEGER NOT NULL REFERENCES auction_files(id),
            status TEXT NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'processing', 'completed', 'failed')),
            retry_count INTEGER NOT NULL DEFAULT 0,
            max_retries INTEGER NOT NULL DEFAULT 5,
            last_error TEXT,
            next_attempt_at TEXT,
            locked_by TEXT,
            locked_until TEXT,
            created_at TEXT NOT NULL DEFAULT {_NOW},
            started_at TEXT,
            completed_at TEXT
        )""",
    "publish_attempts": f"""
        CREATE TABLE IF NOT EXISTS publish_attempts (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job_id INTEGER NOT NULL,
            worker TEXT NOT NULL,
            started_at TEXT NOT NULL DEFAULT {_NOW},
            ended_at TEXT,
            outcome TEXT,
            error TEXT
        )""",
    "publish_workers": f"""
        CREATE TABLE IF NOT EXISTS publish_workers (
            id TEXT PRIMARY KEY,
            job TEXT NOT NULL,
            started_at TEXT NOT NULL DEFAULT {_NOW},
            heartbeat_at TEXT NOT NULL DEFAULT {_NOW},
            stopped_at TEXT,
            state TEXT NOT NULL DEFAULT 'running',
            stats TEXT NOT NULL DEFAULT '{{}}'
        )""",
    "publish_commands": f"""
        CREATE TABLE IF NOT EXISTS publish_commands (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            job TEXT NOT NULL,
            worker TEXT,
            command TEXT NOT NULL,
            created_at TEXT NOT NULL DEFAULT {_NOW}
        )""",
}

# Columns added to an existing seed table, as `ADD COLUMN` clauses. SQLite's ALTER TABLE takes
# no NOT NULL without a constant default and no expression default, hence two lists.
WORKER_COLUMNS_PG: dict[str, dict[str, str]] = {
    "auction_files": {
        "lot_id": "BIGINT",
        "publish_status": "TEXT DEFAULT 'pending'",
        "thumb_url": "TEXT",
        "display_url": "TEXT",
        "published_at": "TIMESTAMPTZ",
        "deleted_at": "TIMESTAMPTZ",
    },
    "publish_jobs": {
        "retry_count": "INT NOT NULL DEFAULT 0",
        "max_retries": "INT NOT NULL DEFAULT 5",
        "last_error": "TEXT",
        "next_attempt_at": "TIMESTAMPTZ",
        "locked_by": "TEXT",
        "locked_until": "TIMESTAMPTZ",
        "created_at": "TIMESTAMPTZ NOT NULL DEFAULT now()",
        "started_at": "TIMESTAMPTZ",
        "completed_at": "TIMESTAMPTZ",
    },
    "publish_attempts": {"error": "TEXT"},
}

WORKER_COLUMNS_SQLITE: dict[str, dict[str, str]] = {
    "auction_files": {
        "lot_id": "INTEGER",
        "publish_status": "TEXT DEFAULT 'pending'",
        "thumb_url": "TEXT",
        "display_url": "TEXT",
        "published_at": "TEXT",
        "deleted_at": "TEXT",
    },
    "publish_jobs": {
        "retry_count": "INTEGER NOT NULL DEFAULT 0",
        "max_retries": "INTEGER NOT NULL DEFAULT 5",
        "last_error": "TEXT",
        "next_attempt_at": "TEXT",
        "locked_by": "TEXT",
        "locked_until": "TEXT",
        "created_at": "TEXT",
        "started_at": "TEXT",
        "completed_at": "TEXT",
    },
    "publish_attempts": {"error": "TEXT"},
}

# The claim takes the first open jobs in id order. Without this index PostgreSQL walks the
# primary key past every finished job (22.8 ms a claim at 200,000 finished, against 1.5 with
# it), and SQLite reads every open job and sorts them (54 ms at 100,000 open; SQLite's claim
# names the index) or, analysed, walks the history (bench/queue_history.py).
OPEN_INDEX = "publish_jobs_open"
# The few jobs needing attention, in id order (the console's list, the seed's query), found
# without reading the history either.
ATTENTION_INDEX = "publish_jobs_attention"

INDEXES: tuple[str, ...] = (
    f"CREATE INDEX IF NOT EXISTS {OPEN_INDEX} ON publish_jobs (id) WHERE {OPEN}",
    f"CREATE INDEX IF NOT EXISTS {ATTENTION_INDEX} ON publish_jobs (id) WHERE {NEEDS_ATTENTION}",
    "CREATE INDEX IF NOT EXISTS publish_jobs_claim ON publish_jobs (status, next_attempt_at)",
    "CREATE INDEX IF NOT EXISTS publish_jobs_lease ON publish_jobs (status, locked_until)",
    "CREATE INDEX IF NOT EXISTS publish_jobs_file ON publish_jobs (file_id)",
    "CREATE INDEX IF NOT EXISTS publish_attempts_job ON publish_attempts (job_id)",
    "CREATE INDEX IF NOT EXISTS publish_workers_job ON publish_workers (job, started_at)",
    "CREATE INDEX IF NOT EXISTS publish_commands_job ON publish_commands (job, id)",
)
INDEX_NAMES: tuple[str, ...] = tuple(ddl.split()[5] for ddl in INDEXES)

# A plain SQL insert (the seed's edge function) or a job put back to pending wakes the workers
# that LISTEN on `publish_jobs`. Jobs waiting for a backoff do not: nothing is claimable yet.
PG_NOTIFY: tuple[str, ...] = (
    """
    CREATE OR REPLACE FUNCTION publish_jobs_notify() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('publish_jobs', NEW.id::text);
        RETURN NEW;
    END
    $$""",
    "DROP TRIGGER IF EXISTS publish_jobs_notify ON publish_jobs",
    """
    CREATE TRIGGER publish_jobs_notify
    AFTER INSERT OR UPDATE OF status ON publish_jobs
    FOR EACH ROW
    WHEN (NEW.status = 'pending' AND (NEW.next_attempt_at IS NULL OR NEW.next_attempt_at <= now()))
    EXECUTE FUNCTION publish_jobs_notify()""",
)


def missing_schema_error(present: dict[str, set[str]]) -> ConfigError | None:
    """The one-line error for what `present` (table -> its columns) lacks, or None."""
    missing: list[str] = []
    for table, columns in REQUIRED.items():
        if table not in present:
            missing.append(f"table {table}")
            continue
        lacking = [c for c in columns if c not in present[table]]
        if lacking:
            missing.append(f"{table} columns {', '.join(lacking)}")
    if not missing:
        return None
    return ConfigError(
        "DATABASE_URL",
        f"the queue database lacks {'; '.join(missing)}: run `tui-backfill publish init-db`",
    )
