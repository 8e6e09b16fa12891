"""The S3 GET seam (tui_backfill.seams.s3_objects) against a real S3 server on loopback.

The body streams in chunks; ``timeout`` bounds the time to the first byte and each idle gap
between chunks, never a whole body that keeps flowing; a body cut short is a retryable
``truncated`` (never returned as if whole); 404 is ``noRemote``; other failures are classified
as the bucket's. The relay of tests/test_bucket.py trickles or stalls answers on a real socket.

Every test runs against both readers of the seam, as one contract: `aiobotocore` (S3Objects on
the bucket's client: the s3:// origin's) and `lean` (the Bucket's own `objects()`, signed by
botocore and sent by aiohttp: the hash index's).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest
from test_bucket import GAP, MARGIN, TIMEOUT, TrickleRelay

from tui_backfill.outcomes import FatalError, NotFoundError, RetryableError
from tui_backfill.seams.bucket import Bucket
from tui_backfill.seams.s3_objects import ObjectReader, S3Objects
from tui_backfill.servers.proxy import ProxyFaults

if TYPE_CHECKING:
    from conftest import S3Target


class StallingRelay(TrickleRelay):
    """``"stall_body"``: an answer's head and its first ``passed`` body bytes go through at
    once, then nothing more (the connection stays open)."""

    passed = 64 * 1024

    async def _answers(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        if self.mode != "stall_body":
            await super()._answers(src, dst)
            return
        buffered = b""
        while data := await src.read(65536):
            buffered += data
            if b"\r\n\r\n" in buffered:
                end = buffered.index(b"\r\n\r\n") + 4
                if len(buffered) >= end + self.passed:
                    dst.write(buffered[: end + self.passed])
                    await dst.drain()
                    await asyncio.Event().wait()  # until the client gives up (or stop())


@pytest.fixture
async def relay(rclone_s3: S3Target) -> AsyncIterator[StallingRelay]:
    relay = await StallingRelay(rclone_s3.endpoint_url).start()
    try:
        yield relay
    finally:
        await relay.stop()


async def open_bucket(
    target: S3Target, endpoint_url: str, monkeypatch: pytest.MonkeyPatch
) -> Bucket:
    for name, value in target.env().items():
        monkeypatch.setenv(name, value)
    bucket = Bucket(
        target.bucket,
        endpoint_url=endpoint_url,
        region=target.region,
        path_style=True,
        timeout=TIMEOUT,
        pool_size=1,  # a GET cut off that kept its connection would hang the next one
    )
    return await bucket.__aenter__()


@pytest.fixture(params=["aiobotocore", "lean"])
def reader_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def reader(bucket: Bucket, kind: str) -> ObjectReader:
    """The seam's reader of `bucket`'s objects, of the kind under test."""
    if kind == "lean":
        return bucket.objects()
    return S3Objects(bucket._client, bucket.name, timeout=bucket.timeout)


@pytest.fixture
async def objects(
    rclone_s3: S3Target, relay: StallingRelay, monkeypatch: pytest.MonkeyPatch, reader_kind: str
) -> AsyncIterator[ObjectReader]:
    bucket = await open_bucket(rclone_s3, relay.endpoint_url, monkeypatch)
    try:
        yield reader(bucket, reader_kind)
    finally:
        await bucket.__aexit__(None, None, None)


def put(target: S3Target, key: str, body: bytes, content_type: str = "image/jpeg") -> None:
    target.client().put_object(Bucket=target.bucket, Key=key, Body=body, ContentType=content_type)


async def drain(objects: ObjectReader, key: str, size: int) -> tuple[list[int], bytes]:
    sizes: list[int] = []
    parts: list[bytes] = []
    async for chunk in objects.chunks(key, size):
        sizes.append(len(chunk))
        parts.append(chunk)
    return sizes, b"".join(parts)


async def test_body_streams_in_chunks_and_get_returns_bytes(
    objects: ObjectReader, rclone_s3: S3Target
) -> None:
    body = os.urandom(1024 * 1024 + 17)
    put(rclone_s3, "big/one.bin", body, "application/x-test")
    sizes, got = await drain(objects, "big/one.bin", 64 * 1024)
    assert got == body
    assert len(sizes) >= 17 and max(sizes) <= 64 * 1024
    whole = await objects.get("big/one.bin")
    assert whole.body == body and whole.content_type == "application/x-test"
    async with objects.open("big/one.bin") as obj:
        assert obj.info.size == len(body) and obj.info.etag
        assert obj.info.last_modified is not None


async def test_missing_key_is_no_remote_and_missing_bucket_fatal(
    objects: ObjectReader,
    rclone_s3: S3Target,
    relay: StallingRelay,
    monkeypatch: pytest.MonkeyPatch,
    reader_kind: str,
) -> None:
    with pytest.raises(NotFoundError) as missing:
        await objects.get("no/such.jpg")
    assert missing.value.code == "noRemote"
    target = dataclasses.replace(rclone_s3, bucket="no-such-bucket")
    elsewhere = await open_bucket(target, relay.endpoint_url, monkeypatch)
    try:
        with pytest.raises(FatalError) as fatal:
            await reader(elsewhere, reader_kind).get("a.jpg")
    finally:
        await elsewhere.__aexit__(None, None, None)
    assert fatal.value.code == "s3_NoSuchBucket"


async def test_rejected_credentials_are_fatal(
    rclone_s3: S3Target, monkeypatch: pytest.MonkeyPatch, reader_kind: str
) -> None:
    put(rclone_s3, "a.jpg", b"x")
    bucket = await open_bucket(rclone_s3, rclone_s3.endpoint_url, monkeypatch)
    wrong = await open_bucket(
        dataclasses.replace(rclone_s3, secret_key="wrong"), rclone_s3.endpoint_url, monkeypatch
    )
    try:
        assert (await reader(bucket, reader_kind).get("a.jpg")).body == b"x"
        with pytest.raises(FatalError) as rejected:
            await reader(wrong, reader_kind).get("a.jpg")
        assert rejected.value.code.startswith("s3_") and not rejected.value.retryable
    finally:
        await wrong.__aexit__(None, None, None)
        await bucket.__aexit__(None, None, None)


async def test_time_to_first_byte_is_bounded_and_the_pool_recovers(
    objects: ObjectReader, rclone_s3: S3Target, relay: StallingRelay
) -> None:
    put(rclone_s3, "a.jpg", b"jpeg")
    relay.mode = "stall"
    started = time.monotonic()
    with pytest.raises(RetryableError) as stalled:
        await asyncio.wait_for(objects.get("a.jpg"), 4 * TIMEOUT)
    elapsed = time.monotonic() - started
    assert stalled.value.code == "timeout"
    assert TIMEOUT - 0.1 <= elapsed <= TIMEOUT + MARGIN, f"{elapsed:.2f} s"
    relay.mode = "pass"
    assert (await objects.get("a.jpg")).body == b"jpeg"


async def test_idle_gap_is_bounded_and_nothing_short_is_returned(
    objects: ObjectReader, rclone_s3: S3Target, relay: StallingRelay
) -> None:
    body = os.urandom(512 * 1024)
    put(rclone_s3, "big/stall.bin", body)
    relay.mode = "stall_body"
    received: list[bytes] = []
    last = time.monotonic()
    with pytest.raises(RetryableError) as idle:
        async with asyncio.timeout(4 * TIMEOUT):
            async for chunk in objects.chunks("big/stall.bin"):
                received.append(chunk)
                last = time.monotonic()
    gap = time.monotonic() - last
    assert idle.value.code == "timeout", idle.value
    assert received and sum(map(len, received)) < len(body)  # the head and some body came
    assert TIMEOUT - 0.1 <= gap <= TIMEOUT + MARGIN, f"{gap:.2f} s"
    relay.mode = "pass"
    assert (await objects.get("big/stall.bin")).body == body


async def test_a_slow_body_that_keeps_flowing_is_not_cut_off(
    objects: ObjectReader, rclone_s3: S3Target, relay: StallingRelay
) -> None:
    """Every gap (GAP) is inside the timeout while the whole body takes twice the timeout:
    the bound is on idle gaps, not on the whole body."""
    body = b"0123456789"
    put(rclone_s3, "slow.bin", body)
    relay.mode = "trickle_body"
    started = time.monotonic()
    got = await asyncio.wait_for(objects.get("slow.bin"), 6 * TIMEOUT)
    elapsed = time.monotonic() - started
    assert got.body == body
    assert elapsed >= len(body) * GAP * 0.9 > TIMEOUT, f"{elapsed:.2f} s"


async def test_truncated_body_is_retryable_and_never_returned(
    rclone_s3: S3Target, s3_proxy, monkeypatch: pytest.MonkeyPatch, reader_kind: str
) -> None:
    body = os.urandom(200_000)
    put(rclone_s3, "big/cut.bin", body)
    proxy = await s3_proxy(rclone_s3, ProxyFaults(truncate_rate=1.0, kinds={"get_object"}))
    bucket = await open_bucket(rclone_s3, proxy.endpoint_url, monkeypatch)
    try:
        objects = reader(bucket, reader_kind)
        with pytest.raises(RetryableError) as cut:
            await asyncio.wait_for(objects.get("big/cut.bin"), 4 * TIMEOUT)
        assert cut.value.code == "truncated", cut.value
        received: list[bytes] = []
        with pytest.raises(RetryableError) as cut_chunks:
            async for chunk in objects.chunks("big/cut.bin"):
                received.append(chunk)
        assert cut_chunks.value.code == "truncated"
        assert sum(map(len, received)) < len(body)
        assert proxy.injected["truncate"] == 2
        proxy.faults.truncate_rate = 0.0
        assert (await objects.get("big/cut.bin")).body == body
    finally:
        await bucket.__aexit__(None, None, None)
