"""The state under stress: full, read-only, corrupted, from a newer tui-backfill, locked by
another process, and migrated from the previous schema version.

Each case drives the real CLI against rclone behind the counting proxy and the origin. Before
any work a problem is one line naming the state file and exit 2, with no request to the origin
or the bucket; during a run it stops the run with exit 3 and the checkpoint that last landed
kept, and once the cause is gone `resume` finishes with no key PUT twice and nothing lost.

How each condition is made real (the test process runs as root, which ignores permission
bits, so chmod cannot make anything read-only here):

- full: the state's directory is a tmpfs of a few MB (`mount -t tmpfs -o size=...`), filled
  with a file to ENOSPC in the middle of a run. SQLite then gets ENOSPC on its next write
  (SQLITE_FULL), exactly as on a full disk. `PRAGMA max_page_count` cannot do it: it is a
  setting of one connection, not stored in the file, so no other process can impose it.
- read-only: an immutable state file (`chattr +i`: even root gets EPERM; SQLite then opens the
  file read-only without a word), and a read-only bind mount of the state's directory (EROFS).
- corrupted: a real state file with its header overwritten, or one page in its middle
  overwritten with random bytes.
- newer: `meta.schema_version` set past SCHEMA_VERSION.
- locked: the test process holds SQLite's write lock (`BEGIN EXCLUSIVE`) for longer than the
  state's busy timeout (10 s) while one job runs and another tries to start.

Mounting needs CAP_SYS_ADMIN and chattr a filesystem with the immutable flag: without them the
test is skipped, saying why.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    Backfill,
    Result,
    assert_counters_add_up,
    assert_valid_checkpoint,
    finished_items,
    key_of,
    wait_for,
)

from tui_backfill.state import sqlite as state_module
from tui_backfill.state.sqlite import MIGRATIONS, SCHEMA_VERSION, StateStore

ANGLES = (1, 2, 3)
MakeJob = Callable[..., Awaitable[Backfill]]

# Schema version 1 as released (MIGRATIONS[1] must never change; v2 adds `runs.host`).
V1_SQL = """
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
    """
V1_META = "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
V1_RUN_COLUMNS = (
    "id, job, status, dry_run, settings, started_at, ended_at, range_after, range_last, "
    "planned_skus, catalog_skus, counters, checkpoint, snapshot, pid, exit_code, message"
)


# -- helpers -----------------------------------------------------------------------------------


@pytest.fixture
def mounts() -> Iterator[Callable[..., None]]:
    """``mount(*options, target=DIR)``; skips the test when mounting is not permitted here.
    Everything mounted is unmounted (lazily: a killed CLI may still hold a file) at teardown."""
    mounted: list[Path] = []

    def mount(*options: str, target: Path) -> None:
        target.mkdir(parents=True, exist_ok=True)
        done = sh("mount", *options, str(target))
        if done.returncode != 0:
            pytest.skip(f"cannot mount here (mount {' '.join(options)}): {done.stderr.strip()}")
        mounted.append(target)

    yield mount
    for target in reversed(mounted):
        sh("umount", "-l", str(target))


def sh(*command: str) -> subprocess.CompletedProcess[str]:
    """A short system command (mount, chattr): quick, so run in place."""
    return subprocess.run(command, capture_output=True, text=True, check=False)


def fill_up(directory: Path) -> Path:
    """Write a file in `directory` until its filesystem says ENOSPC (to the last page)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (1 << 20, 1 << 16, 1 << 12, 512):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def committed(state: Path) -> dict[str, Any]:
    """The latest run's row as committed (read-only, from the test process)."""
    conn = sqlite3.connect(f"{state.as_uri()}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT id, status, counters, checkpoint, exit_code, message FROM runs "
            "ORDER BY id DESC LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    keys = ("id", "status", "counters", "checkpoint", "exitCode", "message")
    return dict(zip(keys, row, strict=True))


def landed_skus(state: Path) -> int:
    """scannedSkus of the latest run's committed counters (0 while there is none)."""
    try:
        return int(json.loads(committed(state)["counters"])["scanned_skus"])
    except (sqlite3.Error, TypeError):
        return 0


def requests_made(job: Backfill) -> tuple[int, int]:
    """Requests so far at the bucket (through the proxy) and at the origin."""
    return sum(job.proxy.requests.values()), sum(job.origin.requests.values())


def error_line(result: Result) -> str:
    """The one `tui-backfill: error:` line of stderr (progress lines may surround it)."""
    assert "Traceback" not in result.err, str(result)
    lines = [line for line in result.err.splitlines() if line.startswith("tui-backfill: error:")]
    assert len(lines) == 1, f"expected one error line: {result}"
    return lines[0]


def only_line(result: Result) -> str:
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line error: {result}"
    return lines[0]


async def paused_run(job: Backfill, n: int, *, objects: int = 40) -> dict[str, Any]:
    """A run of `n` SKUs stopped with SIGTERM after `objects` objects (exit 75)."""
    job.origin.faults.latency = 0.02
    running = await job.start_run(limit=n)
    await wait_for(
        lambda: len(job.proxy.puts) >= objects or not running.alive,
        within=30,
        what=f"{objects} objects",
    )
    running.signal(signal.SIGTERM)
    result = await running.wait(20)
    assert result.rc == 75, str(result)
    job.origin.faults.latency = 0
    snap: dict[str, Any] = result.json()
    assert 0 < snap["scannedSkus"] < n
    return snap


async def resume_finishes(job: Backfill, skus: list[str], run_id: int) -> dict[str, Any]:
    """`resume` completes the run: every object there once, byte-identical, counters add up."""
    result = await job.resume()
    assert result.rc == 0, str(result)
    final: dict[str, Any] = result.json()
    assert_counters_add_up(final)
    assert final["runId"] == run_id
    assert final["scannedSkus"] == len(skus)
    assert final["failedItems"] == 0
    assert final["uploaded"] + final["skippedExists"] == len(job.expected_objects(skus, ANGLES))
    await job.assert_bucket_exactly(skus, ANGLES)
    job.assert_no_key_put_twice()
    return final


async def refused(job: Backfill, *args: str) -> str:
    """The CLI command exits 2 with one line on stderr and makes no request; the line."""
    before = requests_made(job)
    result = await job.cli(*args, within=60)
    assert result.rc == 2, str(result)
    assert requests_made(job) == before, "a request was made before the refusal"
    return only_line(result)


# -- full ------------------------------------------------------------------------------------


async def test_state_full_mid_run_exits_3_and_resumes_once_freed(
    make_job: MakeJob, mounts: Callable[..., None]
) -> None:
    n = 60
    job = await make_job(n + 10, checkpoint_every=5)
    mounts("-t", "tmpfs", "-o", "size=4m", "tmpfs", target=job.state.parent)
    skus = job.skus()[:n]
    job.origin.faults.latency = 0.05  # the run would take 3 s
    running = await job.start_run(limit=n)
    await wait_for(lambda: landed_skus(job.state) >= 10, within=30, what="checkpoints to land")
    filler = fill_up(job.state.parent)
    landed = committed(job.state)  # no later commit can land: the filesystem is full

    result = await running.wait(60)
    assert result.rc == 3, str(result)
    line = error_line(result)
    assert str(job.state) in line and "full" in line, line
    stopped = result.json()
    assert stopped["state"] == "failed" and "full" in stopped["message"]
    assert stopped["scannedSkus"] < n

    # The checkpoint that last landed is intact: nothing committed after the disk filled, and
    # `status` (the disk still full) shows it as the place a resume continues from.
    assert committed(job.state) == landed
    status = await job.status()
    # The stop could not be recorded (the disk is full): the state shows what a crash leaves.
    assert status["live"] is False and status["state"] == "interrupted"
    assert_valid_checkpoint(status, skus, ANGLES)
    assert 0 < status["scannedSkus"] < n
    keys = await job.bucket_keys()
    claimed = {key_of(s, a) for s, a in finished_items(status, skus, ANGLES) if job.available(s, a)}
    assert claimed <= keys, sorted(claimed - keys)[:5]

    filler.unlink()
    job.origin.faults.latency = 0
    final = await resume_finishes(job, skus, stopped["runId"])
    # objects written after the last checkpoint were found on the resume, not written again
    assert final["skippedExists"] == len(keys - claimed)


# -- read-only -----------------------------------------------------------------------------


async def test_read_only_state_exits_2_before_any_work(
    make_job: MakeJob, mounts: Callable[..., None]
) -> None:
    """An immutable state file (its directory writable), then a read-only mount of its
    directory: `resume` and `run` exit 2 naming the state, `status` still reads it, and once
    writable again the run resumes with nothing lost."""
    n = 80
    job = await make_job(n + 10)
    skus = job.skus()[:n]
    paused = await paused_run(job, n)
    resume = ("resume", "--no-ui", *job.job_flags())
    run = ("run", "--no-ui", *job.run_flags(limit=n))

    async def refused_as_read_only(args: tuple[str, ...], reason: str) -> None:
        line = await refused(job, *args)
        assert line.startswith(f"tui-backfill: error: --state: {job.state}: read-only"), line
        assert reason in line, line
        status = await job.status()  # what it holds can still be read
        assert status["runId"] == paused["runId"] and status["checkpoint"] == paused["checkpoint"]

    done = sh("chattr", "+i", str(job.state))
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not available here: {done.stderr.strip()}")
    try:
        await refused_as_read_only(resume, "the file cannot be written: Operation not permitted")
    finally:
        assert sh("chattr", "-i", str(job.state)).returncode == 0

    mounts("--bind", str(job.state.parent), target=job.state.parent)
    try:
        mounts("-o", "remount,bind,ro", target=job.state.parent)
        await refused_as_read_only(run, "Read-only file system")
    finally:
        assert sh("umount", str(job.state.parent)).returncode == 0

    await resume_finishes(job, skus, paused["runId"])


# -- corrupted, newer ------------------------------------------------------------------------


async def test_corrupted_state_exits_2_naming_it(make_job: MakeJob) -> None:
    """Its header overwritten, or one page in its middle: `run`, `resume` and `status` exit 2
    saying it is not a valid state database, with no request made and the file left as it is."""
    job = await make_job(70)
    first = await job.run(limit=60)
    assert first.rc == 0, str(first)
    assert not Path(f"{job.state}-wal").exists()  # the run's WAL went into the file on exit
    good = job.state.read_bytes()
    page = 4096
    assert len(good) >= 8 * page, len(good)
    middle = (len(good) // page // 2) * page
    noise = random.Random(6).randbytes(page)
    corruptions = {
        "header": (noise[:100] + good[100:], ("run", "--no-ui", *job.run_flags(limit=60))),
        "a page in the middle": (
            good[:middle] + noise + good[middle + page :],
            ("resume", "--no-ui", *job.job_flags()),
        ),
    }
    for what, (data, args) in corruptions.items():
        job.state.write_bytes(data)
        for command in (args, ("status", *job.job_flags())):
            line = await refused(job, *command)
            assert line.startswith(f"tui-backfill: error: --state: {job.state}: "), (what, line)
            assert "not a valid state database" in line, (what, line)
        assert job.state.read_bytes() == data, f"{what}: the refused state was changed"


async def test_state_of_a_newer_version_exits_2_and_is_left_alone(make_job: MakeJob) -> None:
    job = await make_job(30)
    store = await StateStore.open(str(job.state))
    await store.close()
    conn = sqlite3.connect(job.state, isolation_level=None)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION + 1,))
    conn.close()
    before = job.state.read_bytes()
    for args in (("run", "--no-ui", *job.run_flags(limit=20)), ("status", *job.job_flags())):
        line = await refused(job, *args)
        assert line.startswith(f"tui-backfill: error: --state: {job.state}: "), line
        assert "written by a newer tui-backfill" in line, line
        assert f"schema version {SCHEMA_VERSION + 1}" in line, line
    assert job.state.read_bytes() == before


