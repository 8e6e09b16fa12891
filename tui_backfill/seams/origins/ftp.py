"""FTP origin through aioftp: a small pool of logged-in clients, one per fetch slot.

Credentials come from the URL (`ftp://user:pass@host/...`) or from ORIGIN_USERNAME /
ORIGIN_PASSWORD; they are never logged. FTP 550 is noRemote; 4xx replies are retryable.
"""

from __future__ import annotations

import asyncio
import contextlib
import urllib.parse
from collections.abc import Mapping

import aioftp

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


def ftp_credentials(url: str, env: Mapping[str, str]) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    user = (
        urllib.parse.unquote(parts.username)
        if parts.username
        else env.get("ORIGIN_USERNAME", "anonymous")
    )
    password = (
        urllib.parse.unquote(parts.password) if parts.password else env.get("ORIGIN_PASSWORD", "")
    )
    return user, password


class FtpOrigin:
    def __init__(
        self,
        template: Template,
        *,
        concurrency: int,
        timeout: float,
        bandwidth: Bandwidth | None,
        env: Mapping[str, str],
    ) -> None:
        self._template = template
        self._timeout = timeout
        self._bandwidth = bandwidth
        parts = urllib.parse.urlsplit(template.text.replace("{", "%7B").replace("}", "%7D"))
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 21
        self._user, self._password = ftp_credentials(template.text, env)
        self._idle: asyncio.LifoQueue[aioftp.Client] = asyncio.LifoQueue()
        self._slots = asyncio.Semaphore(concurrency)

    async def _open(self, address: str) -> aioftp.Client:
        """A client with its control connection open to one address of the host."""
        client = aioftp.Client(socket_timeout=self._timeout, connection_timeout=self._timeout)
        try:
            await client.connect(address, self._port)
        except BaseException:
            client.close()
            raise
        return client

    async def _login(self, client: aioftp.Client) -> None:
        """Log in; a rejected login (530) is fatal for the run, never one error per item."""
        try:
            await client.login(self._user, self._password)
        except aioftp.StatusCodeError as exc:
            client.close()
            if "530" in {str(code) for code in exc.received_codes}:
                raise FatalError(
                    "FTP login rejected (530); check ORIGIN_USERNAME/ORIGIN_PASSWORD",
                    code="ftp_login",
                ) from None
            raise

    async def _connect(self) -> aioftp.Client:
        """A logged-in client. Only here, on the control connection, does a refusal mean the
        origin is absent (OriginUnreachable); a refused data connection is a server's fault."""
        try:
            client = await connect_each(self._host, self._port, self._open)
        except TimeoutError:
            raise
        except OSError as exc:
            raise connection_error(exc, f"connection: {exc.__class__.__name__}") from None
        await self._login(client)
        return client

    async def preflight(self) -> None:
        """Connect and log in once, then quit, before any run exists.

        Only an absent server fails (ConfigError naming --origin, credentials never shown). A
        rejected login is left to the run, which stops at its first fetch (exit 3) and can be
        resumed once fixed; slow answers and other faults are left to the run's retries.
        """
        try:
            async with asyncio.timeout(self._timeout):
                client = await connect_each(self._host, self._port, self._open)
        except TimeoutError:
            return
        except OSError as exc:
            reason = unreachable_reason(exc)
            if reason is None:
                return
            where = f"{self._host}:{self._port}: {reason}"
            raise preflight_failed(self._template.text, where) from None
        try:
            async with asyncio.timeout(self._timeout):
                await self._login(client)
                await client.quit()
        except (FatalError, TimeoutError, OSError, aioftp.AIOFTPException):
            return
        finally:
            self._discard(client)

    async def fetch(self, sku: str, angle: int) -> Fetched:
        path = urllib.parse.unquote(
            urllib.parse.urlsplit(self._template.render_url(sku, angle)).path
        )
        async with self._slots:
            client = self._idle.get_nowait() if not self._idle.empty() else None
            try:
                async with asyncio.timeout(self._timeout):
                    if client is None:
                        client = await self._connect()
                    parts = []
                    async with client.download_stream(path) as stream:
                        async for block in stream.iter_by_block():
                            if self._bandwidth is not None:
                                await self._bandwidth.take(len(block))
                            parts.append(block)
                body = b"".join(parts)
            except aioftp.StatusCodeError as exc:
                codes = {str(code) for code in exc.received_codes}
                self._release(client)
                if "550" in codes:
                    raise NotFoundError(f"FTP 550 for {path}", code="noRemote") from None
                code = sorted(codes)[0] if codes else "ftp"
                if code.startswith("4"):
                    raise RetryableError(f"FTP {code}", code=f"ftp_{code}") from None
                raise PermanentError(f"FTP {code}", code=f"ftp_{code}") from None
            except TimeoutError:
                self._discard(client)
                raise RetryableError(
                    f"no complete answer within {self._timeout:g} s", code="timeout"
                ) from None
            except (OSError, ConnectionError, aioftp.AIOFTPException) as exc:
                self._discard(client)
                raise RetryableError(
                    f"connection: {exc.__class__.__name__}", code="connection"
                ) from None
            except BaseException:  # cancelled (pause, second signal) or unexpected: never leak
                self._discard(client)
                raise
            self._release(client)
        return Fetched(body, sniff_image(body))

    def _release(self, client: aioftp.Client | None) -> None:
        if client is not None:
            self._idle.put_nowait(client)

    @staticmethod
    def _discard(client: aioftp.Client | None) -> None:
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    async def close(self) -> None:
        while not self._idle.empty():
            client = self._idle.get_nowait()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await client.quit()
            self._discard(client)
