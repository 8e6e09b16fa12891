"""S3 on the wire, without botocore: what an answer means and the shapes of what is read.

Shared by both ways this project reaches a bucket: aiobotocore's client (seams/bucket) and
requests signed here and sent on our own wire (seams/s3_lean, seams/http1, seams/s3_direct).
Importing it costs neither botocore nor aiohttp, so a run whose bucket needs no botocore (the
hash index's direct path) starts without either.

- An error answer (its S3 code, HTTP status and message) classified into the engine's codes
  (`classify_answer`): 5xx and throttling retryable, rejected credentials and a missing bucket
  fatal, other 4xx permanent; the conditional PUT's and HEAD's special answers.
- A transport failure classified (`classify`): a timeout or a broken connection retryable; a
  connection nothing takes (refused, no such host) marked unreachable too, so that the
  engine's breaker stops a run whose bucket is gone instead of failing every object; anything
  else is a bug in our code, `internal`, never retried.
- A refused HeadBucket (a preflight) read as what to tell the operator (`refusal_of`,
  `head_bucket_problem`).
- The bucket's URL and signing region (`ObjectTarget`), a listing page (`Listed`,
  `ListedPage`).
"""

from __future__ import annotations

import asyncio
import email.utils
import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tui_backfill.core.retry import retrying
from tui_backfill.outcomes import (
    BackfillError,
    ConfigError,
    FatalError,
    OriginUnreachable,
    PermanentError,
    RetryableError,
)
from tui_backfill.seams.connect_errors import unreachable_reason
from tui_backfill.seams.http1 import WireError

_CREDENTIAL_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "403",
    "401",
}
_THROTTLE_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "TooManyRequests",
    "RequestLimitExceeded",
    "429",
}
_REJECTS_CONDITIONAL = {"NotImplemented", "501"}


class Refusal(enum.StrEnum):
    """What a refused HeadBucket (a preflight: the destination's or an s3:// origin's) says."""

    MISSING = "missing"  # no such bucket
    CREDENTIALS = "credentials"  # the key pair (or its absence) was refused
    BUSY = "busy"  # 5xx, 429, throttling: not a reason to refuse the run
    OTHER = "other"


def classify_answer(code: str, status: int, message: str) -> BackfillError:
    """An S3 error answer (its code, HTTP status and message, as `error_parts` reads them from
    aiobotocore or s3_lean from the answer itself): 5xx and throttling retryable, credentials
    and a missing bucket fatal, other 4xx permanent."""
    if code in _THROTTLE_CODES or status == 503:
        return RetryableError(f"S3 {answer(status, code, message)}", code=f"s3_{code}")
    if status >= 500:
        return RetryableError(f"S3 {answer(status, code, message)}", code=f"s3_{code}")
    if code in _CREDENTIAL_CODES or status in (401, 403):
        return FatalError(
            f"S3 rejected the credentials ({answer(status, code)})", code=f"s3_{code}"
        )
    if code in ("NoSuchBucket",):
        return FatalError(f"S3 bucket is gone ({code})", code=f"s3_{code}")
    if code in ("RequestTimeout", "RequestTimeTooSkewed"):
        return RetryableError(f"S3 {answer(status, code, message)}", code=f"s3_{code}")
    if code == "ConditionalRequestConflict":
        # 409: another conditional write of the same key was under way (two workers on one
        # bucket). S3 asks for a retry, which then gets 412 if the other one won.
        return RetryableError(f"S3 {answer(status, code, message)}", code=f"s3_{code}")
    return PermanentError(f"S3 {answer(status, code, message)}", code=f"s3_{code}")


def already_there(code: str, status: int) -> bool:
    """A conditional PUT's answer: the object exists (412)."""
    return status == 412 or code == "PreconditionFailed"


def rejects_conditional(code: str, status: int) -> bool:
    """A conditional PUT's answer: the server does not do If-None-Match (501)."""
    return code in _REJECTS_CONDITIONAL or status == 501


def not_found(code: str, status: int) -> bool:
    """A HeadObject's answer: no such object."""
    return status == 404 or code in ("404", "NoSuchKey", "NotFound")


def call_timed_out(operation: str, timeout: float) -> RetryableError:
    """An S3 call with no complete answer within the bucket's timeout."""
    return RetryableError(
        f"S3 {operation}: no complete answer within {timeout:g} s", code="timeout"
    )


def parse_timestamp(value: Any) -> datetime:
    """botocore's timestamps (`LastModified` of a listing or a GET), read without dateutil.

    botocore parses every timestamp with dateutil, about 0.1 ms of CPU each, two per GET;
    S3 sends RFC 1123 in headers and ISO 8601 in XML, which the standard library reads
    several times faster. Anything else goes to botocore's own parser.
    """
    if isinstance(value, str):
        try:
            if value[:1].isdigit():
                return datetime.fromisoformat(value.replace("Z", "+00:00"))
            return email.utils.parsedate_to_datetime(value)
        except (ValueError, TypeError, IndexError):
            pass
    import botocore.utils  # only for a form the standard library does not read

    parsed: datetime = botocore.utils.parse_timestamp(value)
    return parsed


