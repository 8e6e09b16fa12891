"""The content-hash index table (seams/index_table.py) on real SQLite files: what `open` creates
and refuses (ConfigError naming the option), key ranges and prefixes in S3's byte order, upserts
that keep a row's insert-only columns, a dry run that leaves the file's bytes as they were, the
emitted SQL replayed on a copy, and the seed's coverage figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tui_backfill.outcomes import ConfigError
from tui_backfill.seams.index_table import (
    CREATE_COLUMNS,
    Coverage,
    IndexRow,
    IndexTable,
    Upsert,
    check_table_name,
    prefix_upper_bound,
    sql_literal,
)

H1, H2, H3 = "a" * 64, "b" * 64, "c" * 64
SEED_SCHEMA = (
    "CREATE TABLE files (key TEXT PRIMARY KEY, content_hash TEXT, size INTEGER, etag TEXT, "
    "uploaded_at TEXT, uploader_id TEXT, deleted_at TEXT)"
)
# Keys whose order differs between byte order, case-folded order and "natural" orders; `%` and
# `_` are LIKE's wildcards; U+FFFF sorts before an emoji in UTF-8 (not in UTF-16).
ODD_KEYS = [
    "a",
    "a/b",
    "a/b/c.jpg",
    "a0",
    "a_",
    "a_b",
    "ab",
    "a%b",
    "aB",
    "A",
    "A/b",
    "B",
    "b",
    "é",
    "e",
    "z",
    "\uffff",
    "😀",
    "😀/x",
    " space",
    "~tilde",
]


def sqlite(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    try:
        for statement in statements:
            conn.execute(statement)
        conn.commit()
    finally:
        conn.close()


def select(path: Path, sql: str = "SELECT * FROM files ORDER BY key") -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def up(key: str, content_hash: str = H1, size: int | None = 1, etag: str | None = '"e"') -> Upsert:
    return Upsert(key, content_hash, size, etag, "2024-05-01T00:00:00Z")


def byte_sorted(keys: list[str]) -> list[str]:
    return sorted(keys, key=lambda k: k.encode("utf-8"))


async def refused(path: Path | str, table: str = "files", **kw: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        index = await IndexTable.open(str(path), table, **kw)
        await index.close()
    return info.value


# -- creation --------------------------------------------------------------------------------------


async def test_a_missing_file_is_created_with_the_seed_schema(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    async with await IndexTable.open(str(db), "assets") as index:
        assert index.created and index.exists
        assert index.columns == frozenset(CREATE_COLUMNS)
        assert (index.path, index.table, index.uploader_id) == (str(db), "assets", "backfill")
    info = select(db, 'PRAGMA table_info("assets")')
    assert [(r[1], r[2], r[5]) for r in info] == [
        ("key", "TEXT", 1),
        ("content_hash", "TEXT", 0),
        ("size", "INTEGER", 0),
        ("etag", "TEXT", 0),
        ("uploaded_at", "TEXT", 0),
        ("uploader_id", "TEXT", 0),
    ]
    assert select(db, "PRAGMA journal_mode") == [("delete",)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.db"]  # no probe, no journal


async def test_a_missing_table_is_added_to_an_existing_file(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    sqlite(db, "CREATE TABLE other (x)", "INSERT INTO other VALUES (1)")
    async with await IndexTable.open(str(db)) as index:
        assert index.created
        await index.upsert([up("k")])
    assert select(db, "SELECT * FROM other") == [(1,)]
    assert select(db, "SELECT key, content_hash, uploader_id FROM files") == [("k", H1, "backfill")]


async def test_an_existing_table_with_extra_columns_keeps_them(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    sqlite(
        db,
        SEED_SCHEMA,
        "INSERT INTO files VALUES ('k', NULL, 5, '\"x\"', '2020-01-01', 'seed', '2021-01-01')",
    )
    async with await IndexTable.open(str(db)) as index:
        assert not index.created
        assert index.columns == frozenset(CREATE_COLUMNS) | {"deleted_at"}
        await index.upsert([up("k", H2, 7, '"y"')])
    assert select(db) == [("k", H2, 7, '"y"', "2020-01-01", "seed", "2021-01-01")]


async def test_a_table_of_key_and_content_hash_only(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    sqlite(
        db,
        'CREATE TABLE "Files" ("KEY" TEXT NOT NULL UNIQUE, Content_Hash TEXT)',
        "INSERT INTO Files VALUES ('old', 'h')",
    )
    async with await IndexTable.open(str(db), "Files") as index:
        assert index.columns == {"key", "content_hash"}  # lower case, as SQLite matches them
        await index.upsert([up("new", H1, 10, '"e"'), up("old", H2, 11, '"f"')])
        assert await index.rows(None, None) == {
            "new": IndexRow("new", H1, None, None),
            "old": IndexRow("old", H2, None, None),
        }
    assert select(db, "SELECT * FROM Files ORDER BY key") == [("new", H1), ("old", H2)]


async def test_a_unique_index_on_key_is_enough(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    sqlite(
        db,
        "CREATE TABLE files (id INTEGER PRIMARY KEY, key TEXT, content_hash TEXT, size INTEGER)",
        "CREATE UNIQUE INDEX files_key ON files (key)",
        "INSERT INTO files (key, content_hash, size) VALUES ('k', NULL, 3)",
    )
    async with await IndexTable.open(str(db)) as index:
        await index.upsert([up("k", H3, 4), up("l", H1, 5)])
    assert select(db, "SELECT id, key, content_hash, size FROM files ORDER BY id") == [
        (1, "k", H3, 4),
        (2, "l", H1, 5),
    ]


# -- refusals --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schema", "needle"),
    [
        ("CREATE TABLE files (name TEXT PRIMARY KEY, content_hash TEXT)", "no column key"),
        ("CREATE TABLE files (key TEXT PRIMARY KEY, hash TEXT)", "no column content_hash"),
        ("CREATE TABLE files (key TEXT, content_hash TEXT)", "no PRIMARY KEY or UNIQUE"),
        (
            "CREATE TABLE files (key TEXT, v TEXT, content_hash TEXT, PRIMARY KEY (key, v))",
            "no PRIMARY KEY or UNIQUE",
        ),
        (
            "CREATE TABLE t (key TEXT PRIMARY KEY, content_hash TEXT); "
            "CREATE VIEW files AS SELECT * FROM t",
            "cannot upsert",
        ),
    ],
)
@pytest.mark.parametrize("create", [True, False])
async def test_an_unusable_table_is_refused_naming_index_table(
    tmp_path: Path, schema: str, needle: str, create: bool
) -> None:
    db = tmp_path / "index.db"
    sqlite(db, *schema.split("; "))
    before = db.read_bytes()
    error = await refused(db, create=create)
    assert error.field == "--index-table"
    assert needle in str(error)
    assert "\n" not in str(error)
    if "no column" in needle:
        assert "needs key (TEXT, PRIMARY KEY or UNIQUE) and content_hash" in str(error)
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.db"]


@pytest.mark.parametrize(
    "name", ["files; drop table x", "1abc", "a-b", "", "files ", '"files"', "fïles", "a.b"]
)
async def test_a_table_name_that_is_no_plain_identifier_is_refused(
    tmp_path: Path, name: str
) -> None:
    db = tmp_path / "index.db"
    error = await refused(db, name, field_table="index_table")
    assert error.field == "index_table"
    assert "[A-Za-z_][A-Za-z0-9_]*" in str(error)
    assert not db.exists()
    with pytest.raises(ConfigError, match=r"^--index-table: "):
        check_table_name(name)
    assert check_table_name("_files_2") == "_files_2"


@pytest.mark.parametrize("create", [True, False])
async def test_a_path_that_cannot_be_a_database_is_refused_naming_index_db(
    tmp_path: Path, create: bool
) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("not a directory")
    not_sqlite = tmp_path / "notes.db"
    not_sqlite.write_text("this is a text file, not a SQLite database\n" * 50)
    before = not_sqlite.read_bytes()
    for path, needle in [
        (a_file / "x.db", "does not exist"),  # its "directory" is a regular file
        (tmp_path / "missing" / "x.db", "does not exist"),
        (tmp_path, "is a directory"),
        (not_sqlite, "not a SQLite database"),
    ]:
        error = await refused(path, create=create, field_db="index_db")
        assert error.field == "index_db", path
        assert needle in str(error), str(error)
    assert not_sqlite.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "notes.db"]


@contextlib.contextmanager
def unprivileged() -> Iterator[Path]:
    """A scratch directory, and the process's effective user an unprivileged one while inside
    (root ignores permission bits). The directory is outside pytest's tmp_path, which only
    root may enter."""
    scratch = Path(tempfile.mkdtemp(prefix="index-table-"))
    scratch.chmod(0o777)
    root = os.geteuid() == 0
    try:
        if root:
            os.chown(scratch, 65534, 65534)
            os.seteuid(65534)
        yield scratch
    finally:
        if root:
            os.seteuid(0)
        for sub in scratch.rglob("*"):
            sub.chmod(0o777)
        shutil.rmtree(scratch)


async def test_read_only_files_and_directories_are_refused_naming_index_db() -> None:
    with unprivileged() as scratch:
        ro_dir = scratch / "ro"
        ro_dir.mkdir()
        existing = ro_dir / "existing.db"
        sqlite(existing, "CREATE TABLE files (key TEXT PRIMARY KEY, content_hash TEXT)")
        ro_file = scratch / "ro_file.db"
        sqlite(ro_file, "CREATE TABLE files (key TEXT PRIMARY KEY, content_hash TEXT)")
        ro_file.chmod(0o444)
        ro_dir.chmod(0o555)
        before = {p: p.read_bytes() for p in (existing, ro_file)}
        for path, needle in [
            (ro_dir / "new.db", "cannot be written"),  # cannot be created
            (existing, "cannot be written"),  # the journal cannot be created beside it
            (ro_file, "the file cannot be written"),
        ]:
            error = await refused(path)
            assert error.field == "--index-db"
            assert str(path) in str(error)
            assert needle in str(error), str(error)
        # A dry run only reads: both read-only files are fine.
        for path in (existing, ro_file):
            async with await IndexTable.open(str(path), create=False) as index:
                assert await index.rows(None, None) == {}
        assert {p: p.read_bytes() for p in before} == before
        assert sorted(p.name for p in ro_dir.iterdir()) == ["existing.db"]


# -- reading ---------------------------------------------------------------------------------------


async def test_rows_ranges_and_prefixes_follow_byte_order(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    async with await IndexTable.open(str(db)) as index:
        await index.upsert([up(k, H1, i, f'"{i}"') for i, k in enumerate(ODD_KEYS)])
        everything = await index.rows(None, None)
        assert list(everything) == byte_sorted(ODD_KEYS)
        assert everything["a0"] == IndexRow(
            "a0", H1, ODD_KEYS.index("a0"), f'"{ODD_KEYS.index("a0")}"'
        )
        bounds = [None, "", "a", "a/", "a/b", "a_", "aB", "b", "é", "\uffff", "😀", "zz"]
        prefixes = ["", "a", "a/", "a_", "a%", "A", "é", "😀", "\uffff", "a/b/c.jpg", "q"]
        for prefix in prefixes:
            for after in bounds:
                for upto in bounds:
                    expected = [
                        k
                        for k in byte_sorted(ODD_KEYS)
                        if (after is None or k.encode() > after.encode())
                        and (upto is None or k.encode() <= upto.encode())
                        and k.startswith(prefix)
                    ]
                    got = await index.rows(after, upto, prefix)
                    assert list(got) == expected, (after, upto, prefix)


def test_prefix_upper_bound() -> None:
    assert prefix_upper_bound("a/") == "a0"
    assert prefix_upper_bound("a\U0010ffff") == "b"
    assert prefix_upper_bound("\U0010ffff") is None
    assert prefix_upper_bound("\ud7ff") == "\ue000"  # skips the surrogates
    assert prefix_upper_bound("") is None


async def test_size_and_etag_that_are_null_read_as_none(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    sqlite(db, SEED_SCHEMA, "INSERT INTO files (key, content_hash) VALUES ('k', NULL)")
    async with await IndexTable.open(str(db)) as index:
        assert await index.rows(None, None) == {"k": IndexRow("k", None, None, None)}


# -- writing ---------------------------------------------------------------------------------------


async def test_upsert_updates_hash_size_etag_and_keeps_insert_only_columns(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    sqlite(
        db,
        SEED_SCHEMA,
        "INSERT INTO files VALUES ('old', 'stale', 1, '\"1\"', '2020-01-01T00:00:00Z', 'seed', NULL)",
        "INSERT INTO files VALUES ('same', NULL, NULL, NULL, NULL, NULL, NULL)",
    )
    async with await IndexTable.open(str(db), uploader_id="tool-7") as index:
        await index.upsert(
            [
                Upsert("old", H2, 2, '"2"', "2024-01-01T00:00:00Z"),
                Upsert("new", H3, None, None, "2024-02-02T00:00:00Z"),
                Upsert("same", H1, 9, None, None),
            ]
        )
        # Committed when upsert returns: another connection sees it.
        assert select(db) == [
            ("new", H3, None, None, "2024-02-02T00:00:00Z", "tool-7", None),
            ("old", H2, 2, '"2"', "2020-01-01T00:00:00Z", "seed", None),
            ("same", H1, 9, None, None, None, None),
        ]
        await index.upsert([])  # nothing to do
        assert list(await index.rows(None, None)) == ["new", "old", "same"]


async def test_a_write_waits_for_another_connections_lock_without_blocking_the_loop(
    tmp_path: Path,
) -> None:
    db = tmp_path / "index.db"
    async with await IndexTable.open(str(db)) as index:
        other = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        other.execute("INSERT INTO files (key) VALUES ('other')")
        threading.Timer(0.5, lambda: other.execute("COMMIT")).start()
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.02)
                ticks += 1

        ticker = asyncio.create_task(tick())
        started = time.monotonic()
        await index.upsert([up("mine")])
        waited = time.monotonic() - started
        ticker.cancel()
        other.close()
        assert waited >= 0.4
        assert ticks >= 10  # the loop ran while the write waited
        assert list(await index.rows(None, None)) == ["mine", "other"]


async def test_journal_mode_is_left_as_it_is(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    sqlite(db, "PRAGMA journal_mode = wal", SEED_SCHEMA)
    async with await IndexTable.open(str(db)) as index:
        await index.upsert([up("k")])
    assert select(db, "PRAGMA journal_mode") == [("wal",)]


async def test_closed_and_dry_run_tables_refuse_use(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    index = await IndexTable.open(str(db))
    await index.close()
    await index.close()  # idempotent
    with pytest.raises(RuntimeError):
        await index.rows(None, None)
    with pytest.raises(RuntimeError):
        await index.upsert([up("k")])


# -- dry run ---------------------------------------------------------------------------------------


async def test_a_dry_run_leaves_an_existing_index_byte_for_byte(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    sqlite(db, SEED_SCHEMA, f"INSERT INTO files (key, content_hash, size) VALUES ('k', '{H1}', 4)")
    before = db.read_bytes()
    stat = db.stat()
    emit = tmp_path / "out.sql"
    async with await IndexTable.open(str(db), create=False, emit_sql=str(emit)) as index:
        assert await index.rows(None, None) == {"k": IndexRow("k", H1, 4, None)}
        assert await index.coverage() == Coverage(1, 1, 100.0)
        with pytest.raises(RuntimeError):
            await index.upsert([up("x")])
    assert db.read_bytes() == before
    assert db.stat().st_mtime_ns == stat.st_mtime_ns
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.db"]  # no emit file either


async def test_a_dry_run_of_a_wal_index_leaves_no_wal_or_shm_file(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    sqlite(db, "PRAGMA journal_mode = wal", SEED_SCHEMA, "INSERT INTO files (key) VALUES ('k')")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.db"]  # checkpointed on close
    before = db.read_bytes()
    async with await IndexTable.open(str(db), create=False) as index:
        assert list(await index.rows(None, None)) == ["k"]
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.db"]


async def test_a_dry_run_creates_nothing_for_a_missing_file_or_table(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    async with await IndexTable.open(str(db), create=False) as index:
        assert not index.exists
        assert index.columns == frozenset(CREATE_COLUMNS)  # what a real run would create
        assert await index.rows(None, "z", "a") == {}
        assert await index.coverage("a") == Coverage(0, 0, 0.0)
        with pytest.raises(RuntimeError):
            await index.upsert([up("x")])
    assert not db.exists()
    sqlite(db, "CREATE TABLE other (x)")
    before = db.read_bytes()
    async with await IndexTable.open(str(db), create=False) as index:
        assert not index.exists
        assert await index.rows(None, None) == {}
    assert db.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index.db"]


# -- emitted SQL -----------------------------------------------------------------------------------


def apply_sql(db: Path, script: Path) -> str:
    """Apply an emitted file to a database as an operator would: the sqlite3 command line when
    installed (else Python's executescript). Returns which was used."""
    cli = shutil.which("sqlite3")
    if cli:
        with script.open("rb") as stdin:
            subprocess.run([cli, "-bail", str(db)], stdin=stdin, check=True, capture_output=True)
        return "sqlite3 CLI"
    conn = sqlite3.connect(db)
    try:
        conn.executescript(script.read_text(encoding="utf-8"))
    finally:
        conn.close()
    return "executescript"


AWKWARD_KEYS = [
    "it's",
    "''",
    "line\nbreak",
    "crlf\r\nend\n",
    "\n",
    'dq"x',
    "semi;colon -- not a comment /* nor this */",
    "tab\tand\x01ctl\x7f",
    "é/😀/ü",
    "plain/key.jpg",
]


@pytest.mark.parametrize("existing", ["table", "no table", "key and hash only"])
async def test_emitted_sql_replayed_on_a_copy_gives_the_same_table(
    tmp_path: Path, existing: str
) -> None:
    db, copy, emit = tmp_path / "index.db", tmp_path / "copy.db", tmp_path / "out.sql"
    if existing == "table":
        sqlite(
            db,
            SEED_SCHEMA,
            "INSERT INTO files VALUES ('it''s', 'old', 1, 'e', '2020', 'seed', 'x')",
            "INSERT INTO files VALUES ('untouched', 'h', 2, NULL, NULL, NULL, NULL)",
        )
    elif existing == "key and hash only":
        sqlite(db, "CREATE TABLE files (key TEXT PRIMARY KEY, content_hash TEXT)")
    else:
        sqlite(db, "CREATE TABLE other (x)")
    shutil.copyfile(db, copy)  # the remote copy of the original index
    async with await IndexTable.open(str(db), emit_sql=str(emit)) as index:
        first = [
            Upsert(k, H1, i, f'"etag-{i}"' if i % 2 else None, f"2024-01-0{i % 9 + 1}T00:00:00Z")
            for i, k in enumerate(AWKWARD_KEYS)
        ]
        await index.upsert(first)
        await index.upsert([Upsert("line\nbreak", H2, 99, "'q'", "2030"), up("it's", H3)])
        statements = len(first) + 2 + (1 if index.created else 0)
    lines = emit.read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) - 1 == statements  # one statement a line
    used = apply_sql(copy, emit)
    print(f"emitted SQL applied with {used}")
    assert select(copy) == select(db)
    if existing == "no table":
        assert select(copy, "SELECT * FROM other") == select(db, "SELECT * FROM other")
    assert len(select(db)) >= len(AWKWARD_KEYS)


