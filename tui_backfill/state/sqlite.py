"""The checkpoint store: runs, their SKU snapshots, counters + checkpoint, failed items, commands.

SQLite in WAL mode through aiosqlite, with a versioned schema. Counters and the checkpoint of a
run are written in one transaction, together with the failed items that changed since the last
commit, so a crash at any instant resumes from a consistent point. Other processes (`status`,
`pause`, the console when attached) read the published snapshot and write to the command channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import socket
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, Protocol, TypeVar

import aiosqlite

from tui_backfill.core.counters import CounterSet
from tui_backfill.core.records import DEFAULT_PIPELINE, Command, FailedItem, RunRecord, codec_for
from tui_backfill.core.snapshot import utc_now_iso
from tui_backfill.core.store import StateUnavailable
from tui_backfill.outcomes import ConfigError
from tui_backfill.state.problems import (
    BUSY_TIMEOUT_SECONDS,
    NewerState,
    NotAState,
    read_only_without_wal,
    state_error,
    state_error_now,
    state_fatal,
)

SCHEMA_VERSION = 3

# Each migration takes the schema from the version before it to its own, in one transaction.
# Never edit a released one (tests/test_state_stress.py keeps a copy of version 1): add the next.
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
    2: """
    ALTER TABLE runs ADD COLUMN host TEXT;  -- the machine whose process last ran the run
    """,
    3: """
    CREATE TABLE IF NOT EXISTS absent_items (  -- keys whose latest attempt the origin answered 404
        job TEXT NOT NULL,
        key TEXT NOT NULL,
        run_id INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (job, key)
    ) WITHOUT ROWID;
    -- runs up to this id were before absent_items: their 404s are not in it
    INSERT OR REPLACE INTO meta (key, value)
        SELECT 'absent_items_after_run', CAST(COALESCE(MAX(id), 0) AS TEXT) FROM runs
    """,
}


class _Json(Protocol):
    def to_json(self) -> dict[str, Any]: ...


_RUN_COLUMNS = (
    "id, job, status, dry_run, settings, started_at, ended_at, range_after, range_last, "
    "planned_skus, catalog_skus, counters, checkpoint, snapshot, pid, exit_code, message, host"
)


def _run(row: Sequence[Any]) -> RunRecord:
    settings = json.loads(row[4])
    pipeline = str(settings.get("pipeline") or DEFAULT_PIPELINE)
    try:
        codec = codec_for(pipeline)
    except KeyError:
        raise NewerState(
            f"run {row[0]} of job {row[1]!r} is of the pipeline {pipeline!r}, which this "
            "tui-backfill does not know (written by a newer version?)"
        ) from None
    return RunRecord(
        id=row[0],
        job=row[1],
        status=row[2],
        dry_run=bool(row[3]),
        settings=settings,
        started_at=row[5],
        ended_at=row[6],
        range_after=row[7],
        range_last=row[8],
        planned_skus=row[9],
        catalog_skus=row[10],
        counters=codec.counters.from_json(json.loads(row[11])),
        checkpoint=codec.checkpoint(json.loads(row[12])),
        snapshot=json.loads(row[13]) if row[13] else None,
        pid=row[14],
        exit_code=row[15],
        message=row[16],
        host=row[17],
    )


def _json_set(changes: dict[str, Any]) -> str:
    """`json_set(settings, '$.name', json(?), ...)`: keys of the stored settings changed in
    place, in one statement (no read-modify-write beside another connection's writes)."""
    return "json_set(settings" + ", ?, json(?)" * len(changes) + ")"


def _json_set_params(changes: dict[str, Any]) -> list[str]:
    params: list[str] = []
    for name, value in sorted(changes.items()):
        params += [f"$.{name}", json.dumps(value)]
    return params


P = ParamSpec("P")
R = TypeVar("R")


def _classified(
    method: Callable[Concatenate[StateStore, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[StateStore, P], Coroutine[Any, Any, R]]:
    """The store's own error for SQLite's: callers never see `sqlite3.Error`."""

    @functools.wraps(method)
    async def classified(store: StateStore, *args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(store, *args, **kwargs)
        except sqlite3.Error as exc:
            raise state_fatal(store.path, exc) from None

    return classified  # type: ignore[return-value]  # functools.wraps hides the signature


class StateStore:
    """One connection to the state database."""

    def __init__(self, path: str, db: aiosqlite.Connection) -> None:
        self.path = path
        self._db = db
        # One connection, several coroutines (item tasks commit checkpoints while the heartbeat
        # publishes snapshots): writes and transactions take turns, so none runs inside another.
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: str, *, create: bool = True, check: bool | None = None) -> StateStore:
        """Open (and migrate) the state; problems are ConfigError naming --state.

        `create`: the state of a run (created when missing). Such an open also checks that
        the state can be written now (a read-only file or directory, or a write lock another
        process holds past the busy timeout, is exit 2 before any work). `check` (default:
        `create`): run SQLite's structural check (`PRAGMA quick_check`, about 0.1 s per
        million SKUs), so a corrupted state is found before any work, not in the middle of it.
        """
        target = Path(path)
        if not create and not target.exists():
            raise ConfigError("--state", f"{path}: no state here (nothing has run with it)")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            db = await aiosqlite.connect(path, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise state_error(path, exc) from None
        store = cls(path, db)
        try:
            await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_SECONDS * 1000}")
            await store._schema_version()  # a newer state, or not a state: left as it is
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = NORMAL")
            await store._migrate()
            if create if check is None else check:
                await store._quick_check()
            if create:
                await store._check_writable()
        except (sqlite3.Error, OSError) as exc:
            with contextlib.suppress(sqlite3.Error):
                await db.close()
            if not create and read_only_without_wal(path, exc):
                return await cls._open_immutable(path, check=bool(check))
            raise state_error(path, exc) from None
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await db.close()
            raise
        return store

    @classmethod
    async def _open_immutable(cls, path: str, *, check: bool) -> StateStore:
        """A reader's view of a state in a read-only directory (SQLite cannot create its -shm
        there). Without a -wal file the database file holds every commit, and nothing can
        write there, so SQLite may read it as immutable."""
        uri = f"{Path(path).resolve().as_uri()}?immutable=1"
        try:
            db = await aiosqlite.connect(uri, uri=True, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise state_error(path, exc) from None
        store = cls(path, db)
        try:
            version = await store._schema_version()
            if version < SCHEMA_VERSION:
                raise NotAState(
                    f"read-only, and its schema (version {version}) needs migrating to version "
                    f"{SCHEMA_VERSION} before this tui-backfill can read it; open it once where "
                    "it can be written"
                )
            if check:
                await store._quick_check()
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                await db.close()
            raise state_error(path, exc) from None
        return store

    async def close(self) -> None:
        await self._db.close()

    async def _rollback(self) -> None:
        """End the open transaction, if any. SQLite rolls some failures back by itself
        (SQLITE_FULL, SQLITE_IOERR) while a failed COMMIT (SQLITE_BUSY) leaves the
        transaction open; either way the caller's own error is the one that matters."""
        if self._db.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("ROLLBACK")

    async def _schema_version(self) -> int:
        """The state's schema version; 0 for an empty database. Raises NotAState for a SQLite
        file that is something else (say, the catalog given as --state) and NewerState for a
        version this tui-backfill does not know."""
        async with self._db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        ) as cur:
            tables = {row[0] for row in await cur.fetchall()}
        row = None
        if "meta" in tables:
            async with self._db.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ) as cur:
                row = await cur.fetchone()
        if row is None:
            if tables - {"meta"}:
                shown = ", ".join(sorted(tables - {"meta"})[:5])
                raise NotAState(
                    f"not a tui-backfill state (a SQLite database with other tables: {shown}); "
                    "give --state a new file"
                )
            return 0
        try:
            version = int(row[0])
        except ValueError:
            raise NotAState(f"not a valid state database (schema version {row[0]!r})") from None
        if version > SCHEMA_VERSION:
            raise NewerState(
                f"written by a newer tui-backfill (state schema version {version}; this "
                f"tui-backfill reads up to {SCHEMA_VERSION}); upgrade tui-backfill to use it"
            )
        return version

    async def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION, one transaction per version. The version is read
        again under the write lock, so two processes opening an old state at once migrate it
        once."""
        if await self._schema_version() == SCHEMA_VERSION:
            return
        for target in range(1, SCHEMA_VERSION + 1):
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                if await self._schema_version() < target:
                    await self._db.execute(
                        "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
                    )
                    for statement in MIGRATIONS[target].split(";"):
                        if statement.strip():
                            await self._db.execute(statement)
                    await self._db.execute(
                        "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
                        (str(target),),
                    )
                await self._db.execute("COMMIT")
            except BaseException:
                await asyncio.shield(self._rollback())
                raise

    async def _quick_check(self) -> None:
        async with self._db.execute("PRAGMA quick_check(5)") as cur:
            # one line: SQLite's own lines may hold line breaks ("*** in database main ***\n")
            problems = [" ".join(str(row[0]).split()) for row in await cur.fetchall()]
        if problems != ["ok"]:
            raise NotAState(
                f"not a valid state database (SQLite's check: {'; '.join(problems)[:300]}); "
                "restore it from a copy, or move it aside to start over (objects already in "
                "the bucket count as skippedExists)"
            )

    async def _check_writable(self) -> None:
        """Take the write lock and touch a row, then roll back: nothing is written, but a
        read-only file (SQLite then opens it read-only without a word), a read-only directory
        or a write lock held by another process past the busy timeout shows now."""
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            await self._db.execute("UPDATE meta SET value = value WHERE key = 'schema_version'")
        finally:
            await asyncio.shield(self._rollback())

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write_lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                await asyncio.shield(self._db.execute("COMMIT"))
            except BaseException:
                # The body's or COMMIT's error (disk full, locked) is the one raised.
                await asyncio.shield(self._rollback())
                raise

    async def _write(self, sql: str, params: Sequence[Any] = ()) -> None:
        """One statement in autocommit mode, never inside another coroutine's transaction."""
        async with self._write_lock:
            await self._db.execute(sql, params)

    # -- runs -------------------------------------------------------------------------------

    @_classified
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

    @_classified
    async def jobs(self) -> list[str]:
        """The names of the jobs that have runs here, sorted."""
        async with self._db.execute("SELECT DISTINCT job FROM runs ORDER BY job") as cur:
            return [str(row[0]) for row in await cur.fetchall()]

    @_classified
    async def runs(self, job: str, *, limit: int) -> list[RunRecord]:
        """The job's runs, newest first, at most `limit` (the run history)."""
        async with self._db.execute(
            f"SELECT {_RUN_COLUMNS} FROM runs WHERE job = ? ORDER BY id DESC LIMIT ?",
            (job, max(limit, 0)),
        ) as cur:
            return [_run(row) for row in await cur.fetchall()]

    @_classified
    async def create_run(
        self, job: str, settings: dict[str, Any], *, dry_run: bool, range_after: str | None
    ) -> int:
        codec = codec_for(str(settings.get("pipeline") or DEFAULT_PIPELINE))
        async with self.transaction() as db:
            # A dry run never leaves anything behind, nor does a run whose process died while
            # it read the catalog ('preparing'): both are dropped (the job lock is ours).
            stale = "SELECT id FROM runs WHERE job = ? AND (dry_run = 1 OR status = 'preparing')"
            await db.execute(f"DELETE FROM run_skus WHERE run_id IN ({stale})", (job,))
            await db.execute(f"DELETE FROM failed_items WHERE run_id IN ({stale})", (job,))
            await db.execute(f"DELETE FROM runs WHERE id IN ({stale})", (job,))
            cur = await db.execute(
                "INSERT INTO runs (job, status, dry_run, settings, started_at, range_after, counters, checkpoint, pid, host) "
                "VALUES (?, 'preparing', ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job,
                    int(dry_run),
                    json.dumps(settings, sort_keys=True),
                    utc_now_iso(),
                    range_after,
                    json.dumps(codec.counters().to_json()),
                    json.dumps(codec.empty_checkpoint()),
                    os.getpid(),
                    socket.gethostname(),
                ),
            )
            assert cur.lastrowid is not None
            return cur.lastrowid

    @_classified
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

    async def groups_page(self, run_id: int, after: str | None, limit: int) -> list[str]:
        """A page of the run's source snapshot (SKUs for the image job) (read during the run: errors are fatal, exit 3)."""
        try:
            async with self._db.execute(
                "SELECT sku FROM run_skus WHERE run_id = ? AND (? IS NULL OR sku > ?) ORDER BY sku LIMIT ?",
                (run_id, after, after, limit),
            ) as cur:
                return [row[0] for row in await cur.fetchall()]
        except sqlite3.Error as exc:
            raise state_fatal(self.path, exc) from None

    async def commit_checkpoint(
        self,
        run_id: int,
        counters: CounterSet,
        checkpoint: dict[str, Any] | _Json,
        *,
        job: str,
        failed: Iterable[FailedItem] = (),
        resolved: Iterable[tuple[str, int]] = (),
        absent: Iterable[str] = (),
        present: Iterable[str] = (),
        status: str | None = None,
        exit_code: int | None = None,
        message: str | None = None,
        snapshot: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        """Counters, checkpoint and failed items in one transaction (callers shield it), with
        `settings` changed in the run's stored settings. `absent`: keys the origin answered
        404 for (remembered); `present`: keys whose items ended otherwise (forgotten)."""
        try:
            present = list(present)
            absent = list(absent)
            resolved = list(resolved)
            failed = list(failed)
            async with self.transaction() as db:
                # Most commits forget no absent key: one lookup instead of one per key
                if present and (absent or await self._has_absent(db, job)):
                    await db.executemany(
                        "DELETE FROM absent_items WHERE job = ? AND key = ?",
                        [(job, key) for key in present],
                    )
                if absent:
                    now = utc_now_iso()
                    await db.executemany(
                        "INSERT OR REPLACE INTO absent_items (job, key, run_id, updated_at) "
                        "VALUES (?, ?, ?, ?)",
                        [(job, key, run_id, now) for key in absent],
                    )
                if resolved:
                    await db.executemany(
                        "DELETE FROM failed_items WHERE job = ? AND sku = ? AND angle = ?",
                        [(job, sku, angle) for sku, angle in resolved],
                    )
                if failed:
                    await db.executemany(
                        "INSERT OR REPLACE INTO failed_items (job, sku, angle, key, code, message, attempts, run_id, updated_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (
                                job,
                                f.group,
                                f.member,
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
                    json.dumps(
                        checkpoint if isinstance(checkpoint, dict) else checkpoint.to_json()
                    ),
                ]
                if snapshot is not None:
                    sets.append("snapshot = ?")
                    params.append(json.dumps(snapshot))
                if settings:
                    sets.append(f"settings = {_json_set(settings)}")
                    params.extend(_json_set_params(settings))
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
            raise state_fatal(self.path, exc) from None

    @staticmethod
    async def _has_absent(db: aiosqlite.Connection, job: str) -> bool:
        async with db.execute("SELECT 1 FROM absent_items WHERE job = ? LIMIT 1", (job,)) as cur:
            return await cur.fetchone() is not None

    async def publish_snapshot(self, run_id: int, snapshot: dict[str, Any]) -> None:
        """The live snapshot of a running run; never over the final one its last commit wrote
        (a publish queued behind that commit would otherwise land after it)."""
        try:
            await self._write(
                "UPDATE runs SET snapshot = ? WHERE id = ? AND status IN ('preparing', 'running')",
                (json.dumps(snapshot), run_id),
            )
        except sqlite3.Error as exc:
            raise state_fatal(self.path, exc) from None

    @_classified
    async def set_run_status(self, run_id: int, status: str, *, pid: int | None = None) -> None:
        """The run's status; with `pid`, this process (and machine) now runs it."""
        host = socket.gethostname() if pid is not None else None
        await self._write(
            "UPDATE runs SET status = ?, pid = coalesce(?, pid), host = coalesce(?, host) WHERE id = ?",
            (status, pid, host, run_id),
        )

    async def update_settings(self, run_id: int, changes: dict[str, Any]) -> None:
        """Change stored settings of a run (the demo's servers get new ports each time; a
        concurrency changed live is kept for the resume)."""
        try:
            await self._write(
                f"UPDATE runs SET settings = {_json_set(changes)} WHERE id = ?",
                (*_json_set_params(changes), run_id),
            )
        except sqlite3.Error as exc:
            raise state_error_now(self.path, exc) from None

    @_classified
    async def abandon_run(self, run_id: int) -> None:
        await self._write(
            "UPDATE runs SET status = 'abandoned', ended_at = ? WHERE id = ?",
            (utc_now_iso(), run_id),
        )

    @_classified
    async def delete_run(self, run_id: int) -> None:
        async with self.transaction() as db:
            await db.execute("DELETE FROM run_skus WHERE run_id = ?", (run_id,))
            await db.execute("DELETE FROM failed_items WHERE run_id = ?", (run_id,))
            await db.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    # -- items the origin does not have ---------------------------------------------------

    @_classified
    async def absent_keys(self, job: str, after: str, limit: int) -> list[str]:
        """Keys of the job whose latest attempt the origin answered 404 (`noRemote`), in key
        order after `after`, at most `limit` (coverage's fillable split)."""
        async with self._db.execute(
            "SELECT key FROM absent_items WHERE job = ? AND key > ? ORDER BY key LIMIT ?",
            (job, after, limit),
        ) as cur:
            return [row[0] for row in await cur.fetchall()]

    @_classified
    async def untracked_no_remote(self, job: str) -> int:
        """`noRemote` counted by the job's runs from before the state kept absent keys (its
        upgrade to schema 3): those 404s are not among `absent_keys`."""
        async with self._db.execute(
            "SELECT value FROM meta WHERE key = 'absent_items_after_run'"
        ) as cur:
            row = await cur.fetchone()
        last = int(row[0]) if row is not None else 0
        if last == 0:
            return 0
        async with self._db.execute(
            "SELECT COALESCE(SUM(json_extract(counters, '$.no_remote')), 0) FROM runs "
            "WHERE job = ? AND id <= ? AND dry_run = 0",
            (job, last),
        ) as cur:
            total = await cur.fetchone()
        return int(total[0]) if total is not None else 0

    # -- failed items ---------------------------------------------------------------------

    async def failed_items(self, job: str, *, exclude_run: int | None = None) -> list[FailedItem]:
        try:
            async with self._db.execute(
                "SELECT sku, angle, key, code, message, attempts, run_id FROM failed_items "
                "WHERE job = ? AND run_id IS NOT ? ORDER BY sku, angle",
                (job, exclude_run),
            ) as cur:
                return [FailedItem(*row) for row in await cur.fetchall()]
        except sqlite3.Error as exc:
            raise state_fatal(self.path, exc) from None

    @_classified
    async def forget_failed(self, job: str, key: str) -> int:
        """Drop the job's failed items whose destination key is `key`, so no later run retries
        them as carryover (an operator's decision: say a `bad_sku` that can never succeed).
        Returns how many went; 0 when none has that key."""
        return await self._delete_failed("job = ? AND key = ?", (job, key))

    @_classified
    async def forget_all_failed(self, job: str) -> int:
        """Drop every failed item of the job (see `forget_failed`); returns how many went."""
        return await self._delete_failed("job = ?", (job,))

    async def _delete_failed(self, where: str, params: Sequence[Any]) -> int:
        async with self.transaction() as db:
            cur = await db.execute(f"DELETE FROM failed_items WHERE {where}", params)
            return max(cur.rowcount, 0)

    # -- commands -------------------------------------------------------------------------

    @_classified
    async def send_command(self, job: str, command: Command, arg: str | None = None) -> None:
        await self._write(
            "INSERT INTO commands (job, command, arg, created_at) VALUES (?, ?, ?, ?)",
            (job, command, arg, utc_now_iso()),
        )

    async def take_commands(self, job: str) -> list[tuple[str, str | None]]:
        """Pending commands for the job, oldest first, marked consumed (one consumer per job).
        A state locked for now is StateBusy: the caller asks again at its next beat."""
        try:
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
        except sqlite3.Error as exc:
            raise state_error_now(self.path, exc) from None
        return [(row[1], row[2]) for row in rows]

    @_classified
    async def clear_commands(self, job: str) -> None:
        await self._write(
            "UPDATE commands SET consumed_at = ? WHERE job = ? AND consumed_at IS NULL",
            (utc_now_iso(), job),
        )


@contextlib.asynccontextmanager
async def open_state(path: str, *, check: bool = False) -> AsyncIterator[StateStore]:
    """An existing state, for readers and commands (`status`, `pause`, the attached console).

    `check`: SQLite's structural check first (the CLI's one-off readers; not a poller's).
    A state error inside the block (corrupted pages, a write lock held past the busy timeout)
    is a ConfigError naming the file.
    """
    store = await StateStore.open(path, create=False, check=check)
    try:
        yield store
    except sqlite3.Error as exc:
        raise state_error(path, exc) from None
    except StateUnavailable as exc:
        raise ConfigError("--state", exc.message.removeprefix("state ")) from None
    finally:
        await store.close()
