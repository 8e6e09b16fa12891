"""The test servers work over real sockets: rclone and moto S3, the proxy, the origin, FTP,
and the synthetic catalog."""

from __future__ import annotations

import asyncio
import io
import json
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import aioftp
import aiohttp
import botocore.exceptions
import pytest
from PIL import Image

from tui_backfill.servers.catalog import ACTIVE_SKUS_QUERY, active_skus
from tui_backfill.servers.origin import OriginFaults, OriginServer, expected_body, is_missing
from tui_backfill.servers.proxy import ProxyFaults, ReverseProxy, classify

if TYPE_CHECKING:
    from conftest import FtpOrigin, S3Target


# -- S3 -------------------------------------------------------------------------------------
async def test_rclone_put_get_through_proxy(rclone_s3: S3Target, s3_proxy) -> None:
    proxy = await s3_proxy(rclone_s3)
    target = rclone_s3.via(proxy)
    body = expected_body("100000", 1)
    key = "rsr/highres/100000_1_HR.jpg"

    def roundtrip() -> tuple[bytes, int]:
        client = target.client()
        with pytest.raises(botocore.exceptions.ClientError) as missing:
            client.head_object(Bucket=target.bucket, Key=key)
        client.put_object(Bucket=target.bucket, Key=key, Body=body, ContentType="image/jpeg")
        head = client.head_object(Bucket=target.bucket, Key=key)
        got = client.get_object(Bucket=target.bucket, Key=key)["Body"].read()
        assert missing.value.response["Error"]["Code"] in ("404", "NoSuchKey")
        return got, head["ContentLength"]

    got, length = await asyncio.to_thread(roundtrip)
    assert got == body and length == len(body)
    assert proxy.puts == {f"test-bucket/{key}": 1}
    assert proxy.requests[("PUT", "put_object")] == 1
    assert proxy.requests[("HEAD", "head_object")] == 2
    assert proxy.requests[("GET", "get_object")] == 1
    assert rclone_s3.data_dir is not None
    assert (rclone_s3.data_dir / "test-bucket" / key).read_bytes() == body


async def test_proxy_slowdown_fault(rclone_s3: S3Target, s3_proxy) -> None:
    proxy = await s3_proxy(rclone_s3, ProxyFaults(fail_first_n_puts=1))
    client = rclone_s3.via(proxy).client()

    def put() -> None:
        client.put_object(Bucket=rclone_s3.bucket, Key="k/a.jpg", Body=b"abc")

    with pytest.raises(botocore.exceptions.ClientError) as err:
        await asyncio.to_thread(put)
    assert err.value.response["Error"]["Code"] == "SlowDown"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    await asyncio.to_thread(put)
    assert proxy.puts == {"test-bucket/k/a.jpg": 1}
    assert proxy.injected["fail_first_n_puts"] == 1
    assert proxy.statuses[("put_object", 503)] == 1


async def test_proxy_lost_answer(rclone_s3: S3Target, s3_proxy) -> None:
    """reset_rate: the upstream wrote the object, the client never hears so."""
    proxy = await s3_proxy(rclone_s3, ProxyFaults(reset_rate=1.0))
    client = rclone_s3.via(proxy).client()
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        await asyncio.to_thread(client.put_object, Bucket="test-bucket", Key="lost.jpg", Body=b"z")
    assert proxy.puts == {"test-bucket/lost.jpg": 1} and proxy.injected["reset"] == 1
    assert proxy.lost_puts == {"test-bucket/lost.jpg": 1}
    assert rclone_s3.keys() == ["lost.jpg"]


