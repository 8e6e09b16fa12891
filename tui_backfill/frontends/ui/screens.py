"""Modal screens: help, failed items, and the quit confirmation."""

from __future__ import annotations

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import DataTable, Static

from tui_backfill.core.records import FailedItem
from tui_backfill.frontends.ui.events import error_text
from tui_backfill.frontends.ui.phases import Phase
from tui_backfill.seams.keys import visible

KEYS_HELP = """\
[b]Keys[/b]
  [b]p[/b]  hold in place: in-flight items finish, checkpoint saved
  [b]r[/b]  resume a held run (a stopped one: `tui-backfill resume`)
  [b]+[/b]  one more parallel fetch (up to the cap)   [b]-[/b]  one fewer
  [b]f[/b]  failed items (attempts exhausted; retried first by the next run)
  [b]?[/b]  this help
  [b]q[/b]  quit: a live run is stopped, its checkpoint saved (exit 75);
     an attached console just detaches and the run goes on"""

# What the counters panel of each pipeline's console shows (docs/*.md say it at length).
COUNTERS_HELP = {
    "mirror": """\
[b]Counters[/b]
  scannedSkus: SKUs taken up · uploaded: objects written
  skippedExists: already there · noRemote: origin 404
  failedItems: attempts exhausted · errorsTotal: failed attempts
  fetching: origin fetches now, of the cap (+ and - change it)
  itemsInFlight: items between existence check and upload""",
    "hash-index": """\
[b]Counters[/b]
  scannedObjects: listed objects taken up · updated: index rows written
  skipped: not written (skip rule: same size and ETag, no download);
     skippedOlder: of those, older than --since · wouldUpdate: dry run
  orphans: index rows with no object · verified / mismatched: --verify
  failedItems: attempts exhausted · errorsTotal: failed attempts
  GETs: object downloads now, of the cap (+ and - change it)""",
}


def help_text(pipeline: str) -> str:
    """The help of a console whose run is of `pipeline` (an unknown one: the keys alone)."""
    counters = COUNTERS_HELP.get(pipeline)
    parts = [KEYS_HELP, *([counters] if counters else []), "Press escape or ? to close."]
    return "\n\n".join(parts)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,question_mark,q", "dismiss", "Close", id="close-help")]

    def __init__(self, pipeline: str = "mirror") -> None:
        super().__init__()
        self._text = help_text(pipeline)

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box", classes="modal-box"):
            yield Static(self._text, id="help-text")

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)


def _cut_left(text: str, width: int) -> str:
    """The end of `text` in `width` cells (a key's end names its item: `..._2_HR.jpg`)."""
    return text if len(text) <= width else "\u2026" + text[len(text) - width + 1 :]


class FailedItemsScreen(ModalScreen[None]):
    """The failed items in a table that fits the terminal (the key's end, the code, the
    attempts, as much of the message as fits), and the highlighted item in full below it."""

    BINDINGS = [Binding("escape,f,q", "dismiss", "Close", id="close-failed")]

    def __init__(self, items: list[FailedItem]) -> None:
        super().__init__()
        self._items = items[:1000]

    def compose(self) -> ComposeResult:
        with Vertical(id="failed-box", classes="modal-box"):
            yield Static(
                f"[b]Failed items[/b] ({len(self._items)}) — escape to close", id="failed-title"
            )
            yield DataTable(id="failed-table", cursor_type="row")
            yield Static(id="failed-detail")

    def on_mount(self) -> None:
        table = self.query_one(DataTable)
        # The box is 95% of the screen less its border and padding; each column pads one
        # cell either side; two more for a scrollbar once the rows outgrow the table.
        scrollbar = 2 if len(self._items) > 11 else 0
        room = int(self.app.size.width * 0.95) - 4 - 4 * 2 - scrollbar
        codes = max((len(item.code) for item in self._items), default=4)
        code_width = max(codes, len("code"))
        attempts_width = len("attempts")
        keys = max((len(item.key) for item in self._items), default=3)
        rest = room - code_width - attempts_width
        key_width = max(min(keys, rest // 2), 12)
        message_width = max(rest - key_width, 12)
        table.add_column("key", width=key_width)
        table.add_column("code", width=code_width)
        table.add_column("attempts", width=attempts_width)
        table.add_column("message", width=message_width)
        for item in self._items:
            # plain text (a key may hold '[', never markup), control characters escaped
            message = Text(
                visible(error_text(item.code, item.message)), no_wrap=True, overflow="ellipsis"
            )
            key = _cut_left(visible(item.key), key_width)
            table.add_row(Text(key), Text(visible(item.code)), str(item.attempts), message)
        if not self._items:
            table.add_row("(none)", "", "", "")
        self._show_detail(0)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._show_detail(event.cursor_row)

    def _show_detail(self, row: int) -> None:
        if not 0 <= row < len(self._items):
            return
        item = self._items[row]
        self.query_one("#failed-detail", Static).update(
            Text.assemble(
                (visible(item.key), "bold"),
                f"\n{visible(item.code)} after {item.attempts} attempt(s): ",
                visible(error_text(item.code, item.message)),
            )
        )

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)


class QuitScreen(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="quit-yes"),
        Binding("n,escape", "answer(False)", "No", id="quit-no"),
    ]

    def __init__(self, *, phase: Phase = Phase.RUNNING, resume_with: str = "") -> None:
        """`resume_with`: how this run continues once stopped (the controller's first way)."""
        super().__init__()
        self._question = (
            "The run is live. Stop it, save the checkpoint and quit?"
            if phase is Phase.RUNNING
            else f"The run is {phase.value}. Stop it, save the checkpoint and quit?"
        ) + (f"\n(`{resume_with}` continues it)" if resume_with else "")

    def compose(self) -> ComposeResult:
        with Vertical(id="quit-box", classes="modal-box"):
            yield Static(f"{escape(self._question)}\n\n[b]y[/b] yes    [b]n[/b] no")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
