"""Key sets on disk: sorted, deduplicated sets of keys too large for memory, in a scratch SQLite
file that is deleted with its directory. The coverage report keeps the catalog and the bucket
listing here; the API's gap pages read the missing keys back in key order.
"""

from __future__ import annotations

import asyncio
import sqlite3
import tempfile
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

import aiosqlite

LOOKUP_CHUNK = 500  # keys per `IN (...)` lookup (SQLite's variable limit is far above)


class ScratchKeys:
    """Named key sets in one scratch database (`async with ScratchKeys(...) as keys`)."""

    def __init__(self, names: Iterable[str], *, directory: str | None = None) -> None:
        self._names = tuple(names)
        self._directory = directory
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._db: aiosqlite.Connection | None = None

    async def __aenter__(self) -> ScratchKeys:
        if self._directory is None:  # file work in threads: `serve` runs this on its loop
            self._tmp = await asyncio.to_thread(
                tempfile.TemporaryDirectory, prefix="tui-backfill-keys-"
            )
            self._directory = self._tmp.name
        self._db = await aiosqlite.connect(str(Path(self._directory) / "keys.sqlite3"))
        await self._db.execute("PRAGMA journal_mode = OFF")
        for name in self._names:
            await self._db.execute(f'CREATE TABLE "{name}" (key TEXT PRIMARY KEY) WITHOUT ROWID')
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._db is not None:
            await self._db.close()
        if self._tmp is not None:
            await asyncio.to_thread(self._tmp.cleanup)

    @property
    def db(self) -> aiosqlite.Connection:
        assert self._db is not None, "use ScratchKeys in `async with`"
        return self._db

    async def add(self, name: str, keys: Iterable[str]) -> None:
        await self.db.executemany(
            f'INSERT OR IGNORE INTO "{name}" VALUES (?)', ((k,) for k in keys)
        )

    async def commit(self) -> None:
        await self.db.commit()

    async def page(self, name: str, after: str, limit: int) -> list[str]:
        """Keys of the set after `after` (byte order), at most `limit`."""
        async with self.db.execute(
            f'SELECT key FROM "{name}" WHERE key > ? ORDER BY key LIMIT ?', (after, limit)
        ) as cur:
            return [row[0] for row in await cur.fetchall()]

    async def present(self, name: str, keys: list[str]) -> set[str]:
        """Which of `keys` are in the set."""
        found: set[str] = set()
        for start in range(0, len(keys), LOOKUP_CHUNK):
            chunk = keys[start : start + LOOKUP_CHUNK]
            sql = f'SELECT key FROM "{name}" WHERE key IN ({",".join("?" * len(chunk))})'
            async with self.db.execute(sql, chunk) as cur:
                found.update(row[0] for row in await cur.fetchall())
        return found


def load_key_file(key_file: str, db_path: str) -> None:
    """A file of keys, one a line (in any order), into a table in key order, for stable
    cursor paging (the API's gap pages). Blocking: run it in a thread."""
    conn = sqlite3.connect(db_path)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("CREATE TABLE keys (key TEXT PRIMARY KEY) WITHOUT ROWID")
        with open(key_file, encoding="utf-8") as f:
            conn.executemany(
                "INSERT OR IGNORE INTO keys VALUES (?)", ((line.rstrip("\n"),) for line in f)
            )
        conn.commit()
    finally:
        conn.close()


def key_file_page(db_path: str, after: str | None, limit: int) -> list[str]:
    """Keys loaded by `load_key_file` after `after`, at most `limit`. Blocking."""
    conn = sqlite3.connect(db_path)
    try:
        rows = conn.execute(
            "SELECT key FROM keys WHERE key > ? ORDER BY key LIMIT ?", (after or "", limit)
        ).fetchall()
    finally:
        conn.close()
    return [row[0] for row in rows]