def answer(status: int, code: str, message: str = "") -> str:
    """`403 AccessDenied`, or `403` alone when a HEAD's answer had no body to name a code;
    `: message` after it when the answer said more than its code."""
    said = str(status) if code == str(status) else f"{status} {code}"
    return said if message in ("", code, str(status)) else f"{said}: {message}"


def unquote_etag(etag: str) -> str:
    """An ETag as the index keeps it: without the quotes S3 puts around it."""
    return etag[1:-1] if len(etag) >= 2 and etag[0] == etag[-1] == '"' else etag


@dataclass(frozen=True, slots=True)
class ObjectTarget:
    """Where a bucket's objects are and how requests to them are signed."""

    bucket_url: str  # an object's URL is this, "/", the key percent-encoded (not "/" or "~")
    signing_name: str  # "s3"
    region: str  # the signing region


@dataclass(frozen=True, slots=True)
class Listed:
    """One object of a listing: what the hash index's skip rule compares."""

    key: str
    size: int
    etag: str  # unquoted
    last_modified: datetime | None


@dataclass(frozen=True, slots=True)
class ListedPage:
    objects: list[Listed]
    truncated: bool  # more objects follow the last one


def refusal_of(code: str, status: int) -> Refusal:
    """What a HeadBucket's error answer (its S3 code and HTTP status) means."""
    if status == 404 or code in ("NoSuchBucket", "404"):
        return Refusal.MISSING
    if status in (401, 403) or code in _CREDENTIAL_CODES:
        return Refusal.CREDENTIALS
    if status >= 500 or status == 429 or code in _THROTTLE_CODES:
        return Refusal.BUSY
    return Refusal.OTHER


def head_bucket_problem(
    bucket: str, where: str, code: str, status: int, *, profile: str | None = None
) -> ConfigError | RetryableError:
    """A destination's preflight refused: ConfigError naming the setting to fix, or (for a
    busy server) a RetryableError whose code is the field named if retries run out.
    `profile`: the AWS profile the rejected credentials came from (None: the key pair)."""
    refusal = refusal_of(code, status)
    if refusal is Refusal.MISSING:
        return ConfigError("--bucket", f"bucket {bucket!r} does not exist at {where}")
    if refusal is Refusal.CREDENTIALS and profile is not None:
        return ConfigError(
            "AWS_PROFILE",
            f"the credentials of profile {profile!r} were rejected by {where} "
            f"({answer(status, code)}); check the profile",
        )
    if refusal is Refusal.CREDENTIALS:
        return ConfigError(
            "AWS_ACCESS_KEY_ID",
            f"credentials rejected by {where} ({answer(status, code)}); check the key pair",
        )
    if refusal is Refusal.BUSY:
        return RetryableError(answer(status, code), code="--bucket")
    return ConfigError("--bucket", f"HeadBucket on {where} failed: {answer(status, code)}")


# What requests sent on the wire (seams/http1) may raise that `classify` maps: anything else
# is a bug in our code (a TypeError from a wrong argument, a KeyError) and propagates unchanged.
CLASSIFIED: tuple[type[BaseException], ...] = (BackfillError, TimeoutError, OSError)


def classify(exc: BaseException) -> BackfillError:
    """A transport failure of a request sent on the wire (see CLASSIFIED) as a classified
    error; anything else gets a non-retryable, non-fatal `internal` error."""
    if isinstance(exc, BackfillError):
        return exc
    if isinstance(exc, TimeoutError):
        # the code a bound on the whole call gives too, whichever fires first
        return RetryableError("S3 call timed out", code="timeout")
    if isinstance(exc, OSError):
        reason = unreachable_reason(getattr(exc, "os_error", exc))
        if reason is not None:  # nothing listens there: the engine's breaker counts these
            return OriginUnreachable(f"S3 connection: {reason}", code="s3_connection")
        said = f": {exc}" if isinstance(exc, WireError) else ""  # the wire's own words
        return RetryableError(
            f"S3 connection: {exc.__class__.__name__}{said}", code="s3_connection"
        )
    return BackfillError(f"internal error: {exc.__class__.__name__}: {exc}", code="internal")


async def preflight(
    where: str,
    head_bucket: Callable[[str], Awaitable[None]],
    *,
    attempts: int,
    backoff: float,
) -> None:
    """A destination's HeadBucket (`head_bucket(where)`: ConfigError for what retrying cannot
    fix, RetryableError, its code the field to name, for what it can) under the retry policy,
    up to `attempts`: one 503 from a busy server is no configuration error; still failing, it is
    one (exit 2)."""
    policy = retrying(max_attempts=attempts, backoff=backoff, sleep=asyncio.sleep)
    try:
        async for attempt in policy:
            with attempt:
                await head_bucket(where)
    except RetryableError as exc:
        raise ConfigError(
            exc.code, f"HeadBucket on {where} failed {attempts} times, last: {exc.message}"
        ) from None
