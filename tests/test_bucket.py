"""The bucket seam against a real S3 server (``rclone serve s3``) on loopback.

``classify`` classifies transport and S3 failures only: a programming error is never turned
into a retryable error, and the bucket's methods let it propagate unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import botocore.exceptions
import botocore.parsers
import pytest

from tui_backfill.outcomes import BackfillError
from tui_backfill.seams.bucket import Bucket, classify

if TYPE_CHECKING:
    from conftest import S3Target

TIMEOUT = 1.0  # the bucket's --timeout in these tests


@pytest.fixture
async def bucket(rclone_s3: S3Target, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Bucket]:
    for name, value in rclone_s3.env().items():
        monkeypatch.setenv(name, value)
    async with Bucket(
        rclone_s3.bucket,
        endpoint_url=rclone_s3.endpoint_url,
        region=rclone_s3.region,
        path_style=True,
        timeout=TIMEOUT,
        pool_size=1,
    ) as bucket:
        yield bucket


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
