"""What a console does once its terminal is gone (SSH lost: SIGHUP)."""

from __future__ import annotations

import contextlib
import os
import threading

GRACE = 5.0  # seconds the app's own shutdown gets once the terminal is gone


def end_within_grace(code: int, *, after: float = 0.0) -> None:
    """End the process with `code` within `after` + GRACE seconds, whatever the app does:
    with no terminal, Textual's shutdown, and even its drawing, can block writing to it (seen:
    its writer queue never drains, the main thread waits on it, and SIGTERM then reaches
    nothing). `after`: the time the work still needs to persist and hand back; past it, what
    is unfinished is what a SIGKILL leaves (resumable: the checkpoint, the queue's leases)."""
    watchdog = threading.Timer(after + GRACE, os._exit, args=(code,))
    watchdog.daemon = True
    watchdog.start()


def draw_nowhere() -> None:
    """Point standard output and error at /dev/null: the console's writes to a terminal that
    is gone then cost nothing and block nothing while the work winds down."""
    with contextlib.suppress(OSError):
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            for fd in (1, 2):
                os.dup2(null, fd)
        finally:
            os.close(null)
