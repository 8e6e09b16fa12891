"""Origins: where objects come from. One seam per protocol, one classification of failures.

Every origin returns a `Fetched` (bytes and content type) or raises a classified error from
`tui_backfill.outcomes`: NotFoundError (noRemote, never retried), RetryableError (timeout,
connection, http_5xx, truncated, bad_content), PermanentError (other 4xx). An absent origin
(connection refused, host not found, no route) raises OriginUnreachable: code `connection`
like any connection error, but marked `unreachable`, because an origin that is not there fails
every item alike and a run should stop rather than walk past them all.

`preflight()` finds an absent origin before any work: it raises ConfigError naming `--origin`.
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from tui_backfill.outcomes import ConfigError, OriginUnreachable, RetryableError
from tui_backfill.seams.connect_errors import unreachable_reason
from tui_backfill.seams.templates import Template, origin_template
from tui_backfill.seams.urls import redact_url

_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"WEBP", 8, "image/webp"),
    (b"ftypavif", 4, "image/avif"),
)


@dataclass(frozen=True, slots=True)
class Fetched:
    body: bytes
    content_type: str


def sniff_image(body: bytes) -> str:
    """The content type of an image body; RetryableError('bad_content') for anything else."""
    if not body:
        raise RetryableError("empty body", code="bad_content")
    for magic, offset, content_type in _MAGIC:
        if body[offset : offset + len(magic)] == magic:
            return content_type
    head = body[:64].lstrip().lower()
    what = "an HTML page" if head.startswith((b"<!doctype", b"<html")) else "not an image"
    raise RetryableError(f"body is {what} ({len(body)} bytes)", code="bad_content")


@dataclass(frozen=True, slots=True)
class S3Access:
    """How to reach an `s3://` origin's service (its credentials come from the environment,
    see tui_backfill.seams.origins.s3)."""

    endpoint_url: str | None = None
    region: str | None = None
    path_style: bool = False
    profile: str | None = None


class Origin(Protocol):
    async def fetch(self, sku: str, angle: int) -> Fetched: ...

    async def preflight(self) -> None:
        """Reach the origin without fetching an object; ConfigError('--origin') if absent."""
        ...

    async def close(self) -> None: ...


def connection_error(exc: BaseException, message: str) -> RetryableError:
    """The error for a failed connection: OriginUnreachable when nothing is there to answer,
    a plain `connection` error (a fault of an origin that is there) otherwise."""
    reason = unreachable_reason(exc)
    if reason is None:
        return RetryableError(message, code="connection")
    return OriginUnreachable(f"{message} ({reason})")


def preflight_failed(url: str, reason: str) -> ConfigError:
    """The preflight's one-line error: the origin as given (password hidden) and why."""
    return ConfigError("--origin", f"{redact_url(url)}: {reason}")


async def preflight_origin(
    url: str,
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    s3: S3Access | None = None,
) -> None:
    """Preflight the origin of a URL template on a throwaway origin, closed again at once, so
    the caller can check before it creates a run and opens the run's own origin."""
    origin = open_origin(url, concurrency=1, timeout=timeout, env=env, s3=s3)
    try:
        await origin.preflight()
    finally:
        await origin.close()


class Bandwidth:
    """A token bucket shared by all fetches: `--max-bandwidth` bytes per second."""

    def __init__(self, rate: int) -> None:
        self._rate = rate
        self._allowance = float(rate)
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, nbytes: int) -> None:
        async with self._lock:
            now = time.monotonic()
            self._allowance = min(self._rate, self._allowance + (now - self._stamp) * self._rate)
            self._stamp = now
            self._allowance -= nbytes
            if self._allowance < 0:
                await asyncio.sleep(-self._allowance / self._rate)


def open_origin(
    url: str,
    *,
    concurrency: int,
    timeout: float,
    bandwidth: int | None = None,
    env: Mapping[str, str] | None = None,
    s3: S3Access | None = None,
) -> Origin:
    """Build the origin for a URL template (validated by config beforehand)."""
    env = os.environ if env is None else env
    template: Template = origin_template(url)
    limiter = Bandwidth(bandwidth) if bandwidth else None
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme in ("http", "https"):
        from tui_backfill.seams.origins.http import HttpOrigin

        return HttpOrigin(template, concurrency=concurrency, timeout=timeout, bandwidth=limiter)
    if scheme == "ftp":
        from tui_backfill.seams.origins.ftp import FtpOrigin

        return FtpOrigin(
            template, concurrency=concurrency, timeout=timeout, bandwidth=limiter, env=env
        )
    if scheme == "file":
        from tui_backfill.seams.origins.local import FileOrigin

        return FileOrigin(template, timeout=timeout)
    if scheme == "s3":
        from tui_backfill.seams.origins.s3 import S3Origin

        return S3Origin(
            template,
            access=s3 or S3Access(),
            concurrency=concurrency,
            timeout=timeout,
            bandwidth=limiter,
            env=env,
        )
    raise ConfigError("--origin", f"scheme {scheme!r} is not supported")
