"""Where the engine's log goes: stderr when headless (journald keeps it), a file beside the
state under the console (the screen is the console's). One line per record (continued on indented
lines past the terminal's width on stderr), prefixed like every
other line the tool prints; tracebacks (an internal error) follow their line."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from tui_backfill.core.textfit import pack, stream_columns

PREFIX = "tui-backfill: "
LOGGER = "tui_backfill"


class _Fitted(logging.Formatter):
    """A record's line within stderr's terminal's width, continued on indented lines; one line
    when stderr is no terminal (journald, a log file); a traceback after it as it is."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        line, newline, rest = text.partition("\n")
        width = stream_columns()
        if len(line) > width:
            line = "\n".join(pack(line.split(" "), width, sep=" "))
        return line + newline + rest


def _attach(handler: logging.Handler, layout: str, fitted: bool = False) -> None:
    handler.setFormatter(_Fitted(layout) if fitted else logging.Formatter(layout))
    log = logging.getLogger(LOGGER)
    for old in list(log.handlers):  # one destination at a time (tests run several front ends)
        log.removeHandler(old)
        old.close()
    log.addHandler(handler)
    log.setLevel(logging.INFO)


class _Stderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Whatever `sys.stderr` is when a record is written (it may be replaced meanwhile)."""

    @property
    def stream(self) -> object:
        return sys.stderr

    @stream.setter
    def stream(self, value: object) -> None:
        pass


def log_to_stderr() -> None:
    """Headless runs and `serve`: warnings and errors on stderr beside the progress lines."""
    _attach(_Stderr(), PREFIX + "%(message)s", fitted=True)


def log_to_file(state_path: str) -> Path:
    """The console: `<state>.log` beside the state file (appended), returned for the help."""
    path = Path(state_path).with_suffix(".log")
    path.parent.mkdir(parents=True, exist_ok=True)
    _attach(logging.FileHandler(path, encoding="utf-8"), "%(asctime)s %(levelname)s %(message)s")
    return path
