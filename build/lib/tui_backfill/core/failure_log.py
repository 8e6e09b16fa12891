"""Failed items in the log as they fail, without flooding it: at most `burst` one by one per
`window` seconds, then one line with how many more (`tui-backfill failed` lists them all)."""

from __future__ import annotations

import logging

FAILED_LOG_BURST = 20
FAILED_LOG_WINDOW = 10.0


class FailureLog:
    def __init__(
        self,
        log: logging.Logger,
        *,
        burst: int = FAILED_LOG_BURST,
        window: float = FAILED_LOG_WINDOW,
    ) -> None:
        self._log = log
        self._burst = burst
        self._window = window
        self._window_start = 0.0
        self._logged = 0
        self._unlogged = 0

    def failed(self, key: str, attempts: int, code: str, message: str, now: float) -> None:
        if now - self._window_start >= self._window:
            self.flush()
            self._window_start, self._logged = now, 0
        if self._logged < self._burst:
            self._logged += 1
            # a message that starts with its code ("connection: ...") says it once
            said = message if message.startswith(f"{code}:") else f"{code}: {message}"
            self._log.warning("failed item %r after %d attempt(s): %s", key, attempts, said)
        else:
            self._unlogged += 1

    def flush(self) -> None:
        """The count of failed items not logged one by one (at a window's end, the run's end)."""
        if self._unlogged:
            self._log.warning(
                "%d more failed items not logged one by one (`tui-backfill failed` lists them)",
                self._unlogged,
            )
            self._unlogged = 0
