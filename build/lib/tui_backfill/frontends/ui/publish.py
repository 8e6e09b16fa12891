"""The console of a publish worker: the queue as the database says, this instance's work,
the live instances and the jobs needing attention. `p` stops claiming (in-flight jobs finish),
`r` claims again, `q` stops the worker the way SIGTERM does (finish in flight, hand back the
rest) and leaves.
"""

from __future__ import annotations

import asyncio
from typing import Any

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.reactive import reactive
from textual.widgets import Footer, Static

from tui_backfill.pipelines.publish.snapshot import PublishSnapshot

REFRESH_EVERY = 1.0


def _cells(rows: list[list[tuple[str, str]]], width: int = 26) -> str:
    lines = []
    for row in rows:
        lines.append("".join(f"{label:>15} {value:<10}"[:width] for label, value in row).rstrip())
    return "\n".join(lines)


class PublishApp(App[int]):
    CSS = """
    Screen { layout: vertical; }
    #header { height: 1; background: $primary-background; }
    #counters { height: 6; border: round $primary; padding: 0 1; }
    #middle { height: 1fr; }
    #workers-box, #attention-box { width: 1fr; border: round $primary; padding: 0 1; }
    .panel-title { text-style: bold; }
    #message { height: 1; }
    """
    TITLE = "tui-backfill publish"
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [
        Binding("p", "pause", "Pause", id="pause"),
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
        self.snapshot: PublishSnapshot | None = None

    def compose(self) -> ComposeResult:
        yield Static(id="header")
        yield Static(id="counters")
        with Horizontal(id="middle"):
            with Vertical(id="workers-box"):
                yield Static("live workers", classes="panel-title")
                yield Static(id="workers")
            with Vertical(id="attention-box"):
                yield Static("needing attention", classes="panel-title")
                yield Static(id="attention")
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
        self.query_one("#header", Static).update(
            f" job {snap.job} · worker {snap.worker} · {snap.state.upper()}"
        )
        self.query_one("#counters", Static).update(_cells(snap.counter_rows()))
        workers = [f"{w.id[:24]:<24} {w.state}" for w in snap.workers if w.stopped_at is None] or [
            "(none)"
        ]
        self.query_one("#workers", Static).update("\n".join(workers[:8]))
        attention = [f"{a.id:>6} f{a.file_id:<6} {a.last_error[:24]}" for a in snap.attention] or [
            "(none)"
        ]
        self.query_one("#attention", Static).update("\n".join(attention[:8]))
        self.query_one("#message", Static).update(snap.message)
        if self.worker_task is not None and self.worker_task.done():
            self.exit(self.worker_task.result() if not self.worker_task.cancelled() else 0)

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

    async def action_quit_worker(self) -> None:
        self.worker.stop()
        self.query_one("#message", Static).update(
            "stopping: in-flight jobs finish, the rest go back to the queue"
        )
        if self.worker_task is not None:
            await asyncio.shield(self.worker_task)
            self.exit(self.worker_task.result())
        else:
            self.exit(0)
