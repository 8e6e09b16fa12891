"""The signals that stop a headless job gracefully, for every front end that runs one.

SIGTERM (a service manager), SIGINT (Ctrl-C) and SIGHUP (a lost SSH session) mean the same:
stop, finish or hand back what is in flight, save. A HUP that `nohup` told the process to
ignore stays ignored. The line saying so comes after the stop: with the terminal gone,
writing it can fail, and that must never swallow the signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def handle_stop_signals(
    loop: asyncio.AbstractEventLoop, handler: Callable[[int], None]
) -> tuple[int, ...]:
    """`handler(signum)` on each stop signal; the signals handled (to remove them later)."""
    handled = tuple(
        signum
        for signum in STOP_SIGNALS
        if not (signum == signal.SIGHUP and signal.getsignal(signum) is signal.SIG_IGN)
    )
    for signum in handled:
        loop.add_signal_handler(signum, handler, signum)
    return handled


def tell(line: str) -> None:
    """A line on stderr, if stderr is still there (best effort: never raises)."""
    with contextlib.suppress(OSError, ValueError):
        print(line, file=sys.stderr, flush=True)