async def test_proxy_s3_faults_before_forwarding(rclone_s3: S3Target, s3_proxy) -> None:
    """500/503, dropped connections and stalls past the client's timeout never reach S3."""
    proxy = await s3_proxy(rclone_s3)
    client = rclone_s3.via(proxy).client(read_timeout=0.3, connect_timeout=2)

    def put(key: str) -> Exception:
        try:
            client.put_object(Bucket=rclone_s3.bucket, Key=key, Body=b"abc")
        except Exception as exc:
            return exc
        raise AssertionError("the PUT succeeded")

    proxy.faults = ProxyFaults(error_rate=1.0)
    err = await asyncio.to_thread(put, "e.jpg")
    assert isinstance(err, botocore.exceptions.ClientError)
    status = err.response["ResponseMetadata"]["HTTPStatusCode"]
    assert (status, err.response["Error"]["Code"]) in {
        (500, "InternalError"),
        (503, "ServiceUnavailable"),
    }
    proxy.faults = ProxyFaults(drop_rate=1.0)
    err = await asyncio.to_thread(put, "d.jpg")
    assert isinstance(err, botocore.exceptions.ConnectionClosedError)
    proxy.faults = ProxyFaults(stall_rate=1.0, stall_seconds=0.8)
    err = await asyncio.to_thread(put, "s.jpg")
    assert isinstance(err, botocore.exceptions.ReadTimeoutError)
    await wait_until(lambda: proxy.abandoned["put_object"] == 1)
    assert dict(proxy.injected) == {"error": 1, "drop": 1, "stall": 1}
    assert proxy.forwarded == {} and proxy.puts == {} and proxy.lost_puts == {}
    assert rclone_s3.keys() == []


async def test_proxy_s3_truncated_listing_and_undelivered_put(
    rclone_s3: S3Target, s3_proxy
) -> None:
    """A truncated answer breaks the client's read; a PUT answer the client no longer waits
    for (here: a slow upstream, a second proxy adding latency) is counted as undelivered."""
    client = rclone_s3.client()
    client.put_object(Bucket=rclone_s3.bucket, Key="a.jpg", Body=b"abc")
    proxy = await s3_proxy(rclone_s3, ProxyFaults(truncate_rate=1.0, kinds={"list", "put_object"}))
    via = rclone_s3.via(proxy).client()
    with pytest.raises((botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)):
        await asyncio.to_thread(via.list_objects_v2, Bucket=rclone_s3.bucket)
    # a PUT's answer has no body: left alone
    await asyncio.to_thread(via.put_object, Bucket=rclone_s3.bucket, Key="b.jpg", Body=b"b")
    assert proxy.injected == {"truncate": 1} and proxy.lost_puts == {}

    slow = await s3_proxy(rclone_s3, ProxyFaults(latency=0.8))
    front = await s3_proxy(slow.endpoint_url)
    impatient = rclone_s3.via(front).client(read_timeout=0.3)
    with pytest.raises(botocore.exceptions.ReadTimeoutError):
        await asyncio.to_thread(
            impatient.put_object, Bucket=rclone_s3.bucket, Key="u.jpg", Body=b"u"
        )
    await wait_until(lambda: front.undelivered_puts["test-bucket/u.jpg"] == 1)
    assert front.puts == {"test-bucket/u.jpg": 1} and front.lost_puts == {}
    assert sorted(rclone_s3.keys()) == ["a.jpg", "b.jpg", "u.jpg"]


async def wait_until(predicate: Callable[[], bool], within: float = 5) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_classify() -> None:
    assert classify("GET", "/b") == ("list", None)
    assert classify("GET", "/b/") == ("list", None)
    assert classify("HEAD", "/b") == ("head_bucket", None)
    assert classify("PUT", "/b/x/y.jpg") == ("put_object", "b/x/y.jpg")
    assert classify("DELETE", "/b/x") == ("other", "b/x")


def test_moto_conditional_put(moto_s3: S3Target) -> None:
    client = moto_s3.client()
    client.put_object(Bucket=moto_s3.bucket, Key="a.jpg", Body=b"one", IfNoneMatch="*")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        client.put_object(Bucket=moto_s3.bucket, Key="a.jpg", Body=b"two", IfNoneMatch="*")
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert err.value.response["Error"]["Code"] == "PreconditionFailed"
    assert client.get_object(Bucket=moto_s3.bucket, Key="a.jpg")["Body"].read() == b"one"
    assert moto_s3.keys() == ["a.jpg"]


async def test_proxy_counts_put_answers_by_status(moto_s3: S3Target, s3_proxy) -> None:
    """put_answers: every object PUT the upstream answered, per key and status (2xx and 412)."""
    proxy = await s3_proxy(moto_s3)
    client = moto_s3.via(proxy).client()

    def put() -> None:
        client.put_object(Bucket=moto_s3.bucket, Key="c.jpg", Body=b"c", IfNoneMatch="*")

    await asyncio.to_thread(put)
    with pytest.raises(botocore.exceptions.ClientError):
        await asyncio.to_thread(put)
    assert proxy.puts == {"test-bucket/c.jpg": 1}
    assert proxy.put_answers == {("test-bucket/c.jpg", 200): 1, ("test-bucket/c.jpg", 412): 1}
    proxy.reset_counters()
    assert not proxy.put_answers


