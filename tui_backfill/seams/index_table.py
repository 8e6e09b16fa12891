"""The content-hash index table: one table of a SQLite file (the seed's D1 is SQLite), keyed by
object key, holding each object's SHA-256 (`content_hash`) and, where the table has the
columns, its size, ETag, upload time and uploader.

The hash-index pipeline reads it a listing page at a time (`rows`), writes batched upserts
(`upsert`: `INSERT ... ON CONFLICT(key) DO UPDATE`, one transaction a call) and asks the seed's
coverage query (`coverage`). Everything wrong with the file or the table is found by `open`,
before anything is written, as a ConfigError naming the option.

- Only `key` and `content_hash` are required; `size`, `etag`, `uploaded_at` and `uploader_id`
  are used when the table has them. `uploaded_at` and `uploader_id` are set on insert only.
- The table name is a plain identifier, always quoted in SQL. The file's journal mode is left
  as it is (a D1 export is a plain file), and a write waits up to 5 s for another connection.
- Dry run (`create=False`): the file is opened read-only (`mode=ro`) and nothing is created or
  written; a missing file or table reads as an empty table, and `upsert` is a programming error.
- `emit_sql`: every upsert is also appended, as plain SQL with literals, one statement a line,
  to that file (fsynced before `upsert` returns, before its transaction commits), to apply to a
  remote D1 (`wrangler d1 execute DB --file F`) or a copy (`sqlite3 copy.db < F`). The file is
  appended to by every run, never truncated (upserts applied twice give the same table, a lost
  statement would not: the operator empties it once it is applied). A torn last
  line (a crash mid-write, whose transaction therefore never committed) is cut at `open`.
- Key order is SQLite's BINARY collation, which for UTF-8 text is the byte order of S3 keys;
  prefixes are key ranges, never LIKE (case-insensitive, with wildcards).

SQLite runs in one thread of the table's own (one connection, its calls in order), never on
the event loop. Callers never see `sqlite3.Error`: a lock held past the timeout is IndexBusy
(retryable), anything else IndexUnavailable (fatal).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO, TypeVar

from tui_backfill.files import unwritable
from tui_backfill.outcomes import ConfigError, FatalError, RetryableError

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
CREATE_COLUMNS = ("key", "content_hash", "size", "etag", "uploaded_at", "uploader_id")
REQUIRED_COLUMNS = ("key", "content_hash")
UPDATED_COLUMNS = ("size", "etag")  # besides content_hash; uploaded_at and uploader_id: insert only
BUSY_TIMEOUT_SECONDS = 5.0

# SQLite's primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF).
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 10, 11, 13, 14, 26

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class IndexRow:
    key: str
    content_hash: str | None
    size: int | None  # None when the table has no size column or the value is NULL
    etag: str | None  # likewise


@dataclass(frozen=True, slots=True)
class Upsert:
    key: str
    content_hash: str  # lowercase hex sha256
    size: int | None
    etag: str | None
    uploaded_at: str | None  # the object's LastModified, ISO-8601 UTC (used only on insert)


@dataclass(frozen=True, slots=True)
class Coverage:
    total: int
    with_hash: int
    coverage_percent: float  # round(100*with_hash/total, 2); 0.0 when total == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "with_hash": self.with_hash,
            "coverage_percent": self.coverage_percent,
        }

    @classmethod
    def of(cls, total: int, with_hash: int) -> Coverage:
        percent = round(100 * with_hash / total, 2) if total else 0.0
        return cls(total, with_hash, percent)


class IndexBusy(RetryableError):
    """The index file stayed locked by another connection past the busy timeout."""

    code = "index_busy"


class IndexUnavailable(FatalError):
    """The index cannot be read or written any more (disk full, file gone read-only, corrupt)."""

    code = "index"


def check_table_name(name: str, field: str = "--index-table") -> str:
    """The table name if it is a plain SQL identifier, else ConfigError naming `field`."""
    if not IDENTIFIER.fullmatch(name):
        raise ConfigError(
            field,
            f"{name!r} is not a plain SQL identifier; accepted: a letter or _ followed by "
            "letters, digits or _ ([A-Za-z_][A-Za-z0-9_]*)",
        )
    return name


def quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_literal(value: str | int | None) -> str:
    """A value as an SQL literal on one line: NULL, an integer, or a string in '' (quotes
    doubled). Control characters (a newline in a key) are spliced in with char(), so that every
    statement stays on one line of the emitted file."""
    if value is None:
        return "NULL"
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"no SQL literal for {type(value).__name__}")
    if isinstance(value, int):
        return str(value)
    parts: list[str] = []
    for run in re.split(r"([\x00-\x1f\x7f]+)", value):
        if not run:
            continue
        if re.fullmatch(r"[\x00-\x1f\x7f]+", run):
            parts.append("char(" + ",".join(str(ord(c)) for c in run) + ")")
        else:
            parts.append("'" + run.replace("'", "''") + "'")
    return "||".join(parts) if parts else "''"


def prefix_upper_bound(prefix: str) -> str | None:
    """The least string above every string that starts with `prefix`, in code point order
    (= UTF-8 byte order), or None when there is none (the prefix is all U+10FFFF)."""
    chars = list(prefix)
    while chars:
        last = ord(chars.pop()) + 1
        if 0xD800 <= last <= 0xDFFF:  # surrogates are no characters of UTF-8 text
            last = 0xE000
        if last <= 0x10FFFF:
            return "".join(chars) + chr(last)
    return None


def _key_range(after: str | None, upto: str | None, prefix: str) -> tuple[str, tuple[str, ...]]:
    """A WHERE clause (or "") and its parameters: after < key <= upto, key under prefix."""
    terms: list[str] = []
    params: list[str] = []
    if after is not None:
        terms.append("key > ?")
        params.append(after)
    if upto is not None:
        terms.append("key <= ?")
        params.append(upto)
    if prefix:
        terms.append("key >= ?")
        params.append(prefix)
        bound = prefix_upper_bound(prefix)
        if bound is not None:
            terms.append("key < ?")
            params.append(bound)
    return (" WHERE " + " AND ".join(terms) if terms else ""), tuple(params)


def _primary_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return code & 0xFF if isinstance(code, int) else None


def _db_problem(path: str, exc: BaseException, *, writing: bool) -> str:
    """One line naming the index file and what is wrong with it."""
    primary = _primary_code(exc)
    if primary in (_SQLITE_NOTADB, _SQLITE_CORRUPT):
        return f"{path}: not a SQLite database ({exc}); give the index's SQLite file (a D1 export)"
    if primary == _SQLITE_FULL:
        return f"{path}: the disk is full ({exc})"
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return (
            f"{path}: locked by another connection for more than "
            f"{BUSY_TIMEOUT_SECONDS:g} s ({exc}); end the program holding it"
        )
    if not writing and primary == _SQLITE_READONLY and os.path.exists(path + "-journal"):
        # A writer died mid-transaction: its rollback journal must be played back, which a
        # read-only open (a dry run, coverage) cannot do.
        return (
            f"{path}: a writer stopped mid-transaction and left {os.path.basename(path)}-journal; "
            "a run that writes (not --dry-run) recovers it, or open it once with sqlite3"
        )
    if writing and primary in (_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CANTOPEN):
        reason = unwritable(path)
        if reason is not None:
            return f"{path}: read-only ({reason}); the index must be a writable SQLite file"
    return f"{path}: {exc}; the index must be a writable SQLite file"


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction (taken at once, BEGIN IMMEDIATE): committed when the block ends,
    rolled back when it raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _runtime_error(path: str, exc: sqlite3.Error) -> IndexBusy | IndexUnavailable:
    if _primary_code(exc) in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return IndexBusy(f"index {_db_problem(path, exc, writing=True)}")
    return IndexUnavailable(f"index {_db_problem(path, exc, writing=True)}")


def _wal_without_wal_file(path: str) -> bool:
    """The file is a SQLite database in WAL mode (header bytes 18-19) with no -wal beside it."""
    try:
        with open(path, "rb") as f:
            header = f.read(20)
    except OSError:
        return False
    wal_mode = header[:16] == b"SQLite format 3\x00" and header[18:20] == b"\x02\x02"
    return wal_mode and not os.path.exists(f"{path}-wal")


def _as_int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str | float):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _cut_torn_line(handle: BinaryIO) -> None:
    """Truncate a file opened "a+b" after its last newline (a crash mid-write tears a line)."""
    end = handle.seek(0, os.SEEK_END)
    pos = end
    while pos > 0:
        start = max(0, pos - 65536)
        handle.seek(start)
        chunk = handle.read(pos - start)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            cut = start + newline + 1
            if cut != end:
                handle.truncate(cut)
            return
        pos = start
    if end:
        handle.truncate(0)


class IndexTable:
    """The index table of one SQLite file. `await IndexTable.open(...)`, then `close()` (or
    `async with await IndexTable.open(...) as index`)."""

    path: str
    table: str
    columns: frozenset[str]  # lower case; a dry run's missing table: those it would be created with
    uploader_id: str

    def __init__(
        self,
        path: str,
        table: str,
        *,
        uploader_id: str,
        create: bool,
        executor: ThreadPoolExecutor,
    ) -> None:
        self.path = path
        self.table = table
        self.uploader_id = uploader_id
        self.columns = frozenset(CREATE_COLUMNS)
        self.create = create
        self.exists = False  # the table is there (False only in a dry run)
        self.created = False  # open created the table
        self._executor = executor
        self._conn: sqlite3.Connection | None = None
        self._emit: BinaryIO | None = None
        self._closed = False

    # ---- opening

    @classmethod
    async def open(
        cls,
        path: str,
        table: str = "files",
        *,
        uploader_id: str = "backfill",
        create: bool = True,
        emit_sql: str | None = None,
        field_db: str = "--index-db",
        field_table: str = "--index-table",
        field_emit: str = "--emit-sql",
    ) -> IndexTable:
        check_table_name(table, field_table)
        executor = ThreadPoolExecutor(1, thread_name_prefix="index-table")
        index = cls(path, table, uploader_id=uploader_id, create=create, executor=executor)
        try:
            await index._run(index._open_sync, emit_sql, field_db, field_table, field_emit)
        except BaseException:
            with contextlib.suppress(Exception):
                await index.close()
            raise
        return index

    def _open_sync(
        self, emit_sql: str | None, field_db: str, field_table: str, field_emit: str
    ) -> None:
        target = Path(self.path)
        if target.is_dir():
            raise ConfigError(field_db, f"{self.path}: is a directory; give a SQLite file")
        if not target.parent.is_dir():
            raise ConfigError(
                field_db, f"{self.path}: directory {target.parent} does not exist; create it"
            )
        if not self.create:
            if emit_sql is not None:
                self._check_emit_path(emit_sql, field_emit)
            if not target.exists():
                return  # a dry run creates nothing: an empty table
            self._connect(field_db, read_only=True)
            if self._inspect(field_db, field_table):
                self._check_upsert(field_db, field_table)
                self._check_key_order(field_table)
            return
        self._connect(field_db, read_only=False)
        found = self._inspect(field_db, field_table)
        self._probe_write(field_db)
        if found:
            self._check_upsert(field_db, field_table)
            self._check_key_order(field_table)
        if emit_sql is not None:
            self._open_emit(emit_sql, field_emit)
        if not found:
            self._create_table(field_db)

    def _connect(self, field_db: str, *, read_only: bool) -> None:
        try:
            if read_only:
                uri = Path(self.path).resolve().as_uri() + "?mode=ro"
                if _wal_without_wal_file(self.path):
                    # A read-only connection to a WAL database would create -wal and -shm
                    # files and leave them; with no -wal file there is nothing but the file.
                    uri += "&immutable=1"
                conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_SECONDS)
            else:
                conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS)
        except sqlite3.Error as exc:
            raise ConfigError(
                field_db, _db_problem(self.path, exc, writing=not read_only)
            ) from None
        conn.isolation_level = None  # explicit transactions only
        self._conn = conn

    def _inspect(self, field_db: str, field_table: str) -> bool:
        """Read the table's columns; False when there is no such table."""
        assert self._conn is not None
        try:
            info = self._conn.execute(
                f"PRAGMA table_info({quote_identifier(self.table)})"
            ).fetchall()
        except sqlite3.Error as exc:
            raise ConfigError(field_db, _db_problem(self.path, exc, writing=self.create)) from None
        if not info:
            return False
        self.exists = True
        self.columns = frozenset(str(row[1]).lower() for row in info)
        for column in REQUIRED_COLUMNS:
            if column not in self.columns:
                raise ConfigError(
                    field_table,
                    f'table "{self.table}" in {self.path} has no column {column} (it has '
                    f"{', '.join(sorted(self.columns))}); the index table needs key (TEXT, "
                    "PRIMARY KEY or UNIQUE) and content_hash (TEXT)",
                )
        return True

    def _check_upsert(self, field_db: str, field_table: str) -> None:
        """The upsert prepares: `key` has a PRIMARY KEY or UNIQUE index, the table is a table."""
        assert self._conn is not None
        columns = self._insert_columns()
        try:
            self._conn.execute("EXPLAIN " + self._upsert_sql(), (None,) * len(columns))
        except sqlite3.Error as exc:
            if "ON CONFLICT clause does not match" in str(exc):
                raise ConfigError(
                    field_table,
                    f'table "{self.table}" in {self.path}: column key has no PRIMARY KEY or '
                    f"UNIQUE index, which ON CONFLICT(key) needs; add one (CREATE UNIQUE INDEX "
                    f'... ON "{self.table}"(key))',
                ) from None
            if _primary_code(exc) == 1:  # SQLITE_ERROR: the statement itself (a view, ...)
                raise ConfigError(
                    field_table, f'table "{self.table}" in {self.path}: cannot upsert ({exc})'
                ) from None
            raise ConfigError(field_db, _db_problem(self.path, exc, writing=self.create)) from None

    def _check_key_order(self, field_table: str) -> None:
        """`key` compares byte by byte (BINARY, SQLite's default), as S3 orders and tells keys
        apart: with NOCASE, say, a page's rows would come in another order than its listing
        (skipping objects) and two keys differing in case would share a row."""
        assert self._conn is not None
        table = quote_identifier(self.table)
        collations = []
        for _, name, unique, *_ in self._conn.execute(f"PRAGMA index_list({table})"):
            if not unique:
                continue
            keyed = [
                row
                for row in self._conn.execute(f"PRAGMA index_xinfo({quote_identifier(name)})")
                if row[5]  # a key column of the index (not the rowid)
            ]
            if len(keyed) == 1 and str(keyed[0][2]).lower() == "key":
                collations.append(str(keyed[0][4]).upper())
        if collations and "BINARY" not in collations:
            raise ConfigError(
                field_table,
                f'table "{self.table}" in {self.path}: column key compares with {collations[0]}; '
                "S3 keys are case-sensitive bytes: it needs the default BINARY collation",
            )

    def _probe_write(self, field_db: str) -> None:
        """Prove the file and its directory writable with a write rolled back: the journal is
        created and removed, the database file keeps its bytes."""
        assert self._conn is not None
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                (version,) = conn.execute("PRAGMA user_version").fetchone()
                conn.execute(f"PRAGMA user_version = {int(version)}")
            finally:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise ConfigError(field_db, _db_problem(self.path, exc, writing=True)) from None

    def _create_table(self, field_db: str) -> None:
        assert self._conn is not None
        conn = self._conn
        quoted = quote_identifier(self.table)
        columns = (
            "key TEXT PRIMARY KEY, content_hash TEXT, size INTEGER, etag TEXT, "
            "uploaded_at TEXT, uploader_id TEXT"
        )
        try:
            with _immediate(conn):
                conn.execute(f"CREATE TABLE {quoted} ({columns})")
                self._write_emit([f"CREATE TABLE IF NOT EXISTS {quoted} ({columns});"])
        except sqlite3.Error as exc:
            raise ConfigError(field_db, _db_problem(self.path, exc, writing=True)) from None
        self.exists = True
        self.created = True
        self.columns = frozenset(CREATE_COLUMNS)

    @staticmethod
    def _check_emit_path(path: str, field_emit: str) -> None:
        """A dry run's check of --emit-sql, creating nothing."""
        target = Path(path)
        if target.is_dir():
            raise ConfigError(field_emit, f"{path}: is a directory; give a file to write")
        if not target.parent.is_dir():
            raise ConfigError(
                field_emit, f"{path}: directory {target.parent} does not exist; create it"
            )
        writable = os.access(target if target.exists() else target.parent, os.W_OK)
        if not writable:
            raise ConfigError(field_emit, f"{path}: cannot be written (permission denied)")

    def _open_emit(self, path: str, field_emit: str) -> None:
        try:
            handle = open(path, "a+b")  # kept open until close()
        except OSError as exc:
            raise ConfigError(
                field_emit, f"{path}: cannot be written ({exc.strerror}); give a writable file"
            ) from None
        try:
            _cut_torn_line(handle)
        except OSError as exc:
            handle.close()
            raise ConfigError(field_emit, f"{path}: {exc.strerror}") from None
        self._emit = handle

    # ---- SQL

    def _insert_columns(self) -> tuple[str, ...]:
        return tuple(c for c in CREATE_COLUMNS if c in self.columns)

    def _upsert_sql(self, values: str | None = None) -> str:
        columns = self._insert_columns()
        updates = ", ".join(
            f"{c}=excluded.{c}" for c in ("content_hash", *UPDATED_COLUMNS) if c in self.columns
        )
        return (
            f"INSERT INTO {quote_identifier(self.table)} ({', '.join(columns)}) "
            f"VALUES ({values or ', '.join('?' * len(columns))}) "
            f"ON CONFLICT(key) DO UPDATE SET {updates}"
        )

    def _params(self, row: Upsert) -> tuple[str | int | None, ...]:
        values: dict[str, str | int | None] = {
            "key": row.key,
            "content_hash": row.content_hash,
            "size": row.size,
            "etag": row.etag,
            "uploaded_at": row.uploaded_at,
            "uploader_id": self.uploader_id,
        }
        return tuple(values[c] for c in self._insert_columns())

    def upsert_statements(self, rows: Sequence[Upsert]) -> list[str]:
        """The statements `emit_sql` receives for these rows: one line each, with literals."""
        return [
            self._upsert_sql(", ".join(sql_literal(v) for v in self._params(row))) + ";"
            for row in rows
        ]

    # ---- the thread

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    def _write_emit(self, statements: list[str]) -> None:
        if self._emit is None or not statements:
            return
        self._emit.write("".join(s + "\n" for s in statements).encode("utf-8"))
        self._emit.flush()
        os.fsync(self._emit.fileno())

    # ---- reading

    def _select(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """The rows of one query on the table (in the thread), its failure classified."""
        assert self._conn is not None
        try:
            return self._conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise _runtime_error(self.path, exc) from None

    async def rows(
        self, after: str | None, upto: str | None, prefix: str = "", limit: int | None = None
    ) -> dict[str, IndexRow]:
        """Rows with after < key <= upto (None: open ended) and key under `prefix`, in key
        order; the first `limit` of them when given (a caller pages through a large range)."""
        self._check_open()
        return await self._run(self._rows_sync, after, upto, prefix, limit)

    def _rows_sync(
        self, after: str | None, upto: str | None, prefix: str, limit: int | None = None
    ) -> dict[str, IndexRow]:
        if self._conn is None or not self.exists:
            return {}
        where, params = _key_range(after, upto, prefix)
        size = "size" if "size" in self.columns else "NULL"
        etag = "etag" if "etag" in self.columns else "NULL"
        sql = (
            f"SELECT key, content_hash, {size}, {etag} FROM {quote_identifier(self.table)}"
            f"{where} ORDER BY key" + ("" if limit is None else f" LIMIT {int(limit)}")
        )
        found = self._select(sql, params)
        return {
            str(key): IndexRow(
                str(key),
                None if content_hash is None else str(content_hash),
                _as_int(size_value),
                None if etag_value is None else str(etag_value),
            )
            for key, content_hash, size_value, etag_value in found
        }

    async def stride_keys(
        self, after: str | None, prefix: str, *, every: int, count: int
    ) -> list[str]:
        """Up to `count` keys of rows under `prefix` after `after`: the `every`-th, the
        `2 × every`-th, ..., each with at least one more row after it. Where the pages of a
        listing begin when the index holds a row for every object (hashed or not), with
        `every` 1,000."""
        self._check_open()
        return await self._run(self._stride_keys_sync, after, prefix, every, count)

    def _stride_keys_sync(
        self, after: str | None, prefix: str, every: int, count: int
    ) -> list[str]:
        if self._conn is None or not self.exists:
            return []
        found: list[str] = []
        while len(found) < count:
            where, params = _key_range(after, None, prefix)
            sql = (
                f"SELECT key FROM {quote_identifier(self.table)}{where}"
                f" ORDER BY key LIMIT 2 OFFSET {int(every) - 1}"
            )
            keys = self._select(sql, params)
            if len(keys) < 2:
                break
            after = str(keys[0][0])
            found.append(after)
        return found

    async def count_rows(self, after: str | None, upto: str, prefix: str = "") -> int:
        """Rows with after < key <= upto under `prefix`."""
        self._check_open()
        return await self._run(self._count_rows_sync, after, upto, prefix)

    def _count_rows_sync(self, after: str | None, upto: str, prefix: str) -> int:
        if self._conn is None or not self.exists:
            return 0
        where, params = _key_range(after, upto, prefix)
        [(count,)] = self._select(
            f"SELECT COUNT(*) FROM {quote_identifier(self.table)}{where}", params
        )
        return int(count)

    async def coverage(self, prefix: str = "") -> Coverage:
        """The seed's coverage query: rows, rows with a hash, the percentage (two decimals)."""
        self._check_open()
        return await self._run(self._coverage_sync, prefix)

    def _coverage_sync(self, prefix: str) -> Coverage:
        if self._conn is None or not self.exists:
            return Coverage.of(0, 0)
        where, params = _key_range(None, None, prefix)
        sql = (
            "SELECT COUNT(*), COUNT(CASE WHEN content_hash IS NOT NULL AND content_hash != '' "
            f"THEN 1 END) FROM {quote_identifier(self.table)}{where}"
        )
        [(total, with_hash)] = self._select(sql, params)
        return Coverage.of(int(total), int(with_hash))

    # ---- writing

    async def upsert(self, rows: Sequence[Upsert]) -> None:
        """Insert or update these rows in one transaction, committed when this returns (and
        appended to `emit_sql` first). A dry run's table refuses (RuntimeError)."""
        if not self.create:
            raise RuntimeError("IndexTable opened with create=False (a dry run) cannot upsert")
        self._check_open()
        if not rows:
            return
        rows = list(rows)
        await self._run(self._upsert_sync, rows)

    def _upsert_sync(self, rows: list[Upsert]) -> None:
        assert self._conn is not None
        conn = self._conn
        try:
            with _immediate(conn):
                conn.executemany(self._upsert_sql(), [self._params(row) for row in rows])
                # Emitted before the commit: what the index holds was always emitted (a crash
                # between the two re-emits the same upserts on the next run, which is harmless).
                self._write_emit(self.upsert_statements(rows))
        except sqlite3.Error as exc:
            raise _runtime_error(self.path, exc) from None
        except OSError as exc:  # the emit file
            raise IndexUnavailable(f"emit-sql file: {exc}") from None

    # ---- closing

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("IndexTable is closed")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._close_sync)
        finally:
            self._executor.shutdown(wait=False)

    def _close_sync(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
        finally:
            self._conn = None
            if self._emit is not None:
                self._emit.close()
                self._emit = None

    async def __aenter__(self) -> IndexTable:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
