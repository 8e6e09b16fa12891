"""Bad input of `publish worker`: one line naming the variable or flag, exit 2, nothing
claimed (the queue's jobs stay pending, no attempt is recorded, the bucket stays empty)."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import sys
from pathlib import Path

import pytest
from conftest import S3Target
from helpers import CLI, REPO, closed_port, finish, signalled_without_stderr, tool
from publish_helpers import RAID_SECRET, insert_files_sqlite, publish_env, rows_sqlite

from tui_backfill.servers.images import photo_jpeg
from tui_backfill.servers.raid import RaidFaults, RaidServer


@pytest.fixture
async def queue_db(tmp_path: Path, rclone_s3: S3Target) -> Path:
    path = tmp_path / "queue.sqlite3"
    env = publish_env(rclone_s3, "http://127.0.0.1:9/pub", f"sqlite:///{path}")
    result = await tool("publish", "init-db", env=env)
    assert result.rc == 0, result.err
    insert_files_sqlite(path, [(1, 10, "a.jpg"), (2, 10, "b.jpg")])
    result = await tool("publish", "enqueue", env=env)
    assert result.rc == 0 and '"enqueued": 2' in result.out, result.out + result.err
    return path


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"RAID_PUBLISHER_SECRET": ""}, "RAID_PUBLISHER_SECRET"),
        ({"CDN_BASE_URL": "cdn.example.test/lots"}, "CDN_BASE_URL"),
        ({"B2_BUCKET": "no-such-bucket"}, "B2_BUCKET"),
        ({"B2_APP_KEY": "wrong-secret-key"}, "B2_KEY_ID"),
        (
            {"DATABASE_URL": f"postgresql://pub:pw-never-shown@127.0.0.1:{closed_port()}/q"},
            "DATABASE_URL",
        ),
        ({"DATABASE_URL": "sqlite://relative.db"}, "DATABASE_URL"),
        # (every other case's store is this one too: the checks above come first)
        ({"RAID_PUB_ENDPOINT": "http://127.0.0.1:9/pub"}, "RAID_PUB_ENDPOINT"),
        ({"RAID_PUB_ENDPOINT": "http://no-such-host.invalid/pub"}, "RAID_PUB_ENDPOINT"),
    ],
)
async def test_bad_input_is_one_line_exit_2_and_nothing_claimed(
    queue_db: Path, rclone_s3: S3Target, change: dict[str, str], field: str, tmp_path: Path
) -> None:
    env = publish_env(rclone_s3, "http://127.0.0.1:9/pub", f"sqlite:///{queue_db}", **change)
    result = await tool("publish", "worker", "--no-ui", "--burst", env=env, timeout=60)
    assert result.rc == 2, (result.rc, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"tui-backfill: error: {field}"), result.err
    for secret in (RAID_SECRET, rclone_s3.secret_key, "pw-never-shown", "wrong-secret-key"):
        assert secret not in result.err + result.out
    assert rows_sqlite(queue_db, "SELECT status, COUNT(*) FROM publish_jobs GROUP BY status") == [
        ("pending", 2)
    ]
    assert rows_sqlite(queue_db, "SELECT COUNT(*) FROM publish_attempts") == [(0,)]
    assert rclone_s3.keys() == []


# The CLI in a subprocess that says, on leaving, whether botocore was ever imported
_WATCHED = (
    "import atexit, runpy, sys\n"
    "atexit.register(lambda: print('botocore loaded:', 'botocore' in sys.modules, file=sys.stderr))\n"
    "sys.argv = ['tui-backfill', *sys.argv[1:]]\n"
    "runpy.run_module('tui_backfill', run_name='__main__')\n"
)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"B2_BUCKET": "no-such-bucket"}, "B2_BUCKET"),
        ({"B2_APP_KEY": "wrong-secret-key"}, "B2_KEY_ID"),
        ({"B2_ENDPOINT": f"http://127.0.0.1:{closed_port()}"}, "B2_ENDPOINT"),
    ],
)
async def test_the_bucket_refuses_alike_on_the_direct_path_and_through_botocore(
    queue_db: Path, rclone_s3: S3Target, change: dict[str, str], field: str, tmp_path: Path
) -> None:
    """With B2_* and no AWS profile the worker's bucket is on the direct path (seams/s3_direct,
    no botocore); an AWS config file sends it through aiobotocore. The preflight's refusal is
    the same line either way."""
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = us-east-1\n")  # a config file: botocore's to read
    said: dict[bool, str] = {}
    for botocore, extra in ((False, {}), (True, {"AWS_CONFIG_FILE": str(config)})):
        env = publish_env(
            rclone_s3, "http://127.0.0.1:9/pub", f"sqlite:///{queue_db}", **change, **extra
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", _WATCHED, "publish", "worker", "--no-ui", "--burst",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=REPO,
        )  # fmt: skip
        result = await finish(proc)
        assert result.rc == 2, (result.rc, result.err)
        lines = result.err.strip().splitlines()
        assert lines[-1] == f"botocore loaded: {botocore}", result.err
        assert len(lines) == 2 and lines[0].startswith(f"tui-backfill: error: {field}: "), lines
        said[botocore] = lines[0]
    assert said[False] == said[True]
    assert rows_sqlite(queue_db, "SELECT COUNT(*) FROM publish_attempts") == [(0,)]


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (("--file-id", "100000000000000000000"), "--file-id"),
        (("--file-id", "0"), "--file-id"),
        (("--max-retries", "-3"), "--max-retries"),
    ],
)
async def test_enqueue_bad_input(
    queue_db: Path, rclone_s3: S3Target, args: tuple[str, ...], field: str
) -> None:
    env = publish_env(rclone_s3, "http://127.0.0.1:9/pub", f"sqlite:///{queue_db}")
    result = await tool("publish", "enqueue", *args, env=env)
    assert result.rc == 2, (result.rc, result.err)
    assert result.err.strip().startswith(f"tui-backfill: error: {field}:"), result.err
    assert rows_sqlite(queue_db, "SELECT COUNT(*) FROM publish_jobs") == [(2,)]


@pytest.mark.parametrize(
    "command",
    [
        ("publish", "worker", "--no-ui", "--burst"),
        ("publish", "enqueue"),
        ("publish", "init-db"),
        ("status", "--job", "publish"),
        ("pause", "--job", "publish"),
        ("runs", "--job", "publish"),
    ],
)
async def test_a_sqlite_queue_in_no_such_place_is_exit_2_and_nothing_made(
    rclone_s3: S3Target, tmp_path: Path, command: tuple[str, ...]
) -> None:
    """A mistyped SQLite queue path is no new empty queue (a worker would wait on it for
    ever): a directory that does not exist is refused, and the commands that only read the
    queue create no file where there was none."""
    here = tmp_path / "here"
    here.mkdir()
    nowhere = here / "no-such-dir" / "queue.sqlite3"
    missing = here / "queue.sqlite3"
    reading = command[0] != "publish"
    path = missing if reading else nowhere
    env = publish_env(rclone_s3, "http://127.0.0.1:9/pub", f"sqlite:///{path}")
    result = await tool(*command, env=env, cwd=here)
    assert result.rc == 2, (result.rc, result.err)
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tui-backfill: error: DATABASE_URL"), result.err
    assert list(here.iterdir()) == [], "something was created"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
async def test_a_worker_whose_terminal_is_gone_still_stops_on_a_signal(
    queue_db: Path, rclone_s3: S3Target, signum: signal.Signals
) -> None:
    """The stop comes before the line that says so: with stderr gone (a lost SSH session, a
    closed pipe) a signal still stops the worker, its claims handed back."""
    async with RaidServer({}, token=RAID_SECRET) as raid:
        env = publish_env(rclone_s3, raid.endpoint, f"sqlite:///{queue_db}")
        proc = await asyncio.create_subprocess_exec(
            *CLI, "publish", "worker", "--no-ui", env=env,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            assert proc.stderr is not None
            banner = await asyncio.wait_for(proc.stderr.readline(), 30)
            assert b"publish worker" in banner, banner
            assert await signalled_without_stderr(proc, signum, after=0.5) == 0
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert rows_sqlite(queue_db, "SELECT state FROM publish_workers") == [("stopped",)]
    assert rows_sqlite(
        queue_db, "SELECT COUNT(*) FROM publish_jobs WHERE status = 'processing'"
    ) == [(0,)]


@pytest.mark.parametrize(("concurrency", "said"), [(None, 1), ("3", 3)])
async def test_a_worker_pinned_to_one_cpu_defaults_to_one_download_and_one_image_thread(
    queue_db: Path, rclone_s3: S3Target, concurrency: str | None, said: int
) -> None:
    """CONCURRENCY defaults to the CPUs the process may use (taskset, CPUAffinity=, a cgroup
    quota), not the machine's: pinned to one, it downloads one job at a time and makes the
    images in one thread; a CONCURRENCY given is kept (the image threads stay at one). The
    child pins itself before anything else runs (no preexec_fn in a process with threads)."""
    images = {"a.jpg": photo_jpeg(64, 48, seed=1), "b.jpg": photo_jpeg(48, 64, seed=2)}
    one_cpu = {min(os.sched_getaffinity(0))}
    async with RaidServer(images, token=RAID_SECRET) as raid:
        extra = {"CONCURRENCY": concurrency} if concurrency else {}
        env = publish_env(rclone_s3, raid.endpoint, f"sqlite:///{queue_db}", **extra)
        pinned = f"import os; os.sched_setaffinity(0, {sorted(one_cpu)!r})\n" + _THREADS
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", pinned, "publish", "worker", "--no-ui", "--burst",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=REPO,
        )  # fmt: skip
        result = await finish(proc)
    assert result.rc == 0, result.err
    assert f"concurrency {said} (burst)" in result.err.splitlines()[0], result.err
    assert result.err.splitlines()[-1] == "media threads: 1", result.err
    assert rows_sqlite(queue_db, "SELECT status, COUNT(*) FROM publish_jobs GROUP BY status") == [
        ("completed", 2)
    ]
    assert len(rclone_s3.keys()) == 4  # two variants of each


# The CLI in a subprocess that says, on leaving, how many threads its image pool may start
_THREADS = (
    "import atexit, concurrent.futures as cf, runpy, sys\n"
    "pools = []\n"
    "_init = cf.ThreadPoolExecutor.__init__\n"
    "def init(self, max_workers=None, thread_name_prefix='', *args, **kwargs):\n"
    "    _init(self, max_workers, thread_name_prefix, *args, **kwargs)\n"
    "    if thread_name_prefix == 'media': pools.append(self._max_workers)\n"
    "cf.ThreadPoolExecutor.__init__ = init\n"
    "atexit.register(lambda: print('media threads:', *pools, file=sys.stderr))\n"
    "sys.argv = ['tui-backfill', *sys.argv[1:]]\n"
    "runpy.run_module('tui_backfill', run_name='__main__')\n"
)


async def test_a_secret_the_store_refuses_stops_the_worker_once_with_its_claims_handed_back(
    queue_db: Path, rclone_s3: S3Target
) -> None:
    """A wrong RAID_PUBLISHER_SECRET is no job's fault: both downloads in flight meet the 401,
    the worker says so once (exit 3), hands every claim back with no attempt counted, and the
    secret appears nowhere."""
    images = {"a.jpg": photo_jpeg(64, 48, seed=1), "b.jpg": photo_jpeg(48, 64, seed=2)}
    slow = RaidFaults(latency=0.3)  # both downloads are asked before the first answer
    async with RaidServer(images, token=RAID_SECRET, faults=slow) as raid:
        env = publish_env(
            rclone_s3, raid.endpoint, f"sqlite:///{queue_db}", CONCURRENCY="2",
            RAID_PUBLISHER_SECRET="not-the-stores-secret",
        )  # fmt: skip
        result = await tool("publish", "worker", "--no-ui", "--burst", env=env, timeout=60)
        assert raid.unauthorized == 2  # both jobs were in flight when the first 401 came
    assert result.rc == 3, result.err
    fatal = [line for line in result.err.splitlines() if "fatal:" in line]
    assert len(fatal) == 1 and "401" in fatal[0], result.err
    assert "not-the-stores-secret" not in result.err + result.out
    assert rows_sqlite(
        queue_db, "SELECT status, retry_count, COUNT(*) FROM publish_jobs GROUP BY 1, 2"
    ) == [("pending", 0, 2)]
    assert rows_sqlite(queue_db, "SELECT outcome, COUNT(*) FROM publish_attempts GROUP BY 1") == [
        ("released", 2)
    ]
    assert rclone_s3.keys() == []


async def test_a_database_url_naming_another_sqlite_database_is_refused_not_filled(
    tmp_path: Path, rclone_s3: S3Target
) -> None:
    """A worker's first start makes the queue's tables in a new or empty SQLite file, or beside
    a seed's `auction_files`; a file that holds other tables and no queue (a mistyped path to
    some other database) is exit 2 naming DATABASE_URL, and left as it was. `init-db`, asked
    for, adds the queue to it."""
    other = tmp_path / "index.sqlite3"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE files (key TEXT PRIMARY KEY, content_hash TEXT)")
    env = publish_env(rclone_s3, "http://127.0.0.1:9/pub", f"sqlite:///{other}")
    for command in (("publish", "worker", "--no-ui", "--burst"), ("publish", "enqueue")):
        result = await tool(*command, env=env, timeout=60)
        assert result.rc == 2, (command, result.rc, result.err)
        lines = result.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tui-backfill: error: DATABASE_URL: "), lines
        assert "holds other tables (files) and no publish queue" in lines[0]
        assert rows_sqlite(other, "SELECT name FROM sqlite_master WHERE type = 'table'") == [
            ("files",)
        ]
    assert (await tool("publish", "init-db", env=env)).rc == 0
    tables = {
        t for (t,) in rows_sqlite(other, "SELECT name FROM sqlite_master WHERE type = 'table'")
    }
    assert {"files", "auction_files", "publish_jobs", "publish_attempts"} <= tables
    enqueue = await tool("publish", "enqueue", env=env)
    assert enqueue.rc == 0 and '"enqueued": 0' in enqueue.out, enqueue.err