def test_s3_env(s3_env: dict[str, str], rclone_s3: S3Target) -> None:
    assert s3_env["AWS_ENDPOINT_URL"] == rclone_s3.endpoint_url
    assert s3_env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(s3_env)


# -- origin ---------------------------------------------------------------------------------
def test_expected_body_is_unique_jpeg() -> None:
    a, b = expected_body("100000", 1), expected_body("100000", 2)
    assert a != b and a[:2] == b"\xff\xd8" and a[2:4] == b"\xff\xfe"
    image = Image.open(io.BytesIO(a))
    image.load()
    assert image.size == (64, 64) and image.info["comment"] == b"100000_1"
    big = expected_body("A_", 3, 64 * 1024)
    assert len(big) == 64 * 1024
    Image.open(io.BytesIO(big)).load()


async def test_origin_serves_expected_bodies(origin: OriginServer) -> None:
    origin.faults.missing = {("100001", 2)}
    async with aiohttp.ClientSession() as session:
        for path, sku, angle in (("/100000_1", "100000", 1), ("/img/A__3.jpg", "A_", 3)):
            async with session.get(origin.base_url + path) as resp:
                assert resp.status == 200
                assert resp.headers["Content-Type"] == "image/jpeg"
                assert await resp.read() == expected_body(sku, angle)
        async with session.head(origin.url_template.format(sku="100000", angle=1)) as resp:
            assert resp.status == 200
            assert resp.content_length == len(expected_body("100000", 1))
        async with session.get(origin.url_template.format(sku="100001", angle=2)) as resp:
            assert resp.status == 404
        async with session.get(origin.base_url + "/__stats") as resp:
            stats = await resp.json()
    assert origin.gets == 3 and origin.heads == 1
    assert origin.requests[("GET", "/img/A__3.jpg")] == 1
    assert stats["gets"] == 3 and "GET /__stats" not in stats["requests"]


async def test_origin_fail_first_n(origin: OriginServer) -> None:
    origin.faults.fail_first_n = 2
    url = origin.url_template.format(sku="100002", angle=1)
    statuses = []
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            async with session.get(url) as resp:
                statuses.append(resp.status)
                body = await resp.read()
    assert statuses == [503, 503, 200]
    assert body == expected_body("100002", 1)
    assert origin.requests[("GET", "/100002_1")] == 3
    assert origin.injected["fail_first_n"] == 2
    assert origin.gets == 3


async def test_origin_truncate_and_html(origin: OriginServer) -> None:
    origin.faults.truncate_rate = 1.0
    url = origin.url_template.format(sku="100003", angle=1)
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientPayloadError):
            async with session.get(url) as resp:
                assert resp.content_length == len(expected_body("100003", 1))
                await resp.read()
        origin.faults = OriginFaults(reset_rate=1.0)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            async with session.get(url) as resp:
                await resp.read()
        origin.faults = OriginFaults(html_rate=1.0)
        async with session.get(url) as resp:
            assert resp.status == 200 and resp.content_type == "text/html"
        origin.faults = OriginFaults()  # healthy again
        async with session.get(url) as resp:
            assert await resp.read() == expected_body("100003", 1)
    assert origin.injected["truncate"] == 1 and origin.injected["html"] == 1
    assert origin.injected["reset"] >= 1  # aiohttp may silently retry once


async def test_origin_missing_fraction_is_deterministic() -> None:
    skus = [str(100000 + i) for i in range(2000)]
    missing = [s for s in skus if is_missing(s, 1, 0.03)]
    assert 30 < len(missing) < 90
    async with OriginServer(OriginFaults(missing_fraction=0.03)) as server:
        async with aiohttp.ClientSession() as session:
            for sku in missing[:3] + [s for s in skus[:20] if s not in missing][:3]:
                async with session.get(server.url_template.format(sku=sku, angle=1)) as resp:
                    assert resp.status == (404 if sku in missing else 200)


