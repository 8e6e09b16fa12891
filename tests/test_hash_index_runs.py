"""Hash-index runs over time: `--limit-objects` bounds a run and the job's next run continues
after it (wrapping to the start once a run reached the listing's end); `resume --job` and
`run --job` of a hash-index job need no --pipeline; `coverage --job` answers the seed's query;
`runs` and `/metrics`-style figures read the hash index's counters."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import signal
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers import finish, spawn, tool, tool_env

from tui_backfill.servers.proxy import ProxyFaults

if TYPE_CHECKING:
    from conftest import S3Target

OBJECTS = 2_500


def put_objects(target: S3Target, count: int) -> dict[str, bytes]:
    assert target.data_dir is not None
    objects = {f"assets/o{n:05d}": os.urandom(512 + n % 97) for n in range(count)}
    for key, body in objects.items():
        path = target.data_dir / target.bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    return objects


def hash_args(target: S3Target, state: Path, index: Path, *extra: str) -> list[str]:
    return [
        "hash-index", "--no-ui", "--state", str(state), "--bucket", target.bucket,
        "--endpoint-url", target.endpoint_url, "--path-style", "--prefix", "assets/",
        "--index-db", str(index), "--backoff", "0.01", *extra,
    ]  # fmt: skip


def stored_hashes(index: Path) -> dict[str, str]:
    with sqlite3.connect(index) as db:
        return dict(
            db.execute("SELECT key, content_hash FROM files WHERE content_hash IS NOT NULL")
        )


async def test_limit_objects_advances_run_by_run_and_wraps(
    rclone_s3: S3Target, tmp_path: Path
) -> None:
    objects = put_objects(rclone_s3, OBJECTS)
    keys = sorted(objects)
    env = tool_env(rclone_s3)
    state, index = tmp_path / "state.sqlite3", tmp_path / "index.sqlite3"
    seen: list[dict[str, object]] = []
    for _ in range(3):
        result = await tool(*hash_args(rclone_s3, state, index, "--limit-objects", "1000"), env=env)
        assert result.rc == 0, result.err
        seen.append(json.loads(result.out))
    assert [s["scannedObjects"] for s in seen] == [1000, 1000, 500]
    assert [s["updated"] for s in seen] == [1000, 1000, 500]
    assert [s["checkpoint"]["lastKey"] for s in seen[:2]] == [keys[999], keys[1999]]  # type: ignore[index]
    assert stored_hashes(index) == {k: hashlib.sha256(v).hexdigest() for k, v in objects.items()}

    # the third run reached the end: the next one starts over, and finds all 1,000 unchanged
    result = await tool(*hash_args(rclone_s3, state, index, "--limit-objects", "1000"), env=env)
    assert result.rc == 0, result.err
    wrapped = json.loads(result.out)
    assert wrapped["scannedObjects"] == 1000 and wrapped["skipped"] == 1000
    assert wrapped["checkpoint"]["lastKey"] == keys[999]

    runs = await tool("runs", "--json", "--state", str(state), "--job", "hash-index", env=env)
    history = json.loads(runs.out)["runs"]
    assert [r["counters"]["updated"] for r in history] == [0, 500, 1000, 1000]
    assert [r["range"]["after"] for r in history] == [None, keys[1999], keys[999], None]

    coverage = await tool(
        "coverage", "--json", "--state", str(state), "--job", "hash-index", env=env
    )
    report = json.loads(coverage.out)
    assert (report["total"], report["with_hash"], report["coverage_percent"]) == (
        OBJECTS,
        OBJECTS,
        100.0,
    )


async def test_resume_and_run_by_job_name_alone(rclone_s3: S3Target, tmp_path: Path) -> None:
    """`run`, `status` and `resume` by the job's name alone read it as the hash index its
    runs were (no --pipeline): a new run asks for its index again, nothing is left to resume."""
    objects = put_objects(rclone_s3, 300)
    env = tool_env(rclone_s3)
    state, index = tmp_path / "state.sqlite3", tmp_path / "index.sqlite3"
    first = await tool(
        *hash_args(rclone_s3, state, index, "--job", "hx", "--limit-objects", "100"), env=env
    )
    assert first.rc == 0, first.err
    again = await tool("run", "--no-ui", "--state", str(state), "--job", "hx", env=env)
    # `run --job hx` knows hx is a hash index, but a new run needs its settings again
    assert again.rc == 2 and "--index-db" in again.err, again.err
    status = await tool("status", "--json", "--state", str(state), "--job", "hx", env=env)
    snap = json.loads(status.out)
    assert snap["pipeline"] == "hash-index" and snap["scannedObjects"] == 100
    resumed = await tool("resume", "--no-ui", "--state", str(state), "--job", "hx", env=env)
    assert resumed.rc == 2 and "nothing to resume" in resumed.err
    assert len(stored_hashes(index)) == 100 and len(objects) == 300
    # without --job: the default job has no runs here, and the error names the one that has
    for command in ("status", "runs", "failed"):
        plain = await tool(command, "--state", str(state), env=env)
        assert plain.rc == 2, plain.err
        assert (
            "job 'default' has no runs" in plain.err and "jobs there: hx (give --job)" in plain.err
        )


async def test_fresh_abandons_the_unfinished_run(
    rclone_s3: S3Target, s3_proxy: Any, tmp_path: Path
) -> None:
    """`--fresh` abandons a paused run: the job's next run is a new one, never the stale run
    continued from its old checkpoint."""
    put_objects(rclone_s3, 600)
    proxy = await s3_proxy(rclone_s3, ProxyFaults(latency=0.02))
    env = tool_env(rclone_s3)
    state, index = tmp_path / "state.sqlite3", tmp_path / "index.sqlite3"
    via_proxy = ["--endpoint-url", proxy.endpoint_url, "--concurrency", "2"]
    await paused_part_way([*hash_args(rclone_s3, state, index), *via_proxy], index, env)
    fresh = await tool(*hash_args(rclone_s3, state, index, "--fresh"), env=env)
    assert fresh.rc == 0, fresh.err
    assert json.loads(fresh.out)["scannedObjects"] == 600
    again = await tool(*hash_args(rclone_s3, state, index), env=env)
    assert again.rc == 0, again.err
    snap = json.loads(again.out)
    assert snap["runId"] == 3 and snap["skipped"] == 600  # a new run, not run 1 continued
    runs = await tool("runs", "--json", "--state", str(state), "--job", "hash-index", env=env)
    assert [r["status"] for r in json.loads(runs.out)["runs"]] == [
        "completed",
        "completed",
        "abandoned",
    ]


async def test_a_verify_run_fills_the_failed_items_of_a_hash_run(
    rclone_s3: S3Target, s3_proxy: Any, tmp_path: Path
) -> None:
    """Objects whose GETs kept failing are failed items; a later `--verify` run retries them
    first and, as they have no stored hash to compare, hashes and writes them (they are not
    dropped as 'nothing to verify')."""
    objects = put_objects(rclone_s3, 40)
    failing = await s3_proxy(rclone_s3, ProxyFaults(error_rate=1.0, kinds={"get_object"}))
    env = tool_env(rclone_s3)
    state, index = tmp_path / "state.sqlite3", tmp_path / "index.sqlite3"
    first = await tool(
        *hash_args(rclone_s3, state, index, "--limit-objects", "5", "--max-attempts", "1"),
        "--endpoint-url", failing.endpoint_url, env=env,
    )  # fmt: skip
    assert first.rc == 1, first.err
    assert json.loads(first.out)["failedItems"] == 5 and stored_count(index) == 0
    verify = await tool(*hash_args(rclone_s3, state, index, "--verify"), env=env)
    assert verify.rc == 0, verify.err
    keys = sorted(objects)[:5]
    hashes = stored_hashes(index)
    assert sorted(hashes) == keys
    assert all(hashes[k] == hashlib.sha256(objects[k]).hexdigest() for k in keys)
    failed = await tool("failed", "--json", "--state", str(state), "--job", "hash-index", env=env)
    assert json.loads(failed.out)["items"] == []


async def paused_part_way(
    args: list[str], index: Path, env: dict[str, str], cwd: Path | None = None
) -> None:
    """A run of `args` stopped by SIGTERM (exit 75, resumable) once some objects are hashed."""
    proc = await spawn(*args, env=env, cwd=cwd)
    for _ in range(400):  # until some objects are hashed
        if index.exists() and stored_count(index) >= 20:
            break
        await asyncio.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    paused = await finish(proc)
    assert paused.rc == 75, paused.err


def stored_count(index: Path) -> int:
    with contextlib.closing(sqlite3.connect(index)) as db:
        try:
            (count,) = db.execute(
                "SELECT count(*) FROM files WHERE content_hash IS NOT NULL"
            ).fetchone()
        except sqlite3.Error:
            return 0
    return int(count)


async def test_long_runs_of_orphans_are_paged(rclone_s3: S3Target, tmp_path: Path) -> None:
    """12,000 index rows with no object, before, between and after 3 objects: read 5,000
    at most a page, every one counted once, the objects hashed, the run completed."""
    objects = put_objects(rclone_s3, 3)  # assets/o00000 .. o00002
    index = tmp_path / "index.sqlite3"
    orphans = [f"assets/a{n:05d}" for n in range(6000)] + [
        f"assets/o00001-{n:05d}" for n in range(3000)
    ] + [f"assets/z{n:05d}" for n in range(3000)]  # fmt: skip
    with contextlib.closing(sqlite3.connect(index)) as db:
        db.execute(
            "CREATE TABLE files (key TEXT PRIMARY KEY, content_hash TEXT, size INTEGER, etag TEXT, uploaded_at TEXT, uploader_id TEXT)"
        )
        db.executemany("INSERT INTO files (key) VALUES (?)", [(k,) for k in orphans])
        db.commit()
    env = tool_env(rclone_s3)
    result = await tool(*hash_args(rclone_s3, tmp_path / "state.sqlite3", index), env=env)
    assert result.rc == 0, result.err
    snap = json.loads(result.out)
    assert (snap["scannedObjects"], snap["updated"], snap["orphans"]) == (3, 3, 12_000)
    assert snap["checkpoint"]["lastKey"] == "assets/z02999"
    assert stored_hashes(index) == {k: hashlib.sha256(v).hexdigest() for k, v in objects.items()}


async def test_a_mismatch_file_that_is_a_directory_is_exit_2(
    rclone_s3: S3Target, tmp_path: Path
) -> None:
    """Found before any work, not at the first checkpoint (which stopped the run with exit 3
    and every resume after it)."""
    put_objects(rclone_s3, 3)
    state, index = tmp_path / "state.sqlite3", tmp_path / "index.sqlite3"
    result = await tool(
        *hash_args(rclone_s3, state, index, "--verify", "--mismatch-file", str(tmp_path)),
        env=tool_env(rclone_s3),
    )
    assert result.rc == 2, result.err
    assert (
        result.err.count("\n") == 1
        and "--mismatch-file" in result.err
        and "directory" in result.err
    )
    assert not index.exists()
    runs = await tool("runs", "--state", str(state), "--job", "hash-index", env=tool_env(rclone_s3))
    assert runs.rc == 2 and "has no runs" in runs.err  # nothing started


async def test_a_resume_from_another_directory_fills_the_same_index(
    rclone_s3: S3Target, s3_proxy: Any, tmp_path: Path
) -> None:
    """Relative file names are the files where the run started: a paused run resumed from
    another directory (another shell, systemd, cron) fills the index it began with, and
    creates nothing where it is resumed from."""
    objects = put_objects(rclone_s3, 600)
    proxy = await s3_proxy(rclone_s3, ProxyFaults(latency=0.02))
    env = tool_env(rclone_s3)
    started, elsewhere = tmp_path / "started", tmp_path / "elsewhere"
    started.mkdir()
    elsewhere.mkdir()
    state, index = started / "state.sqlite3", started / "index.sqlite3"
    relative = hash_args(rclone_s3, state, Path("index.sqlite3"), "--emit-sql", "up.sql")
    via_proxy = ["--endpoint-url", proxy.endpoint_url, "--concurrency", "2"]
    await paused_part_way([*relative, *via_proxy], index, env, cwd=started)
    assert stored_count(index) < 600
    resumed = await tool(
        "resume", "--no-ui", "--state", str(state), "--job", "hash-index", env=env, cwd=elsewhere
    )
    assert resumed.rc == 0, resumed.err
    assert stored_hashes(index) == {k: hashlib.sha256(v).hexdigest() for k, v in objects.items()}
    assert list(elsewhere.iterdir()) == []  # no index, no SQL file beside the resume
    applied = sqlite3.connect(":memory:")
    applied.execute("CREATE TABLE files (key TEXT PRIMARY KEY, content_hash TEXT, size INTEGER,"
                    " etag TEXT, uploaded_at TEXT, uploader_id TEXT)")  # fmt: skip
    applied.executescript((started / "up.sql").read_text())
    assert dict(applied.execute("SELECT key, content_hash FROM files")) == stored_hashes(index)
    # the same relative names given again, from where it started: the same run's settings
    again = await tool(*relative, env=env, cwd=started)
    assert again.rc == 0 and json.loads(again.out)["skipped"] == 600, again.err


async def test_a_pause_sent_as_the_run_starts_is_not_lost(
    rclone_s3: S3Target, tmp_path: Path
) -> None:
    """`pause` needs a process holding the job: sent the moment one does (before its run has
    started: preflight, index), it pauses that run; it was dropped with the stale commands of
    earlier processes, the run completed, and `pause` still said "paused at checkpoint"."""
    from tui_backfill.state.lock import JobLock

    put_objects(rclone_s3, OBJECTS)
    env = tool_env(rclone_s3)
    state, index = tmp_path / "state.sqlite3", tmp_path / "index.sqlite3"
    proc = await spawn(*hash_args(rclone_s3, state, index, "--concurrency", "1"), env=env)
    lock = JobLock(str(state), "hash-index")
    for _ in range(600):
        if lock.holder() is not None:
            break
        await asyncio.sleep(0.01)
    pause = await tool("pause", "--job", "hash-index", "--state", str(state), env=env)
    run = await finish(proc)
    assert run.rc == 75, run.err
    assert json.loads(run.out)["state"] == "paused"
    assert pause.rc == 0 and "paused at checkpoint" in pause.err, str(pause)


async def test_a_bucket_that_goes_away_mid_run_stops_it_and_the_resume_finishes(
    rclone_s3: S3Target, s3_proxy: Any, tmp_path: Path
) -> None:
    """The S3 endpoint stops taking connections mid-run: the origin breaker stops the run
    (exit 3, checkpoint kept) instead of failing every object left after its retries; with the
    endpoint back, `resume` finishes it and the index is exact, nothing failed."""
    objects = put_objects(rclone_s3, 1_200)
    proxy = await s3_proxy(rclone_s3, ProxyFaults(latency=0.01))
    env = tool_env(rclone_s3)
    state, index = tmp_path / "state.sqlite3", tmp_path / "index.sqlite3"
    args = hash_args(rclone_s3, state, index, "--concurrency", "2")
    args[args.index("--endpoint-url") + 1] = proxy.endpoint_url
    proc = await spawn(*args, env=env)
    for _ in range(600):  # until some objects are hashed (bounded: 30 s)
        if index.exists() and stored_count(index) >= 100:
            break
        await asyncio.sleep(0.05)
    await proxy.stop()  # its port is closed: every new connection is refused
    stopped = await finish(proc)
    assert stopped.rc == 3, stopped.err
    snap = json.loads(stopped.out)
    assert "origin unreachable" in snap["message"] and snap["failedItems"] == 0, snap
    assert snap["scannedObjects"] < len(objects)

    await proxy.start()  # back, on the same port
    resumed = await tool("resume", "--job", "hash-index", "--state", str(state), "--no-ui", env=env)
    assert resumed.rc == 0, resumed.err
    done = json.loads(resumed.out)
    assert done["state"] == "completed" and done["failedItems"] == 0
    assert done["scannedObjects"] == len(objects)
    want = {key: hashlib.sha256(body).hexdigest() for key, body in objects.items()}
    assert stored_hashes(index) == want
