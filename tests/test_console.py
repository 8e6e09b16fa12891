"""The operator console, used as a person uses it: Pilot key presses against a real engine on
loopback servers, snapshots at 80x24 and 120x40, attach to a headless run in another process."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import io
import os
import re
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from tui_backfill.core.records import FailedItem
from tui_backfill.frontends.ui.app import BackfillApp
from tui_backfill.frontends.ui.controller import AttachedController, HttpController, LocalController
from tui_backfill.frontends.ui.screens import FailedItemsScreen, HelpScreen, QuitScreen
from tui_backfill.frontends.ui.widgets import (
    CheckpointPanel,
    CountersPanel,
    ErrorsPanel,
    EventLog,
    HeaderBar,
    ProgressPanel,
)
from tui_backfill.pipelines.config import resolve
from tui_backfill.pipelines.mirror.checkpoint import Checkpoint
from tui_backfill.pipelines.mirror.snapshot import Counters, StatusSnapshot
from tui_backfill.pipelines.prepare import RunRequest, prepare_run
from tui_backfill.servers.catalog import ACTIVE_SKUS_QUERY
from tui_backfill.servers.origin import OriginServer
from tui_backfill.state.sqlite import open_state

FIXED_NOW = dt.datetime(2026, 11, 26, 12, 0, 0, tzinfo=dt.UTC)


def screen_text(app: BackfillApp) -> str:
    """The screen as plain text, the way a person reads it."""
    width, height = app.size
    console = Console(
        width=width, height=height, file=io.StringIO(), record=True, legacy_windows=False
    )
    console.print(
        app.screen._compositor.render_update(full=True, screen_stack=app._background_screens)
    )
    return console.export_text()


@contextlib.asynccontextmanager
async def served_run(
    args: list[str], env: dict[str, str], err_path: Path, ready: Callable[[], bool] = lambda: True
) -> AsyncIterator[tuple[asyncio.subprocess.Process, str]]:
    """`tui-backfill ARGS` (a headless run with `--serve 0`) in a subprocess, its stderr in
    `err_path`: (the process, its control API's URL) once it says where it serves and
    `ready()`; killed on leaving if it still runs."""
    with open(err_path, "wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tui_backfill", *args, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=err,
        )  # fmt: skip
    try:
        url = None
        for _ in range(300):
            found = re.search(r"control API on (http://127\.0\.0\.1:\d+)", err_path.read_text())
            if found and ready():
                url = found.group(1)
                break
            await asyncio.sleep(0.05)
        assert url, err_path.read_text()
        yield proc, url
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def wait_for(pilot: Any, predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time:\n" + screen_text(pilot.app))
        await pilot.pause(0.05)
    await pilot.pause(0.1)  # let the screen (footer bindings included) catch up


def flags_for(
    s3: Any, origin: OriginServer, catalog: Path, state: Path, **extra: Any
) -> dict[str, Any]:
    return {
        "state": str(state),
        "skus_db": str(catalog),
        "skus_query": ACTIVE_SKUS_QUERY,
        "origin": origin.url_template,
        "bucket": s3.bucket,
        "endpoint_url": s3.endpoint_url,
        "path_style": True,
        "timeout": 2.0,
        "backoff": 0.01,
        **extra,
    }


@pytest.fixture
def aws_env(rclone_s3: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in rclone_s3.env().items():
        monkeypatch.setenv(name, value)
    return rclone_s3


async def test_keys_drive_a_real_engine(
    aws_env: Any, origin: OriginServer, catalog_db: Any, tmp_path: Path
) -> None:
    origin.faults.latency = 0.03  # long enough to press keys while it runs
    catalog = catalog_db(200)
    resolved = resolve(
        flags_for(aws_env, origin, catalog, tmp_path / "state.sqlite3", limit_skus=200), env={}
    )
    prepared = await prepare_run(RunRequest(resolved))
    engine = prepared.engine
    app = BackfillApp(LocalController(prepared))
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: engine.counters.uploaded > 0)
            text = screen_text(app)
            assert (
                "RUNNING" in text
                and "scannedSkus" in text
                and "p Hold" in text
                and "r Resume" not in text
            )

            await pilot.press("p")
            await wait_for(pilot, lambda: app.run_state == "paused")
            assert engine.state.value == "paused"
            uploaded = engine.counters.uploaded
            await pilot.pause(0.5)
            assert engine.counters.uploaded == uploaded  # nothing moves while paused
            text = screen_text(app)
            assert "HELD" in text and "r Resume" in text and "p Hold" not in text
            assert "held in place · r resumes" in text and "STOPPED" not in text
            await pilot.press("q")  # a held run: nothing more to hold, only to stop and quit
            await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen))
            assert "The run is held. Stop it, save the checkpoint and quit?" in screen_text(app)
            await pilot.press("n")
            await wait_for(pilot, lambda: not isinstance(app.screen, QuitScreen))

            await pilot.press("plus")
            await wait_for(pilot, lambda: engine.concurrency == 4)
            await pilot.press("minus", "minus")
            await wait_for(pilot, lambda: engine.concurrency == 2)
            assert re.search(r"fetching\s+\d of 2\b", screen_text(app))

            await pilot.press("r")
            await wait_for(
                pilot, lambda: app.run_state == "running" and engine.counters.uploaded > uploaded
            )
            assert "RUNNING" in screen_text(app)

            await pilot.press("f")
            await wait_for(pilot, lambda: isinstance(app.screen, FailedItemsScreen))
            assert "Failed items (0)" in screen_text(app)
            await pilot.press("escape")
            await pilot.press("question_mark")
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
            help_text = screen_text(app)
            assert "hold in place: in-flight items finish, checkpoint saved" in help_text
            assert "failedItems: attempts exhausted · errorsTotal: failed attempts" in help_text
            await pilot.press("escape")

            await pilot.press("q")
            await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen))
            assert "The run is live. Stop it, save the checkpoint and quit?" in screen_text(app)
            await pilot.press("y")
            await wait_for(pilot, lambda: app.return_value is not None, timeout=20)
        assert app.return_value == 75
        assert engine.state.value == "paused"
        run_id = engine.plan.run_id
    finally:
        await prepared.close()
    async with open_state(str(tmp_path / "state.sqlite3")) as store:
        run = await store.run(run_id)
    assert run is not None and run.status == "paused" and run.exit_code == 75
    assert run.counters.uploaded > 0 and run.checkpoint.last_sku is not None
    assert (
        run.snapshot is not None and run.snapshot["checkpointSavedSku"] == run.checkpoint.last_sku
    )
    # the next process knows when the checkpoint it continues from was saved
    again = await prepare_run(RunRequest(resolved))
    try:
        snap = again.engine.snapshot()
        assert snap.run_id == run_id
        assert snap.checkpoint_saved_at == run.snapshot["checkpointSavedAt"] != ""
    finally:
        await again.close()


@pytest.mark.parametrize(
    ("job", "state", "advice"),
    [
        ("images", "st.sqlite3", "tui-backfill resume --job images --state st.sqlite3"),
        # the demo's run: only `demo` re-points its stored origin and endpoint at live servers
        ("demo", "state/demo.sqlite3", "tui-backfill demo (or make demo)"),
    ],
)
async def test_the_quit_question_says_how_this_run_continues(
    aws_env: Any,
    origin: OriginServer,
    catalog_db: Any,
    tmp_path: Path,
    monkeypatch: Any,
    job: str,
    state: str,
    advice: str,
) -> None:
    """Quitting a live run asks first, and names the command that continues this run (its
    job, its state; the demo's own command for the demo's run), not a bare `resume`."""
    origin.faults.latency = 0.05  # still running when q is pressed
    catalog = catalog_db(40)
    monkeypatch.chdir(tmp_path)
    resolved = resolve(
        flags_for(aws_env, origin, catalog, Path(state), job=job, limit_skus=40), env={}
    )
    prepared = await prepare_run(RunRequest(resolved))
    app = BackfillApp(LocalController(prepared))
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.run_state == "running")
            await pilot.press("q")
            await wait_for(pilot, lambda: isinstance(app.screen, QuitScreen))
            text = " ".join(screen_text(app).split())  # the box wraps its lines
            assert f"(`{advice}` continues it)" in text, text
            await pilot.press("y")
            await wait_for(pilot, lambda: app.return_value is not None, timeout=20)
        assert app.return_value == 75
    finally:
        await prepared.close()


async def test_quit_after_completion_returns_the_exit_code(
    aws_env: Any, origin: OriginServer, catalog_db: Any, tmp_path: Path
) -> None:
    catalog = catalog_db(20)
    resolved = resolve(
        flags_for(aws_env, origin, catalog, tmp_path / "s.sqlite3", limit_skus=20), env={}
    )
    prepared = await prepare_run(RunRequest(resolved))
    app = BackfillApp(LocalController(prepared))
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: app.run_state == "completed" and not app.live)
            text = screen_text(app)
            assert "COMPLETED" in text and "p Hold" not in text and "q Quit" in text
            await pilot.press("q")  # nothing live: no question asked
            await wait_for(pilot, lambda: app.return_value is not None)
        assert app.return_value == 0
    finally:
        await prepared.close()


async def hold_raise_resume_detach(app: BackfillApp, origin: OriginServer) -> None:
    """An attached console over a run at concurrency 3 in another process: p holds it (its
    origin GETs stop), + raises it to 4, r resumes it, q detaches (the run goes on)."""
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: app.snapshot is not None and app.run_state == "running")
        assert "attached" in screen_text(app)
        await pilot.press("p")
        await wait_for(pilot, lambda: app.run_state == "paused")
        gets = origin.gets
        await asyncio.sleep(0.6)
        assert origin.gets == gets  # the other process really holds
        await pilot.press("+")
        await wait_for(pilot, lambda: app.snapshot is not None and app.snapshot.concurrency == 4)
        await pilot.press("r")
        await wait_for(pilot, lambda: app.run_state == "running")
        await pilot.press("q")  # detach: never stops the run
        await wait_for(pilot, lambda: app.return_value is not None)


async def test_attach_pauses_and_resumes_a_headless_run(
    aws_env: Any, origin: OriginServer, catalog_db: Any, tmp_path: Path
) -> None:
    origin.faults.latency = 0.02
    catalog = catalog_db(150)
    state = tmp_path / "state.sqlite3"
    args = [
        "run", "--no-ui", "--state", str(state), "--skus-db", str(catalog), "--skus-query", ACTIVE_SKUS_QUERY,
        "--origin", origin.url_template, "--bucket", aws_env.bucket, "--endpoint-url", aws_env.endpoint_url,
        "--path-style", "--timeout", "2", "--backoff", "0.01", "--limit-skus", "150",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tui_backfill", *args, env=dict(os.environ),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        for _ in range(200):
            if state.exists() and origin.gets > 20:
                break
            await asyncio.sleep(0.05)
        async with open_state(str(state)) as store:
            app = BackfillApp(AttachedController(store, str(state), "default"))
            await hold_raise_resume_detach(app, origin)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert b'"state": "completed"' in out


def served_run_args(s3: Any, origin: Any, catalog: Path, state: Path) -> list[str]:
    """`run --serve 0` of 150 SKUs of `catalog` into `state`, retries quick."""
    return [
        "run", "--no-ui", "--serve", "0", "--state", str(state), "--skus-db", str(catalog),
        "--skus-query", ACTIVE_SKUS_QUERY, "--origin", origin.url_template, "--bucket", s3.bucket,
        "--endpoint-url", s3.endpoint_url, "--path-style", "--timeout", "2", "--backoff", "0.01",
        "--limit-skus", "150",
    ]  # fmt: skip


async def test_attach_by_url_drives_a_served_headless_run(
    aws_env: Any, origin: OriginServer, catalog_db: Any, tmp_path: Path
) -> None:
    """`attach --url`: the console over `run --serve PORT`, through the HTTP API."""
    origin.faults.latency = 0.02
    catalog = catalog_db(150)
    state = tmp_path / "state.sqlite3"
    args = served_run_args(aws_env, origin, catalog, state)
    err_path = tmp_path / "run.err"
    async with served_run(args, dict(os.environ), err_path, ready=lambda: origin.gets > 20) as (
        proc,
        url,
    ):
        controller = HttpController(url)
        try:
            app = BackfillApp(controller)
            await hold_raise_resume_detach(app, origin)
        finally:
            await controller.close()
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err_path.read_text()
    assert b'"state": "completed"' in out


def fixed_snapshot(state: str = "running") -> StatusSnapshot:
    counters = Counters(
        scanned_skus=1234, attempted_downloads=3420, uploaded=3310, skipped_exists=180, no_remote=96,
        failed_items=2, errors_by_code={"timeout": 9, "http_503": 14, "s3_SlowDown": 3},
        bytes_uploaded=212_000_000, found_at_start=180,
    )  # fmt: skip
    return StatusSnapshot(
        job="default", run_id=7, state=state, dry_run=False,
        started_at="2026-11-26T11:40:00.000Z", last_update_at="2026-11-26T12:00:00.000Z",
        angles_planned="1-3", angles_per_sku=3, concurrency=3, planned_skus=2000, counters=counters,
        checkpoint=Checkpoint("100421", {"100423": (1, 3), "100424": (2,)}), in_flight=14,
        fetches_in_flight=3,
        items_per_second=8.9, skus_per_second=2.97, bytes_per_second=560_000.0, eta_seconds=258.0,
        last_errors={"timeout": "no complete answer within 20 s", "http_503": "HTTP 503 Service Unavailable",
                     "s3_SlowDown": "S3 503 SlowDown: Please reduce your request rate."},
        bucket="images-prod", endpoint="https://s3.eu-central-1.example.com",
        origin="https://img.supplier.example/{sku}_{angle}",
        checkpoint_saved_at="2026-11-26T11:59:58.000Z", checkpoint_saved_sku="100400",
    )  # fmt: skip


class FixedController:
    """Deterministic snapshot data for the snapshot tests (no run behind it)."""

    attached = False
    job = "default"
    max_concurrency = 6
    where = "state/tui-backfill.sqlite3"

    def __init__(self, snapshot: StatusSnapshot) -> None:
        self._snapshot = snapshot

    def lost_for(self) -> float | None:
        return None

    def resume_ways(self) -> list[str]:
        return ["tui-backfill resume --job default"]

    async def snapshot(self) -> StatusSnapshot:
        return self._snapshot

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def set_concurrency(self, value: int) -> None: ...

    async def failed_items(self) -> list[FailedItem]:
        return FAILED_ITEMS


FAILED_ITEMS = [
    FailedItem(
        "100417", 2, "rsr/highres/100417_2_HR.jpg", "connection",
        "connection: ClientConnectorError: Cannot connect to host img.supplier.example:443"
        " ssl:default [Connect call failed ('203.0.113.7', 443)]", 3, 7,
    ),
    FailedItem(
        "100418", 1, "rsr/highres/100418_1_HR.jpg", "timeout", "no complete answer within 20 s",
        3, 7,
    ),
]  # fmt: skip


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_console_snapshot(snap_compare: Any, size: tuple[int, int]) -> None:
    app = BackfillApp(FixedController(fixed_snapshot()), clock=lambda: FIXED_NOW, poll=False)  # type: ignore[arg-type]
    assert snap_compare(app, terminal_size=size)


@pytest.mark.parametrize("width", [80, 99, 100, 101, 120, 157])
async def test_counters_fit_every_width(width: int) -> None:
    """Every counter shows in full, not cut with an ellipsis, whatever the terminal's width."""
    app = BackfillApp(FixedController(fixed_snapshot()), clock=lambda: FIXED_NOW, poll=False)  # type: ignore[arg-type]
    async with app.run_test(size=(width, 24)) as pilot:
        await pilot.pause()
        rows = [
            line
            for line in screen_text(app).splitlines()
            if "scannedSkus" in line or "itemsInFlight" in line
        ]
        assert len(rows) == 2 and not any("\u2026" in row for row in rows), rows
        assert rows[0].rstrip().endswith(" 26") and rows[1].rstrip().endswith(" 14"), (
            rows
        )  # errorsTotal, itemsInFlight


async def test_the_cap_shows_beside_the_fetches_it_bounds() -> None:
    """`concurrency` caps the origin fetches, not the items in flight (existence checks and
    uploads too): the panel shows the fetches now beside the cap, as /metrics counts them,
    and the items in flight under their own name."""
    app = BackfillApp(FixedController(fixed_snapshot()), clock=lambda: FIXED_NOW, poll=False)  # type: ignore[arg-type]
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert re.search(r"fetching\s+3 of 3\b", text), text
        assert re.search(r"itemsInFlight\s+14\b", text), text
        assert not re.search(r"(?<!items)inFlight", text) and "concurrency " not in text
        await pilot.press("question_mark")
        await pilot.pause()
        assert "fetching: origin fetches now, of the cap (+ and - change it)" in screen_text(app)


async def test_mouse_selects_panel_text() -> None:
    """Dragging over a panel selects its text, as in any Textual widget (for copying a SKU)."""
    app = BackfillApp(FixedController(fixed_snapshot()), clock=lambda: FIXED_NOW, poll=False)  # type: ignore[arg-type]
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        await pilot.mouse_down("#checkpoint", offset=(1, 0))
        await pilot.hover("#checkpoint", offset=(15, 1))
        await pilot.mouse_up("#checkpoint", offset=(15, 1))
        await pilot.pause()
        assert app.screen.get_selected_text() == "lastSku 100421\n100423 done 1,3"


async def test_panels_follow_the_snapshot_as_it_grows_and_ends() -> None:
    """The checkpoint panel shows every line as more SKUs are partly done (no relayout needed),
    and the ETA gives way to the run's state when it does not move."""
    app = BackfillApp(FixedController(fixed_snapshot()), clock=lambda: FIXED_NOW, poll=False)  # type: ignore[arg-type]
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "ETA 0:04:18 (12:04)" in text and "more partly done" not in text
        partly = {str(100423 + i): (1,) for i in range(7)}
        grown = dataclasses.replace(fixed_snapshot(), checkpoint=Checkpoint("100421", partly))
        app.apply_snapshot(grown)
        await pilot.pause()
        text = screen_text(app)
        assert "+3 more partly done" in text and "saved 11:59:58" in text, text
        app.apply_snapshot(dataclasses.replace(grown, state="paused", held=True))
        await pilot.pause()
        assert "SKUs 1,234/2,000 · held in place · r resumes" in screen_text(app)
        app.apply_snapshot(dataclasses.replace(grown, state="paused", held=False, live=False))
        await pilot.pause()
        text = screen_text(app)
        # its process gone: no ETA, the command that continues it
        assert "STOPPED" in text.splitlines()[0], text
        assert text.splitlines()[2].strip() == (
            "SKUs 1,234/2,000 · stopped · continue: tui-backfill resume --job default"
        ), text
        app.apply_snapshot(dataclasses.replace(grown, state="completed", eta_seconds=0.0))
        await pilot.pause()
        text = screen_text(app)
        assert text.splitlines()[2].strip() == "SKUs 1,234/2,000 · completed", text
        assert "ETA" not in text


async def test_the_checkpoint_panel_tells_finished_skus_from_partly_done_ones() -> None:
    """Past lastSku, a SKU with every planned angle done is finished (it waits for an earlier
    SKU), not "partly done"; and the log says which position a checkpoint saved, once."""
    done = {"100423": (1, 2, 3), "100424": (2,), "100425": (1, 2, 3)}
    done |= {str(100426 + i): (1,) for i in range(5)}
    snap = dataclasses.replace(fixed_snapshot(), checkpoint=Checkpoint("100421", done))
    app = BackfillApp(FixedController(snap), clock=lambda: FIXED_NOW, poll=False)  # type: ignore[arg-type]
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        panel = [line.split("\u2502")[-1].strip() for line in screen_text(app).splitlines()[10:18]]
        assert panel[:6] == [
            "lastSku 100421",
            "100424 done 2",
            "100426 done 1",
            "100427 done 1",
            "100428 done 1",
            "+2 more partly done",
        ], panel
        assert "+2 finished after it" in panel and "100423 done 1,2,3" not in panel, panel
        saved = dataclasses.replace(
            snap, checkpoint_saved_at="2026-11-26T12:00:01.000Z", checkpoint_saved_sku="SKU11262"
        )
        app.apply_snapshot(saved)
        await pilot.pause()
        assert "checkpoint saved: lastSku SKU11262" in screen_text(app)


async def test_an_interrupted_run_says_so_in_the_header_and_the_eta_line() -> None:
    """A run whose process died (kill -9) is not paused: the header names it and the progress
    line says how to continue it."""
    dead = dataclasses.replace(fixed_snapshot("interrupted"), live=False, eta_seconds=None)
    app = BackfillApp(FixedController(dead), clock=lambda: FIXED_NOW, poll=False)  # type: ignore[arg-type]
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert "INTERRUPTED" in text.splitlines()[0], text
        assert (
            "SKUs 1,234/2,000 · interrupted · continue: tui-backfill resume --job default" in text
        )
        assert "PAUSED" not in text and "STOPPED" not in text and "ETA" not in text
        assert app.check_action("resume", ()) is False  # no process here to resume in place


async def test_failed_items_show_each_message_in_full_at_80x24() -> None:
    """The failed items' messages, not cut off: the code once (not again as the message's
    first word), what fits in the table, and the highlighted item's whole message below it."""
    app = BackfillApp(FixedController(fixed_snapshot()), clock=lambda: FIXED_NOW, poll=False)  # type: ignore[arg-type]
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("f")
        await pilot.pause()
        text = screen_text(app)
        lines = text.splitlines()
        row = next(line for line in lines if "100417_2_HR.jpg" in line and "connection" in line)
        assert "ClientConnectorError" in row and "connection: ClientConnector" not in row, row
        assert re.search(r"ClientConnector.*\u2026\s*\u2502$", row.rstrip()), row  # cut visibly
        detail = " ".join(line.strip("│ ") for line in lines[lines.index(row) + 2 :] if "│" in line)
        assert (
            "Cannot connect to host img.supplier.example:443 ssl:default "
            "[Connect call failed ('203.0.113.7', 443)]" in " ".join(detail.split())
        ), text
        await pilot.press("down")
        await pilot.pause()
        assert "no complete answer within 20 s" in screen_text(app).split("100418_1_HR.jpg")[-1]


async def test_errors_say_their_code_once() -> None:
    """The errors panel and the log give the message after its code, not `connection:` twice."""
    snap = fixed_snapshot()
    message = "connection: ServerDisconnectedError: Server disconnected"
    app = BackfillApp(FixedController(snap), clock=lambda: FIXED_NOW, poll=False)  # type: ignore[arg-type]
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        errors = dict(snap.counters.errors_by_code, connection=2)
        counters = dataclasses.replace(snap.counters, errors_by_code=errors)
        app.apply_snapshot(
            dataclasses.replace(
                snap, counters=counters, last_errors={**snap.last_errors, "connection": message}
            )
        )
        await pilot.pause()
        text = screen_text(app)
        row = next(line for line in text.splitlines() if line.startswith(" connection"))
        assert re.search(r"^ connection\s+2\s+ServerDisconnectedError: Serv", row), row
        assert "connection: Server" not in text and "(connection: " not in text, text
        assert "retry: connection x2 (ServerDisconnectedError: Server disconnected)" in text


def test_failed_items_snapshot(snap_compare: Any) -> None:
    app = BackfillApp(
        FixedController(fixed_snapshot("paused")), clock=lambda: FIXED_NOW, poll=False
    )  # type: ignore[arg-type]
    assert snap_compare(app, terminal_size=(80, 24), press=["f"])


async def test_without_a_terminal_run_falls_back_to_headless(
    aws_env: Any, origin: OriginServer, catalog_db: Any, tmp_path: Path
) -> None:
    catalog = catalog_db(10)
    args = [
        "run", "--state", str(tmp_path / "s.sqlite3"), "--skus-db", str(catalog), "--skus-query", ACTIVE_SKUS_QUERY,
        "--origin", origin.url_template, "--bucket", aws_env.bucket, "--path-style", "--limit-skus", "10",
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tui_backfill", *args, env=dict(os.environ), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert (
        err.decode().splitlines()[0]
        == "tui-backfill: no terminal, running headless (as with --no-ui)"
    )
    assert b'"state": "completed"' in out and b"\x1b[" not in out


# -- attached: what the console says when the run or its server is not there -------------------


class StatusServer:
    """A control API on loopback that answers `GET .../status` with a fixed status, and can
    go away and come back on the same port (a `serve` restarted)."""

    def __init__(self, snapshot: StatusSnapshot) -> None:
        self.status = {**snapshot.to_json(), "runStatus": "running", "maxConcurrency": 6}
        self.port = 0
        self._runner: Any = None

    async def start(self) -> str:
        from aiohttp import web

        async def status(request: web.Request) -> web.Response:
            return web.json_response(self.status)

        app = web.Application()
        app.router.add_get("/api/rsr-image-backfill/status", status)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        await self._runner.cleanup()


async def test_attaching_to_a_completed_run_offers_no_run_keys_from_the_start() -> None:
    """The footer is right from the first frame: no hold, resume or +/- for a run that has
    ended (they did nothing), without waiting for a key press to redraw it."""
    server = StatusServer(dataclasses.replace(fixed_snapshot("completed"), live=False))
    controller = HttpController(await server.start())
    try:
        app = BackfillApp(controller, clock=lambda: FIXED_NOW, poll=False)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.pause(0.2)
            footer = screen_text(app).splitlines()[-1]
            assert "COMPLETED" in screen_text(app).splitlines()[0]
            assert footer.split() == ["f", "Failed", "?", "Help", "q", "Quit"], footer
            await pilot.press("p")  # not offered, and does nothing
            await pilot.pause()
            assert "hold requested" not in screen_text(app)
    finally:
        await controller.close()
        await server.stop()


async def test_attach_by_url_says_the_connection_is_lost_and_recovers() -> None:
    """A served run whose server goes away is not shown RUNNING: the console says the
    connection is lost, how long since its last snapshot, keeps retrying (the seconds count
    up) and offers no command; when the server answers again, it picks up."""
    server = StatusServer(fixed_snapshot())
    url = await server.start()
    controller = HttpController(url, timeout=1.0)
    try:
        app = BackfillApp(controller, clock=lambda: FIXED_NOW)
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: "RUNNING" in screen_text(app))
            await server.stop()
            await wait_for(pilot, lambda: "CONNECTION LOST" in screen_text(app), timeout=5)
            text = screen_text(app)
            lost = re.search(r"SKUs 1,234/2,000 · connection lost (\d+) s ago · retrying", text)
            assert lost, text
            assert "RUNNING" not in text and "ETA" not in text
            assert f"connection to {url} lost; retrying every second" in text
            footer = text.splitlines()[-1]
            assert "Hold" not in footer and "fetch" not in footer and "Resume" not in footer
            await wait_for(
                pilot,
                lambda: (
                    (again := re.search(r"connection lost (\d+) s ago", screen_text(app)))
                    is not None
                    and int(again.group(1)) > int(lost.group(1))
                ),
                timeout=5,
            )
            await server.start()  # the same port
            await wait_for(pilot, lambda: "RUNNING" in screen_text(app), timeout=5)
            text = screen_text(app)
            assert "connection lost" not in text.splitlines()[2] and "p Hold" in text
            assert f"connection to {url} back" in text
    finally:
        await controller.close()
        await server.stop()


