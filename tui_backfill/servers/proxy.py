"""A counting, fault-injecting aiohttp reverse proxy for S3 servers and for the origin.

Every request is forwarded unchanged to ``upstream_url``: same method, raw path and query,
headers (minus hop-by-hop ones and ``Expect``) and body, with the ``Host`` header exactly as the
client sent it, because SigV4 signs it. Bodies are neither decompressed nor re-chunked.
``s3=True`` (the default) reads paths as path-style S3 requests (``/bucket/key``); ``s3=False``
puts it in front of any HTTP server, such as the origin: a path is an object
(``GET /100000_1`` is ``get_object`` of ``"100000_1"``) and error answers are plain text.

Counters, for assertions such as "no key was PUT twice":

- ``puts``: Counter of ``"bucket/key"`` for PUTs of objects that the upstream answered 2xx;
- ``put_answers``: Counter of (``"bucket/key"``, status) for every object PUT the upstream
  answered, whatever the status (2xx, 412 ``PreconditionFailed``, ...); injected faults never
  reach the upstream and are not in it;
- ``lost_puts``: Counter of ``"bucket/key"``: 2xx PUT answers the proxy destroyed itself
  (``reset``, ``truncate``): the object is written, the client never hears so. The one
  legitimate cause of a second successful PUT of a key by a client that retries;
- ``undelivered_puts``: Counter of ``"bucket/key"``: 2xx PUT answers the client was no longer
  there to read (it timed out, or was killed) — lost in transit, but not by the proxy;
- ``requests``: Counter of (method, kind), kind one of ``head_object``, ``get_object``,
  ``put_object``, ``list``, ``head_bucket``, ``other``;
- ``forwarded``: Counter of kinds sent to the upstream;
- ``statuses``: Counter of (kind, status) as answered to the client;
- ``injected``: Counter of injected faults by kind (the names below);
- ``peak_in_flight``: Counter of kinds: the most requests of that kind the proxy was handling
  at once (from the request's arrival to its answer's end).

Faults (:class:`ProxyFaults`, mutable as ``proxy.faults``), all off by default. The rates apply
to the kinds in ``faults.kinds``; one random draw per request decides among the faults before
forwarding, and another among those after it (no draw when their rates are all 0):

- before forwarding (nothing reaches the upstream): ``slowdown_rate`` answers 503 ``SlowDown``
  (S3 XML); ``error_rate`` answers 500 ``InternalError`` or 503 ``ServiceUnavailable``;
  ``drop_rate`` closes the connection without an answer; ``stall_rate`` holds the request
  ``stall_seconds`` (past the client's timeout) and forwards it only if the client still waits;
  ``fail_first_n_puts`` answers the first N PUTs of each object key with ``SlowDown``;
  ``reject_conditional`` answers every PUT with ``If-None-Match`` 501 ``NotImplemented`` (a
  server without conditional writes);
  ``latency`` delays every request;
- after the upstream answered: ``reset_rate`` drops the connection instead of answering (a PUT
  is written but its answer lost); ``truncate_rate`` announces the full ``Content-Length``,
  sends half the body and closes (answers without a body are left alone).

A request whose client has gone by the time it would be forwarded (it timed out during a stall
or the latency, or was killed) is never forwarded: counted in ``abandoned``.
"""

from __future__ import annotations

import asyncio
import collections
import random
import ssl
import urllib.parse
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, NoReturn, Self

import aiohttp
import yarl
from aiohttp import web
from multidict import CIMultiDict

__all__ = ["SLOWDOWN_XML", "ProxyFaults", "ReverseProxy", "S3Proxy", "classify"]

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Connection",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Expect",
    )
)


def _s3_error_xml(code: str, message: str) -> bytes:
    return (
        b'<?xml version="1.0" encoding="UTF-8"?>\n'
        + f"<Error><Code>{code}</Code><Message>{message}</Message>".encode()
        + b"<RequestId>tui-backfill-proxy</RequestId></Error>"
    )


SLOWDOWN_XML = _s3_error_xml("SlowDown", "Please reduce your request rate.")
_ERRORS = {
    500: ("InternalError", "We encountered an internal error. Please try again."),
    503: ("ServiceUnavailable", "Please reduce your request rate."),
}

KINDS = ("head_object", "get_object", "put_object", "list", "head_bucket", "other")
_OBJECT_KINDS = {"HEAD": "head_object", "GET": "get_object", "PUT": "put_object"}


def classify(method: str, path: str) -> tuple[str, str | None]:
    """(kind, "bucket/key" or None) of a path-style S3 request."""
    bucket, _, key = path.lstrip("/").partition("/")
    if not bucket:
        return "other", None
    if not key:
        if method == "GET":
            return "list", None
        if method == "HEAD":
            return "head_bucket", None
        return "other", None
    object_path = f"{bucket}/{key}"
    return _OBJECT_KINDS.get(method, "other"), object_path


