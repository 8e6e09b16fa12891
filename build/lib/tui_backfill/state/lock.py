"""One process per job: an OS lock on `<state>.<job>.lock`, released by the kernel even on
SIGKILL; its content names the holder's pid (for "already running in process N")."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from tui_backfill.outcomes import ConfigError, JobBusy


class JobLock:
    """One process per job: an OS lock on `<state>.<job>.lock`, released even by SIGKILL."""

    def __init__(self, state_path: str, job: str) -> None:
        self.path = f"{state_path}.{job}.lock"
        self._fd: int | None = None

    def holder(self) -> int | None:
        """The pid of the live process holding the lock, or None."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                content = os.read(fd, 64).decode(errors="replace").strip()
                return int(content) if content.isdigit() else -1
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def acquire(self, job: str) -> None:
        try:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(
                "--state", f"{self.path}: cannot take the job lock: {exc.strerror}"
            ) from None
        # A `status` reading the lock holds it shared for an instant: try for a short while.
        for attempt in range(20):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt < 19:
                    time.sleep(0.05)
        else:
            content = os.read(fd, 64).decode(errors="replace").strip()
            os.close(fd)
            raise JobBusy("--job", f"job {job!r} is already running in process {content or '?'}")
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