async def test_emitted_sql_is_appended_and_a_torn_last_line_is_cut(tmp_path: Path) -> None:
    db, emit = tmp_path / "index.db", tmp_path / "out.sql"
    async with await IndexTable.open(str(db), emit_sql=str(emit)) as index:
        await index.upsert([up("a")])
    first = emit.read_bytes()
    assert first.count(b"\n") == 2  # CREATE TABLE IF NOT EXISTS, one upsert
    with emit.open("ab") as f:
        f.write(b'INSERT INTO "files" (key) VALUES (\'torn')  # a crash mid-write
    async with await IndexTable.open(str(db), emit_sql=str(emit)) as index:
        assert emit.read_bytes() == first
        await index.upsert([up("b")])
    text = emit.read_text()
    assert text.startswith(first.decode()) and text.count("\n") == 3
    assert "VALUES ('b', " in text.splitlines()[-1]


async def test_an_unwritable_emit_file_is_refused_naming_emit_sql(tmp_path: Path) -> None:
    a_file = tmp_path / "afile"
    a_file.write_text("x")
    for create in (True, False):
        error = await refused(
            tmp_path / "index.db", emit_sql=str(a_file / "out.sql"), create=create
        )
        assert error.field == "--emit-sql"
        error = await refused(tmp_path / "index.db", emit_sql=str(tmp_path), create=create)
        assert error.field == "--emit-sql"
    # Refused before the table is created.
    assert select(tmp_path / "index.db", "SELECT name FROM sqlite_master") == []


