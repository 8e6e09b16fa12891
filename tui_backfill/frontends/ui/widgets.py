"""The console's panels. Each renders one part of a status snapshot and nothing else."""

from __future__ import annotations

import datetime as dt
from collections import deque

from rich.text import Text
from textual.widgets import Static

from tui_backfill.core.snapshot import fmt_bytes
from tui_backfill.frontends.ui.events import error_text
from tui_backfill.frontends.ui.phases import STYLE, Phase, header_word
from tui_backfill.pipelines.hash_index.checkpoint import KeyCheckpoint
from tui_backfill.pipelines.hash_index.snapshot import HashSnapshot
from tui_backfill.pipelines.mirror.snapshot import StatusSnapshot
from tui_backfill.pipelines.snapshots import AnySnapshot
from tui_backfill.seams.keys import visible


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours:d}:{rest // 60:02d}:{rest % 60:02d}"


def eta_clock(seconds: float | None, now: dt.datetime) -> str:
    if seconds is None:
        return "--:--"
    return (now + dt.timedelta(seconds=seconds)).strftime("%H:%M")


def eta_text(snap: AnySnapshot, now: dt.datetime) -> str:
    """The ETA of a moving run."""
    return f"ETA {fmt_duration(snap.eta_seconds)} ({eta_clock(snap.eta_seconds, now)})"


class _Panel(Static):
    """A fixed-size panel that redraws only when what it shows has changed."""

    _shown: object = None

    @property
    def text_width(self) -> int:
        """Usable width, also before the first layout (full-width panels, padding 1)."""
        return self.content_size.width or max(self.app.size.width - 2, 20)

    def changed(self, key: object) -> bool:
        if key == self._shown:
            return False
        self._shown = key
        return True


class HeaderBar(_Panel):
    """Job, what the run is doing (held and stopped read apart), bucket and endpoint (never
    a secret)."""

    def show(self, snap: AnySnapshot, *, attached: bool, phase: Phase) -> None:
        if not self.changed((snap.job, phase, attached, snap.dry_run, snap.bucket, snap.endpoint)):
            return
        endpoint = snap.endpoint.split("://", 1)[-1] if snap.endpoint else "AWS"
        word = header_word(phase) or snap.state.upper()
        text = Text.assemble(
            (f"job {snap.job} ", "bold"),
            (f" {word} ", STYLE.get(phase, "bold") + " reverse"),
            (" attached" if attached else "", "italic"),
            (" dry run" if snap.dry_run else "", "italic"),
            (f"  s3://{snap.bucket}", ""),
            (f" @ {endpoint}", "dim"),
            no_wrap=True,
            overflow="ellipsis",
        )
        self.update(text, layout=False)


def progress_figures(snap: AnySnapshot) -> tuple[str, int, int, float]:
    """(unit, scanned, planned (0: not known ahead), scanned per second) of a snapshot: SKUs
    of the image job, objects of the hash index (whose listing length is not known ahead)."""
    if isinstance(snap, HashSnapshot):
        return "objects", snap.counters.scanned_objects, 0, snap.items_per_second
    return "SKUs", snap.counters.scanned_skus, snap.planned_skus, snap.skus_per_second


class ProgressPanel(_Panel):
    """Scanned / planned as a bar, with rates and the ETA while the run moves, else what it
    is doing instead (two lines)."""

    def show(self, snap: AnySnapshot, now: dt.datetime, *, phase: Phase, instead: str) -> None:
        """`instead`: the second line's words when the run does not move (held, stopped, a
        lost connection: rates would be 0 or stale)."""
        unit, scanned, planned, per_second = progress_figures(snap)
        moving = phase in (Phase.RUNNING, Phase.UNKNOWN)
        key = (
            scanned,
            planned,
            per_second,
            snap.items_per_second,
            snap.bytes_per_second,
            snap.eta_seconds,
            moving or instead,
            now.strftime("%H:%M"),
            self.size.width,
        )
        if not self.changed(key):
            return
        width = max(self.text_width - 6, 10)
        done = scanned / planned if planned else 0.0
        filled = int(done * width)
        bar = Text.assemble(
            ("━" * filled, "bold green"),
            ("━" * (width - filled), "grey30"),
            f" {100 * done:3.0f}%" if planned else "    ",
        )
        counted = f"{scanned:,}/{planned:,}" if planned else f"{scanned:,}"
        if moving:
            rates = Text.assemble(
                (f"{unit} {counted} ", "bold"),
                (f"· {per_second:.1f} SKU/s " if unit == "SKUs" else "")
                + f"· {snap.items_per_second:.1f} obj/s"
                f" · {fmt_bytes(snap.bytes_per_second)}/s · ",
                (eta_text(snap, now), "bold"),
            )
        else:
            rates = Text.assemble((f"{unit} {counted} ", "bold"), "· ", (instead, "bold"))
        self.update(Text("\n", no_wrap=True, overflow="ellipsis").join([bar, rates]), layout=False)


def _cells(pairs: list[tuple[str, str]], widths: tuple[int, ...]) -> Text:
    """Label-value cells, each right-aligned in its width, two spaces between cells; a row may
    have fewer cells than there are columns (the hash index's shorter rows)."""
    line = Text(no_wrap=True, overflow="ellipsis")
    for i, ((label, value), width) in enumerate(zip(pairs, widths[: len(pairs)], strict=True)):
        line.append("  " if i else "")
        line.append(label.ljust(width - len(value)), style="dim")
        line.append(value)
    return line


class CountersPanel(_Panel):
    """The pipeline's counters (for the image job every key of the brief), at a glance."""

    def show(self, snap: AnySnapshot) -> None:
        if not self.changed(
            (
                snap.counters,
                snap.concurrency,
                snap.in_flight,
                snap.last_update_at[:19],
                self.text_width,
            )
        ):
            return
        third = max((self.text_width - 4) // 3, 22)
        widths = (third, third, third)
        rows = snap.counter_rows()  # the pipeline's counters, with its labels
        lines = [_cells(row, widths) for row in rows]
        lines.append(
            Text(f"startedAt {snap.started_at}  lastUpdateAt {snap.last_update_at}", style="dim")
        )
        self.update(Text("\n", no_wrap=True, overflow="ellipsis").join(lines), layout=False)


class ErrorsPanel(_Panel):
    """Errors by code, sorted by count, with the latest message of each code."""

    def show(self, snap: AnySnapshot) -> None:
        errors = snap.counters.errors_by_code
        if not self.changed((tuple(errors.items()), tuple(snap.last_errors.items()))):
            return
        width = max((len(code) for code in errors), default=4) + 2
        counted = max((len(f"{count:,}") for count in errors.values()), default=5)
        count_width = max(counted, len("count")) + 2  # the rest is the messages' width
        lines = [
            Text.assemble(
                ("code".ljust(width), "bold"),
                ("count".ljust(count_width), "bold"),
                ("latest message", "bold"),
            )
        ]
        for code, count in sorted(errors.items(), key=lambda kv: (-kv[1], kv[0])):
            lines.append(
                Text.assemble(
                    code.ljust(width),
                    f"{count:,}".ljust(count_width),
                    (visible(error_text(code, snap.last_errors.get(code, ""))), "dim"),
                )
            )
        if not errors:
            lines.append(Text("no errors", style="dim"))
        self.update(Text("\n", no_wrap=True, overflow="ellipsis").join(lines), layout=False)


class EventLog(Static):
    """The latest notable events, newest at the bottom (a fixed-height tail, no relayout)."""

    def __init__(self, *, lines: int = 200, id: str | None = None) -> None:
        super().__init__(id=id)
        self._lines: deque[str] = deque(maxlen=lines)

    @property
    def lines(self) -> list[str]:
        return list(self._lines)

    def write(self, *lines: str) -> None:
        """Append lines; one redraw for all of them (none for no lines)."""
        if not lines:
            return
        self._lines.extend(lines)
        height = self.content_size.height or 4
        tail = list(self._lines)[-height:]
        self.update(
            Text("\n", no_wrap=True, overflow="ellipsis").join(Text(visible(x)) for x in tail),
            layout=False,
        )


class CheckpointPanel(_Panel):
    """The checkpoint: lastSku, in-flight SKUs and their completed angles."""

    def show(self, snap: AnySnapshot) -> None:
        cp = snap.checkpoint
        if not self.changed((cp, snap.checkpoint_saved_at)):
            return
        if isinstance(cp, KeyCheckpoint):
            lines = [Text.assemble(("lastKey ", "dim"), (visible(cp.last_key or "-"), "bold"))]
            if cp.done_after:
                lines.append(Text(f"+{len(cp.done_after)} done after it", style="dim"))
            saved = snap.checkpoint_saved_at[11:19] if snap.checkpoint_saved_at else "not yet"
            lines.append(Text(f"saved {saved}", style="dim"))
            self.update(Text("\n").join(lines), layout=False)
            return
        lines = [Text.assemble(("lastSku ", "dim"), (visible(cp.last_sku or "-"), "bold"))]
        # Past lastSku, a SKU with every planned angle done is finished (it waits for an
        # earlier one); the others are partly done (all of them when the plan is unknown).
        planned = snap.angles_per_sku if isinstance(snap, StatusSnapshot) else 0
        partly = [
            (sku, a) for sku, a in cp.completed_angles.items() if not planned or len(a) < planned
        ]
        finished = len(cp.completed_angles) - len(partly)
        for sku, angles in partly[:4]:
            lines.append(
                Text.assemble(
                    (f"{visible(sku)} ", ""), ("done " + ",".join(map(str, angles)), "dim")
                )
            )
        if len(partly) > 4:
            lines.append(Text(f"+{len(partly) - 4} more partly done", style="dim"))
        if finished:
            lines.append(Text(f"+{finished} finished after it", style="dim"))
        saved = snap.checkpoint_saved_at[11:19] if snap.checkpoint_saved_at else "not yet"
        lines.append(Text(f"saved {saved}", style="dim"))
        self.update(Text("\n").join(lines), layout=False)
