"""Text that fits the terminal: the CLI's tables and lines within its width (80 columns when
there is none: a pipe, a log, systemd), wider terminals getting longer lines. Log records and
progress lines on stderr are wrapped only on a terminal: under systemd or cron, or into a log
file, a record stays one line (journald keeps it as one entry)."""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from collections.abc import Iterable, Sequence

NARROWEST = 40  # below this, lines are wrapped as if it were 40 wide


def terminal_columns() -> int:
    """`COLUMNS`, else the terminal's width, else 80."""
    return max(NARROWEST, shutil.get_terminal_size((80, 24)).columns)


ONE_LINE = sys.maxsize  # a width that wraps nothing


def stream_columns() -> int:
    """The width stderr's records and progress lines wrap at: `COLUMNS` when set, else the
    width of the terminal stderr is; ONE_LINE (no wrapping) for a pipe, a file or journald."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return max(NARROWEST, int(columns))
    try:
        if sys.stderr.isatty():
            return max(NARROWEST, os.get_terminal_size(sys.stderr.fileno()).columns)
    except (AttributeError, OSError, ValueError):
        pass
    return ONE_LINE


def pack(fields: Iterable[str], width: int, *, sep: str = "  ", indent: str = "  ") -> list[str]:
    """Fields joined by `sep` into lines of at most `width`, never splitting a field that
    fits a line; continuation lines start with `indent`. A field longer than a line is
    wrapped at spaces, a word longer than a line cut (nothing is dropped)."""
    lines: list[str] = []
    line = ""
    for field in fields:
        if not field:
            continue
        if line and len(line) + len(sep) + len(field) <= width:
            line += sep + field
            continue
        if line:
            lines.append(line)
        start = indent if lines else ""
        if len(start) + len(field) <= width:
            line = start + field
            continue
        parts = textwrap.wrap(
            field,
            width,
            initial_indent=start,
            subsequent_indent=indent,
            break_on_hyphens=False,
            drop_whitespace=True,
        )
        lines.extend(parts[:-1])
        line = parts[-1] if parts else ""
    if line:
        lines.append(line)
    return lines


def fit(text: str, width: int, *, indent: str = "  ") -> str:
    """Each line of `text` within `width`: a longer one wrapped at spaces (`pack` of its words
    would lose the double spaces between fields; this keeps them where it can)."""
    out: list[str] = []
    for line in text.splitlines():
        out.extend(pack(line.split("  "), width, indent=indent) if len(line) > width else [line])
    return "\n".join(out)


def table(header: Sequence[str], rows: Iterable[Sequence[object]], width: int) -> list[str]:
    """Aligned columns when they fit `width`; else each row as its first value, then the
    others named (`header value`) on indented lines: nothing is cut."""
    cells = [[str(value) for value in row] for row in rows]
    sizes = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    wide = [
        "  ".join(value.ljust(size) for value, size in zip(line, sizes, strict=True)).rstrip()
        for line in [list(header), *cells]
    ]
    if max(len(line) for line in wide) <= width:
        return wide
    out: list[str] = []
    for row in cells:
        out += pack([f"{header[0]} {row[0]}"], width)
        named = [f"{name} {value}" for name, value in zip(header[1:], row[1:], strict=True)]
        out += ["  " + line for line in pack(named, width - 2)]
    return out
