"""The console of a publish worker: the queue as the database says, this instance's work,
the live instances and the jobs needing attention. `p` stops claiming (in-flight jobs finish),
`r` claims again, `q` stops the worker the way SIGTERM does (finish in flight, hand back the
rest) and leaves with its exit code.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.reactive import reactive
from textual.widgets import Footer, Static

from tui_backfill.frontends.ui.terminal import draw_nowhere, end_within_grace
from tui_backfill.pipelines.publish.snapshot import PublishSnapshot
from tui_backfill.seams.queue.base import WorkerRow

REFRESH_EVERY = 1.0
STATE_WORDS = {
    "running": "RUNNING",
    "held": "HELD: no new claims",
    "stopping": "STOPPING: finishing in-flight jobs",
    "stopped": "STOPPED",
}


def _cells(rows: list[list[tuple[str, str]]]) -> str:
    """Three label/value columns of 24 cells: 76 columns, inside a box at 80."""
    return "\n".join("  ".join(f"{k:<14}{v:>10}" for k, v in row).rstrip() for row in rows)


def _worker_line(row: WorkerRow, me: str | None) -> str:
    try:
        stats = json.loads(row.stats) if row.stats else {}
    except ValueError:
        stats = {}
    mark = "*" if row.id == me else " "
    return (
        f"{mark}{row.id:<22} {row.state:<7} {stats.get('inFlight', 0):>2} in flight "
        f"{stats.get('perMinute', 0.0):>6.1f}/min {stats.get('published', 0):>7,} published"
    )


EXIT_CRASHED = 3  # the worker's task raised (its traceback is logged)


class PublishApp(App[int]):
    CSS_PATH = "publish.tcss"
    TITLE = "tui-backfill publish"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("p", "pause", "Pause (stop claiming)", id="pause"),
        Binding("r", "resume", "Resume", id="resume"),
        Binding("q", "quit_worker", "Quit", id="quit"),
        Binding("ctrl+q,ctrl+c", "quit_worker", "Quit", show=False, priority=True, id="quit-ctrl"),
    ]

    worker_state: reactive[str] = reactive("running", bindings=True)

    def __init__(self, worker: Any, *, poll: bool = True) -> None:
        super().__init__()
        self.worker = worker
        self.worker_task: asyncio.Task[int] | None = None
        self._poll = poll
        self._terminal_lost = False
        self.snapshot: PublishSnapshot | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="header")
        yield Static(id="counters", classes="box")
        yield Static(id="workers", classes="box")
        yield Static(id="attention", classes="box")
        yield Static(id="message")
        yield Footer()

    async def on_mount(self) -> None:
        self.refresh_snapshot()
        if self._poll:
            self.set_interval(REFRESH_EVERY, self.refresh_snapshot, name="snapshot-poll")

    def refresh_snapshot(self) -> None:
        snap: PublishSnapshot = self.worker.snapshot()
        self.snapshot = snap
        self.worker_state = snap.state
        state = STATE_WORDS.get(snap.state, snap.state.upper())
        self.query_one("#header", Static).update(
            f"publish job [b]{snap.job}[/b] · this worker {snap.worker} · [b]{state}[/b]"
        )
        counters = self.query_one("#counters", Static)
        counters.border_title = "queue (all workers)"
        counters.update(_cells(snap.counter_rows()) + "\n" + snap.instance_line())
        live = snap.live_workers
        workers = self.query_one("#workers", Static)
        workers.border_title = f"live workers ({len(live)}; * this one)"
        workers.update("\n".join(_worker_line(w, snap.worker) for w in live) or "none")
        attention = self.query_one("#attention", Static)
        attention.border_title = f"needing attention ({snap.queue.needing_attention:,})"
        lines = [
            f"job {a.id} file {a.file_id}: {a.last_error.splitlines()[0] if a.last_error else '?'}"
            for a in snap.attention
        ]
        attention.update("\n".join(lines) or "none: no job failed for good")
        self.query_one("#message", Static).update(snap.message)
        if self.worker_task is not None and self.worker_task.done():
            self._leave()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "pause":
            return self.worker_state == "running"
        if action == "resume":
            return self.worker_state == "held"
        return True

    def action_pause(self) -> None:
        self.worker.hold()
        self.refresh_snapshot()

    def action_resume(self) -> None:
        self.worker.resume()
        self.refresh_snapshot()

    def action_quit_worker(self) -> None:
        """Stop the worker (as SIGTERM does); leave once it has handed back its claims. The
        screen keeps refreshing meanwhile."""
        self.worker.stop()
        self.refresh_snapshot()
        self.query_one("#message", Static).update(
            "stopping: in-flight jobs finish, unstarted claims go back to the queue"
        )
        if self.worker_task is None:
            self.exit(0)
        elif not self.worker_task.done():
            self.worker_task.add_done_callback(lambda _task: self._leave())

    def terminal_lost(self) -> None:
        """SIGHUP: the terminal is gone. The worker stops as `q` stops it (in-flight jobs
        finish within the shutdown timeout, claims go back), drawing goes nowhere meanwhile,
        and the process ends by that bound even if the app cannot get out (unfinished claims
        are then left to their leases, as after a SIGKILL)."""
        self._terminal_lost = True
        draw_nowhere()
        end_within_grace(0, after=self.worker.settings.shutdown_timeout)
        self.action_quit_worker()

    def _leave(self) -> None:
        task = self.worker_task
        if task is None or not task.done():
            return
        if task.cancelled():
            code = 0
        elif task.exception() is not None:  # the worker crashed: not a success
            code = EXIT_CRASHED
        else:
            code = task.result()
        if self._terminal_lost:  # its jobs are finished or handed back by now
            end_within_grace(code)
        self.exit(code)
