"""The bucket seam against a real S3 server (``rclone serve s3``) on loopback.

A server that accepts a connection and then trickles its answer (a byte at a time, each gap
shorter than the socket timeout) or stalls must not hold an S3 control call longer than the
bucket's ``timeout``: the call ends with a retryable ``timeout`` and the connection pool stays
usable for the next call.
``classify`` classifies transport and S3 failures only: a programming error is never turned
into a retryable error, and the bucket's methods let it propagate unchanged.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import botocore.exceptions
import botocore.parsers
import pytest
import yarl

from tui_backfill.outcomes import BackfillError, ConfigError, RetryableError
from tui_backfill.seams.bucket import Bucket, classify

if TYPE_CHECKING:
    from conftest import S3Target

T = TypeVar("T")

TIMEOUT = 1.0  # the bucket's --timeout in these tests
MARGIN = 0.75  # scheduling slack on a shared 2-core machine
GAP = 0.2  # between trickled bytes: well inside the socket read timeout (TIMEOUT)


# -- a relay that trickles or stalls answers ------------------------------------------------


class TrickleRelay:
    """A TCP relay on 127.0.0.1 in front of an S3 server.

    Bytes pass unchanged both ways (so the ``Host`` header SigV4 signs is the client's). While
    ``mode`` is ``"trickle"`` the server's answers reach the client one byte every ``GAP``
    seconds: each gap is shorter than the client's socket timeout, so only a bound on the whole
    call ends it. ``"trickle_body"`` passes an answer's head at once and trickles its body (a
    call cut off while reading the body); ``"stall"`` holds answers back entirely.
    """

    def __init__(self, upstream_url: str) -> None:
        upstream = yarl.URL(upstream_url)
        assert upstream.host == "127.0.0.1" and upstream.port is not None
        self._upstream_port = upstream.port
        self.mode = "pass"
        self.endpoint_url = ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> TrickleRelay:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.endpoint_url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        """Close the listener and abort every relayed connection; their handlers then end by
        themselves (cancelling a stream handler task makes asyncio log an error)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        writers = [client_w]
        self._writers.add(client_w)
        try:
            upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self._upstream_port)
            writers.append(upstream_w)
            self._writers.add(upstream_w)
            pumps = [
                asyncio.ensure_future(self._pump(client_r, upstream_w)),
                asyncio.ensure_future(self._answers(upstream_r, client_w)),
            ]
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
        except OSError:
            pass  # the upstream is gone: the client sees its connection closed
        finally:
            for writer in writers:
                writer.close()
                self._writers.discard(writer)
            self._handlers.discard(handler)

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        while data := await src.read(65536):
            dst.write(data)
            await dst.drain()

    async def _answers(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        """Upstream to client, as ``mode`` says at the time each chunk arrives."""
        while data := await src.read(65536):
            if self.mode == "stall":
                await asyncio.Event().wait()  # until the client gives up (or stop())
            head, slow = b"", data
            if self.mode == "trickle_body" and b"\r\n\r\n" in data:
                end = data.index(b"\r\n\r\n") + 4
                head, slow = data[:end], data[end:]
            elif self.mode == "pass":
                head, slow = data, b""
            dst.write(head)
            await dst.drain()
            for i in range(len(slow)):
                if dst.is_closing():
                    return
                dst.write(slow[i : i + 1])
                await dst.drain()
                await asyncio.sleep(GAP)


@pytest.fixture
async def relay(rclone_s3: S3Target) -> AsyncIterator[TrickleRelay]:
    relay = await TrickleRelay(rclone_s3.endpoint_url).start()
    try:
        yield relay
    finally:
        await relay.stop()


@pytest.fixture
async def bucket(
    rclone_s3: S3Target, relay: TrickleRelay, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Bucket]:
    """A bucket through the relay with a pool of ONE connection: a call cut off by the timeout
    that left its connection checked out would make the next call wait forever."""
    for name, value in rclone_s3.env().items():
        monkeypatch.setenv(name, value)
    async with Bucket(
        rclone_s3.bucket,
        endpoint_url=relay.endpoint_url,
        region=rclone_s3.region,
        path_style=True,
        timeout=TIMEOUT,
        pool_size=1,
    ) as bucket:
        yield bucket


async def timed(call: Callable[[], Awaitable[T]]) -> tuple[T | BaseException, float]:
    """(result or exception, seconds) of ``call``, cut off by the test at 4 × TIMEOUT so a
    bucket that does not bound the call fails the test quickly instead of hanging it."""
    started = time.monotonic()
    try:
        result: T | BaseException = await asyncio.wait_for(call(), 4 * TIMEOUT)
    except Exception as exc:  # the bucket's error, or the test's TimeoutError
        result = exc
    return result, time.monotonic() - started


def assert_timed_out(result: object, elapsed: float, *, within: float = TIMEOUT) -> None:
    assert isinstance(result, RetryableError), f"{result!r} after {elapsed:.2f} s"
    assert result.code == "timeout", result
    assert within - 0.1 <= elapsed <= within + MARGIN, f"ended after {elapsed:.2f} s"


async def first_page(bucket: Bucket, prefix: str) -> list[str]:
    async for keys in bucket.list_keys(prefix):
        return keys
    return []


# -- S3 calls are bounded as a whole --------------------------------------------------------


@pytest.mark.parametrize("mode", ["trickle", "stall"])
async def test_head_object_is_bounded_and_the_pool_recovers(
    bucket: Bucket, relay: TrickleRelay, rclone_s3: S3Target, mode: str
) -> None:
    rclone_s3.client().put_object(Bucket=rclone_s3.bucket, Key="a/there.jpg", Body=b"x")
    relay.mode = mode
    result, elapsed = await timed(lambda: bucket.exists("a/there.jpg"))
    assert_timed_out(result, elapsed)
    relay.mode = "pass"
    assert await bucket.exists("a/there.jpg") is True


@pytest.mark.parametrize("mode", ["trickle", "trickle_body"])
async def test_listing_page_is_bounded_and_the_pool_recovers(
    bucket: Bucket, relay: TrickleRelay, rclone_s3: S3Target, mode: str
) -> None:
    """``trickle_body``: the call is cut off while aiobotocore reads the page's body."""
    client = rclone_s3.client()
    for name in ("a/1.jpg", "a/2.jpg"):
        client.put_object(Bucket=rclone_s3.bucket, Key=name, Body=b"x")
    relay.mode = mode
    result, elapsed = await timed(lambda: first_page(bucket, "a/"))
    assert_timed_out(result, elapsed)
    relay.mode = "pass"
    assert await first_page(bucket, "a/") == ["a/1.jpg", "a/2.jpg"]


async def test_put_is_bounded_and_the_pool_recovers(
    bucket: Bucket, relay: TrickleRelay, rclone_s3: S3Target
) -> None:
    relay.mode = "trickle"
    result, elapsed = await timed(
        lambda: bucket.put("a/new.jpg", b"jpeg", "image/jpeg", if_none_match=True)
    )
    assert_timed_out(result, elapsed)
    relay.mode = "pass"
    assert await bucket.put("a/new.jpg", b"jpeg2", "image/jpeg", if_none_match=False) is True
    # rclone serve s3 can answer 500 for a moment after the first PUT's connection is cut
    # mid-answer (seen on a loaded machine): the read that checks the content is retried
    for attempt in range(5):
        try:
            written = rclone_s3.client().get_object(Bucket=rclone_s3.bucket, Key="a/new.jpg")
            break
        except botocore.exceptions.ClientError as exc:
            if attempt == 4 or exc.response["ResponseMetadata"]["HTTPStatusCode"] < 500:
                raise
            await asyncio.sleep(0.2)
    assert written["Body"].read() == b"jpeg2"


async def test_preflight_attempts_are_each_bounded(bucket: Bucket, relay: TrickleRelay) -> None:
    """Each HeadBucket attempt ends at the timeout and is retried; the last names the field."""
    relay.mode = "trickle"
    started = time.monotonic()
    with pytest.raises(ConfigError) as failed:
        await asyncio.wait_for(bucket.preflight(attempts=2, backoff=0.01), 6 * TIMEOUT)
    elapsed = time.monotonic() - started
    assert failed.value.field == "--endpoint-url"
    assert "within 1 s" in str(failed.value)
    assert 2 * TIMEOUT - 0.1 <= elapsed <= 2 * TIMEOUT + 2 * MARGIN, f"{elapsed:.2f} s"
    relay.mode = "pass"
    await bucket.preflight(attempts=1)


# -- classify: transport and S3 failures only -----------------------------------------------


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    return botocore.exceptions.ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "HeadObject",
    )


