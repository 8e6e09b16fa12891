"""The operator console: a full-screen Textual app over a controller (snapshots + commands).

It holds no engine logic. It reads a snapshot at a bounded rate (once a second, and at once
after a key; a snapshot that changes faster simply replaces the previous one, nothing queues),
renders it in panels, and turns keys into commands. With a local engine it owns the run: `q`
stops it and saves before quitting (exit 75), a lost terminal (SIGHUP) does the same; `p` holds
it in place until `r`. Attached to a run in another process, it only reads and sends commands;
closing it never stops that run. It says whether a run is held or stopped (and how to continue
a stopped one), and when an attached console has lost its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import signal
from collections.abc import Awaitable, Callable

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.reactive import reactive
from textual.widgets import Footer, Static

from tui_backfill.frontends.ui.controller import CommandFailed, Controller, LocalController
from tui_backfill.frontends.ui.events import notable_events
from tui_backfill.frontends.ui.phases import Phase, phase_events, phase_of, status_text
from tui_backfill.frontends.ui.screens import FailedItemsScreen, HelpScreen, QuitScreen
from tui_backfill.frontends.ui.terminal import draw_nowhere, end_within_grace
from tui_backfill.frontends.ui.widgets import (
    CheckpointPanel,
    CountersPanel,
    ErrorsPanel,
    EventLog,
    HeaderBar,
    ProgressPanel,
)
from tui_backfill.pipelines.snapshots import AnySnapshot

# Once a second, like top: each redraw of the panels costs Textual most of the console's ~12 ms
# of CPU per second (bench/console_tick.py); at 2 Hz that was 4-5 % of a busy run's CPU
# (bench/console_cost.py). Keys refresh at once anyway.
REFRESH_EVERY = 1.0
EXIT_PAUSED = 75
TERMINAL_GONE_BOUND = 60.0  # seconds a run gets to pause once its terminal is gone


class BackfillApp(App[int]):
    CSS_PATH = "app.tcss"
    TITLE = "tui-backfill"
    ENABLE_COMMAND_PALETTE = False

    BINDINGS = [
        Binding("p", "pause", "Hold", id="pause"),
        Binding("r", "resume", "Resume", id="resume"),
        Binding("plus,equals_sign", "faster", "+fetch", key_display="+", id="faster"),
        Binding("minus", "slower", "-fetch", key_display="-", id="slower"),
        Binding("f", "failed", "Failed", id="failed"),
        Binding("question_mark", "help", "Help", key_display="?", id="help"),
        Binding("q", "quit_console", "Quit", id="quit"),
        Binding("ctrl+q,ctrl+c", "quit_console", "Quit", show=False, priority=True, id="quit-ctrl"),
    ]

    run_state: reactive[str] = reactive("")
    """The run's state as last seen (the snapshot's word)."""
    live: reactive[bool] = reactive(True)
    """Whether a process is working on the run (attached consoles may see it end)."""
    phase: reactive[Phase] = reactive(Phase.UNKNOWN, bindings=True)
    """What the run is doing in the operator's words; decides which keys the footer offers."""

    def __init__(
        self,
        controller: Controller,
        *,
        clock: Callable[[], dt.datetime] | None = None,
        poll: bool = True,
    ) -> None:
        super().__init__()
        self.controller = controller
        self._clock = clock or (lambda: dt.datetime.now().astimezone())
        self._poll = poll
        self._previous: AnySnapshot | None = None
        self.snapshot: AnySnapshot | None = None
        self.exit_code: int | None = None
        self._engine_done = asyncio.Event()
        self._quitting = False
        self._terminal_lost = False

    def compose(self) -> ComposeResult:
        yield HeaderBar(id="header")
        yield ProgressPanel(id="progress")
        yield CountersPanel(id="counters")
        with Horizontal(id="middle"):
            with Vertical(id="errors-box"):
                yield Static("errors by code", classes="panel-title")
                yield ErrorsPanel(id="errors")
            with Vertical(id="checkpoint-box"):
                yield Static("checkpoint", classes="panel-title")
                yield CheckpointPanel(id="checkpoint")
        yield EventLog(id="log")
        yield Footer()

    async def on_mount(self) -> None:
        if isinstance(self.controller, LocalController):
            self.run_worker(
                self._run_engine(),
                group="engine",
                description="backfill engine",
                exit_on_error=False,
            )
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGHUP, signal.SIGTERM):
                try:
                    loop.add_signal_handler(signum, self._on_signal, signum)
                except (NotImplementedError, RuntimeError):
                    pass
        await self.refresh_snapshot()
        # While on_mount runs the app is not mounted yet, so a reactive's own refresh of the
        # bindings is skipped: without this the footer offers the keys of a running run
        # (its first phase) to a completed one until a key press redraws it.
        self.screen.refresh_bindings()
        if self._poll:
            self.set_interval(REFRESH_EVERY, self.refresh_snapshot, name="snapshot-poll")

    async def _run_engine(self) -> None:
        assert isinstance(self.controller, LocalController)
        try:
            result = await self.controller.engine.run()
            self.exit_code = result.exit_code
        except Exception as exc:  # the engine persisted what it could; show why it stopped
            self.exit_code = 3
            self._note(f"engine stopped: {exc}")
        finally:
            self._engine_done.set()
        await self.refresh_snapshot()
        stopped = self.snapshot is not None and self.snapshot.state == "paused"
        if self._quitting or stopped:
            # Stopped by q, a signal or `pause` from another shell: the run is resumable and
            # this process must let go of the job (a held run never ends the engine).
            self._leave(self.exit_code)

    def _note(self, text: str) -> None:
        """A line in the event log, stamped; none when the console is closing (its panels go
        in no fixed order)."""
        with contextlib.suppress(NoMatches):
            self.query_one(EventLog).write(f"{self._clock():%H:%M:%S} {text}")

    def _leave(self, code: int | None) -> None:
        """Exit the app; after a lost terminal, make sure the process ends all the same."""
        if self._terminal_lost:  # the checkpoint is committed by now
            end_within_grace(EXIT_PAUSED if code is None else code)
        self.exit(code)

    def _on_signal(self, signum: int | None = None) -> None:
        """A lost terminal or a TERM: pause, persist, exit 75 (the run stays resumable)."""
        self._quitting = True
        if signum == signal.SIGHUP:
            self._terminal_lost = True
            draw_nowhere()
            # the run pauses within its timeout (in-flight items, the checkpoint); past the
            # bound it ends all the same, resumable from its last checkpoint
            end_within_grace(EXIT_PAUSED, after=TERMINAL_GONE_BOUND)
        assert isinstance(self.controller, LocalController)
        self.controller.stop()
        if self._engine_done.is_set():
            self._leave(self.exit_code if self.exit_code is not None else EXIT_PAUSED)

    async def refresh_snapshot(self) -> None:
        snap = await self.controller.snapshot()
        if snap is None:
            return
        self.apply_snapshot(snap)

    def apply_snapshot(self, snap: AnySnapshot) -> None:
        self.snapshot = snap
        self.run_state = snap.state
        self.live = snap.live and not (
            isinstance(self.controller, LocalController) and self._engine_done.is_set()
        )
        lost_for = self.controller.lost_for()
        before = self.phase
        phase = phase_of(snap, live=self.live, lost=lost_for is not None, before=before)
        self.phase = phase
        ways = self.controller.resume_ways()
        now = self._clock()
        instead = status_text(phase, lost_for=lost_for, resume_with=ways[0] if ways else "")
        stamp = now.strftime("%H:%M:%S")
        events = [] if lost_for is not None else notable_events(self._previous, snap)
        events += phase_events(before, phase, ways=ways, where=self.controller.where)
        try:
            panels = (
                self.query_one(HeaderBar),
                self.query_one(ProgressPanel),
                self.query_one(CountersPanel),
                self.query_one(ErrorsPanel),
                self.query_one(CheckpointPanel),
                self.query_one(EventLog),
            )
        except NoMatches:  # the console is closing: a poll answered after panels went
            return
        header, progress, counters, errors, checkpoint, log = panels
        header.show(snap, attached=self.controller.attached, phase=phase)
        progress.show(snap, now, phase=phase, instead=instead)
        counters.show(snap)
        errors.show(snap)
        checkpoint.show(snap)
        log.write(*(f"{stamp} {event}" for event in events))
        self._previous = snap

    # -- keys -------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "pause":  # the console's hold, in place
            return self.phase is Phase.RUNNING
        if action == "resume":  # releases a hold; a stopped run continues by `resume`
            return self.phase in (Phase.HOLDING, Phase.HELD)
        if action in ("faster", "slower"):
            return self.phase in (Phase.RUNNING, Phase.HOLDING, Phase.HELD)
        return True

    async def _command(self, call: Awaitable[object]) -> bool:
        """A command to the run; one that cannot reach it is a notice, not a crash."""
        try:
            await call
        except CommandFailed as exc:
            self.notify(str(exc), severity="error")
            return False
        return True

    async def action_pause(self) -> None:
        if not await self._command(self.controller.pause()):
            return
        self._note("hold requested: finishing in-flight items")
        await self.refresh_snapshot()

    async def action_resume(self) -> None:
        await self._command(self.controller.resume())
        await self.refresh_snapshot()

    async def _change_concurrency(self, delta: int) -> None:
        current = self.snapshot.concurrency if self.snapshot else 1
        target = max(1, min(current + delta, self.controller.max_concurrency))
        if target == current:
            self.notify(
                f"concurrency stays {current} (range 1 to {self.controller.max_concurrency})"
            )
            return
        await self._command(self.controller.set_concurrency(target))
        await self.refresh_snapshot()

    async def action_faster(self) -> None:
        await self._change_concurrency(+1)

    async def action_slower(self) -> None:
        await self._change_concurrency(-1)

    async def action_failed(self) -> None:
        try:
            items = await self.controller.failed_items()
        except CommandFailed as exc:
            self.notify(str(exc), severity="error")
            return
        await self.push_screen(FailedItemsScreen(items))

    async def action_help(self) -> None:
        pipeline = getattr(self.snapshot, "pipeline", "mirror")  # (none yet: the image job's)
        await self.push_screen(HelpScreen(pipeline))

    async def action_quit_console(self) -> None:
        local = isinstance(self.controller, LocalController)
        if not local:
            self.exit(0)  # detach: the run goes on in its own process
            return
        if self._engine_done.is_set():
            self.exit(self.exit_code)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._on_signal()
                self._note("quitting: stopping and saving the checkpoint")

        ways = self.controller.resume_ways()
        quit_screen = QuitScreen(phase=self.phase, resume_with=ways[0] if ways else "")
        await self.push_screen(quit_screen, answered)
