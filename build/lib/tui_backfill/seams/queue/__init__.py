"""The publish job queue: one contract (`base.JobQueue`), a PostgreSQL and a SQLite implementation.

`open_queue(DATABASE_URL)` picks one by the URL's scheme: `postgresql://` / `postgres://`
(asyncpg; `sslmode` honoured, libpq's default `prefer`) or SQLAlchemy's SQLite convention,
`sqlite:///relative/path.sqlite3` (relative to the working directory) or
`sqlite:////absolute/path`. No message ever carries the URL's password (`redact_url`).
"""

from __future__ import annotations

import re

from tui_backfill.outcomes import ConfigError
from tui_backfill.seams.queue.base import (
    AttemptOutcome,
    AttentionJob,
    ClaimedJob,
    JobQueue,
    JobStatus,
    Published,
    QueueFigures,
    RetryPolicy,
    WorkerRow,
)

__all__ = [
    "AttemptOutcome",
    "AttentionJob",
    "ClaimedJob",
    "JobQueue",
    "JobStatus",
    "Published",
    "QueueFigures",
    "RetryPolicy",
    "WorkerRow",
    "open_queue",
    "redact_url",
    "sqlite_path",
]

ACCEPTED = (
    "accepted: postgresql://user:password@host:port/dbname (or postgres://), "
    "sqlite:///relative/path.sqlite3 or sqlite:////absolute/path.sqlite3"
)
_SECRET_PARAM_RE = re.compile(r"([?&](?:ssl)?password=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL with its password (and any password= parameter) replaced by `***`."""
    head, sep, rest = url.partition("://")
    if sep:
        cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        authority, tail = rest[:cut], rest[cut:]
        if "@" in authority:
            userinfo, _, hostport = authority.rpartition("@")
            if ":" in userinfo:
                authority = userinfo.split(":", 1)[0] + ":***@" + hostport
        url = head + sep + authority + tail
    return _SECRET_PARAM_RE.sub(r"\1***", url)


def sqlite_path(url: str) -> str:
    """The file a `sqlite:///...` URL names (SQLAlchemy's convention), or ConfigError."""
    rest = url[len("sqlite://") :]
    if not rest.startswith("/") or len(rest) < 2:
        raise ConfigError("DATABASE_URL", f"{redact_url(url)!r} names no SQLite file; {ACCEPTED}")
    path = rest[1:].split("?", 1)[0]
    if path in ("", ":memory:"):
        raise ConfigError("DATABASE_URL", f"{redact_url(url)!r} names no SQLite file; {ACCEPTED}")
    return path


async def open_queue(database_url: str) -> JobQueue:
    """Connect to the queue `database_url` names. ConfigError (naming DATABASE_URL, never the
    password) for a malformed or unsupported URL or an unreachable server. The schema is not
    touched: call `init_db()` (SQLite workers, `publish init-db`) or `check_schema()`."""
    url = database_url.strip()
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("postgresql", "postgres"):
        from tui_backfill.seams.queue.postgres import PostgresQueue

        return await PostgresQueue.open(url)
    if scheme == "sqlite":
        from tui_backfill.seams.queue.sqlite import SqliteQueue

        return await SqliteQueue.open(sqlite_path(url))
    shown = redact_url(url) if url else "(empty)"
    raise ConfigError("DATABASE_URL", f"{shown!r} is not a supported database URL; {ACCEPTED}")