@pytest.mark.parametrize(
    ("exc", "code", "retryable", "fatal"),
    [
        (client_error("SlowDown", 503), "s3_SlowDown", True, False),
        (client_error("InternalError", 500), "s3_InternalError", True, False),
        (client_error("AccessDenied", 403), "s3_AccessDenied", False, True),
        (client_error("NoSuchBucket", 404), "s3_NoSuchBucket", False, True),
        (client_error("InvalidArgument", 400), "s3_InvalidArgument", False, False),
        (botocore.parsers.ResponseParserError("<html>"), "s3_error", True, False),
        (TimeoutError(), "timeout", True, False),
        (aiohttp.ServerTimeoutError(), "timeout", True, False),
        (botocore.exceptions.ReadTimeoutError(endpoint_url="http://h"), "timeout", True, False),
        (botocore.exceptions.ConnectTimeoutError(endpoint_url="http://h"), "timeout", True, False),
        (
            botocore.exceptions.EndpointConnectionError(endpoint_url="h"),
            "s3_connection",
            True,
            False,
        ),
        (botocore.exceptions.ConnectionClosedError(endpoint_url="h"), "s3_connection", True, False),
        (
            botocore.exceptions.IncompleteReadError(actual_bytes=1, expected_bytes=2),
            "s3_connection",
            True,
            False,
        ),
        (aiohttp.ServerDisconnectedError(), "s3_connection", True, False),
        (aiohttp.ClientPayloadError("short"), "s3_connection", True, False),
        (ConnectionResetError(), "s3_connection", True, False),
        (OSError("EPIPE"), "s3_connection", True, False),
        (botocore.exceptions.NoCredentialsError(), "s3_credentials", False, True),
        (
            botocore.exceptions.PartialCredentialsError(provider="env", cred_var="x"),
            "s3_credentials",
            False,
            True,
        ),
    ],
    ids=lambda v: v.__class__.__name__ if isinstance(v, BaseException) else None,
)
def test_classify_transport_and_s3_errors(
    exc: BaseException, code: str, retryable: bool, fatal: bool
) -> None:
    classified = classify(exc)
    assert (classified.code, classified.retryable, classified.fatal) == (code, retryable, fatal)


