"""The publishing worker's download: one source image from the RAID publishing endpoint.

``GET <endpoint>?key=<source_key>`` with ``Authorization: Bearer <secret>`` (the endpoint may
carry its own query string; `key` is added to it, URL-encoded). The body is streamed into
memory with a cap, and every failure is classified so the worker never parses text:

- Content-Length over `max_bytes`: MediaError `too_large` (permanent), before reading a byte of
  the body; a body without Content-Length that grows past the cap: the same, reading stops;
- fewer bytes than the Content-Length said (or the connection closed mid-body): RetryableError
  `truncated`;
- 404 / 410: NotFoundError (`noRemote`; the worker fails the job permanently);
- 401 / 403: FatalError `auth` (the secret is wrong for every job alike);
- 429 and 5xx: RetryableError `http_<status>`; other 4xx: PermanentError `http_<status>`;
- no answer's head within `timeout`, or no data for `timeout` between chunks: RetryableError
  `timeout`. A large body that keeps flowing is never cut off as a whole, but one that
  trickles (a byte now and then, never idle for `timeout`) would hold its download slot for
  hours: with `min_rate`, each `timeout` of the body (consecutive windows from its first
  chunk) must bring at least `min_rate` bytes a second on average, else RetryableError
  `timeout` too; a body that has all arrived is kept;
- connection refused, reset, DNS: RetryableError `connection` (OriginUnreachable when nothing
  is there to answer, as the origins classify it);
- redirects (301, 302, 303, 307, 308) followed, up to MAX_REDIRECTS, the secret sent on only
  to the endpoint's own server; more, or to a URL that is not http(s): PermanentError
  `redirect`.

The secret is sent only in the header: it is never in a URL, and every message is scrubbed of
it before it leaves, whatever the transport library wrote.
"""

from __future__ import annotations

import asyncio
import functools
import io
import ssl
import urllib.parse

from tui_backfill import __version__
from tui_backfill.outcomes import (
    BackfillError,
    FatalError,
    NotFoundError,
    PermanentError,
    RetryableError,
)
from tui_backfill.seams.http1 import Answer, CannotConnect, TruncatedBody, Wire
from tui_backfill.seams.media.errors import MediaError, MediaErrorCode
from tui_backfill.seams.origins import connection_error

__all__ = ["CHUNK", "DEFAULT_MAX_SOURCE_BYTES", "download_source", "source_session", "source_url"]

CHUNK = 256 * 1024
DEFAULT_MAX_SOURCE_BYTES = 200 * 1024 * 1024
MAX_REDIRECTS = 5  # followed, as a browser or aiohttp would (aiohttp: 10)
_REDIRECTS = (301, 302, 303, 307, 308)


_USER_AGENT = f"tui-backfill/{__version__}"


def source_session(*, connections: int) -> Wire:
    """What sources are downloaded with (seams/http1's wire: a fraction of aiohttp's CPU a
    request, on the loop the image threads share the cores with), at most `connections` at
    once, https verified with the system's CAs; a GET whose kept-alive connection the server
    had closed is sent again on a new one (a GET changes nothing). It bounds no request as a
    whole (a large source that keeps arriving over a slow link is never cut off);
    `download_source` bounds the wait for the answer's head and every gap between chunks
    instead. Close it (`async with`)."""
    return Wire(limit=connections, tls=_tls(), connect_timeout=None, resend_on_stale=True)


@functools.cache
def _tls() -> ssl.SSLContext:
    return ssl.create_default_context()