# -- locked ----------------------------------------------------------------------------------


async def test_write_lock_held_by_another_process(make_job: MakeJob) -> None:
    """Another process holds SQLite's write lock past the busy timeout: a run that is starting
    exits 2 before any work; a run going on stops with exit 3, its checkpoint kept."""
    n = 60
    job = await make_job(n + 10, checkpoint_every=5)
    skus = job.skus()[:n]
    job.origin.faults.latency = 0.3  # the run would take 18 s: it still goes on when let go
    running = await job.start_run(limit=n)
    await wait_for(lambda: len(job.proxy.puts) >= 15, within=30, what="15 objects")
    holder = sqlite3.connect(job.state, isolation_level=None, timeout=30)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        # another job of the same state starting now: its endpoint and origin are unreachable,
        # so a refusal naming the lock proves it stopped before its preflight
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
        other = await job.cli(
            "run", "--no-ui", *job.run_flags(limit=n), "--job", "other",
            "--endpoint-url", closed, "--origin", closed + "/{sku}_{angle}",
        )  # fmt: skip
        assert other.rc == 2, str(other)
        line = only_line(other)
        assert line.startswith(f"tui-backfill: error: --state: {job.state}: locked"), line
        assert "another process" in line, line
        # the run's own write has waited out the busy timeout too: it is stopping, not ended
        await wait_for(
            lambda: "] pausing " in running.err_path.read_text(), within=5, what="the run to stop"
        )
        assert running.alive, "the run ended while the lock was held"
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    result = await running.wait(60)
    assert result.rc == 3, str(result)
    line = error_line(result)
    assert str(job.state) in line and "locked by another process" in line, line
    stopped = result.json()
    assert stopped["state"] == "failed" and stopped["scannedSkus"] < n

    # the lock gone, the final checkpoint landed: the run is failed (exit 3), resumable
    row = committed(job.state)
    assert row["status"] == "paused" and row["exitCode"] == 3 and "locked" in row["message"]
    status = await job.status()
    assert status["checkpoint"] == stopped["checkpoint"]
    assert status["scannedSkus"] == stopped["scannedSkus"]
    conn = sqlite3.connect(f"{job.state.as_uri()}?mode=ro", uri=True)
    assert conn.execute("SELECT count(*) FROM runs WHERE job = 'other'").fetchone() == (0,)
    conn.close()
    job.origin.faults.latency = 0
    await resume_finishes(job, skus, stopped["runId"])