def test_sql_literals() -> None:
    assert sql_literal(None) == "NULL"
    assert sql_literal(12) == "12"
    assert sql_literal("") == "''"
    assert sql_literal("it's") == "'it''s'"
    assert sql_literal("a\nb") == "'a'||char(10)||'b'"
    assert sql_literal("\r\n") == "char(13,10)"
    with pytest.raises(TypeError):
        sql_literal(True)


# -- coverage --------------------------------------------------------------------------------------


async def test_coverage_is_the_seeds_query(tmp_path: Path) -> None:
    db = tmp_path / "index.db"
    sqlite(db, SEED_SCHEMA)
    async with await IndexTable.open(str(db)) as index:
        assert await index.coverage() == Coverage(0, 0, 0.0)
        sqlite(
            db,
            f"INSERT INTO files (key, content_hash) VALUES ('a/1', '{H1}'), ('a/2', '{H2}'), "
            f"('a/3', '{H3}'), ('a/4', NULL), ('b/1', ''), ('b/2', NULL), ('ab', '{H1}')",
        )
        assert (await index.coverage("a/")).to_json() == {
            "total": 4,
            "with_hash": 3,
            "coverage_percent": 75.0,
        }
        assert await index.coverage("b/") == Coverage(2, 0, 0.0)  # '' is no hash
        assert await index.coverage("a") == Coverage(5, 4, 80.0)
        assert await index.coverage() == Coverage(7, 4, 57.14)
        sqlite(db, "DELETE FROM files")
        rows = [up(f"k/{i:05}", H1) for i in range(2172)]
        rows += [Upsert(f"k/{i:05}", "", None, None, None) for i in range(2172, 2238)]
        await index.upsert(rows)
        coverage = await index.coverage("k/")
        assert coverage == Coverage(2238, 2172, 97.05)
        assert coverage.to_json()["coverage_percent"] == 97.05