@pytest.mark.parametrize(
    ("status", "message", "said"),
    [
        (403, "Forbidden", "S3 rejected the credentials (403)"),
        (400, "Bad Request", "S3 400: Bad Request"),
        (503, "Service Unavailable", "S3 503: Service Unavailable"),
    ],
)
def test_an_answer_without_a_body_names_its_status_once(
    status: int, message: str, said: str
) -> None:
    """A HEAD's error answer has no body: botocore makes its status the code (`403 403`)."""
    exc = botocore.exceptions.ClientError(
        {
            "Error": {"Code": str(status), "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status},
        },
        "HeadObject",
    )
    assert classify(exc).message == said
    assert classify(client_error("SlowDown", 503)).message == "S3 503 SlowDown"


@pytest.mark.parametrize(
    "exc", [TypeError("bad operand"), KeyError("Contents"), AssertionError(), ValueError("x")]
)
def test_classify_programming_error_is_internal_not_retryable(exc: BaseException) -> None:
    classified = classify(exc)
    assert isinstance(classified, BackfillError)
    assert classified.code == "internal"
    assert not classified.retryable and not classified.fatal


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda b: b.exists(None), KeyError),
        (lambda b: b.put("a/k.jpg", object(), "image/jpeg", if_none_match=True), TypeError),
    ],
    ids=["exists", "put"],
)
async def test_programming_errors_propagate_unchanged(
    bucket: Bucket, call: Callable[[Bucket], Awaitable[Any]], error: type[Exception]
) -> None:
    """A wrong argument (a caller's bug) reaches the caller as itself, traceback intact: the
    engine records it as ``internal`` instead of retrying it as an S3 failure."""
    with pytest.raises(error):
        await asyncio.wait_for(call(bucket), 4 * TIMEOUT)
