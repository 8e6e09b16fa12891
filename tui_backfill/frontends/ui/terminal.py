"""What a console does once its terminal is gone (SSH lost: SIGHUP)."""

from __future__ import annotations

import os
import threading

GRACE = 5.0  # seconds the app's own shutdown gets once the terminal is gone


def end_within_grace(code: int) -> None:
    """End the process with `code` within GRACE seconds, whatever the app's shutdown does:
    with no terminal, Textual's can block writing to it (seen: its writer queue never drains,
    the main thread waits on it, and SIGTERM then reaches nothing). Call it once the work is
    persisted and handed back."""
    watchdog = threading.Timer(GRACE, os._exit, args=(code,))
    watchdog.daemon = True
    watchdog.start()