@functools.lru_cache(maxsize=8)
def _host_of(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc.rpartition("@")[2]


def source_url(endpoint: str, key: str) -> str:
    """`endpoint` with ``key=<key>`` added to its query (kept, whatever it holds), encoded."""
    around = _around_key(endpoint)
    if around is None:
        return _source_url(endpoint, key)
    return around[0] + urllib.parse.quote(key, safe="") + around[1]


def _source_url(endpoint: str, key: str) -> str:
    parts = urllib.parse.urlsplit(endpoint)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query = [(name, value) for name, value in query if name != "key"] + [("key", key)]
    encoded = urllib.parse.urlencode(query, quote_via=urllib.parse.quote, safe="")
    return urllib.parse.urlunsplit(parts._replace(query=encoded))


_MARK = "tuibackfillsourcekey"  # unreserved characters: `quote` leaves it as it is


@functools.lru_cache(maxsize=8)
def _around_key(endpoint: str) -> tuple[str, str] | None:
    """The endpoint's URL before and after the encoded key, parsed once an endpoint (a job's
    download then costs one `quote`); None when the mark is in the endpoint itself."""
    before, mark, after = _source_url(endpoint, _MARK).partition(_MARK)
    if not mark or _MARK in before or _MARK in after:
        return None
    return before, after


async def download_source(
    session: Wire,
    endpoint: str,
    key: str,
    secret: str,
    *,
    max_bytes: int,
    timeout: float,
    min_rate: float = 0.0,
) -> bytes:
    """The bytes of source image `key` (see the module docstring for every failure)."""
    try:
        url = source_url(endpoint, key)
        return await _download(session, url, key, secret, max_bytes, timeout, min_rate)
    except BackfillError as exc:
        if secret and secret in str(exc):
            exc.args = (str(exc).replace(secret, "***"),)
        raise


async def _download(
    session: Wire,
    url: str,
    key: str,
    secret: str,
    max_bytes: int,
    timeout: float,
    min_rate: float,
) -> bytes:
    what = f"source {key!r}"
    headers = {
        "Host": _host_of(url),
        "Authorization": f"Bearer {secret}",
        "User-Agent": _USER_AGENT,
        "Accept-Encoding": "identity",  # the image's own bytes, never a compressed copy
    }
    for _ in range(MAX_REDIRECTS + 1):
        response = await _ask(session, url, headers, what, timeout)
        location = response.headers.get("location")
        if response.status not in _REDIRECTS or not location:
            break
        response.close()  # its body is not wanted
        target = urllib.parse.urljoin(url, location)
        if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
            raise PermanentError(
                f"{what}: redirected to a URL that is not http(s)", code="redirect"
            )
        if _origin(target) != _origin(url):  # the secret stays with the endpoint's server
            headers = {name: value for name, value in headers.items() if name != "Authorization"}
        url, headers["Host"] = target, _host_of(target)
    else:
        raise PermanentError(f"{what}: more than {MAX_REDIRECTS} redirects", code="redirect")

    try:
        _check_status(response.status, response.reason, what)
        expected = response.content_length
        if expected is not None and expected > max_bytes:
            raise MediaError(
                f"{what}: {expected:,} bytes, over the limit of {max_bytes:,}",
                MediaErrorCode.TOO_LARGE,
            )
        body = await _read_body(response, what, expected, max_bytes, timeout, min_rate)
    except BaseException:
        response.close()  # drop the connection: the rest of the body is not wanted
        raise
    response.release()
    return body


async def _ask(
    session: Wire, url: str, headers: dict[str, str], what: str, timeout: float
) -> Answer:
    """One GET's answer head, within `timeout`; its failures classified."""
    try:
        async with asyncio.timeout(timeout):
            return await session.request("GET", url, headers)
    except TimeoutError:
        raise RetryableError(f"{what}: no answer within {timeout:g} s", code="timeout") from None
    except CannotConnect as exc:  # no connection was made at all
        raise connection_error(exc.os_error, f"{what}: connection: {_describe(exc)}") from None
    except OSError as exc:  # reset, TLS refused, not HTTP: the wire's ConnectionErrors
        raise RetryableError(f"{what}: connection: {_describe(exc)}", code="connection") from None


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def _check_status(status: int, reason: str | None, what: str) -> None:
    if 200 <= status < 300:
        return
    text = f"HTTP {status} {reason or ''}".strip()
    if status in (404, 410):
        raise NotFoundError(f"{what}: {text}", code="noRemote")
    if status in (401, 403):
        raise FatalError(
            f"the RAID endpoint rejected the publisher secret ({text}); "
            "check RAID_PUBLISHER_SECRET",
            code="auth",
        )
    if status == 429 or status >= 500:
        raise RetryableError(f"{what}: {text}", code=f"http_{status}")
    raise PermanentError(f"{what}: {text}", code=f"http_{status}")


async def _read_body(
    response: Answer,
    what: str,
    expected: int | None,
    max_bytes: int,
    timeout: float,
    min_rate: float,
) -> bytes:
    buffer = io.BytesIO()  # getvalue() hands over its buffer: no second copy of the body
    received = 0
    clock = asyncio.get_running_loop().time
    floor = _RateFloor(min_rate, timeout) if min_rate > 0 else None
    while True:
        try:
            async with asyncio.timeout(timeout):
                chunk = await response.content.read(CHUNK)
        except TimeoutError:
            raise RetryableError(
                f"{what}: no data for {timeout:g} s after {received:,} bytes", code="timeout"
            ) from None
        except TruncatedBody:
            raise _truncated(what, received, expected) from None
        except OSError as exc:
            raise RetryableError(
                f"{what}: connection lost after {received:,} bytes: {_describe(exc)}",
                code="connection",
            ) from None
        if not chunk:
            break
        received += len(chunk)
        # A body already whole is kept however slowly its last window went.
        if floor is not None and (expected is None or received < expected):
            slow = floor.slow(len(chunk), clock())
            if slow is not None:
                raise RetryableError(f"{what}: {slow}", code="timeout")
        if received > max_bytes:
            raise MediaError(
                f"{what}: more than {max_bytes:,} bytes (the limit)", MediaErrorCode.TOO_LARGE
            )
        buffer.write(chunk)
    if expected is not None and received != expected:
        raise _truncated(what, received, expected)
    return buffer.getvalue()


class _RateFloor:
    """At least `rate` bytes a second over each `window` seconds of a body, judged when a
    chunk closes a window. The first window opens at the first chunk: the wait for it is the
    idle timeout's to judge."""

    def __init__(self, rate: float, window: float) -> None:
        self.rate, self.window = rate, window
        self.began: float | None = None
        self.bytes = 0  # in the window open now
        self.before = 0  # in the windows before it

    def slow(self, size: int, now: float) -> str | None:
        """`size` bytes more at `now`; what was too slow, or None."""
        if self.began is None:
            self.began = now
        self.bytes += size
        took = now - self.began
        if took < self.window:
            return None
        if self.bytes < self.rate * took:
            return (
                f"{self.bytes:,} bytes in {took:.1f} s from byte {self.before:,},"
                f" slower than the minimum of {self.rate:,.0f} bytes/s"
            )
        self.before += self.bytes
        self.began, self.bytes = now, 0
        return None


def _truncated(what: str, received: int, expected: int | None) -> RetryableError:
    total = "?" if expected is None else f"{expected:,}"
    return RetryableError(
        f"{what}: truncated body, {received:,} of {total} bytes", code="truncated"
    )


def _describe(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}"
