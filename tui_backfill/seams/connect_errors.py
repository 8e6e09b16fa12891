"""What a failed connection means: the server's absence (nothing listens there, the host does
not resolve, no route to it), or a fault of a server that is there (anything else: a reset, a
timeout). Shared by the origins and the S3 paths, which stop a run whose other end is gone
(core/breaker.py) rather than fail item after item; no dependencies, so any seam may use it.
"""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

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


async def connect_each(host: str, port: int, connect: Callable[[str], Awaitable[T]]) -> T:
    """Connect to the first address of `host` that answers, in resolver order.

    When every address fails, the error raised keeps their errno if they agree: asyncio's own
    merge of several failures (a name with an IPv6 and an IPv4 address, both refusing) drops
    it, and with it the difference between an absent origin and a faulty one.
    """
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    failures: list[OSError] = []
    for *_, address in infos:
        try:
            return await connect(str(address[0]))
        except OSError as exc:
            failures.append(exc)
    if len({exc.errno for exc in failures}) == 1:
        raise failures[0]
    raise OSError(None, "; ".join(str(exc) for exc in failures))
