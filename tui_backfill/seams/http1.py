"""HTTP/1.1 exchanges over kept-alive connections: the wire of the lean S3 path (s3_lean).

aiohttp's machinery (its request and response objects, cookie jar, tracing hooks, timers, a
body's copies through its parser and stream) costs CPU on the event loop's thread that a signed
S3 PUT, HEAD or GET does not need: a 30 KB PUT to `rclone serve s3` takes 0.24 ms of CPU sent
by aiohttp, 0.16 ms here; a HEAD 0.15 and 0.11 (bench/s3_put_cost.py). Here:

- `Wire.request` sends a request to a URL's server over a connection of that server's pool
  (at most `limit` connections in use at once, whatever their servers, as aiohttp's limit;
  idle ones reused last in, first out; one that the server closed, wrote to while idle, or
  left idle past KEEP_IDLE is never reused);
- one write per request: the head and the body; no `Expect: 100-continue`;
- the answer's head is parsed from the first bytes; its body is delivered as the transport
  hands it over (the socket's copy, no other), framed by Content-Length, chunked, or by the end
  of the connection; reading pauses past BUFFERED bytes not yet read, so a large body streams
  in bounded memory;
- nothing is sent twice: a connection that fails is closed and the failure raised (the engine
  owns retries, as with aiohttp's silent re-send turned off), unless the wire was asked to
  resend a request whose kept-alive connection the server had closed (`resend_on_stale`).

Failures are `ConnectionError` subclasses (s3_wire.classify reads them as `s3_connection`): a
connection that broke, an answer that is not HTTP/1.x (`BadAnswer`), no connection made
(`CannotConnect`, whose `os_error` connect_errors.unreachable_reason reads to tell an absent
server), a certificate refused (`UntrustedCertificate`) or another TLS failure (`TLSFailed`),
a body cut short (`TruncatedBody`), a proxy that refused a tunnel (`ProxyRefused`). Waits are
bounded by the caller (asyncio.timeout around each); making a connection is bounded here too
when the Wire is given a `connect_timeout`.

Through a proxy (`Proxy`, an http:// or https:// URL): a request for an http URL goes to the
proxy in absolute form (its Proxy-Authorization among the request's headers, the caller's
choice, as aiohttp and botocore send it); for an https URL the connection is a tunnel (CONNECT,
with the proxy's headers) and TLS with the server runs inside it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import overload

from tui_backfill.seams.connect_errors import connect_each

BUFFERED = 1024 * 1024  # bytes received and not yet read that pause reading
HEAD_LIMIT = 64 * 1024  # an answer's head longer than this is refused
KEEP_IDLE = 15.0  # seconds an idle connection is kept (aiohttp's keepalive_timeout)


class WireError(ConnectionError):
    """A failure this wire saw and says in words (its message names what was expected)."""


class TruncatedBody(WireError):
    """The connection ended before the body its head announced (a connection failure too,
    for a caller that reads a whole answer)."""


class BadAnswer(WireError):
    """What the server sent is not an HTTP/1.x answer this client can read."""


class CannotConnect(WireError):
    """No connection was made (refused, no route, host not found): `os_error` says why, as
    aiohttp's ClientConnectorError does."""

    def __init__(self, os_error: OSError, where: str) -> None:
        super().__init__(
            os_error.errno, f"cannot connect to {where}: {os_error.strerror or os_error}"
        )
        self.os_error = os_error


class UntrustedCertificate(WireError):
    """The server's TLS certificate was refused (its chain, name or dates)."""


class TLSFailed(WireError):
    """The TLS handshake failed for another reason than the certificate."""


class ProxyRefused(WireError):
    """The proxy did not open a tunnel to the server (its answer's status in the message)."""


@dataclass(frozen=True, slots=True)
class Proxy:
    """A proxy to send through: its URL (no credentials in it) and the headers it reads
    (Proxy-Authorization), sent with a CONNECT."""

    url: str
    headers: tuple[tuple[str, str], ...] = ()


