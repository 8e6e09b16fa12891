"""Origins: where objects come from. One seam per protocol, one classification of failures.

Every origin returns a `Fetched` (bytes and content type) or raises a classified error from
`tui_backfill.outcomes`: NotFoundError (noRemote, never retried), RetryableError (timeout,
connection, http_5xx, truncated, bad_content), PermanentError (other 4xx).
"""

from __future__ import annotations

import asyncio
import os
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from tui_backfill.outcomes import ConfigError, RetryableError
from tui_backfill.seams.templates import Template, origin_template

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


class Origin(Protocol):
    async def fetch(self, sku: str, angle: int) -> Fetched: ...

    async def close(self) -> None: ...


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
    raise ConfigError("--origin", f"scheme {scheme!r} is not supported")