@pytest.mark.parametrize(
    ("held", "live", "header", "line"),
    [
        (True, True, "HELD", "held in place · r resumes"),
        (False, False, "STOPPED", "stopped · continue: tui-backfill resume --job default"),
    ],
)
async def test_held_and_stopped_read_apart(held: bool, live: bool, header: str, line: str) -> None:
    """A hold (the console's p, in place) and a stop (`pause`, the API's pause: the process
    exits 75) are both `paused` in the snapshot; the console tells them apart, and says how
    to continue a stopped run."""
    # paused with its process alive: held in place; paused and let go: stopped
    snap = dataclasses.replace(fixed_snapshot("paused"), live=live)
    app = BackfillApp(FixedController(snap), clock=lambda: FIXED_NOW, poll=False)  # type: ignore[arg-type]
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        text = screen_text(app)
        assert header in text.splitlines()[0] and "PAUSED" not in text, text
        assert f"SKUs 1,234/2,000 · {line}" in text, text
        footer = text.splitlines()[-1]
        assert ("r Resume" in footer) is held and "p Hold" not in footer, footer
        other = "STOPPED" if held else "HELD"
        assert other not in text
        if not held:
            assert "continue: tui-backfill resume --job default" in text.split("\u2500" * 10)[-1]


async def test_after_the_apis_pause_an_attached_console_says_stopped_and_how_to_go_on(
    aws_env: Any, origin: OriginServer, catalog_db: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    """`attach --url` to `run --serve`, then the API's pause (a graceful stop: the process
    exits 75): the console reads the final state before the server goes, says STOPPED and
    how to continue (with the served run's `--state`: its status says where it is), and
    offers no key of a live run."""
    import aiohttp

    origin.faults.latency = 0.02
    catalog = catalog_db(150)
    monkeypatch.chdir(tmp_path)  # the console's directory: the state is st.sqlite3 from here
    args = served_run_args(aws_env, origin, catalog, tmp_path / "st.sqlite3")
    err_path = tmp_path / "run.err"
    async with served_run(args, dict(os.environ), err_path, ready=lambda: origin.gets > 20) as (
        proc,
        url,
    ):
        controller = HttpController(url)
        try:
            app = BackfillApp(controller)
            async with app.run_test(size=(80, 24)) as pilot:
                await wait_for(pilot, lambda: "RUNNING" in screen_text(app))
                async with aiohttp.ClientSession() as http:
                    async with http.post(f"{url}/api/rsr-image-backfill/pause") as answer:
                        assert answer.status == 200, await answer.text()
                assert await asyncio.wait_for(proc.wait(), 20) == 75
                await wait_for(pilot, lambda: "STOPPED" in screen_text(app), timeout=5)
                await pilot.pause(1.2)  # a poll or two of a server that has gone
                text = screen_text(app)
                assert "STOPPED" in text.splitlines()[0], text
                advice = "tui-backfill resume --job default --state st.sqlite3"
                assert "· stopped · continue: tui-backfill resume --job default --st" in text, text
                assert f"continue: {advice}" in text.split("\u2500" * 9)[-1], text
                assert "CONNECTION LOST" not in text and "RUNNING" not in text
                footer = text.splitlines()[-1]
                assert "Hold" not in footer and "Resume" not in footer and "fetch" not in footer
                # From a directory the state is not below: the absolute path.
                (tmp_path / "elsewhere").mkdir()
                monkeypatch.chdir(tmp_path / "elsewhere")
                absolute = f"tui-backfill resume --job default --state {tmp_path}/st.sqlite3"
                assert controller.resume_ways()[0] == absolute
        finally:
            await controller.close()


@pytest.mark.parametrize(
    "panel", [HeaderBar, ProgressPanel, CountersPanel, ErrorsPanel, CheckpointPanel, EventLog]
)
async def test_a_snapshot_that_arrives_as_the_console_closes_is_dropped(panel: Any) -> None:
    """A poll whose answer lands after panels were taken down (the app closing: Textual removes
    them in no fixed order) is dropped, not raised: seen under load as `NoMatches: HeaderBar`
    ending an attached console."""
    app = BackfillApp(FixedController(fixed_snapshot()), clock=lambda: FIXED_NOW, poll=False)  # type: ignore[arg-type]
    async with app.run_test(size=(80, 24)) as pilot:
        await app.refresh_snapshot()
        assert "ATTACHED" in screen_text(app) or "RUNNING" in screen_text(app)
        await app.query_one(panel).remove()
        await pilot.pause()
        await app.refresh_snapshot()  # must not raise
        assert app.run_state == fixed_snapshot().state
