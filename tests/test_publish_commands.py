"""A publish job's commands from another process, as an operator runs them: two headless
worker processes on one PostgreSQL queue (its role has a password), the RAID-like origin,
`rclone serve s3`; `status`, `pause`, `resume` and `runs` in further processes read and write
the database only. No secret (the RAID secret, the B2 key, the database password) appears in
any output."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import S3Target
from helpers import Result, tool
from publish_helpers import RAID_SECRET, publish_env

from tui_backfill.seams.queue import open_queue
from tui_backfill.servers.images import many_images
from tui_backfill.servers.raid import RaidServer

FILES = 200  # more than two busy workers finish before the test pauses and resumes them


@dataclass
class Proc:
    proc: asyncio.subprocess.Process
    out: Path
    err: Path

    async def finish(self, within: float = 30) -> Result:
        try:
            rc = await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()
            raise AssertionError(f"still running after {within}s: {self.err.read_text()}") from None
        return Result(rc, self.out.read_text(), self.err.read_text())


async def start(tmp: Path, name: str, *args: str, env: dict[str, str]) -> Proc:
    """`tui-backfill ARGS` in the background, its output in files (no pipe can fill)."""
    out, err = tmp / f"{name}.out", tmp / f"{name}.err"
    with open(out, "wb") as o, open(err, "wb") as e:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tui_backfill", *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=o, stderr=e, env=env, cwd=tmp,
        )  # fmt: skip
    return Proc(proc, out, err)


async def eventually(check: Callable[[], Any], what: str, within: float = 15.0) -> Any:
    """Await `check()` (a coroutine function) until it returns something true."""
    deadline = time.monotonic() + within
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached within {within}s (last: {value!r})")
        await asyncio.sleep(0.2)


class Db:
    """Reads of the queue as a test's own connection (not the tool's)."""

    def __init__(self, url: str) -> None:
        self.url = url

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        import asyncpg

        conn = await asyncpg.connect(self.url)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    async def attempts_by(self) -> dict[str, int]:
        rows = await self.rows("SELECT worker, COUNT(*) FROM publish_attempts GROUP BY worker")
        return {str(w): int(n) for w, n in rows}

    async def states(self) -> dict[str, str]:
        return {str(i): str(s) for i, s in await self.rows("SELECT id, state FROM publish_workers")}


@pytest.fixture
async def raid() -> AsyncIterator[RaidServer]:
    async with RaidServer(many_images(FILES, seed=11), token=RAID_SECRET) as server:
        server.faults.latency = 0.15  # the workers stay busy for the whole test
        yield server


async def test_status_pause_resume_runs_from_other_processes(
    tmp_path: Path, rclone_s3: S3Target, raid: RaidServer, pg_url: str
) -> None:
    password = pg_url.split(":")[2].split("@")[0]
    assert password and password in pg_url
    # A short lease: heartbeats (and the `held` they write) every second.
    env = publish_env(rclone_s3, raid.endpoint, pg_url, CONCURRENCY="2", TUI_BACKFILL_LEASE="3")
    secrets = (RAID_SECRET, rclone_s3.secret_key, password)
    outputs: list[Result] = []

    async def cli(*args: str) -> Result:
        result = await tool(*args, env=env, timeout=30)
        outputs.append(result)
        assert result.rc == 0, str(result)
        return result

    await cli("publish", "init-db")
    queue = await open_queue(pg_url)
    try:
        async with asyncio.timeout(10):
            import asyncpg

            conn = await asyncpg.connect(pg_url)
            await conn.executemany(
                "INSERT INTO auction_files (id, lot_id, source_key, publish_status)"
                " VALUES ($1, $2, $3, 'pending')",
                [(n, 9, key) for n, key in enumerate(raid.images, start=1)],
            )
            await conn.close()
        assert await queue.enqueue() == FILES
    finally:
        await queue.close()
    db = Db(pg_url)

    workers = [
        await start(tmp_path, name, "publish", "worker", "--no-ui", "--worker-id", name, env=env)
        for name in ("w1", "w2")
    ]
    try:
        # Both instances claim; `status` from another process lists them from the database.
        await eventually(lambda: _both(db.attempts_by()), "both workers claiming", within=20)
        status, snapped = await asyncio.gather(
            cli("status", "--job", "publish"),  # the generic command, routed
            cli("publish", "status", "--json"),
        )
        assert "job publish (publish): running, 2 live worker(s)" in status.out, status.out
        assert "worker w1: running" in status.out and "worker w2: running" in status.out
        assert "queue: " in status.out and " pending " in status.out
        assert max(len(line) for line in status.out.splitlines()) <= 80, status.out
        snap = json.loads(snapped.out)
        assert snap["liveWorkers"] == 2 and snap["state"] == "running"
        assert {w["id"] for w in snap["workers"]} == {"w1", "w2"}
        queued = snap["queue"]
        assert queued["pending"] + queued["processing"] + queued["completed"] <= FILES
        assert queued["completed"] + queued["pending"] > 0

        # `pause --job publish` reaches every instance: both stop claiming, both rows say held.
        pause = await cli("pause", "--job", "publish")
        assert "pause sent to 2 live worker(s)" in pause.err
        await eventually(
            lambda: _equals(db.states(), {"w1": "held", "w2": "held"}), "both rows held"
        )
        await eventually(
            lambda: _equals(
                db.rows("SELECT COUNT(*) FROM publish_jobs WHERE status = 'processing'"), [(0,)]
            ),
            "in-flight jobs finished, unstarted ones handed back",
        )
        before = await db.attempts_by()
        await asyncio.sleep(1.0)
        assert await db.attempts_by() == before, "a held worker claimed"
        held = json.loads((await cli("status", "--job", "publish", "--json")).out)
        assert held["state"] == "held" and held["liveWorkers"] == 2
        assert held["published"] > 0  # the instances' stats
        assert held["jobsPerMinute"] == 0  # held: no claims, no rate (not a 30 s average)

        # `publish resume --worker w1` reaches w1 alone.
        resume = await cli("publish", "resume", "--worker", "w1")
        assert "resume sent to w1" in resume.err
        await eventually(
            lambda: _grew(db.attempts_by(), before, "w1"), "w1 claims again", within=10
        )
        assert (await db.states())["w2"] == "held"
        await asyncio.sleep(0.6)
        after = await db.attempts_by()
        assert after["w2"] == before["w2"], "w2 claimed though only w1 was resumed"
        await eventually(
            lambda: _equals(db.states(), {"w1": "running", "w2": "held"}), "w1's row running"
        )
        w2 = await cli("resume", "--job", "publish", "--worker", "w2")  # the generic command
        assert "resume sent to w2" in w2.err
        await eventually(
            lambda: _equals(db.states(), {"w1": "running", "w2": "running"}), "w2 resumed"
        )

        # SIGTERM (a service manager's) and SIGHUP (a lost SSH session): both stop (exit 0),
        # saying so; `runs` lists the stopped sessions with their counts.
        for proc, signum in zip(workers, (signal.SIGTERM, signal.SIGHUP), strict=True):
            proc.proc.send_signal(signum)
        finals = [await proc.finish() for proc in workers]
    finally:
        for proc in workers:
            if proc.proc.returncode is None:
                proc.proc.kill()
                await proc.proc.wait()
    outputs.extend(finals)
    for result, name in zip(finals, ("SIGTERM", "SIGHUP"), strict=True):
        assert result.rc == 0, result.err[-2000:]
        assert f"tui-backfill: {name}: stopping;" in result.err
        # the journal of a worker under systemd says when it was held and released
        said = " ".join(result.err.split())  # log lines wrap at the terminal's width
        assert "held: no new claims;" in said and "resumed: claiming again" in said
        assert json.loads(result.out)["state"] == "stopped"
    published = {
        name: json.loads(result.out)["published"]
        for name, result in zip(("w1", "w2"), finals, strict=True)
    }
    assert published["w1"] > 0 and published["w2"] > 0

    runs, listing, idle = await asyncio.gather(
        cli("runs", "--job", "publish"),
        cli("publish", "runs", "--json"),
        cli("status", "--job", "publish"),
    )
    # 80 columns: each session as `worker ID`, then its figures named
    blocks = re.split(r"^worker ", runs.out, flags=re.MULTILINE)[1:]
    rows = {b.split()[0]: dict(re.findall(r"(state|stopped|published) (\S+)", b)) for b in blocks}
    assert set(rows) == {"w1", "w2"}, runs.out
    for name, row in rows.items():
        assert row["state"] == "stopped" and row["stopped"] != "-", row
        assert int(row["published"]) == published[name], (row, published)
    assert max(len(line) for line in runs.out.splitlines()) <= 80, runs.out
    listed = json.loads(listing.out)
    assert {r["id"]: r["stats"]["published"] for r in listed["runs"]} == published
    assert "idle, 0 live worker(s)" in idle.out
    assert max(len(line) for line in idle.out.splitlines()) <= 80, idle.out

    for result in outputs:
        for secret in secrets:
            assert secret not in result.out + result.err, (secret, str(result))


async def _both(attempts: Any) -> bool:
    by = await attempts
    return bool(by.get("w1") and by.get("w2"))


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _grew(attempts: Any, before: dict[str, int], name: str) -> bool:
    return bool((await attempts).get(name, 0) > before.get(name, 0))