async def test_a_hot_journal_is_named_by_a_read_only_open(tmp_path: Path) -> None:
    """A writer killed mid-transaction leaves a rollback journal that only a writing open can
    play back: a dry run (read-only) says so, naming the journal, and a writing open recovers
    the table as it was before that transaction."""
    path = tmp_path / "index.db"
    with contextlib.closing(sqlite3.connect(path)) as db:
        db.execute("CREATE TABLE files (key TEXT PRIMARY KEY, content_hash TEXT)")
        db.executemany("INSERT INTO files VALUES (?, NULL)", [(str(n),) for n in range(2000)])
        db.commit()
    dies = (
        "import os, sqlite3\n"
        f"db = sqlite3.connect({str(path)!r}); db.execute('PRAGMA cache_size=1')\n"
        "db.execute('BEGIN'); db.execute(\"UPDATE files SET content_hash = 'x'\")\n"
        "os._exit(9)\n"
    )
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", dies)
    await child.wait()
    assert (tmp_path / "index.db-journal").exists()
    with pytest.raises(ConfigError, match=r"index\.db-journal"):
        await IndexTable.open(str(path), create=False)
    index = await IndexTable.open(str(path))
    try:
        assert (await index.coverage()).with_hash == 0  # the dead transaction rolled back
    finally:
        await index.close()
