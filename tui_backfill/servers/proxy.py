"""A counting, fault-injecting aiohttp reverse proxy for S3 servers (and the origin).

Every request is forwarded unchanged to ``upstream_url``: same method, raw path and query,
headers (minus hop-by-hop ones and ``Expect``) and body, with the ``Host`` header exactly as the
client sent it, because SigV4 signs it. Bodies are neither decompressed nor re-chunked.

Counters, for assertions such as "no key was PUT twice":

- ``puts``: Counter of ``"bucket/key"`` for PUTs of objects that the upstream answered 2xx;
- ``requests``: Counter of (method, kind), kind one of ``head_object``, ``get_object``,
  ``put_object``, ``list``, ``head_bucket``, ``other``;
- ``statuses``: Counter of (kind, status) as answered to the client;
- ``injected``: Counter of injected faults by kind.

Faults (:class:`ProxyFaults`, mutable as ``proxy.faults``): ``slowdown_rate`` answers 503
``SlowDown`` (S3 XML) instead of forwarding; ``fail_first_n_puts`` answers the first N PUTs of
each object key with ``SlowDown``; ``latency`` delays every request; ``reset_rate`` drops the
connection after the upstream answered a PUT (the object is written but the answer is lost).
"""

from __future__ import annotations

import asyncio
import collections
import random
import urllib.parse
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

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

SLOWDOWN_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    b"<RequestId>tui-backfill-proxy</RequestId></Error>"
)

KINDS = ("head_object", "get_object", "put_object", "list", "head_bucket", "other")


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
    kind = {"HEAD": "head_object", "GET": "get_object", "PUT": "put_object"}.get(method, "other")
    return kind, object_path


@dataclass
class ProxyFaults:
    """Fault settings, all off by default; ``kinds`` limits ``slowdown_rate`` to some kinds."""

    slowdown_rate: float = 0.0
    kinds: set[str] = field(default_factory=lambda: set(KINDS))
    fail_first_n_puts: int = 0
    latency: float = 0.0
    reset_rate: float = 0.0


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
    ) -> None:
        self.upstream_url = upstream_url.rstrip("/")
        self.faults = faults if faults is not None else ProxyFaults()
        self.host = host
        self.port = port
        self.rng = random.Random(seed)
        self.puts: collections.Counter[str] = collections.Counter()
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.statuses: collections.Counter[tuple[str, int]] = collections.Counter()
        self.injected: collections.Counter[str] = collections.Counter()
        self._put_attempts: collections.Counter[str] = collections.Counter()
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.endpoint_url = ""

    def reset_counters(self) -> None:
        for counter in (self.puts, self.requests, self.statuses, self.injected):
            counter.clear()
        self._put_attempts.clear()

    def count(self, kind: str) -> int:
        """Requests of ``kind`` whatever the method."""
        return sum(n for (_, k), n in self.requests.items() if k == kind)

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
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.endpoint_url = f"http://{self.host}:{self.port}"
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

    # -- forwarding --------------------------------------------------------------------
    def _slowdown(self, kind: str, fault: str) -> web.Response:
        self.injected[fault] += 1
        self.statuses[(kind, 503)] += 1
        return web.Response(
            status=503,
            body=SLOWDOWN_XML,
            content_type="application/xml",
            headers={"Retry-After": "0"},
        )

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        method = request.method
        decoded_path = urllib.parse.unquote(request.raw_path.partition("?")[0])
        kind, object_path = classify(method, decoded_path)
        self.requests[(method, kind)] += 1
        faults = self.faults
        if faults.latency > 0:
            await asyncio.sleep(faults.latency)
        if kind == "put_object" and object_path is not None:
            self._put_attempts[object_path] += 1
            if self._put_attempts[object_path] <= faults.fail_first_n_puts:
                await request.read()
                return self._slowdown(kind, "fail_first_n_puts")
        if faults.slowdown_rate > 0 and kind in faults.kinds:
            if self.rng.random() < faults.slowdown_rate:
                await request.read()
                return self._slowdown(kind, "slowdown")

        headers = CIMultiDict(
            (k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP
        )
        body = await request.read()
        if body or "Content-Length" in request.headers:
            headers["Content-Length"] = str(len(body))
        url = yarl.URL(self.upstream_url + request.raw_path, encoded=True)
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

        if kind == "put_object" and object_path is not None and 200 <= status < 300:
            self.puts[object_path] += 1
            if faults.reset_rate > 0 and self.rng.random() < faults.reset_rate:
                self.injected["reset"] += 1
                if request.transport is not None:
                    request.transport.abort()
                raise asyncio.CancelledError
        self.statuses[(kind, status)] += 1

        response = web.StreamResponse(status=status, reason=upstream.reason, headers=out_headers)
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
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


S3Proxy = ReverseProxy
