"""What a failed connection means: the server's absence (nothing listens there, the host does
not resolve, no route to it), or a fault of a server that is there (anything else: a reset, a
timeout). Shared by the origins and the S3 paths, which stop a run whose other end is gone
(core/breaker.py) rather than fail item after item; no dependencies, so any seam may use it.
"""

from __future__ import annotations

import errno
import socket

_ABSENT_ERRNOS = {
    errno.ECONNREFUSED: "connection refused",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable",
}


def unreachable_reason(exc: BaseException) -> str | None:
    """Why a connect error means the server is absent, or None when it is a fault.

    By errno, not by class: a host with several addresses that all refuse comes back from
    aiohttp as a plain OSError carrying ECONNREFUSED.
    """
    if isinstance(exc, socket.gaierror):
        return f"host not found ({exc.strerror})"
    if isinstance(exc, OSError) and exc.errno is not None:
        return _ABSENT_ERRNOS.get(exc.errno)
    return None
