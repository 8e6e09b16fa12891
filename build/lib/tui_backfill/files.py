"""Whether a file can be written, asked of the kernel: shared by the SQLite seams (the state
store, the index table), which must tell a read-only file from a broken one."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path


def unwritable(path: str) -> str | None:
    """Why a SQLite file (or its directory, where SQLite keeps its journal or -wal/-shm)
    cannot be written, or None. Called on errors only; root ignores permission bits but not a
    read-only mount or an immutable file, so this asks the kernel instead of reading modes."""
    denied = (errno.EROFS, errno.EACCES, errno.EPERM)
    target = Path(path)
    try:
        if target.exists():
            os.close(os.open(target, os.O_RDWR))
    except OSError as exc:
        return f"the file cannot be written: {exc.strerror}" if exc.errno in denied else None
    probe = target.parent / f".{target.name}.{os.getpid()}.probe"
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError as exc:
        if exc.errno in denied:
            return f"its directory {target.parent} cannot be written: {exc.strerror}"
        return None
    with contextlib.suppress(OSError):
        os.unlink(probe)
    return None
