"""The publish queue on PostgreSQL (asyncpg): being written; SQLite works meanwhile."""

from __future__ import annotations

from tui_backfill.outcomes import ConfigError
from tui_backfill.seams.queue.base import JobQueue


class PostgresQueue:
    @classmethod
    async def open(cls, url: str) -> JobQueue:
        raise ConfigError("DATABASE_URL", "PostgreSQL queues are not implemented yet")