class Headers(dict[str, str]):
    """An answer's headers by lower-case name; a repeated header's values joined by ", "."""

    @overload  # type: ignore[override]
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    def get(self, name: str, default: str | None = None) -> str | None:
        return super().get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())


class _Connection(asyncio.Protocol):
    """One connection: what it received and not yet read, and whether it ended."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.idle_since = 0.0
        self.heard = False  # bytes came since the last request was written
        self._received: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._paused = False
        self._ended = False
        self._lost: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.heard = True
        self._received.append(data)
        self._buffered += len(data)
        if self._buffered > BUFFERED and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self._ended = True
        self._wake()
        return False  # the transport closes itself

    def connection_lost(self, exc: BaseException | None) -> None:
        self._ended = True
        self._lost = exc
        self._wake()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def reusable(self) -> bool:
        """Open, quiet and nothing unread: fit for the next request."""
        transport = self.transport
        return (
            transport is not None
            and not transport.is_closing()
            and not self._ended
            and not self._received
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._ended = True

    async def chunk(self, limit: int) -> bytes:
        """At most `limit` bytes received (waiting for some); b"" when the connection ended."""
        while not self._received:
            if self._ended:
                return b""
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        data = self._received.popleft()
        if len(data) > limit:
            self._received.appendleft(data[limit:])
            data = data[:limit]
        self._buffered -= len(data)
        if self._paused and self._buffered < BUFFERED // 4 and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    @property
    def lost(self) -> BaseException | None:
        """Why the connection ended, when it did not end cleanly."""
        return self._lost

    def unread(self, data: bytes) -> None:
        if data:
            self._received.appendleft(data)
            self._buffered += len(data)

    def broken(self, what: str) -> ConnectionError:
        """The error for a connection that ended while `what` was awaited."""
        lost = self._lost
        if isinstance(lost, ConnectionError):
            return type(lost)(lost.errno, f"{what}: {lost.strerror or lost}")
        return ConnectionResetError(f"the server closed the connection before {what}")

    async def line(self) -> bytes:
        """One line ending in CRLF (without it), for the chunked framing."""
        got = b""
        while True:
            data = await self.chunk(HEAD_LIMIT)
            if not data:
                raise TruncatedBody("the connection ended inside a chunk's framing")
            got += data
            end = got.find(b"\r\n")
            if end >= 0:
                self.unread(got[end + 2 :])
                return got[:end]
            if len(got) > HEAD_LIMIT:
                raise BadAnswer("a chunk's framing line is over 64 KiB")


class Body:
    """An answer's body, read once: `read(n)` gives the next piece of at most n bytes (n < 0:
    the rest), b"" at its end; TruncatedBody when the connection ended early."""

    def __init__(self, connection: _Connection, length: int | None, chunked: bool) -> None:
        self._connection = connection
        self._left = length  # None: to the end of the connection (or chunked)
        self._chunked = chunked
        self._chunk_left = 0  # chunked: bytes left of the current chunk
        self.done = length == 0

    async def read(self, n: int = -1) -> bytes:
        if n < 0:
            pieces = []
            while piece := await self.read(BUFFERED):
                pieces.append(piece)
            return b"".join(pieces)
        if self.done or n == 0:
            return b""
        if self._chunked:
            return await self._read_chunked(n)
        connection = self._connection
        left = self._left
        data = await connection.chunk(n if left is None else min(n, left))
        if left is None:
            if not data and connection.lost is not None:  # reset or cut, not a clean close
                raise TruncatedBody(
                    f"the connection broke before the body's end: {connection.lost}"
                )
            self.done = not data
            return data
        if not data:
            raise TruncatedBody(f"the connection ended {left:,} bytes before the body's end")
        self._left = left = left - len(data)
        self.done = left == 0
        return data

    async def _read_chunked(self, n: int) -> bytes:
        connection = self._connection
        if self._chunk_left == 0:
            size_line = await connection.line()
            try:
                size = int(size_line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BadAnswer(
                    f"a chunk size that is not hexadecimal: {size_line[:40]!r}"
                ) from None
            if size < 0:
                raise BadAnswer("a negative chunk size")
            if size == 0:  # the last chunk; then trailers up to an empty line
                while await connection.line():
                    pass
                self.done = True
                return b""
            self._chunk_left = size
        data = await connection.chunk(min(n, self._chunk_left))
        if not data:
            raise TruncatedBody("the connection ended inside a chunk")
        self._chunk_left -= len(data)
        if self._chunk_left == 0 and await connection.line() != b"":
            raise BadAnswer("a chunk longer than its size")
        return data


class Answer:
    """An answer's status, headers and body (`content`). Release it (`release`, or leave its
    `async with`) once read: its connection goes back to the pool when the body was read to
    its end and the server keeps it open, and is closed otherwise; `close` always closes."""

    def __init__(
        self,
        pool: _Pool,
        connection: _Connection,
        status: tuple[int, str],
        headers: Headers,
        content: Body,
        keep: bool,
        content_length: int | None,
    ) -> None:
        self._pool = pool
        self._connection: _Connection | None = connection
        self.status, self.reason = status
        self.ok = self.status < 400
        self.headers = headers
        self.content = content
        self._keep = keep
        self.content_length = content_length

    async def read(self) -> bytes:
        """The whole body (the rest of it)."""
        return await self.content.read()

    def release(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.give_back(connection, keep=self._keep and self.content.done)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            self._pool.give_back(connection, keep=False)

    async def __aenter__(self) -> Answer:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.release()
        else:
            self.close()


def _parse_head(head: bytes) -> tuple[tuple[int, str], bool, Headers]:
    """The status (code and reason), whether the server keeps the connection, and the headers
    of an answer's head (without its blank line)."""
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise BadAnswer(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
    headers = Headers()
    name = ""
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and name:  # an obsolete folded continuation
            dict.__setitem__(headers, name, f"{dict.__getitem__(headers, name)} {line.strip()}")
            continue
        raw_name, colon, value = line.partition(":")
        if not colon or not raw_name or raw_name != raw_name.strip():
            raise BadAnswer(f"a header line without a name: {line[:60]!r}")
        name = raw_name.lower()
        value = value.strip()
        if dict.__contains__(headers, name):
            value = f"{dict.__getitem__(headers, name)}, {value}"
        dict.__setitem__(headers, name, value)
    connection = (headers.get("connection") or "").lower()
    keep = version == "HTTP/1.1" and "close" not in connection
    return (int(code), rest[4:].strip()), keep, headers


class _Pool:
    """The connections to one server (scheme, host and port)."""

    def __init__(
        self,
        origin: str,
        *,
        slots: asyncio.Semaphore,
        tls: ssl.SSLContext | None,
        connect_timeout: float | None,
        proxy: Proxy | None,
    ) -> None:
        scheme, _, netloc = origin.partition("://")
        host, port = _split_netloc(netloc.rpartition("@")[2], 443 if scheme == "https" else 80)
        self.host = host
        self.port = port
        self.tls = tls if scheme == "https" else None
        self.verify = tls
        self.connect_timeout = connect_timeout
        self.proxy = proxy
        self._slots = slots  # the Wire's, shared by its pools
        self._idle: list[_Connection] = []
        self._closed = False

    async def exchange(self, head: bytes, body: bytes, method: str, *, resend: bool) -> Answer:
        """The request sent and its answer's head. With `resend`, a request that a kept-alive
        connection failed before a byte of answer came (the server had closed it meanwhile)
        is sent once more on a new connection, as aiohttp does; the caller asks for it only
        where a second send is harmless."""
        await self._slots.acquire()
        try:
            connection = self._take_idle()
            reused = connection is not None
            if connection is None:
                connection = await self._connect()
        except BaseException:
            self._slots.release()
            raise
        while True:
            try:
                assert connection.transport is not None
                connection.heard = False
                connection.transport.write(head + body if body else head)
                status, keep, headers, content, size = await self._answer(connection, method)
                answer = Answer(self, connection, status, headers, content, keep, size)
            except OSError:
                connection.close()
                if not (resend and reused and not connection.heard):
                    self.give_back(connection, keep=False)
                    raise
                reused = False
                try:
                    connection = await self._connect()
                except BaseException:
                    self._slots.release()
                    raise
                continue
            except BaseException:
                self.give_back(connection, keep=False)
                raise
            return answer

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            connection = self._idle.pop()
            if connection.reusable and now - connection.idle_since < KEEP_IDLE:
                return connection
            connection.close()
        return None

    async def _connect(self) -> _Connection:
        """A new connection to the server (through the proxy's tunnel for https), within the
        connect bound."""
        async with asyncio.timeout(self.connect_timeout):
            if self.proxy is None:
                return await _open(self.host, self.port, self.tls)
            scheme, _, netloc = self.proxy.url.partition("://")
            host, port = _split_netloc(netloc, 443 if scheme == "https" else 80)
            proxy_tls = None  # an https proxy: verified as the server is, else by the system
            if scheme == "https":
                proxy_tls = self.verify or ssl.create_default_context()
            connection = await _open(host, port, proxy_tls)
            if self.tls is not None:
                try:
                    await self._tunnel(connection)
                except BaseException:
                    connection.close()
                    raise
            return connection

    async def _tunnel(self, connection: _Connection) -> None:
        """CONNECT to the server through the proxy on `connection`, then TLS inside it."""
        assert connection.transport is not None and self.proxy is not None and self.tls
        where = f"{self.host}:{self.port}" if ":" not in self.host else f"[{self.host}]:{self.port}"
        lines = [f"CONNECT {where} HTTP/1.1", f"Host: {where}"]
        lines += [f"{name}: {value}" for name, value in self.proxy.headers]
        connection.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        (status, reason), _, _, _, _ = await self._answer(connection, "CONNECT")
        if status != 200:
            raise ProxyRefused(
                f"the proxy {self.proxy.url} answered {status} {reason} to CONNECT {where}"
            )
        with _tls_refusals(where):
            transport = await asyncio.get_running_loop().start_tls(
                connection.transport, connection, self.tls, server_hostname=self.host
            )
        assert isinstance(transport, asyncio.Transport)
        connection.transport = transport

    async def _answer(
        self, connection: _Connection, method: str
    ) -> tuple[tuple[int, str], bool, Headers, Body, int | None]:
        """The final answer's head (1xx interim answers skipped), its body's framing and its
        Content-Length (None when chunked or absent)."""
        while True:
            got = b""
            while True:
                data = await connection.chunk(HEAD_LIMIT)
                if not data:
                    raise connection.broken("its answer" if not got else "its answer's end")
                start = max(0, len(got) - 3)
                got += data
                end = got.find(b"\r\n\r\n", start)
                if end >= 0:
                    connection.unread(got[end + 4 :])
                    head = got[:end]
                    break
                if len(got) > HEAD_LIMIT:
                    raise BadAnswer("an answer's head over 64 KiB")
            status, keep, headers = _parse_head(head)
            if 100 <= status[0] < 200:
                if status[0] == 101:
                    raise BadAnswer("a protocol switch (101) that was not asked for")
                continue
            break
        coding = (headers.get("transfer-encoding") or "").lower()
        length = headers.get("content-length")
        if length is not None and not (length.isascii() and length.isdigit()):
            raise BadAnswer(f"a Content-Length that is not a number: {length[:40]!r}")
        size = None if length is None or coding else int(length)
        if method in ("HEAD", "CONNECT") or status[0] in (204, 304):
            return status, keep, headers, Body(connection, 0, chunked=False), size
        if coding:
            if coding.rsplit(",", 1)[-1].strip() != "chunked":
                raise BadAnswer(f"a transfer coding this client does not read: {coding}")
            return status, keep, headers, Body(connection, None, chunked=True), None
        if size is None:  # to the end of the connection, which is then closed
            return status, False, headers, Body(connection, None, chunked=False), None
        return status, keep, headers, Body(connection, size, chunked=False), size

    def give_back(self, connection: _Connection, *, keep: bool) -> None:
        if keep and not self._closed and connection.reusable:
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()
        self._slots.release()

    def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()


async def _open(host: str, port: int, tls: ssl.SSLContext | None) -> _Connection:
    """A connection to host:port (TLS with `tls`), its addresses tried in turn
    (`connect_each`: a refusal by all of them keeps its errno, so an absent server is told
    apart); failures classified."""
    loop = asyncio.get_running_loop()

    async def connect(address: str) -> _Connection:
        _, connection = await loop.create_connection(
            _Connection, address, port, ssl=tls, server_hostname=host if tls is not None else None
        )
        return connection

    with _tls_refusals(f"{host}:{port}"):
        try:
            return await connect_each(host, port, connect)
        except ssl.SSLError:
            raise  # the TLS handshake's: _tls_refusals says which
        except OSError as exc:
            raise CannotConnect(exc, f"{host}:{port}") from None


@contextlib.contextmanager
def _tls_refusals(where: str) -> Iterator[None]:
    """A TLS handshake's failure with `where` as the wire's: a certificate refused, or
    another TLS failure."""
    try:
        yield
    except ssl.SSLCertVerificationError as exc:
        raise UntrustedCertificate(
            f"the certificate of {where} was refused: {exc.verify_message}"
        ) from None
    except ssl.SSLError as exc:
        raise TLSFailed(f"TLS with {where} failed: {exc}") from None


def _split_netloc(netloc: str, default_port: int) -> tuple[str, int]:
    """Host and port of `host`, `host:port`, `[v6]` or `[v6]:port`."""
    if netloc.startswith("["):
        host, _, rest = netloc[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port = netloc.rpartition(":") if ":" in netloc else (netloc, "", "")
    return host, int(port) if port else default_port


class Wire:
    """Requests to whatever server a URL names, each server with its own pool, at most `limit`
    connections in use in all. Close it to close its idle connections (those in use close when
    their answers are released). `connect_timeout`: a bound on making a connection (None: only
    the caller's). `resend_on_stale`: see `_Pool.exchange` (off: every failure is the caller's
    to retry, counted and bounded)."""

    def __init__(
        self,
        *,
        limit: int,
        tls: ssl.SSLContext | None,
        connect_timeout: float | None,
        resend_on_stale: bool = False,
    ) -> None:
        self._resend = resend_on_stale
        self._slots = asyncio.Semaphore(limit)
        self._tls = tls
        self._connect_timeout = connect_timeout
        self._pools: dict[tuple[str, Proxy | None], _Pool] = {}

    async def request(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes = b"",
        *,
        proxy: Proxy | None = None,
    ) -> Answer:
        """Send the request (`url` already percent-encoded; `headers` as sent, Host among
        them) and answer its head; the body is read from the answer."""
        start = url.find("://") + 3
        end = len(url)
        for mark in "/?#":
            at = url.find(mark, start, end)
            if at >= 0:
                end = at
        origin, target = url[:end], url[end:].partition("#")[0]
        if not target.startswith("/"):
            target = "/" + target
        pool = self._pools.get((origin, proxy))
        if pool is None:
            pool = self._pools[(origin, proxy)] = _Pool(
                origin.lower(),
                slots=self._slots,
                tls=self._tls,
                connect_timeout=self._connect_timeout,
                proxy=proxy,
            )
        if proxy is not None and pool.tls is None:  # plain http: the proxy reads the URL
            target = url
        lines = [f"{method} {target} HTTP/1.1"]
        for name, value in headers.items():
            if "\n" in value or "\r" in value:
                raise ValueError(f"header {name} has a line break")
            lines.append(f"{name}: {value}")
        if body or method in ("PUT", "POST"):
            lines.append(f"Content-Length: {len(body)}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return await pool.exchange(head, body, method, resend=self._resend)

    def close(self) -> None:
        for pool in self._pools.values():
            pool.close()

    async def __aenter__(self) -> Wire:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
