"""What is wrong with a state database, in one line an operator can act on.

SQLite's own errors are classified here (full, read-only, locked, corrupted, not a state, from a
newer version) into the store's errors: `StateUnavailable` (the run stops at its last
checkpoint), `StateBusy` (try again at the next beat) and, before any work, ConfigError naming
`--state` (exit 2).
"""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

from tui_backfill.core.store import StateBusy, StateUnavailable
from tui_backfill.files import unwritable
from tui_backfill.outcomes import ConfigError

BUSY_TIMEOUT_SECONDS = 10  # how long a write waits for another connection's write lock

# SQLite's primary result codes (sqlite3.Error.sqlite_errorcode & 0xFF).
_SQLITE_PERM, _SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_READONLY = 3, 5, 6, 8
_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_CANTOPEN, _SQLITE_NOTADB = 10, 11, 13, 14, 26


class NotAState(sqlite3.DatabaseError):
    """The file is not a tui-backfill state (or fails SQLite's structural check)."""


class NewerState(sqlite3.DatabaseError):
    """The state was written by a newer tui-backfill (a schema version we do not know)."""


def read_only_without_wal(path: str, exc: BaseException) -> bool:
    """SQLite could not open the state because its directory is read-only, and the state has
    no -wal file (so the database file alone is the whole state)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int) or code & 0xFF not in (_SQLITE_CANTOPEN, _SQLITE_READONLY):
        return False
    return not Path(f"{path}-wal").exists() and unwritable(path) is not None


def state_problem(path: str, exc: BaseException) -> str:
    """One line naming the state file and what is wrong with it (for exit 2 and exit 3)."""
    if isinstance(exc, NewerState | NotAState):
        return f"{path}: {exc}"
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        primary = _SQLITE_FULL
    if primary in (_SQLITE_NOTADB, _SQLITE_CORRUPT):
        return (
            f"{path}: not a valid state database ({exc}); restore it from a copy, or move it "
            "aside to start over (objects already in the bucket count as skippedExists)"
        )
    if primary == _SQLITE_FULL:
        return f"{path}: the disk is full ({exc}); free space, then `tui-backfill resume`"
    if primary in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return (
            f"{path}: locked by another process for more than {BUSY_TIMEOUT_SECONDS} s ({exc}); "
            "end the program holding it (and keep the state on local disk, not a network share)"
        )
    if primary in (_SQLITE_PERM, _SQLITE_READONLY, _SQLITE_IOERR, _SQLITE_CANTOPEN) or isinstance(
        exc, OSError
    ):
        reason = unwritable(path)
        if reason is not None:
            return f"{path}: read-only ({reason}; {exc})"
    return f"{path}: {exc}"


def state_error(path: str, exc: BaseException) -> ConfigError:
    """A problem of the state found before any work: exit 2 naming --state."""
    return ConfigError("--state", state_problem(path, exc))


def state_fatal(path: str, exc: BaseException) -> StateUnavailable:
    return StateUnavailable(f"state {state_problem(path, exc)}")


def state_error_now(path: str, exc: sqlite3.Error) -> StateBusy | StateUnavailable:
    """A lock held for now is StateBusy (try again later); anything else is fatal."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return StateBusy(f"state {state_problem(path, exc)}")
    return state_fatal(path, exc)
