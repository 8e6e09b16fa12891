"""Modal screens: help, failed items, and the quit confirmation."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from tui_backfill.core.records import FailedItem
from tui_backfill.seams.keys import visible

HELP = """\
[b]Keys[/b]
  [b]p[/b]  pause: stop dispatching; in-flight items finish; checkpoint saved
  [b]r[/b]  resume a paused run
  [b]+[/b]  one more parallel fetch (up to the cap)   [b]-[/b]  one fewer
  [b]f[/b]  failed items (attempts exhausted; retried first by the next run)
  [b]?[/b]  this help
  [b]q[/b]  quit: a live run is paused, its checkpoint saved (exit 75);
     an attached console just detaches and the run goes on

[b]Counters[/b]
  scannedSkus: SKUs taken up · uploaded: objects written
  skippedExists: already there · noRemote: origin 404
  failedItems: attempts exhausted · errorsTotal: failed attempts
  fetching: origin fetches now, of the cap (+ and - change it)
  itemsInFlight: items between existence check and upload

Press escape or ? to close."""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close", id="close-help")]

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box", classes="modal-box"):
            yield Static(HELP, id="help-text")

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)


class FailedItemsScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f,q", "dismiss", "Close", id="close-failed")]

    def __init__(self, items: list[FailedItem]) -> None:
        super().__init__()
        self._items = items

    def compose(self) -> ComposeResult:
        with Vertical(id="failed-box", classes="modal-box"):
            yield Static(
                f"[b]Failed items[/b] ({len(self._items)}) — escape to close", id="failed-title"
            )
            yield DataTable(id="failed-table", cursor_type="row")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        table.add_columns("key", "code", "attempts", "message")
        for item in self._items[:1000]:
            # plain text (a key may hold '[', never markup), control characters escaped
            cells = (item.key, item.code, str(item.attempts), item.message)
            table.add_row(*(Text(visible(cell)) for cell in cells))
        if not self._items:
            table.add_row("(none)", "", "", "")

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)


class QuitScreen(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="quit-yes"),
        Binding("n,escape", "answer(False)", "No", id="quit-no"),
    ]

    def __init__(self, *, state: str = "running") -> None:
        super().__init__()
        self._question = (
            f"The run is {state}. Save the checkpoint and quit?"
            if state in ("pausing", "paused")
            else "The run is live. Pause it, save the checkpoint and quit?"
        )

    def compose(self) -> ComposeResult:
        with Vertical(id="quit-box", classes="modal-box"):
            yield Static(f"{self._question}\n\n[b]y[/b] yes    [b]n[/b] no")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