def classify_http(method: str, path: str) -> tuple[str, str | None]:
    """(kind, object) of a request to a plain HTTP server: the path names the object."""
    name = path.lstrip("/")
    return _OBJECT_KINDS.get(method, "other"), name or None


@dataclass
class ProxyFaults:
    """Fault settings, all off by default; ``kinds`` limits the rate-based faults to some kinds."""

    slowdown_rate: float = 0.0
    kinds: set[str] = field(default_factory=lambda: set(KINDS))
    fail_first_n_puts: int = 0
    latency: float = 0.0
    reset_rate: float = 0.0
    error_rate: float = 0.0
    drop_rate: float = 0.0
    stall_rate: float = 0.0
    stall_seconds: float = 30.0
    truncate_rate: float = 0.0
    reject_conditional: bool = False


class ReverseProxy:
    """Reverse proxy on 127.0.0.1 (port 0 by default) in front of ``upstream_url``.

    ``endpoint_url`` (``http://127.0.0.1:PORT``) is set by ``start()``.
    """

    def __init__(
        self,
        upstream_url: str,
        faults: ProxyFaults | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        s3: bool = True,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.ssl_context = ssl_context  # serve HTTPS with it (the upstream stays as given)
        self.faults = faults if faults is not None else ProxyFaults()
        self.host = host
        self.port = port
        self.s3 = s3
        self.rng = random.Random(seed)
        self.puts: collections.Counter[str] = collections.Counter()
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.statuses: collections.Counter[tuple[str, int]] = collections.Counter()
        self.put_answers: collections.Counter[tuple[str, int]] = collections.Counter()
        self.lost_puts: collections.Counter[str] = collections.Counter()
        self.undelivered_puts: collections.Counter[str] = collections.Counter()
        self.forwarded: collections.Counter[str] = collections.Counter()
        self.abandoned: collections.Counter[str] = collections.Counter()
        self.injected: collections.Counter[str] = collections.Counter()
        self.peak_in_flight: collections.Counter[str] = collections.Counter()
        self._in_flight: collections.Counter[str] = collections.Counter()
        self._put_attempts: collections.Counter[str] = collections.Counter()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.endpoint_url = ""

    def _counters(self) -> tuple[collections.Counter[Any], ...]:
        return (
            self.puts,
            self.put_answers,
            self.lost_puts,
            self.undelivered_puts,
            self.requests,
            self.forwarded,
            self.abandoned,
            self.statuses,
            self.injected,
            self.peak_in_flight,
            self._put_attempts,
        )

    def reset_counters(self) -> None:
        for counter in self._counters():
            counter.clear()

    def count(self, kind: str) -> int:
        """Requests of ``kind`` whatever the method."""
        return sum(n for (_, k), n in self.requests.items() if k == kind)

    def stats(self) -> dict[str, Any]:
        """The counters as plain data (for reports)."""
        return {
            "requests": sum(self.requests.values()),
            "forwarded": dict(self.forwarded),
            "abandoned": dict(self.abandoned),
            "injected": dict(self.injected),
            "puts": sum(self.puts.values()),
            "lostPuts": sum(self.lost_puts.values()),
            "undeliveredPuts": sum(self.undelivered_puts.values()),
        }

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> Self:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=False),
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{path:.*}", self._handle)
        self._runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        scheme = "https" if self.ssl_context is not None else "http"
        self.endpoint_url = f"{scheme}://{self.host}:{self.port}"
        return self

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- faults ------------------------------------------------------------------------
    def _draw(self, *choices: tuple[str, float]) -> str | None:
        """One random draw among faults with rates (no draw when all rates are 0)."""
        if sum(rate for _, rate in choices) <= 0:
            return None
        draw = self.rng.random()
        for name, rate in choices:
            if draw < rate:
                return name
            draw -= rate
        return None

    def _slowdown(self, kind: str, fault: str) -> web.Response:
        self.injected[fault] += 1
        self.statuses[(kind, 503)] += 1
        if not self.s3:
            return web.Response(status=503, text="slow down\n", headers={"Retry-After": "0"})
        return web.Response(
            status=503,
            body=SLOWDOWN_XML,
            content_type="application/xml",
            headers={"Retry-After": "0"},
        )

    def _error(self, kind: str) -> web.Response:
        self.injected["error"] += 1
        status = self.rng.choice((500, 503))
        self.statuses[(kind, status)] += 1
        if not self.s3:
            return web.Response(status=status, text=f"injected {status}\n")
        return web.Response(
            status=status, body=_s3_error_xml(*_ERRORS[status]), content_type="application/xml"
        )

    @staticmethod
    def _client_gone(request: web.Request) -> bool:
        transport = request.transport
        return transport is None or transport.is_closing()

    @staticmethod
    def _abort(request: web.Request) -> NoReturn:
        """Close the client's connection at once; nothing more is written."""
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError

    # -- forwarding --------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        decoded_path = urllib.parse.unquote(request.raw_path.partition("?")[0])
        kind, object_path = (classify if self.s3 else classify_http)(request.method, decoded_path)
        self.requests[(request.method, kind)] += 1
        self._in_flight[kind] += 1
        self.peak_in_flight[kind] = max(self.peak_in_flight[kind], self._in_flight[kind])
        try:
            return await self._answer(request, kind, object_path)
        finally:
            self._in_flight[kind] -= 1

    async def _answer(
        self, request: web.Request, kind: str, object_path: str | None
    ) -> web.StreamResponse:
        assert self._session is not None
        method = request.method
        faults = self.faults
        try:
            body = await request.read()
        except (ConnectionError, aiohttp.ClientError):  # the client went away mid-request
            self.abandoned[kind] += 1
            self._abort(request)
        if faults.latency > 0:
            await asyncio.sleep(faults.latency)
        put_path = object_path if kind == "put_object" else None
        if put_path is not None:
            self._put_attempts[put_path] += 1
            if self._put_attempts[put_path] <= faults.fail_first_n_puts:
                return self._slowdown(kind, "fail_first_n_puts")
            if faults.reject_conditional and "If-None-Match" in request.headers:
                self.injected["reject_conditional"] += 1
                self.statuses[(kind, 501)] += 1
                return web.Response(
                    status=501,
                    body=_s3_error_xml("NotImplemented", "A header you provided is not supported."),
                    content_type="application/xml",
                )
        faulty = kind in faults.kinds
        if faulty:
            before = self._draw(
                ("slowdown", faults.slowdown_rate),
                ("error", faults.error_rate),
                ("drop", faults.drop_rate),
                ("stall", faults.stall_rate),
            )
            if before == "slowdown":
                return self._slowdown(kind, "slowdown")
            if before == "error":
                return self._error(kind)
            if before == "drop":
                self.injected["drop"] += 1
                self._abort(request)
            if before == "stall":
                self.injected["stall"] += 1
                await asyncio.sleep(faults.stall_seconds)
        if self._client_gone(request):
            self.abandoned[kind] += 1  # never forwarded: the upstream sees nothing
            self._abort(request)

        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
        )
        if body or "Content-Length" in request.headers:
            headers["Content-Length"] = str(len(body))
        url = yarl.URL(self.upstream_url + request.raw_path, encoded=True)
        self.forwarded[kind] += 1
        try:
            async with self._session.request(
                method,
                url,
                headers=headers,
                data=body if body else None,
                skip_auto_headers=("Accept-Encoding", "User-Agent", "Content-Type", "Accept"),
                allow_redirects=False,
                auto_decompress=False,
            ) as upstream:
                payload = await upstream.read()
                status = upstream.status
                out_headers = CIMultiDict(
                    (k, v)
                    for k, v in upstream.headers.items()
                    if k.lower() not in HOP_BY_HOP and k.lower() != "content-length"
                )
                upstream_length = upstream.headers.get("Content-Length")
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.statuses[(kind, 502)] += 1
            return web.Response(status=502, text=f"proxy: upstream failed: {exc!r}\n")

        written = put_path is not None and 200 <= status < 300
        if put_path is not None:
            self.put_answers[(put_path, status)] += 1
            if written:
                self.puts[put_path] += 1
        has_body = method != "HEAD" and status not in (204, 304) and not 100 <= status < 200
        if faulty:
            after = self._draw(
                ("reset", faults.reset_rate),
                ("truncate", faults.truncate_rate if has_body and len(payload) >= 2 else 0.0),
            )
            if after is not None:
                self.injected[after] += 1
                if written:
                    assert put_path is not None
                    self.lost_puts[put_path] += 1
                if after == "reset":
                    self._abort(request)
                return await self._truncated(request, status, upstream.reason, out_headers, payload)
        if written and self._client_gone(request):
            assert put_path is not None
            self.undelivered_puts[put_path] += 1
        self.statuses[(kind, status)] += 1

        response = web.StreamResponse(status=status, reason=upstream.reason, headers=out_headers)
        if not has_body:
            # no body: keep the upstream's Content-Length (a HEAD's object size) if any
            if upstream_length is not None:
                response.headers["Content-Length"] = upstream_length
            await response.prepare(request)
            return response
        response.content_length = len(payload)
        await response.prepare(request)
        await response.write(payload)
        await response.write_eof()
        return response

    async def _truncated(
        self,
        request: web.Request,
        status: int,
        reason: str | None,
        headers: CIMultiDict[str],
        payload: bytes,
    ) -> NoReturn:
        """The full Content-Length announced, half the body sent, the connection closed."""
        response = web.StreamResponse(status=status, reason=reason, headers=headers)
        response.content_length = len(payload)
        await response.prepare(request)
        await response.write(payload[: len(payload) // 2])
        await asyncio.sleep(0)
        if request.transport is not None:
            request.transport.close()
        raise asyncio.CancelledError


S3Proxy = ReverseProxy
