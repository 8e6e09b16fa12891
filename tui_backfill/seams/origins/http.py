"""HTTP(S) origin: one shared aiohttp session sized to the fetch concurrency."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import urllib.parse

import aiohttp

from tui_backfill.outcomes import FatalError, NotFoundError, PermanentError, RetryableError
from tui_backfill.seams.connect_errors import connect_each, unreachable_reason
from tui_backfill.seams.origins import (
    Bandwidth,
    Fetched,
    connection_error,
    preflight_failed,
    sniff_image,
)
from tui_backfill.seams.templates import Template

_CHUNK = 64 * 1024


class HttpOrigin:
    def __init__(
        self, template: Template, *, concurrency: int, timeout: float, bandwidth: Bandwidth | None
    ) -> None:
        self._template = template
        self._timeout = timeout
        self._bandwidth = bandwidth
        self._concurrency = concurrency
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._concurrency + 2, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._timeout),
                auto_decompress=True,
                headers={"User-Agent": "tui-backfill"},
            )
            # aiohttp silently re-sends an idempotent request once when a reused connection
            # drops; the engine owns retries, so one fetch is exactly one GET at the origin.
            self._session._retry_connection = False
        return self._session

    async def fetch(self, sku: str, angle: int) -> Fetched:
        url = self._template.render_url(sku, angle)
        try:
            async with asyncio.timeout(self._timeout):
                async with self._client().get(url, allow_redirects=True) as response:
                    status = response.status
                    if status in (404, 410):
                        raise NotFoundError(f"HTTP {status}", code="noRemote")
                    if status == 429 or status >= 500:
                        raise RetryableError(
                            f"HTTP {status} {response.reason or ''}".strip(), code=f"http_{status}"
                        )
                    if status == 401:
                        raise FatalError(
                            "the origin rejected the credentials (HTTP 401); check ORIGIN_PASSWORD",
                            code="http_401",
                        )
                    if status >= 400:
                        raise PermanentError(
                            f"HTTP {status} {response.reason or ''}".strip(), code=f"http_{status}"
                        )
                    if self._bandwidth is None:
                        body = await response.read()
                    else:
                        parts = []
                        async for chunk in response.content.iter_chunked(_CHUNK):
                            await self._bandwidth.take(len(chunk))
                            parts.append(chunk)
                        body = b"".join(parts)
                    expected = response.content_length
                    if expected is not None and len(body) != expected:
                        raise RetryableError(
                            f"body {len(body)} of {expected} bytes", code="truncated"
                        )
        except TimeoutError:
            raise RetryableError(
                f"no complete answer within {self._timeout:g} s", code="timeout"
            ) from None
        except aiohttp.ClientPayloadError:
            # aiohttp's own text ("<ContentLengthError: 400, ...>") reads like an HTTP 400
            raise RetryableError(
                "truncated body: the connection closed before the whole body arrived",
                code="truncated",
            ) from None
        except aiohttp.ClientConnectorError as exc:  # no connection was made at all
            message = f"connection: {exc.__class__.__name__}: {exc}"
            raise connection_error(exc.os_error, message) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, ConnectionError) as exc:
            raise RetryableError(
                f"connection: {exc.__class__.__name__}: {exc}", code="connection"
            ) from None
        except aiohttp.ClientResponseError as exc:
            raise RetryableError(f"bad response: {exc.message}", code="connection") from None
        except aiohttp.ClientError as exc:
            raise RetryableError(f"{exc.__class__.__name__}: {exc}", code="connection") from None
        return Fetched(body, sniff_image(body))

    async def preflight(self) -> None:
        """Resolve the host and open one TCP connection (TLS too for https), then close it.

        No request is sent, so no object is fetched and nothing is counted at the origin. Only
        an absent origin (refused, not found, no route) or a certificate the client would reject
        on every fetch fails here; a slow handshake is left to the run's own timeouts.
        """
        parts = urllib.parse.urlsplit(self._template.text)
        host = parts.hostname
        if not host or "{" in host:
            return  # the host depends on the SKU: nothing to reach before there is one
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise preflight_failed(self._template.text, "the port must be 1-65535") from None
        context = ssl.create_default_context() if parts.scheme == "https" else None

        async def connect(address: str) -> asyncio.StreamWriter:
            _, writer = await asyncio.open_connection(
                address, port, ssl=context, server_hostname=host if context else None
            )
            return writer

        try:
            async with asyncio.timeout(self._timeout):
                writer = await connect_each(host, port, connect)
        except TimeoutError:
            return
        except ssl.SSLCertVerificationError as exc:
            raise preflight_failed(self._template.text, f"TLS: {exc.verify_message}") from None
        except OSError as exc:
            reason = unreachable_reason(exc)
            if reason is None:
                return
            raise preflight_failed(self._template.text, f"{host}:{port}: {reason}") from None
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
