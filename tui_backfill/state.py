"""The checkpoint store: runs, their SKU snapshots, counters + checkpoint, failed items, commands.

SQLite in WAL mode through aiosqlite, with a versioned schema. Counters and the checkpoint of a
run are written in one transaction, together with the failed items that changed since the last
commit, so a crash at any instant resumes from a consistent point. Other processes (`status`,
`pause`, the console when attached) read the published snapshot and write to the command channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from tui_backfill.checkpoint import Checkpoint
from tui_backfill.outcomes import ConfigError, FatalError, JobBusy
from tui_backfill.snapshot import Counters, utc_now_iso

SCHEMA_VERSION = 1

MIGRATIONS: dict[int, str] = {
    1: """
    CREATE TABLE IF NOT EXISTS runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- run ids are never reused
        job TEXT NOT NULL,
        status TEXT NOT NULL,          -- preparing | running | paused | completed | abandoned
        dry_run INTEGER NOT NULL DEFAULT 0,
        settings TEXT NOT NULL,        -- JSON, secrets removed
        started_at TEXT NOT NULL,
        ended_at TEXT,
        range_after TEXT,              -- the run scans SKUs after this one (NULL: from the start)
        range_last TEXT,               -- the last SKU of the run's slice
        planned_skus INTEGER NOT NULL DEFAULT 0,
        catalog_skus INTEGER NOT NULL DEFAULT 0,
        counters TEXT NOT NULL,        -- JSON, committed with the checkpoint
        checkpoint TEXT NOT NULL,      -- JSON {lastSku, completedAngles}
        snapshot TEXT,                 -- the latest published status snapshot (JSON)
        pid INTEGER,
        exit_code INTEGER,
        message TEXT
    );
    CREATE INDEX IF NOT EXISTS runs_job ON runs (job, id);
    CREATE TABLE IF NOT EXISTS run_skus (
        run_id INTEGER NOT NULL,
        sku TEXT NOT NULL,
        PRIMARY KEY (run_id, sku)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS failed_items (
        job TEXT NOT NULL,
        sku TEXT NOT NULL,
        angle INTEGER NOT NULL,
        key TEXT NOT NULL,
        code TEXT NOT NULL,
        message TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        run_id INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (job, sku, angle)
    ) WITHOUT ROWID;
    CREATE TABLE IF NOT EXISTS commands (
        id INTEGER PRIMARY KEY,
        job TEXT NOT NULL,
        command TEXT NOT NULL,         -- stop | hold | resume | concurrency
        arg TEXT,
        created_at TEXT NOT NULL,
        consumed_at TEXT
    );
    """,
}


@dataclass(frozen=True, slots=True)
class RunRecord:
    id: int
    job: str
    status: str
    dry_run: bool
    settings: dict[str, Any]
    started_at: str
    ended_at: str | None
    range_after: str | None
    range_last: str | None
    planned_skus: int
    catalog_skus: int
    counters: Counters
    checkpoint: Checkpoint
    snapshot: dict[str, Any] | None
    pid: int | None
    exit_code: int | None
    message: str | None

    @property
    def unfinished(self) -> bool:
        return self.status in ("running", "paused") and not self.dry_run


@dataclass(frozen=True, slots=True)
class FailedItem:
    sku: str
    angle: int
    key: str
    code: str
    message: str
    attempts: int
    run_id: int


_RUN_COLUMNS = (
    "id, job, status, dry_run, settings, started_at, ended_at, range_after, range_last, "
    "planned_skus, catalog_skus, counters, checkpoint, snapshot, pid, exit_code, message"
)


def _run(row: Sequence[Any]) -> RunRecord:
    return RunRecord(
        id=row[0],
        job=row[1],
        status=row[2],
        dry_run=bool(row[3]),
        settings=json.loads(row[4]),
        started_at=row[5],
        ended_at=row[6],
        range_after=row[7],
        range_last=row[8],
        planned_skus=row[9],
        catalog_skus=row[10],
        counters=Counters.from_json(json.loads(row[11])),
        checkpoint=Checkpoint.from_json(json.loads(row[12])),
        snapshot=json.loads(row[13]) if row[13] else None,
        pid=row[14],
        exit_code=row[15],
        message=row[16],
    )


def _state_error(path: str, exc: BaseException) -> ConfigError:
    return ConfigError("--state", f"{path}: {exc}")


class StateStore:
    """One connection to the state database."""

    def __init__(self, path: str, db: aiosqlite.Connection) -> None:
        self.path = path
        self._db = db
        # One connection, several coroutines (item tasks commit checkpoints while the heartbeat
        # publishes snapshots): writes and transactions take turns, so none runs inside another.
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str, *, create: bool = True) -> StateStore:
        """Open (and migrate) the state; problems are ConfigError naming --state."""
        target = Path(path)
        if not create and not target.exists():
            raise ConfigError("--state", f"{path}: no state here (nothing has run with it)")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise _state_error(path, exc) from None
        store = cls(path, db)
        try:
            await db.execute("PRAGMA busy_timeout = 10000")
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await store._migrate()
        except sqlite3.DatabaseError as exc:
            await db.close()
            raise _state_error(path, exc) from None
        return store

    async def close(self) -> None:
        await self._db.close()

    async def _migrate(self) -> None:
        await self._db.execute(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
        )
        async with self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this tui-backfill understands ({SCHEMA_VERSION}); upgrade tui-backfill"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                for statement in MIGRATIONS[target].split(";"):
                    if statement.strip():
                        await self._db.execute(statement)
                await self._db.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(target),),
                )
                await self._db.execute("COMMIT")
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await asyncio.shield(self._db.execute("ROLLBACK"))
                raise
            else:
                await asyncio.shield(self._db.execute("COMMIT"))

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One statement in autocommit mode, never inside another coroutine's transaction."""
        async with self._write_lock:
            await self._db.execute(sql, params)

    # -- runs -------------------------------------------------------------------------------

    async def _one_run(self, where: str, params: Sequence[Any]) -> RunRecord | None:
        sql = f"SELECT {_RUN_COLUMNS} FROM runs WHERE {where} ORDER BY id DESC LIMIT 1"
        async with self._db.execute(sql, params) as cur:
            row = await cur.fetchone()
        return _run(row) if row else None

    async def run(self, run_id: int) -> RunRecord | None:
        return await self._one_run("id = ?", (run_id,))

    async def latest_run(self, job: str, *, include_dry: bool = True) -> RunRecord | None:
        where = "job = ?" if include_dry else "job = ? AND dry_run = 0"
        return await self._one_run(where, (job,))

    async def unfinished_run(self, job: str) -> RunRecord | None:
        return await self._one_run(
            "job = ? AND dry_run = 0 AND status IN ('running', 'paused')", (job,)
        )

    async def last_completed_run(self, job: str) -> RunRecord | None:
        return await self._one_run("job = ? AND dry_run = 0 AND status = 'completed'", (job,))

    async def runs(self, job: str, *, limit: int) -> list[RunRecord]:
        """The job's runs, newest first, at most `limit` (the run history)."""
        async with self._db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE job = ? ORDER BY id DESC LIMIT ?",
            (job, max(limit, 0)),
        ) as cur:
            return [_run(row) for row in await cur.fetchall()]

    async def create_run(
        self, job: str, settings: dict[str, Any], *, dry_run: bool, range_after: str | None
    ) -> int:
        async with self.transaction() as db:
            # A dry run never leaves anything behind, nor does a run whose process died while
            # it read the catalog ('preparing'): both are dropped (the job lock is ours).
            stale = "SELECT id FROM runs WHERE job = ? AND (dry_run = 1 OR status = 'preparing')"
            await db.execute(f"DELETE FROM run_skus WHERE run_id IN ({stale})", (job,))
            await db.execute(f"DELETE FROM failed_items WHERE run_id IN ({stale})", (job,))
            await db.execute(f"DELETE FROM runs WHERE id IN ({stale})", (job,))
            cur = await db.execute(
                "INSERT INTO runs (job, status, dry_run, settings, started_at, range_after, counters, checkpoint, pid) "
                "VALUES (?, 'preparing', ?, ?, ?, ?, ?, ?, ?)",
                (
                    job,
                    int(dry_run),
                    json.dumps(settings, sort_keys=True),
                    utc_now_iso(),
                    range_after,
                    json.dumps(Counters().to_json()),
                    json.dumps(Checkpoint().to_json()),
                    os.getpid(),
                ),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    async def snapshot_skus(
        self, run_id: int, batches: AsyncIterator[list[str]], range_after: str | None, limit: int
    ) -> tuple[str | None, int, int]:
        """Read the source once into a sorted, deduplicated table and keep the run's slice.

        The slice is the first `limit` SKUs after `range_after`; when none is left after it,
        the run wraps to the start of the catalog. Returns (range_after, planned, catalog size).
        """
        db = self._db
        await db.execute("DROP TABLE IF EXISTS temp.catalog_load")
        await db.execute("CREATE TEMP TABLE catalog_load (sku TEXT PRIMARY KEY) WITHOUT ROWID")
        try:
            async for batch in batches:
                await db.executemany(
                    "INSERT OR IGNORE INTO temp.catalog_load (sku) VALUES (?)",
                    ((s,) for s in batch),
                )
            async with db.execute("SELECT count(*) FROM temp.catalog_load") as cur:
                row = await cur.fetchone()
            catalog = int(row[0]) if row else 0
            if range_after is not None:
                async with db.execute(
                    "SELECT 1 FROM temp.catalog_load WHERE sku > ? LIMIT 1", (range_after,)
                ) as cur:
                    if await cur.fetchone() is None:
                        range_after = None  # past the catalog's end: wrap to the start
            async with self.transaction():
                await db.execute(
                    "INSERT INTO run_skus (run_id, sku) SELECT ?, sku FROM temp.catalog_load "
                    "WHERE ? IS NULL OR sku > ? ORDER BY sku LIMIT ?",
                    (run_id, range_after, range_after, limit),
                )
                async with db.execute(
                    "SELECT count(*), max(sku) FROM run_skus WHERE run_id = ?", (run_id,)
                ) as cur:
                    row = await cur.fetchone()
                planned = int(row[0]) if row else 0
                last = row[1] if row else None
                await db.execute(
                    "UPDATE runs SET range_after = ?, range_last = ?, planned_skus = ?, catalog_skus = ?, "
                    "status = 'running' WHERE id = ?",
                    (range_after, last, planned, catalog, run_id),
                )
        finally:
            await db.execute("DROP TABLE IF EXISTS temp.catalog_load")
        return range_after, planned, catalog

    async def run_skus_page(self, run_id: int, after: str | None, limit: int) -> list[str]:
        async with self._db.execute(
            "SELECT sku FROM run_skus WHERE run_id = ? AND (? IS NULL OR sku > ?) ORDER BY sku LIMIT ?",
            (run_id, after, after, limit),
        ) as cur:
            return [row[0] for row in await cur.fetchall()]

    async def commit_checkpoint(
        self,
        run_id: int,
        counters: Counters,
        checkpoint: Checkpoint,
        *,
        job: str,
        failed: Iterable[FailedItem] = (),
        resolved: Iterable[tuple[str, int]] = (),
        status: str | None = None,
        exit_code: int | None = None,
        message: str | None = None,
        snapshot: dict[str, Any] | None = None,
    ) -> None:
        """Counters, checkpoint and failed items in one transaction (callers shield it)."""
        try:
            async with self.transaction() as db:
                await db.executemany(
                    "DELETE FROM failed_items WHERE job = ? AND sku = ? AND angle = ?",
                    [(job, sku, angle) for sku, angle in resolved],
                )
                await db.executemany(
                    "INSERT OR REPLACE INTO failed_items (job, sku, angle, key, code, message, attempts, run_id, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            job,
                            f.sku,
                            f.angle,
                            f.key,
                            f.code,
                            f.message,
                            f.attempts,
                            f.run_id,
                            utc_now_iso(),
                        )
                        for f in failed
                    ],
                )
                sets = ["counters = ?", "checkpoint = ?"]
                params: list[Any] = [
                    json.dumps(counters.to_json()),
                    json.dumps(checkpoint.to_json()),
                ]
                if snapshot is not None:
                    sets.append("snapshot = ?")
                    params.append(json.dumps(snapshot))
                if status is not None:
                    sets.append("status = ?")
                    params.append(status)
                    if status in ("completed", "failed", "abandoned"):
                        sets.append("ended_at = ?")
                        params.append(utc_now_iso())
                if exit_code is not None:
                    sets.append("exit_code = ?")
                    params.append(exit_code)
                if message is not None:
                    sets.append("message = ?")
                    params.append(message)
                await db.execute(
                    f"UPDATE runs SET {', '.join(sets)} WHERE id = ?", (*params, run_id)
                )
        except sqlite3.Error as exc:
            raise FatalError(f"state {self.path}: {exc}", code="state") from None

    async def publish_snapshot(self, run_id: int, snapshot: dict[str, Any]) -> None:
        try:
            await self._write(
                "UPDATE runs SET snapshot = ? WHERE id = ?", (json.dumps(snapshot), run_id)
            )
        except sqlite3.Error as exc:
            raise FatalError(f"state {self.path}: {exc}", code="state") from None

    async def set_run_status(self, run_id: int, status: str, *, pid: int | None = None) -> None:
        await self._write(
            "UPDATE runs SET status = ?, pid = coalesce(?, pid) WHERE id = ?", (status, pid, run_id)
        )

    async def update_settings(self, run_id: int, changes: dict[str, Any]) -> None:
        """Change stored settings of a run (the demo's servers get new ports each time)."""
        run = await self.run(run_id)
        if run is not None:
            settings = {**run.settings, **changes}
            await self._write(
                "UPDATE runs SET settings = ? WHERE id = ?",
                (json.dumps(settings, sort_keys=True), run_id),
            )

    async def abandon_run(self, run_id: int) -> None:
        await self._write(
            "UPDATE runs SET status = 'abandoned', ended_at = ? WHERE id = ?",
            (utc_now_iso(), run_id),
        )

    async def delete_run(self, run_id: int) -> None:
        async with self.transaction() as db:
            await db.execute("DELETE FROM run_skus WHERE run_id = ?", (run_id,))
            await db.execute("DELETE FROM failed_items WHERE run_id = ?", (run_id,))
            await db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    # -- failed items ---------------------------------------------------------------------

    async def failed_items(self, job: str, *, exclude_run: int | None = None) -> list[FailedItem]:
        async with self._db.execute(
            "SELECT sku, angle, key, code, message, attempts, run_id FROM failed_items "
            "WHERE job = ? AND run_id IS NOT ? ORDER BY sku, angle",
            (job, exclude_run),
        ) as cur:
            return [FailedItem(*row) for row in await cur.fetchall()]

    # -- commands -------------------------------------------------------------------------

    async def send_command(self, job: str, command: str, arg: str | None = None) -> None:
        await self._write(
            "INSERT INTO commands (job, command, arg, created_at) VALUES (?, ?, ?, ?)",
            (job, command, arg, utc_now_iso()),
        )

    async def take_commands(self, job: str) -> list[tuple[str, str | None]]:
        """Pending commands for the job, oldest first, marked consumed (one consumer per job)."""
        async with self._db.execute(
            "SELECT id, command, arg FROM commands WHERE job = ? AND consumed_at IS NULL ORDER BY id",
            (job,),
        ) as cur:
            rows = list(await cur.fetchall())
        if rows:
            await self._write(
                f"UPDATE commands SET consumed_at = ? WHERE id IN ({','.join('?' * len(rows))})",
                (utc_now_iso(), *(row[0] for row in rows)),
            )
        return [(row[1], row[2]) for row in rows]

    async def clear_commands(self, job: str) -> None:
        await self._write(
            "UPDATE commands SET consumed_at = ? WHERE job = ? AND consumed_at IS NULL",
            (utc_now_iso(), job),
        )


@contextlib.asynccontextmanager
async def open_state(path: str) -> AsyncIterator[StateStore]:
    """An existing state, for readers and commands (`status`, `pause`, the attached console)."""
    store = await StateStore.open(path, create=False)
    try:
        yield store
    finally:
        await store.close()


class JobLock:
    """One process per job: an OS lock on `<state>.<job>.lock`, released even by SIGKILL."""

    def __init__(self, state_path: str, job: str) -> None:
        self.path = f"{state_path}.{job}.lock"
        self._fd: int | None = None

    def holder(self) -> int | None:
        """The pid of the live process holding the lock, or None."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                content = os.read(fd, 64).decode(errors="replace").strip()
                return int(content) if content.isdigit() else -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def acquire(self, job: str) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        # A `status` reading the lock holds it shared for an instant: try for a short while.
        for attempt in range(20):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt < 19:
                    time.sleep(0.05)
        else:
            content = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise JobBusy("--job", f"job {job!r} is already running in process {content or '?'}")
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
