"""The publish worker's console, used as a person uses it: Pilot keys against a real worker (a
SQLite queue file, the RAID-like origin, `rclone serve s3`), a snapshot at 80x24 of a fixed
status, and `tui-backfill publish worker` in tmux at 80x24."""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import S3Target
from publish_helpers import RAID_SECRET, insert_files_sqlite, publish_env, rows_sqlite
from rich.console import Console
from test_terminal import Tmux

from tui_backfill.frontends.ui.publish import PublishApp
from tui_backfill.pipelines.publish.prepare import prepared_worker
from tui_backfill.pipelines.publish.settings import resolve_publish
from tui_backfill.pipelines.publish.snapshot import InstanceCounters, PublishSnapshot
from tui_backfill.pipelines.publish.worker import PublishWorker
from tui_backfill.seams.queue import open_queue
from tui_backfill.seams.queue.base import AttentionJob, QueueFigures, WorkerRow
from tui_backfill.servers.images import many_images, sample_images
from tui_backfill.servers.raid import RaidServer

GOOD = 60  # enough left after `p` for `r` to be seen claiming, and for `q` to find claims waiting


def screen_text(app: Any) -> str:
    """The screen as plain text, the way a person reads it."""
    width, height = app.size
    console = Console(
        width=width, height=height, file=io.StringIO(), record=True, legacy_windows=False
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    return console.export_text()


def line_with(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if label in line)


def figure(text: str, label: str) -> str:
    """The value shown right of `label` in the figures box."""
    return line_with(text, f"{label} ").split(f"{label} ", 1)[1].split()[0]


async def until(pilot: Any, predicate: Any, what: str, timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not reached in time:\n" + screen_text(pilot.app))
        await pilot.pause(0.05)
    await pilot.pause(0.1)


async def queue_with_files(db: Path, files: list[tuple[int, int, str]]) -> None:
    """The tables, the files (plain SQL, as the seed's edge function) and a job each."""
    queue = await open_queue(f"sqlite:///{db}")
    try:
        await queue.init_db()
        insert_files_sqlite(db, files)
        assert await queue.enqueue() == len(files)
    finally:
        await queue.close()


@pytest.fixture
async def images() -> dict[str, bytes]:
    samples = sample_images()
    return {"corrupt.jpg": samples["corrupt.jpg"], **many_images(GOOD, seed=5)}


@pytest.fixture
async def raid(images: dict[str, bytes]) -> AsyncIterator[RaidServer]:
    async with RaidServer(images, token=RAID_SECRET) as server:
        yield server


def files_of(images: dict[str, bytes]) -> list[tuple[int, int, str]]:
    return [(n, 70 + n % 3, key) for n, key in enumerate(images, start=1)]  # corrupt.jpg first


async def test_keys_drive_a_real_worker(
    tmp_path: Path,
    rclone_s3: S3Target,
    raid: RaidServer,
    images: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # no ./.env of this machine
    db = tmp_path / "queue.sqlite3"
    await queue_with_files(db, files_of(images))
    raid.faults.latency = 0.25  # slow enough to press keys while jobs are in flight
    env = publish_env(
        rclone_s3, raid.endpoint, f"sqlite:///{db}", CONCURRENCY="2", TUI_BACKFILL_LEASE="3"
    )
    settings = resolve_publish({}, env=env)
    async with prepared_worker(settings, worker="console-test:1") as worker:
        app = PublishApp(worker)
        app.worker_task = task = asyncio.create_task(worker.run())
        try:
            async with app.run_test(size=(80, 24)) as pilot:
                released_at_q = await drive(pilot, worker, db, rclone_s3)
        finally:
            worker.stop()
            await asyncio.wait_for(asyncio.shield(task), 30)
        assert task.result() == 0 and app.return_code == 0

    # q handed back the claims waiting for a slot: pending again, no attempt counted.
    assert worker.counters.released > released_at_q
    assert rows_sqlite(db, "SELECT COUNT(*) FROM publish_jobs WHERE status = 'processing'") == [
        (0,)
    ]
    released = rows_sqlite(
        db,
        "SELECT status, retry_count FROM publish_jobs WHERE id IN"
        " (SELECT job_id FROM publish_attempts WHERE outcome = 'released') AND status != 'completed'",
    )
    assert released and all(row == ("pending", 0) for row in released), released
    assert rows_sqlite(
        db, "SELECT state, stopped_at IS NOT NULL FROM publish_workers WHERE id = 'console-test:1'"
    ) == [("stopped", 1)]


async def drive(pilot: Any, worker: PublishWorker, db: Path, s3: S3Target) -> int:
    """The keys of the test above; the worker's released count when `q` is pressed."""
    app = pilot.app
    # The figures, the live worker and the corrupt image's job needing attention.
    await until(
        pilot,
        lambda: "corrupt" in screen_text(app) and "live workers (1" in screen_text(app),
        "the corrupt job listed with the live worker",
    )
    text = screen_text(app)
    for label in ("queue depth", "in flight", "jobs/min", "error rate", "avg processing"):
        assert label in text, label
    assert "RUNNING" in text and "p Pause" in text and "r Resume" not in text
    assert figure(text, "need attention") == "1" and figure(text, "live workers") == "1"
    assert "job 1 file 1: corrupt:" in text  # the job, its file, its last error
    assert "*console-test:1" in line_with(text, "running")
    for secret in (RAID_SECRET, s3.secret_key):
        assert secret not in text

    # p: no new claims; the in-flight jobs finish; the footer offers Resume.
    await until(pilot, lambda: worker.in_flight > 0, "jobs in flight")
    await pilot.press("p")
    claimed = worker.counters.claimed
    await until(pilot, lambda: worker.in_flight == 0, "in-flight jobs finished")
    assert worker.counters.claimed == claimed, "claimed while held"
    await until(pilot, lambda: "r Resume" in screen_text(app), "the footer offers Resume")
    text = screen_text(app)
    assert "HELD" in text and "p Pause" not in text
    assert figure(text, "jobs/min") == "0.0"  # held: no 30 s average of the time before
    assert worker.snapshot().to_json()["jobsPerMinute"] == 0
    await pilot.pause(0.6)
    assert worker.counters.claimed == claimed, "claims went on while held"
    assert rows_sqlite(db, "SELECT COUNT(*) FROM publish_jobs WHERE status = 'processing'") == [
        (0,)
    ], "held without handing back the unstarted claims"
    assert rows_sqlite(db, "SELECT COUNT(*) FROM publish_jobs WHERE status = 'pending'")[0][0] > 0
    await until(
        pilot, lambda: " held " in line_with(screen_text(app), "*console-test"), "the row says held"
    )

    # r: claims again.
    await pilot.press("r")
    await until(pilot, lambda: worker.counters.claimed > claimed, "claims resumed")
    await until(pilot, lambda: worker.in_flight > 0, "jobs in flight again")
    assert "p Pause" in screen_text(app) and "RUNNING" in screen_text(app)

    # q: the worker stops as on SIGTERM; the app leaves with its exit code once it has. Pressed
    # while claims wait for a slot (downloads take 0.25 s), so the stop has some to hand back.
    await until(
        pilot, lambda: len(worker.engine.held_ids) > worker.in_flight, "claims waiting for a slot"
    )
    released = worker.counters.released
    await pilot.press("q")
    await until(pilot, lambda: app.worker_task.done(), "the worker stopped")
    return released


# -- a fixed status: the snapshot at 80x24 --------------------------------------------------


def fixed_publish_snapshot(state: str = "running") -> PublishSnapshot:
    counters = InstanceCounters(
        claimed=1_290, published=1_204, skipped=37, failed_attempts=9, failed_permanent=2,
        bytes_downloaded=3_456_789_012, processing_seconds=2_900.0,
        errors_by_code={"http_503": 9, "corrupt": 2},
    )  # fmt: skip
    figures = QueueFigures(
        pending=18_412, waiting_backoff=6, processing=7, completed=24_180, failed=5,
        needing_attention=3, avg_processing_seconds=2.41,
        publish_status={"pending": 18_425, "published": 24_180},
    )  # fmt: skip
    workers = (
        WorkerRow("media-01:48213", "publish", "2026-11-26T11:40:00Z", "2026-11-26T11:59:59Z",
                  None, state, '{"inFlight": 3, "perMinute": 81.0, "published": 1204}'),
        WorkerRow("media-02:1177", "publish", "2026-11-26T11:41:00Z", "2026-11-26T11:59:58Z",
                  None, "held", '{"inFlight": 0, "perMinute": 0.0, "published": 23014}'),
        WorkerRow("media-03:99", "publish", "2026-11-26T10:00:00Z", "2026-11-26T10:30:00Z",
                  "2026-11-26T10:30:00Z", "stopped", "{}"),
    )  # fmt: skip
    attention = (
        AttentionJob(812, 40213, 5, "corrupt: cannot identify image file (truncated JPEG data)"),
        AttentionJob(907, 40377, 5, "404: raid/lot-88/IMG_0031.jpg not found at the source"),
        AttentionJob(1203, 41002, 5, "too_many_pixels: 400,000,000 pixels, over 100,000,000"),
    )
    return PublishSnapshot(
        job="publish", worker="media-01:48213", state=state,
        started_at="2026-11-26T11:40:00.000Z", last_update_at="2026-11-26T12:00:00.000Z",
        concurrency=4, in_flight=7, downloading=4, counters=counters, per_second=1.35, error_rate=0.021,
        queue=figures, workers=workers, attention=attention,
        message="held: no new claims; in-flight jobs finish" if state == "held" else "",
    )  # fmt: skip


class FixedWorker:
    """A unit of the UI: a worker whose status is fixed (the Pilot test above covers the
    behaviour against a real one)."""

    def __init__(self, snap: PublishSnapshot) -> None:
        self.snap = snap
        self.calls: list[str] = []

    def snapshot(self) -> PublishSnapshot:
        return self.snap

    def hold(self) -> None:
        self.calls.append("hold")

    def resume(self) -> None:
        self.calls.append("resume")

    def stop(self) -> None:
        self.calls.append("stop")


@pytest.mark.parametrize("state", ["running", "held"])
def test_publish_console_snapshot(snap_compare: Any, state: str) -> None:
    app = PublishApp(FixedWorker(fixed_publish_snapshot(state)), poll=False)
    assert snap_compare(app, terminal_size=(80, 24))


async def test_every_figure_shows_in_full_at_80x24() -> None:
    app = PublishApp(FixedWorker(fixed_publish_snapshot()), poll=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = screen_text(app)
    lines = text.splitlines()
    assert len(lines) == 24
    expected = {
        "queue depth": "18,412", "downloads": "4/4", "jobs/min": "81.0",
        "waiting retry": "6", "processing": "7", "error rate": "2.1%",
        "completed": "24,180", "failed": "5", "avg processing": "2.41 s",
        "need attention": "3", "live workers": "2", "in flight here": "7",
    }  # fmt: skip
    for label, value in expected.items():
        assert figure(text, label) == value.split()[0], (label, line_with(text, label))
    assert "this worker: 1,204 published, 37 skipped, 9 to retry, 2 failed for good" in text
    assert "live workers (2; * this one)" in text
    assert "media-03" not in text  # a stopped session is no live worker
    assert "*media-01:48213" in text and " media-02:1177" in text
    assert "23,014 published" in line_with(text, "media-02")
    assert "job 907 file 40377: 404: raid/lot-88/IMG_0031.jpg not found at the source" in text
    assert not any("\u2026" in line for line in lines[:8]), "a figure is cut off"


async def test_keys_reach_the_worker_and_q_leaves() -> None:
    worker = FixedWorker(fixed_publish_snapshot())
    app = PublishApp(worker, poll=False)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("p")
        worker.snap = fixed_publish_snapshot("held")
        app.refresh_snapshot()
        await pilot.press("p")  # held: p is not offered, nothing sent
        await pilot.press("r")
        await pilot.press("q")
    assert worker.calls == ["hold", "resume", "stop"]
    assert app.return_code == 0


# -- a real terminal ------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
@pytest.mark.parametrize("leave", ["q", "SIGTERM", "terminal-gone", "terminal-gone-slow-jobs"])
async def test_publish_worker_in_tmux(
    tmp_path: Path, rclone_s3: S3Target, raid: RaidServer, images: dict[str, bytes], leave: str
) -> None:
    """`publish worker` at 80x24: the figures, `p` holds, then `q` (or SIGTERM, as a service
    manager sends it) stops it with exit 0 and nothing left processing. A terminal that goes
    away (SSH lost: SIGHUP, and nothing can be drawn any more) stops it the same way, and the
    process ends: with jobs slower than its shutdown timeout too (they are cut off and handed
    back; the console must not stall the worker drawing to a terminal that is gone)."""
    db = tmp_path / "queue.sqlite3"
    await queue_with_files(db, files_of(images))
    slow = leave == "terminal-gone-slow-jobs"
    # Slow: downloads outlast the shutdown timeout, which cuts them off and hands them back.
    raid.faults.latency = 20.0 if slow else 0.3
    env = publish_env(
        rclone_s3, raid.endpoint, f"sqlite:///{db}", CONCURRENCY="2",
        TUI_BACKFILL_SHUTDOWN_TIMEOUT="3",
    )  # fmt: skip
    tmux = Tmux(tmp_path)
    await tmux.start([sys.executable, "-m", "tui_backfill", "publish", "worker"], env)
    try:
        text = await tmux.wait_screen(
            "RUNNING", "queue depth", "jobs/min", "p Pause", "live workers (1"
        )
        assert "avg processing" in text and "need attention" in text
        if not leave.startswith("terminal-gone"):  # (those go while jobs are in flight)
            await tmux.keys("p")
            await tmux.wait_screen("HELD", "r Resume")
        ((worker,),) = rows_sqlite(db, "SELECT id FROM publish_workers")
        pid = int(worker.rsplit(":", 1)[1])  # the id is host:pid
        secrets = (RAID_SECRET, rclone_s3.secret_key)
        assert not [s for s in secrets if s in await tmux.screen()]
        if leave.startswith("terminal-gone"):
            if slow:  # downloads in flight for the next 20 s
                await asyncio.sleep(1.5)
            await tmux.kill()
            await _gone(pid, within=20)
        else:
            if leave == "q":
                await tmux.keys("q")
            else:
                os.kill(pid, signal.SIGTERM)
            assert await tmux.exit_line(timeout=20) == "EXIT=0", await tmux.screen()
            assert not [s for s in secrets if s in await tmux.screen()]
    finally:
        await tmux.kill()
    assert rows_sqlite(db, "SELECT COUNT(*) FROM publish_jobs WHERE status = 'processing'") == [
        (0,)
    ]
    assert rows_sqlite(db, "SELECT state FROM publish_workers") == [("stopped",)]


async def _gone(pid: int, *, within: float) -> None:
    """Wait until process `pid` has ended (it is not our child: polled)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        await asyncio.sleep(0.1)
    os.kill(pid, signal.SIGKILL)  # stopped by the test that started it
    raise AssertionError(f"process {pid} still running {within:g} s after its terminal went away")