async def test_origin_subprocess() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tui_backfill.servers.origin",
        "--port",
        "0",
        "--fail-first-n",
        "1",
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])},
    )
    try:
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().strip()
        assert line.startswith("ORIGIN http://127.0.0.1:")
        base = line.split()[1]
        async with aiohttp.ClientSession() as session:
            async with session.get(base + "/RSR-1234_2.jpg") as resp:
                assert resp.status == 503
            async with session.get(base + "/RSR-1234_2.jpg") as resp:
                assert await resp.read() == expected_body("RSR-1234", 2)
            async with session.get(base + "/__stats") as resp:
                stats = json.loads(await resp.text())
        assert stats["gets"] == 2 and stats["injected"] == {"fail_first_n": 1}
    finally:
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_proxy_in_front_of_origin_injects_each_fault() -> None:
    """``s3=False``: any HTTP upstream. Each fault kind, what the client sees, and whether the
    request reached the origin."""
    body = expected_body("100000", 1)
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        OriginServer() as origin,
        ReverseProxy(origin.base_url, s3=False) as proxy,
        aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=0.5)) as s,
    ):
        s._retry_connection = False  # aiohttp re-sends once on a dropped connection otherwise
        url = proxy.endpoint_url + "/100000_1"

        async def get(faults: ProxyFaults) -> tuple[int, bytes] | type[BaseException]:
            proxy.faults = faults
            try:
                async with s.get(url) as resp:
                    return resp.status, await resp.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                return type(exc)

        assert await get(ProxyFaults()) == (200, body)
        assert await get(ProxyFaults(slowdown_rate=1.0)) == (503, b"slow down\n")
        assert await get(ProxyFaults(error_rate=1.0)) in (
            (500, b"injected 500\n"),
            (503, b"injected 503\n"),
        )
        assert await get(ProxyFaults(drop_rate=1.0)) is aiohttp.ServerDisconnectedError
        assert await get(ProxyFaults(stall_rate=1.0, stall_seconds=0.1)) == (200, body)
        assert await get(ProxyFaults(stall_rate=1.0, stall_seconds=0.8)) is TimeoutError
        await asyncio.sleep(0.5)  # the stall ends; its client has gone
        assert proxy.abandoned == {"get_object": 1}
        assert await get(ProxyFaults(truncate_rate=1.0)) is aiohttp.ClientPayloadError
        assert await get(ProxyFaults(reset_rate=1.0)) is aiohttp.ServerDisconnectedError
        assert await get(ProxyFaults(error_rate=1.0, kinds={"head_object"})) == (200, body)
        started = time.monotonic()
        assert await get(ProxyFaults(latency=0.2)) == (200, body)
        assert time.monotonic() - started >= 0.2
    assert dict(proxy.injected) == {
        "slowdown": 1, "error": 1, "drop": 1, "stall": 2, "truncate": 1, "reset": 1,
    }  # fmt: skip
    # healthy, short stall, truncate, reset, the HEAD-only fault, latency reached the origin
    assert proxy.forwarded == {"get_object": 6} and origin.gets == 6
    assert proxy.requests[("GET", "get_object")] == 10


# -- FTP ------------------------------------------------------------------------------------
async def test_ftp_download_and_missing(ftp_server) -> None:
    ftp: FtpOrigin = await ftp_server({"100000_1": expected_body("100000", 1)})
    async with aioftp.Client.context(ftp.host, ftp.port, ftp.user, ftp.password) as client:
        stream = await client.download_stream("100000_1")
        data = await stream.read()
        await stream.finish()
        assert data == expected_body("100000", 1)
        with pytest.raises(aioftp.StatusCodeError) as err:
            stream = await client.download_stream("100000_2")
            await stream.read()
            await stream.finish()
        assert "550" in [str(code) for code in err.value.received_codes]


# -- catalog --------------------------------------------------------------------------------
def test_catalog_counts_and_dedup(catalog_db) -> None:
    path: Path = catalog_db(500, 120)
    conn = sqlite3.connect(path)
    rows = conn.execute(ACTIVE_SKUS_QUERY).fetchall()
    total, distinct = conn.execute("SELECT count(*), count(DISTINCT sku) FROM products").fetchone()
    everything = {r[0] for r in conn.execute("SELECT sku FROM products")}
    conn.close()
    skus = active_skus(path)
    assert len(skus) == 500 and len(rows) > 500  # duplicate rows exist
    assert distinct == 620 and total > 620
    assert skus == sorted(set(skus), key=str.encode)
    assert {"A1", "A_", "RSR-1234"} <= everything
    assert [r[0] for r in rows] != sorted(r[0] for r in rows)  # not inserted in order
    assert catalog_db(500, 120) != path and active_skus(catalog_db(500, 120)) == skus
