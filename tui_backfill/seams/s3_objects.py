"""The S3 GET path: an object's body streamed in chunks through aiobotocore.

What the hash index hashes from and what an `s3://` origin fetches with. The body is read a
chunk at a time (`GetObject` -> `Body`), never held whole unless the caller asks for bytes.

Timeouts: `timeout` bounds the wait for the answer's head (time to the first byte) and each
idle gap between chunks, never the whole body: a large object that keeps flowing is never cut
off, a server that stops sending is. A caller that wants a bound on the whole (the image job's
hard timeout of one fetch) puts its own around the call.

Failures are classified as the bucket's (`s3_wire.classify`, or `bucket.classify` for a body
read through aiobotocore): throttling and 5xx retryable, credentials and a missing bucket
fatal, other 4xx permanent, transport failures `s3_connection`, plus: 404 / `NoSuchKey` is
NotFoundError (`noRemote`), a body shorter than its Content-Length (or cut off by the
connection) is a retryable `truncated`, and no chunk within `timeout` is a retryable `timeout`. A classified transport error keeps its cause (`__cause__`)
so a caller can tell an absent server from a faulty one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tui_backfill.outcomes import BackfillError, NotFoundError, RetryableError
from tui_backfill.seams import s3_wire
from tui_backfill.seams.http1 import TruncatedBody

CHUNK = 256 * 1024
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


@dataclass(frozen=True, slots=True)
class BodyFaults:
    """What reading a body may raise: a body cut short (`truncated`), and the failures
    `classify` maps (`classified`); anything else is a bug and propagates."""

    truncated: tuple[type[BaseException], ...]
    classified: tuple[type[BaseException], ...]
    classify: Callable[[BaseException], BackfillError]


# A body read on the lean path (seams/http1): cut short, the wire says so
WIRE_FAULTS = BodyFaults((TruncatedBody,), s3_wire.CLASSIFIED, s3_wire.classify)


@functools.cache
def client_faults() -> BodyFaults:
    """A body read through aiobotocore: cut short, aiohttp's own error, botocore's check at
    the end of the stream, or aiobotocore's wrapper of a connection error mid-body; botocore's
    failures classified as the bucket's. Imported here, when first asked: botocore is heavy."""
    import aiohttp
    import botocore.exceptions

    from tui_backfill.seams.bucket import CLASSIFIED, classify

    truncated = (
        aiohttp.ClientPayloadError,
        botocore.exceptions.IncompleteReadError,
        botocore.exceptions.ResponseStreamingError,
    )
    return BodyFaults(truncated, CLASSIFIED, classify)


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """What the answer's head says of the object."""

    key: str
    size: int | None  # Content-Length; None when the server sent none
    content_type: str
    etag: str
    last_modified: datetime | None


@dataclass(frozen=True, slots=True)
class Got:
    """A whole object read into memory (for origins)."""

    body: bytes
    content_type: str


class ObjectBody:
    """One GetObject answer: its head (`info`) and its body, consumed once with `chunks()`."""

    def __init__(
        self, info: ObjectInfo, body: Any, timeout: float, faults: BodyFaults = WIRE_FAULTS
    ) -> None:
        self.info = info
        self._body = body
        self._timeout = timeout
        self._faults = faults
        self.received = 0

    async def chunks(self, size: int = CHUNK) -> AsyncIterator[bytes]:
        """The body in chunks of at most `size` bytes, each within `timeout` of the last.

        Ends with RetryableError `truncated` when fewer bytes came than the Content-Length
        said: the caller must not use what it got.
        """
        key = self.info.key
        while True:
            try:
                async with asyncio.timeout(self._timeout):
                    chunk: bytes = await self._body.read(size)
            except TimeoutError:  # ours, or aiohttp's socket read timeout
                raise RetryableError(
                    f"S3 GET {key}: no data for {self._timeout:g} s after {self.received:,} bytes",
                    code="timeout",
                ) from None
            except self._faults.truncated:
                raise self._truncated() from None
            except self._faults.classified as exc:
                raise self._faults.classify(exc) from exc
            if not chunk:
                break
            self.received += len(chunk)
            yield chunk
        if self.info.size is not None and self.received != self.info.size:
            raise self._truncated()

    async def read(self) -> bytes:
        """The whole body (in memory: for callers that need the bytes anyway)."""
        return b"".join([chunk async for chunk in self.chunks()])

    def _truncated(self) -> RetryableError:
        expected = "?" if self.info.size is None else f"{self.info.size:,}"
        return RetryableError(
            f"S3 GET {self.info.key}: truncated body, {self.received:,} of {expected} bytes",
            code="truncated",
        )


class ObjectReader:
    """A reader of objects through this seam: `open` (each reader's own), and `chunks` and
    `get` made from it. S3Objects reads through aiobotocore (the s3:// origin); the lean signed
    path's LeanObjects (seams/s3_lean) is the hash index's."""

    def open(self, key: str) -> contextlib.AbstractAsyncContextManager[ObjectBody]:
        raise NotImplementedError

    async def chunks(self, key: str, size: int = CHUNK) -> AsyncIterator[bytes]:
        """The body of `key` in chunks (see ObjectBody.chunks)."""
        async with self.open(key) as obj:
            async for chunk in obj.chunks(size):
                yield chunk

    async def get(self, key: str) -> Got:
        """The whole object and its content type."""
        async with self.open(key) as obj:
            return Got(await obj.read(), obj.info.content_type)


class S3Objects(ObjectReader):
    """GETs of one bucket's objects through an aiobotocore S3 client the caller owns."""

    def __init__(self, client: Any, bucket: str, *, timeout: float) -> None:
        self.client = client
        self.bucket = bucket
        self.timeout = timeout

    @contextlib.asynccontextmanager
    async def open(self, key: str) -> AsyncIterator[ObjectBody]:
        """GetObject `key`, its head within `timeout`; the body is read inside the block and
        its connection closed on leaving it unless it was read to the end (then it is reused).
        """
        import botocore.exceptions  # loaded already: the client is botocore's

        from tui_backfill.seams.bucket import CLASSIFIED, classify, error_parts

        faults = client_faults()
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self.client.get_object(Bucket=self.bucket, Key=key)
        except TimeoutError:
            raise RetryableError(
                f"S3 GET {key}: no answer within {self.timeout:g} s", code="timeout"
            ) from None
        except botocore.exceptions.ClientError as exc:
            code, status, _ = error_parts(exc)
            if code in _NOT_FOUND or (status == 404 and code != "NoSuchBucket"):
                raise NotFoundError(
                    f"S3 {s3_wire.answer(status, code)}: {key}", code="noRemote"
                ) from None
            raise classify(exc) from None
        except faults.truncated:  # an answer read whole by botocore (an error's XML) cut short
            raise RetryableError(
                f"S3 GET {key}: truncated answer, the connection closed mid-body",
                code="truncated",
            ) from None
        except CLASSIFIED as exc:
            raise classify(exc) from exc
        body = answer["Body"]
        length = answer.get("ContentLength")
        info = ObjectInfo(
            key=key,
            size=None if length is None else int(length),
            content_type=str(answer.get("ContentType") or "application/octet-stream"),
            etag=str(answer.get("ETag") or ""),
            last_modified=answer.get("LastModified"),
        )
        try:
            yield ObjectBody(info, body, self.timeout, faults)
        finally:
            body.close()  # after a whole read: a no-op, the connection went back to the pool


__all__ = [
    "CHUNK",
    "WIRE_FAULTS",
    "BodyFaults",
    "Got",
    "ObjectBody",
    "ObjectInfo",
    "ObjectReader",
    "S3Objects",
    "client_faults",
]