# -- migration -------------------------------------------------------------------------------


def test_released_migrations_are_frozen() -> None:
    assert MIGRATIONS[1] == V1_SQL
    assert sorted(MIGRATIONS) == list(range(1, SCHEMA_VERSION + 1))


def write_v1_copy(source: Path, target: Path) -> None:
    """`target`: a state as tui-backfill 1 wrote it (the v1 DDL, schema_version 1), holding
    every row of `source` (the columns v1 has)."""
    conn = sqlite3.connect(target, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(V1_META)
        for statement in V1_SQL.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
        conn.execute("ATTACH DATABASE ? AS src", (str(source),))
        conn.execute(f"INSERT INTO runs ({V1_RUN_COLUMNS}) SELECT {V1_RUN_COLUMNS} FROM src.runs")
        for table in ("run_skus", "failed_items", "commands"):
            conn.execute(f"INSERT INTO {table} SELECT * FROM src.{table}")
        conn.execute("DETACH DATABASE src")
    finally:
        conn.close()


async def test_v1_state_with_a_paused_run_is_migrated_and_resumed(make_job: MakeJob) -> None:
    n = 80
    job = await make_job(n + 10)
    skus = job.skus()[:n]
    paused = await paused_run(job, n)
    v1 = job.state.with_name("v1.sqlite3")
    write_v1_copy(job.state, v1)
    os.replace(v1, job.state)
    conn = sqlite3.connect(job.state)
    columns = {row[1] for row in conn.execute("PRAGMA table_info(runs)")}
    assert "host" not in columns
    assert conn.execute("SELECT value FROM meta").fetchall() == [("1",)]
    conn.close()

    await resume_finishes(job, skus, paused["runId"])  # migrated on open, then continued

    conn = sqlite3.connect(job.state)
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == (str(SCHEMA_VERSION),)
    assert conn.execute("SELECT id, host FROM runs").fetchall() == [
        (paused["runId"], socket.gethostname())
    ]
    conn.close()
    status = await job.status()
    assert status["host"] == socket.gethostname() and status["state"] == "completed"
    text = await job.cli("status", *job.job_flags())
    assert text.rc == 0 and f"on {socket.gethostname()}" in text.out.splitlines()[0], str(text)
    runs = await job.cli("runs", "--json", *job.job_flags())
    assert runs.rc == 0, str(runs)
    assert [e["host"] for e in runs.json()["runs"]] == [socket.gethostname()]


async def test_migration_is_one_transaction_per_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two processes opening a v1 state at once migrate it once; a migration that fails
    leaves the state at the version before it."""
    path = tmp_path / "s.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(V1_META)
    conn.executescript(V1_SQL)
    conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', '1')")
    conn.close()
    stores = await asyncio.gather(*(StateStore.open(str(path)) for _ in range(2)))
    for store in stores:
        await store.close()

    failing = SCHEMA_VERSION + 1
    monkeypatch.setattr(
        state_module,
        "MIGRATIONS",
        {**MIGRATIONS, failing: "CREATE TABLE extra (x); SELECT nope()"},
    )
    monkeypatch.setattr(state_module, "SCHEMA_VERSION", failing)
    with pytest.raises(state_module.ConfigError, match="nope"):
        await StateStore.open(str(path))
    conn = sqlite3.connect(path)
    version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchall()
    assert version == [(str(SCHEMA_VERSION),)]
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchone() is None
    conn.close()


async def test_a_database_that_is_not_a_state_is_refused(tmp_path: Path) -> None:
    """--state pointed at another SQLite database (say, the catalog): refused, left alone."""
    path = tmp_path / "catalog.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE products (sku TEXT)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(state_module.ConfigError, match=r"not a tui-backfill state.*products"):
        await StateStore.open(str(path))
    assert path.read_bytes() == before
