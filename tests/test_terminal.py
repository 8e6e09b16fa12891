"""The console in a real terminal: tmux at 80x24, keys sent with send-keys, the screen read
with capture-pane; and a lost connection (SIGHUP) that must pause and persist."""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tui_backfill.servers.catalog import ACTIVE_SKUS_QUERY, active_skus
from tui_backfill.servers.origin import OriginServer, expected_body
from tui_backfill.state.lock import JobLock
from tui_backfill.state.sqlite import open_state

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (.ci/run installs it)"
)


class Tmux:
    """A private tmux server (own socket) running one command in an 80x24 window."""

    def __init__(self, tmp_path: Path) -> None:
        self.socket = f"tui-backfill-test-{os.getpid()}-{id(self)}"
        self.tmp_path = tmp_path

    async def _tmux(self, *args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "tmux",
            "-L",
            self.socket,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
        return out.decode()

    async def start(
        self, argv: list[str], env: dict[str, str], term: str = "xterm-256color"
    ) -> None:
        script = self.tmp_path / "console.sh"
        exports = "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())
        script.write_text(
            f"{exports}export TERM={term}\ncd {shlex.quote(os.getcwd())}\n{shlex.join(argv)}\n"
            f"echo EXIT=$? > {shlex.quote(str(self.tmp_path / 'exit'))}\nsleep 30\n"
        )
        await self._tmux(
            "new-session", "-d", "-x", "80", "-y", "24", "-s", "console", "bash", str(script)
        )

    async def screen(self) -> str:
        return await self._tmux("capture-pane", "-p", "-t", "console")

    async def keys(self, *keys: str) -> None:
        await self._tmux("send-keys", "-t", "console", *keys)

    async def wait_screen(self, *needles: str, timeout: float = 20.0) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            text = await self.screen()
            if all(n in text for n in needles):
                return text
            if loop.time() > deadline:
                raise AssertionError(f"{needles} not on screen:\n{text}")
            await asyncio.sleep(0.1)

    async def exit_line(self, timeout: float = 5.0) -> str:
        """What the wrapper script wrote after the command ended (its exit status)."""
        path = self.tmp_path / "exit"
        for _ in range(int(timeout / 0.1)):
            if path.exists() and path.read_text().strip():
                break
            await asyncio.sleep(0.1)
        return path.read_text().strip()

    async def kill(self) -> None:
        await self._tmux("kill-server")


def run_argv(state: Path, catalog: Path, origin: OriginServer, s3: Any, limit: int) -> list[str]:
    return [
        sys.executable, "-m", "tui_backfill", "run", "--state", str(state), "--skus-db", str(catalog),
        "--skus-query", ACTIVE_SKUS_QUERY, "--origin", origin.url_template, "--bucket", s3.bucket,
        "--endpoint-url", s3.endpoint_url, "--path-style", "--timeout", "2", "--backoff", "0.01",
        "--limit-skus", str(limit),
    ]  # fmt: skip


async def wait_released(lock: JobLock, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while lock.holder() is not None:
        assert loop.time() < deadline, "the console process did not exit"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("term", ["xterm-256color", "screen"])
async def test_console_in_tmux_pauses_and_resumes(
    rclone_s3: Any, origin: OriginServer, catalog_db: Any, tmp_path: Path, term: str
) -> None:
    origin.faults.latency = 0.03
    state = tmp_path / "state.sqlite3"
    tmux = Tmux(tmp_path)
    await tmux.start(
        run_argv(state, catalog_db(300), origin, rclone_s3, 300), rclone_s3.env(), term
    )
    try:
        text = await tmux.wait_screen(
            "RUNNING", "scannedSkus", "uploaded", "errors by code", "p Hold"
        )
        assert "checkpoint" in text
        await tmux.keys("p")
        text = await tmux.wait_screen("HELD", "r Resume")
        gets = origin.gets
        await asyncio.sleep(0.8)
        assert origin.gets == gets, "fetches went on while paused"
        await tmux.keys("r")
        await tmux.wait_screen("RUNNING", "p Hold")
        await tmux.keys("q")
        await tmux.wait_screen("Stop it, save the checkpoint and quit?")
        await tmux.keys("y")
        try:
            await wait_released(JobLock(str(state), "default"))
        except AssertionError:
            raise AssertionError("still running after q, y:\n" + await tmux.screen()) from None
        assert await tmux.exit_line() == "EXIT=75"
    finally:
        await tmux.kill()


async def test_sighup_pauses_and_resume_finishes_without_duplicates(
    rclone_s3: Any, origin: OriginServer, catalog_db: Any, tmp_path: Path, s3_proxy: Any
) -> None:
    origin.faults.latency = 0.02
    proxy = await s3_proxy(rclone_s3)
    s3 = rclone_s3.via(proxy)
    catalog = catalog_db(200)
    state = tmp_path / "state.sqlite3"
    tmux = Tmux(tmp_path)
    await tmux.start(run_argv(state, catalog, origin, s3, 200), s3.env())
    try:
        await tmux.wait_screen("RUNNING", "uploaded")
        while sum(proxy.puts.values()) < 60:
            await asyncio.sleep(0.05)
    finally:
        await tmux.kill()  # the terminal goes away: SIGHUP
    await wait_released(JobLock(str(state), "default"))
    async with open_state(str(state)) as store:
        run = await store.latest_run("default")
    assert run is not None and run.status == "paused" and run.exit_code == 75
    assert run.checkpoint.last_sku is not None and 0 < run.counters.uploaded < 600

    env = {**os.environ, **s3.env()}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tui_backfill", "resume", "--no-ui", "--state", str(state), env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert max(proxy.puts.values()) == 1, "a key was PUT twice"
    skus = active_skus(catalog)[:200]
    present = set(rclone_s3.keys("rsr/highres/"))
    for sku in skus:
        for angle in (1, 2, 3):
            key = f"rsr/highres/{sku}_{angle}_HR.jpg"
            assert key in present
            assert (rclone_s3.data_dir / rclone_s3.bucket / key).read_bytes() == expected_body(
                sku, angle
            )


async def test_pause_from_another_shell_stops_a_console_run(
    rclone_s3: Any, origin: OriginServer, catalog_db: Any, tmp_path: Path
) -> None:
    origin.faults.latency = 0.03
    state = tmp_path / "state.sqlite3"
    tmux = Tmux(tmp_path)
    await tmux.start(run_argv(state, catalog_db(300), origin, rclone_s3, 300), rclone_s3.env())
    try:
        await tmux.wait_screen("RUNNING", "uploaded")
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tui_backfill", "pause", "--state", str(state),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        assert "paused at checkpoint" in err.decode()
        assert await tmux.exit_line() == "EXIT=75"
    finally:
        await tmux.kill()
