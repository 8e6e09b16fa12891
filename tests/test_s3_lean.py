"""The lean PUT/HEAD/GET path (tui_backfill.seams.s3_lean) against real S3 servers on loopback.

What it writes is what a GetObject reads (rclone and moto); its requests are the ones the
Bucket's aiobotocore client would send (URL, signed headers, payload hash, credential scope)
for path-style and virtual-hosted addressing; its failures are classified as the Bucket's; an
HTTP_PROXY carries it as it carries the Bucket's calls. Its streamed GET is tested with the S3
GET seam's contract in tests/test_s3_objects.py.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest

from tui_backfill.outcomes import BackfillError, FatalError, NotFoundError, RetryableError
from tui_backfill.seams.bucket import Bucket
from tui_backfill.seams.s3_lean import LeanBucket, read_error
from tui_backfill.servers.proxy import ProxyFaults

if TYPE_CHECKING:
    from conftest import S3Target

TIMEOUT = 1.0
MARGIN = 0.75  # scheduling slack on a shared 2-core machine
WEBP = "image/webp"
CACHE = "public, max-age=31536000, immutable"


def bucket_for(
    target: S3Target,
    *,
    endpoint_url: str | None = None,
    secret: str | None = None,
    name: str | None = None,
    path_style: bool = True,
    pool_size: int = 4,
) -> Bucket:
    return Bucket(
        name or target.bucket,
        endpoint_url=endpoint_url or target.endpoint_url,
        region=target.region,
        path_style=path_style,
        timeout=TIMEOUT,
        pool_size=pool_size,
        credentials=(target.access_key, secret or target.secret_key),
    )


async def entered(bucket: Bucket, stack: Any) -> LeanBucket:
    await stack.enter_async_context(bucket)
    return await stack.enter_async_context(LeanBucket(bucket))


@pytest.fixture
async def stack() -> AsyncIterator[Any]:
    import contextlib

    async with contextlib.AsyncExitStack() as stack:
        yield stack


@pytest.mark.parametrize("server", ["rclone_s3", "moto_s3"])
async def test_what_is_put_is_what_a_get_reads(
    server: str, request: pytest.FixtureRequest, stack: Any
) -> None:
    target: S3Target = request.getfixturevalue(server)
    lean = await entered(bucket_for(target), stack)
    key = "rsr/webp/a b+c~é_1.webp"
    body = bytes(range(256)) * 40
    assert await lean.put(key, body, WEBP, if_none_match=True, cache_control=CACHE) is True
    got = target.client().get_object(Bucket=target.bucket, Key=key)
    assert got["Body"].read() == body
    assert (got["ContentType"], got["CacheControl"]) == (WEBP, CACHE)
    assert await lean.exists(key) is True
    assert await lean.exists("rsr/webp/a b+c~é_2.webp") is False


async def test_a_second_conditional_put_finds_the_first(moto_s3: S3Target, stack: Any) -> None:
    lean = await entered(bucket_for(moto_s3), stack)
    assert await lean.put("k.webp", b"first", WEBP, if_none_match=True) is True
    assert await lean.put("k.webp", b"second", WEBP, if_none_match=True) is False
    got = moto_s3.client().get_object(Bucket=moto_s3.bucket, Key="k.webp")
    assert got["Body"].read() == b"first"
    assert await lean.put("k.webp", b"third", WEBP, if_none_match=False) is True


async def test_the_aws_chain_signs_when_no_key_pair_is_given(
    rclone_s3: S3Target, stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in rclone_s3.env().items():
        monkeypatch.setenv(name, value)
    bucket = Bucket(
        rclone_s3.bucket,
        endpoint_url=rclone_s3.endpoint_url,
        region=None,
        path_style=False,
        timeout=TIMEOUT,
        pool_size=2,
    )
    lean = await entered(bucket, stack)
    assert await lean.put("chain.webp", b"x", WEBP, if_none_match=True) is True
    assert await lean.exists("chain.webp") is True


# -- the same requests as aiobotocore's -----------------------------------------------------


class _Stop(Exception):
    pass


async def aiobotocore_request(bucket: Bucket, operation: str, **params: Any) -> Any:
    """The signed request the Bucket's client would send (stopped before sending)."""
    seen: list[Any] = []

    def capture(request: Any, **_: Any) -> None:
        seen.append(request)
        raise _Stop

    events = bucket._client.meta.events
    event = f"before-send.s3.{operation}"
    events.register_first(event, capture, unique_id="test-capture")
    try:
        await getattr(bucket._client, re.sub(r"(?<!^)([A-Z])", r"_\1", operation).lower())(
            Bucket=bucket.name, **params
        )
    except _Stop:
        pass
    finally:
        events.unregister(event, unique_id="test-capture")
    return seen[0]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def signed_parts(headers: dict[str, Any]) -> tuple[str, str, str]:
    """(credential scope without the date, signed header names, payload hash)."""
    auth = _text(headers["Authorization"])
    scope = re.search(r"Credential=[^/]+/\d{8}/([^,]+)", auth)
    names = re.search(r"SignedHeaders=([^,]+)", auth)
    assert scope and names, auth
    return scope.group(1), names.group(1), _text(headers["X-Amz-Content-SHA256"])


@pytest.mark.parametrize(
    ("endpoint", "name", "region", "path_style", "base"),
    [
        ("http://127.0.0.1:9", "test-bucket", None, True, "http://127.0.0.1:9/test-bucket"),
        ("http://127.0.0.1:9", "test-bucket", None, False, "http://127.0.0.1:9/test-bucket"),
        (
            "https://s3.us-west-004.backblazeb2.com",
            "media",
            "us-west-004",
            False,
            "https://s3.us-west-004.backblazeb2.com/media",
        ),
        (None, "media", "eu-west-1", False, "https://media.s3.eu-west-1.amazonaws.com"),
        (None, "media", "eu-west-1", True, "https://s3.eu-west-1.amazonaws.com/media"),
        (None, "my.media", "eu-west-1", False, "https://s3.eu-west-1.amazonaws.com/my.media"),
    ],
    ids=["path", "auto-custom", "https-custom", "aws-virtual", "aws-path", "aws-dotted"],
)
async def test_requests_are_the_ones_aiobotocore_sends(
    endpoint: str | None,
    name: str,
    region: str | None,
    path_style: bool,
    base: str,
    stack: Any,
) -> None:
    """Addressing, key encoding, credential scope, signed headers and the payload's hash are
    aiobotocore's own for the same bucket, endpoint and addressing (nothing is sent)."""
    bucket = Bucket(
        name,
        endpoint_url=endpoint,
        region=region,
        path_style=path_style,
        timeout=TIMEOUT,
        pool_size=1,
        credentials=("AKIDEXAMPLE", "not-a-real-secret"),
    )
    lean = await entered(bucket, stack)
    assert lean.bucket_url == base
    key = "rsr/webp/a b+c~é%2F/x_1.webp"
    body = b"RIFF....WEBP"
    theirs = await aiobotocore_request(
        bucket,
        "PutObject",
        Key=key,
        Body=body,
        ContentType=WEBP,
        CacheControl=CACHE,
        IfNoneMatch="*",
    )
    url, ours = await lean.signed(
        "PUT", key, {"Content-Type": WEBP, "Cache-Control": CACHE, "If-None-Match": "*"}, body
    )
    assert url == theirs.url
    assert signed_parts(ours) == signed_parts(dict(theirs.headers))
    theirs = await aiobotocore_request(bucket, "HeadObject", Key=key)
    url, ours = await lean.signed("HEAD", key, {}, b"")
    assert url == theirs.url
    assert signed_parts(ours) == signed_parts(dict(theirs.headers))


# -- failures, classified as the Bucket's ---------------------------------------------------


async def test_a_wrong_secret_is_fatal_and_not_shown(rclone_s3: S3Target, stack: Any) -> None:
    lean = await entered(bucket_for(rclone_s3, secret="wrong-secret-value"), stack)
    for call in (
        lean.put("k.webp", b"x", WEBP, if_none_match=True),
        lean.exists("k.webp"),
    ):
        with pytest.raises(FatalError) as failed:
            await call
        assert failed.value.code in ("s3_SignatureDoesNotMatch", "s3_403", "s3_AccessDenied")
        assert "wrong-secret-value" not in str(failed.value)
        assert rclone_s3.secret_key not in str(failed.value)


async def test_a_missing_bucket_is_fatal(moto_s3: S3Target, stack: Any) -> None:
    lean = await entered(bucket_for(moto_s3, name="no-such-bucket"), stack)
    with pytest.raises(FatalError) as failed:
        await lean.put("k.webp", b"x", WEBP, if_none_match=True)
    assert failed.value.code == "s3_NoSuchBucket"


async def test_a_503_is_retryable(rclone_s3: S3Target, s3_proxy: Any, stack: Any) -> None:
    proxy = await s3_proxy(rclone_s3, ProxyFaults(fail_first_n_puts=1))
    lean = await entered(bucket_for(rclone_s3, endpoint_url=proxy.endpoint_url), stack)
    with pytest.raises(RetryableError) as failed:
        await lean.put("k.webp", b"x", WEBP, if_none_match=True)
    assert failed.value.code == "s3_SlowDown"
    assert str(failed.value.message) == "S3 503 SlowDown: Please reduce your request rate."
    assert await lean.put("k.webp", b"x", WEBP, if_none_match=True) is True


async def test_a_server_without_conditional_writes_is_remembered(
    rclone_s3: S3Target, s3_proxy: Any, stack: Any
) -> None:
    """501 NotImplemented to If-None-Match: the object is written plainly, and from then on
    neither path sends the header (the flag is the Bucket's)."""
    proxy = await s3_proxy(rclone_s3, ProxyFaults(reject_conditional=True))
    bucket = bucket_for(rclone_s3, endpoint_url=proxy.endpoint_url)
    lean = await entered(bucket, stack)
    assert await lean.put("a.webp", b"a", WEBP, if_none_match=True) is True
    assert bucket.conditional_writes is False
    assert proxy.injected["reject_conditional"] == 1
    assert await lean.put("b.webp", b"b", WEBP, if_none_match=True) is True
    assert await bucket.put("c.webp", b"c", WEBP, if_none_match=True) is True
    assert proxy.injected["reject_conditional"] == 1
    assert proxy.puts == {"test-bucket/a.webp": 1, "test-bucket/b.webp": 1, "test-bucket/c.webp": 1}
    got = rclone_s3.client().get_object(Bucket=rclone_s3.bucket, Key="a.webp")
    assert got["Body"].read() == b"a"


async def test_a_stalled_server_times_out_within_the_bound(
    rclone_s3: S3Target, s3_proxy: Any, stack: Any
) -> None:
    proxy = await s3_proxy(rclone_s3, ProxyFaults(stall_rate=1.0, stall_seconds=5))
    lean = await entered(bucket_for(rclone_s3, endpoint_url=proxy.endpoint_url), stack)
    for call in (lean.put("k.webp", b"x", WEBP, if_none_match=True), lean.exists("k.webp")):
        started = time.monotonic()
        with pytest.raises(RetryableError) as failed:
            await asyncio.wait_for(call, 4 * TIMEOUT)
        elapsed = time.monotonic() - started
        assert failed.value.code == "timeout"
        assert "no complete answer within 1 s" in failed.value.message
        assert TIMEOUT - 0.1 <= elapsed <= TIMEOUT + MARGIN, f"{elapsed:.2f} s"


@pytest.mark.parametrize("call", ["put", "exists"])
async def test_a_trickled_answer_is_cut_off_at_the_bound(
    rclone_s3: S3Target, stack: Any, call: str
) -> None:
    """Each byte of the answer comes within the socket timeout: only the bound on the whole
    call ends it."""
    from test_bucket import TrickleRelay

    relay = await TrickleRelay(rclone_s3.endpoint_url).start()
    stack.push_async_callback(relay.stop)
    lean = await entered(bucket_for(rclone_s3, endpoint_url=relay.endpoint_url), stack)
    rclone_s3.client().put_object(Bucket=rclone_s3.bucket, Key="k.webp", Body=b"x")
    relay.mode = "trickle"
    started = time.monotonic()
    with pytest.raises(RetryableError) as failed:
        if call == "put":
            await asyncio.wait_for(lean.put("k.webp", b"y", WEBP, if_none_match=False), 4)
        else:
            await asyncio.wait_for(lean.exists("k.webp"), 4)
    elapsed = time.monotonic() - started
    assert failed.value.code == "timeout"
    assert TIMEOUT - 0.1 <= elapsed <= TIMEOUT + MARGIN, f"{elapsed:.2f} s"


async def test_a_reset_answer_is_retryable_and_never_resent(
    rclone_s3: S3Target, s3_proxy: Any, stack: Any
) -> None:
    """The PUT goes on a reused keep-alive connection (one in the pool), the proxy writes the
    object and drops the answer: one request seen, a retryable `s3_connection`."""
    proxy = await s3_proxy(rclone_s3, ProxyFaults(reset_rate=1.0, kinds={"put_object"}))
    lean = await entered(bucket_for(rclone_s3, endpoint_url=proxy.endpoint_url, pool_size=1), stack)
    rclone_s3.client().put_object(Bucket=rclone_s3.bucket, Key="there.webp", Body=b"x")
    assert await lean.exists("there.webp") is True  # opens the connection the PUT reuses
    with pytest.raises(RetryableError) as failed:
        await lean.put("k.webp", b"x", WEBP, if_none_match=True)
    assert failed.value.code == "s3_connection"
    assert proxy.requests[("PUT", "put_object")] == 1
    assert proxy.lost_puts == {"test-bucket/k.webp": 1}


async def test_programming_errors_propagate_unchanged(rclone_s3: S3Target, stack: Any) -> None:
    lean = await entered(bucket_for(rclone_s3), stack)
    with pytest.raises(TypeError):
        await lean.put("k.webp", object(), WEBP, if_none_match=True)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await lean.exists(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("status", "body", "read"),
    [
        (
            412,
            b"<?xml version='1.0'?><Error><Code>PreconditionFailed</Code>"
            b"<Message>At least one of the pre-conditions you specified did not hold</Message>"
            b"</Error>",
            (
                "PreconditionFailed",
                412,
                "At least one of the pre-conditions you specified did not hold",
            ),
        ),
        (403, b"", ("403", 403, "Forbidden")),
        (502, b"proxy: upstream failed\n", ("502", 502, "Bad Gateway")),
        (
            400,
            b"<Error><Code>InvalidArgument</Code></Error>",
            ("InvalidArgument", 400, "InvalidArgument"),
        ),
    ],
    ids=["xml", "head", "not-xml", "no-message"],
)
def test_error_answers_read_as_botocore_reads_them(
    status: int, body: bytes, read: tuple[str, int, str]
) -> None:
    assert read_error(status, body) == read


class ForwardProxy:
    """A plain HTTP forward proxy on loopback: requests in absolute form (`GET http://host/...`)
    are relayed to their origin unchanged, and counted by method with their Proxy-Authorization;
    with `tls`, an https proxy (the requests reach it over TLS)."""

    def __init__(self, tls: Any = None) -> None:
        self.tls = tls
        self.seen: list[tuple[str, str, str | None]] = []  # (method, URL, Proxy-Authorization)
        self._runner: Any = None
        self.url = ""

    async def start(self) -> ForwardProxy:
        import aiohttp
        import yarl
        from aiohttp import web

        client = aiohttp.ClientSession(auto_decompress=False)

        async def relay(request: web.Request) -> web.StreamResponse:
            # the target as the client wrote it (over TLS aiohttp would make it https://)
            target = yarl.URL(request.raw_path, encoded=True)
            self.seen.append(
                (request.method, str(target), request.headers.get("Proxy-Authorization"))
            )
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() not in ("proxy-authorization", "proxy-connection", "connection")
            }
            async with client.request(
                request.method,
                target,  # absolute: the client asked for this origin
                headers=headers,
                data=await request.read(),
                allow_redirects=False,
                skip_auto_headers=("Content-Type", "User-Agent", "Accept-Encoding"),
            ) as answer:
                body = await answer.read()
                out = web.Response(status=answer.status, body=body)
                for k, v in answer.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        out.headers[k] = v
                return out

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", relay)
        app.on_cleanup.append(lambda _: client.close())
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.tls)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if self.tls is not None else 'http'}://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()


async def test_requests_go_through_the_proxy_the_environment_names(
    rclone_s3: S3Target, stack: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY carries the lean PUT, HEAD and GET as it carries the Bucket's own calls, with
    the proxy's credentials as Proxy-Authorization (never in the URL); NO_PROXY exempts a host."""
    proxy = await ForwardProxy().start()
    stack.push_async_callback(proxy.stop)
    no_proxies(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", proxy.url.replace("http://", "http://op:s%40cret@"))
    bucket = bucket_for(rclone_s3)
    lean = await entered(bucket, stack)
    key = "via/proxy.webp"
    assert await lean.put(key, b"through", WEBP, if_none_match=False) is True
    assert await lean.exists(key) is True
    assert (await bucket.objects().get(key)).body == b"through"
    lean_calls = [(m, u) for m, u, _ in proxy.seen]
    where = f"{rclone_s3.endpoint_url}/{rclone_s3.bucket}/{key}"
    assert lean_calls == [("PUT", where), ("HEAD", where), ("GET", where)]
    assert {auth for _, _, auth in proxy.seen} == {"Basic b3A6c0BjcmV0"}  # op:s@cret
    await bucket.preflight()  # the Bucket's aiobotocore client: the same proxy and header
    assert proxy.seen[-1][:2] == ("HEAD", f"{rclone_s3.endpoint_url}/{rclone_s3.bucket}")
    assert proxy.seen[-1][2] == "Basic b3A6c0BjcmV0"

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # (boto3 below too: it would block this loop)
    assert rclone_s3.client().get_object(Bucket=rclone_s3.bucket, Key=key)["Body"].read() == (
        b"through"
    )
    exempt = await entered(bucket_for(rclone_s3), stack)
    before = len(proxy.seen)
    assert await exempt.exists(key) is True
    assert len(proxy.seen) == before


class TunnelProxy:
    """An HTTP proxy that only opens tunnels (CONNECT), recording each CONNECT's target and
    Proxy-Authorization; with `refuse`, it answers that status instead; with `tls`, it is an
    https proxy (TLS to the proxy, then the endpoint's TLS inside the tunnel)."""

    def __init__(self, refuse: int | None = None, tls: Any = None) -> None:
        self.refuse = refuse
        self.tls = tls
        self.seen: list[tuple[str, str | None]] = []
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> TunnelProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        scheme = "https" if self.tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            method, target, _ = head[0].split(" ")
            auth = next(
                (line.split(":", 1)[1].strip() for line in head[1:]
                 if line.lower().startswith("proxy-authorization:")),
                None,
            )  # fmt: skip
            self.seen.append((f"{method} {target}", auth))
            if method != "CONNECT" or self.refuse:
                status = self.refuse or 405
                writer.write(f"HTTP/1.1 {status} No\r\nContent-Length: 0\r\n\r\n".encode())
                return
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")

            async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
                try:
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                finally:
                    dst.close()

            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def test_https_goes_through_a_tunnel_of_the_proxy_the_environment_names(
    rclone_s3: S3Target, stack: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY with an https endpoint: one CONNECT a connection, carrying the proxy's
    credentials, and TLS with the endpoint (verified with its CA) inside the tunnel; a proxy
    that refuses the tunnel is a retryable connection fault naming its answer."""
    from tui_backfill.servers.proxy import ReverseProxy

    cert, serving = private_ca(tmp_path)
    https = await ReverseProxy(rclone_s3.endpoint_url, ssl_context=serving).start()
    stack.push_async_callback(https.stop)
    tunnel = await TunnelProxy().start()
    stack.push_async_callback(tunnel.stop)
    no_proxies(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", tunnel.url.replace("http://", "http://op:s%40cret@"))
    monkeypatch.setenv("AWS_CA_BUNDLE", cert)

    lean = await entered(bucket_for(rclone_s3, endpoint_url=https.endpoint_url), stack)
    key = "tunnel/a.webp"
    assert await lean.put(key, b"tunnelled", WEBP, if_none_match=False) is True
    assert await lean.exists(key) is True
    assert rclone_s3.client().get_object(Bucket=rclone_s3.bucket, Key=key)["Body"].read() == (
        b"tunnelled"
    )
    where = https.endpoint_url.removeprefix("https://")
    assert tunnel.seen == [(f"CONNECT {where}", "Basic b3A6c0BjcmV0")]  # one connection, kept
    assert https.requests[("PUT", "put_object")] == 1

    refusing = await TunnelProxy(refuse=407).start()
    stack.push_async_callback(refusing.stop)
    monkeypatch.setenv("HTTPS_PROXY", refusing.url)
    refused_lean = await entered(bucket_for(rclone_s3, endpoint_url=https.endpoint_url), stack)
    with pytest.raises(RetryableError) as refused:
        await refused_lean.exists(key)
    assert refused.value.code == "s3_connection"
    assert f"ProxyRefused: the proxy {refusing.url} answered 407" in refused.value.message
    assert refusing.seen == [(f"CONNECT {where}", None)]


async def test_an_https_proxy_is_reached_over_tls_and_verified_with_the_buckets_ca(
    rclone_s3: S3Target, stack: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTPS_PROXY naming an https proxy: TLS to the proxy (verified with AWS_CA_BUNDLE, as the
    endpoint is), CONNECT inside it, then the endpoint's own TLS inside the tunnel."""
    from tui_backfill.servers.proxy import ReverseProxy

    cert, serving = private_ca(tmp_path)
    https = await ReverseProxy(rclone_s3.endpoint_url, ssl_context=serving).start()
    stack.push_async_callback(https.stop)
    tunnel = await TunnelProxy(tls=serving).start()
    stack.push_async_callback(tunnel.stop)
    no_proxies(monkeypatch)
    monkeypatch.setenv("HTTPS_PROXY", tunnel.url)
    monkeypatch.setenv("AWS_CA_BUNDLE", cert)

    lean = await entered(bucket_for(rclone_s3, endpoint_url=https.endpoint_url), stack)
    key = "tunnel/tls.webp"
    assert await lean.put(key, b"twice wrapped", WEBP, if_none_match=False) is True
    assert await lean.exists(key) is True
    assert rclone_s3.client().get_object(Bucket=rclone_s3.bucket, Key=key)["Body"].read() == (
        b"twice wrapped"
    )
    where = https.endpoint_url.removeprefix("https://")
    assert tunnel.seen == [(f"CONNECT {where}", None)]
    assert https.requests[("PUT", "put_object")] == 1

    monkeypatch.delenv("AWS_CA_BUNDLE")  # the proxy's certificate is then no one's
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    untrusting = await entered(bucket_for(rclone_s3, endpoint_url=https.endpoint_url), stack)
    with pytest.raises(BackfillError) as refused:
        await untrusting.exists(key)
    assert "certificate" in refused.value.message.lower(), refused.value.message
    assert len(tunnel.seen) == 1  # no CONNECT sent over an unverified connection


async def test_an_https_proxy_in_front_of_an_http_endpoint_is_verified_with_the_buckets_ca(
    rclone_s3: S3Target, stack: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """HTTP_PROXY naming an https proxy, the endpoint plain http: each request goes over TLS to
    the proxy in absolute form, the proxy verified with AWS_CA_BUNDLE (a private CA, as
    corporate proxies have), not only with the system's CAs."""
    cert, serving = private_ca(tmp_path)
    forward = await ForwardProxy(tls=serving).start()
    stack.push_async_callback(forward.stop)
    no_proxies(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", forward.url)
    monkeypatch.setenv("AWS_CA_BUNDLE", cert)

    lean = await entered(bucket_for(rclone_s3), stack)
    key = "forward/tls.webp"
    assert await lean.put(key, b"via a TLS proxy", WEBP, if_none_match=False) is True
    assert await lean.exists(key) is True
    monkeypatch.delenv("HTTP_PROXY")  # the test's own boto3 client reads the server directly
    assert rclone_s3.client().get_object(Bucket=rclone_s3.bucket, Key=key)["Body"].read() == (
        b"via a TLS proxy"
    )
    url = f"{rclone_s3.endpoint_url}/{rclone_s3.bucket}/{key}"
    assert forward.seen == [("PUT", url, None), ("HEAD", url, None)]  # in absolute form


@pytest.mark.parametrize("server", ["rclone_s3", "moto_s3"])
async def test_a_listing_reads_what_botocore_reads(
    server: str, request: pytest.FixtureRequest, stack: Any
) -> None:
    """`Bucket.list_page` (sent and read by the lean path) gives the keys, sizes, ETags and
    times boto3's ListObjectsV2 gives, for keys that need encoding, and resumes after a key."""
    target: S3Target = request.getfixturevalue(server)
    keys = [
        "odd/a b.bin",
        "odd/a+b.bin",
        "odd/é~ü.bin",
        "odd/x&y=z.bin",
        "odd/q?.bin",
        "odd/%20.bin",
    ]
    client = target.client()
    for i, key in enumerate(keys):
        client.put_object(Bucket=target.bucket, Key=key, Body=b"x" * (i + 1))
    client.put_object(Bucket=target.bucket, Key="other/a.bin", Body=b"")
    bucket = bucket_for(target)
    await stack.enter_async_context(bucket)
    page = await bucket.list_page("odd/")
    theirs = client.list_objects_v2(Bucket=target.bucket, Prefix="odd/")["Contents"]
    assert [(o.key, o.size, o.etag, o.last_modified) for o in page.objects] == [
        (c["Key"], c["Size"], c["ETag"].strip('"'), c["LastModified"]) for c in theirs
    ]
    assert sorted(keys) == [o.key for o in page.objects] and page.truncated is False
    after = await bucket.list_page("odd/", start_after=sorted(keys)[2])
    assert [o.key for o in after.objects] == sorted(keys)[3:]
    assert (await bucket.list_page("none/")).objects == []


async def test_a_reader_closes_with_its_bucket_and_a_new_entry_makes_a_new_one(
    rclone_s3: S3Target,
) -> None:
    """The Bucket's lean reader is closed when the Bucket is: a read after that is refused (it
    never opens a session nothing would close); the Bucket entered again reads with a new one."""
    rclone_s3.client().put_object(Bucket=rclone_s3.bucket, Key="life/a.bin", Body=b"alive")
    bucket = bucket_for(rclone_s3)
    async with bucket:
        first = bucket.objects()
        assert (await first.get("life/a.bin")).body == b"alive"
        assert bucket.objects() is first
    with pytest.raises(RetryableError) as refused:
        await first.get("life/a.bin")
    assert refused.value.code == "s3_connection" and "closed" in refused.value.message
    async with bucket:
        again = bucket.objects()
        assert again is not first
        assert (await again.get("life/a.bin")).body == b"alive"
    assert first._lean._wire is None and again._lean._wire is None


class ElsewhereS3:
    """An S3 endpoint on loopback whose bucket lives in eu-west-1 and that answers a request
    signed for another region as AWS does (the protocol detail rclone and moto do not play):
    400 AuthorizationHeaderMalformed naming the <Region>; 301 with x-amz-bucket-region to a
    HeadBucket, a bare 400 with it to a HeadObject. `.../slow.bin` is answered 0.3 s late. It
    logs (method, path, signing region) of every request."""

    REGION = "eu-west-1"
    LISTING = (
        b'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult'
        b' xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>bkt</Name><Prefix></Prefix>'
        b"<MaxKeys>1000</MaxKeys><EncodingType>url</EncodingType><IsTruncated>false</IsTruncated>"
        b"<Contents><Key>a.bin</Key><LastModified>2024-01-01T00:00:00.000Z</LastModified>"
        b"<ETag>&quot;abc&quot;</ETag><Size>3</Size></Contents></ListBucketResult>"
    )

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []
        self._runner: Any = None
        self.url = ""

    async def start(self) -> ElsewhereS3:
        from aiohttp import web

        async def answer(request: web.Request) -> web.Response:
            found = re.search(
                r"Credential=[^/]+/\d+/([^/]+)/s3/", request.headers.get("Authorization", "")
            )
            region = found.group(1) if found else ""
            self.seen.append((request.method, request.path, region))
            if request.path.endswith("slow.bin"):
                await asyncio.sleep(0.3)  # answered after the others
            if region != self.REGION:
                where = {"x-amz-bucket-region": self.REGION}
                if request.method == "HEAD" and request.path.count("/") == 1:
                    return web.Response(status=301, headers=where)  # HeadBucket
                if request.method == "HEAD":
                    return web.Response(status=400, headers=where)  # HeadObject: no body
                body = (
                    "<Error><Code>AuthorizationHeaderMalformed</Code><Message>the region"
                    f" '{region}' is wrong; expecting '{self.REGION}'</Message>"
                    f"<Region>{self.REGION}</Region></Error>"
                )
                return web.Response(status=400, text=body, content_type="application/xml")
            if request.method == "HEAD":
                return web.Response(status=200)
            if "list-type" in request.query:
                return web.Response(body=self.LISTING, content_type="application/xml")
            return web.Response(body=b"abc", headers={"ETag": '"abc"'})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()


def elsewhere_bucket(server: ElsewhereS3, *, pool_size: int) -> Bucket:
    """A Bucket of the ElsewhereS3 server, its region left to the default (us-east-1)."""
    return Bucket(
        "bkt",
        endpoint_url=server.url,
        region=None,
        path_style=True,
        timeout=TIMEOUT,
        pool_size=pool_size,
        credentials=("AKIAEXAMPLE", "not-a-secret"),
    )


async def test_a_wrong_region_is_found_once_as_botocore_finds_it(stack: Any) -> None:
    """Without --region (us-east-1) and no preflight before (the batch API's case), the lean
    listing and GET meet the wrong-region answer once, the Bucket's client finds the region
    (a HeadBucket its redirector follows) and every later request is signed for it."""
    server = await ElsewhereS3().start()
    stack.push_async_callback(server.stop)
    bucket = elsewhere_bucket(server, pool_size=2)
    await stack.enter_async_context(bucket)
    page = await bucket.list_page("")
    assert [o.key for o in page.objects] == ["a.bin"]
    assert (await bucket.objects().get("a.bin")).body == b"abc"
    assert (await bucket.list_page("")).objects == page.objects
    wrong = [entry for entry in server.seen if entry[2] != ElsewhereS3.REGION]
    assert wrong == [("GET", "/bkt", "us-east-1"), ("HEAD", "/bkt", "us-east-1")]
    assert server.seen[-3:] == [
        ("GET", "/bkt", "eu-west-1"),
        ("GET", "/bkt/a.bin", "eu-west-1"),
        ("GET", "/bkt", "eu-west-1"),
    ]


def self_signed(directory: Any) -> tuple[str, str]:
    """A certificate for 127.0.0.1 signed by itself (a private CA's stand-in): (cert, key) paths.
    Made with `cryptography` (moto's dependency, so in the dev environment)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tui-backfill test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "ca.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(cert_path), str(key_path)


def private_ca(directory: Any) -> tuple[str, Any]:
    """(the CA bundle's path, a server context serving its certificate for 127.0.0.1)."""
    import ssl

    cert, key = self_signed(directory)
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(cert, key)
    return cert, serving


def no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy from this machine's environment: each test names its own."""
    for scheme in ("HTTP", "HTTPS", "NO", "ALL"):
        monkeypatch.delenv(f"{scheme}_PROXY", raising=False)
        monkeypatch.delenv(f"{scheme.lower()}_proxy", raising=False)


async def test_https_is_verified_with_the_ca_bundle_botocore_names(
    rclone_s3: S3Target, stack: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An HTTPS endpoint under a private CA: with AWS_CA_BUNDLE naming it, the lean GET, listing
    and PUT verify it as the Bucket's client does; without it, the certificate is refused."""
    from tui_backfill.servers.proxy import ReverseProxy

    cert, serving = private_ca(tmp_path)
    https = await ReverseProxy(rclone_s3.endpoint_url, ssl_context=serving).start()
    stack.push_async_callback(https.stop)
    rclone_s3.client().put_object(Bucket=rclone_s3.bucket, Key="tls/a.bin", Body=b"private")

    monkeypatch.setenv("AWS_CA_BUNDLE", cert)
    bucket = bucket_for(rclone_s3, endpoint_url=https.endpoint_url)
    lean = await entered(bucket, stack)
    await bucket.preflight()  # the client's own verification, for comparison
    assert [o.key for o in (await bucket.list_page("tls/")).objects] == ["tls/a.bin"]
    assert (await bucket.objects().get("tls/a.bin")).body == b"private"
    assert await lean.put("tls/b.bin", b"b", WEBP, if_none_match=False) is True
    assert https.requests[("GET", "list")] == 1 and https.requests[("PUT", "put_object")] == 1

    monkeypatch.delenv("AWS_CA_BUNDLE")
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    untrusting = bucket_for(rclone_s3, endpoint_url=https.endpoint_url)
    await stack.enter_async_context(untrusting)
    with pytest.raises(RetryableError) as refused:
        await untrusting.objects().get("tls/a.bin")
    assert refused.value.code == "s3_connection" and "Certificate" in refused.value.message


async def test_requests_in_flight_during_a_relocation_are_sent_again_once(stack: Any) -> None:
    """Several requests meet the wrong region together: one finds the region (one HeadBucket
    pair), the others, answered later, are sent again to it; a HeadObject's bare 400 (no body,
    the region in a header) is a wrong region too."""
    server = await ElsewhereS3().start()
    stack.push_async_callback(server.stop)
    bucket = elsewhere_bucket(server, pool_size=4)
    await stack.enter_async_context(bucket)
    reader = bucket.objects()
    got = await asyncio.gather(reader.get("a.bin"), reader.get("slow.bin"), reader.get("b.bin"))
    assert [g.body for g in got] == [b"abc"] * 3
    bucket_heads = [e for e in server.seen if e[:2] == ("HEAD", "/bkt")]
    assert bucket_heads == [("HEAD", "/bkt", "us-east-1"), ("HEAD", "/bkt", "eu-west-1")]
    lean = await stack.enter_async_context(LeanBucket(bucket))
    fresh = elsewhere_bucket(server, pool_size=2)
    lean_fresh = await entered(fresh, stack)
    server.seen.clear()
    assert await lean.exists("a.bin") is True  # already relocated: straight to eu-west-1
    assert await lean_fresh.exists("a.bin") is True
    assert server.seen[0] == ("HEAD", "/bkt/a.bin", "eu-west-1")
    assert ("HEAD", "/bkt/a.bin", "us-east-1") in server.seen
    assert server.seen[-1] == ("HEAD", "/bkt/a.bin", "eu-west-1")


async def test_a_bucket_closed_gives_no_reader(rclone_s3: S3Target) -> None:
    """After its Bucket left, `objects()` and `list_page` refuse (`s3_connection`) rather than
    open a session nothing would close."""
    bucket = bucket_for(rclone_s3)
    async with bucket:
        await bucket.list_page("")
    with pytest.raises(RetryableError) as closed:
        bucket.objects()
    assert closed.value.code == "s3_connection"
    with pytest.raises(RetryableError):
        await bucket.list_page("")


async def test_a_redirect_whose_body_stalls_frees_its_connection(stack: Any) -> None:
    """A 3xx answer whose body never comes: the GET times out, and its connection is closed,
    not kept from the pool (of one, here): the next GET is sent and answered."""
    from tui_backfill.seams.s3_direct import DirectBucket
    from tui_backfill.seams.s3_wire import ObjectTarget
    from tui_backfill.seams.sigv4 import Credentials

    gets = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal gets
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                gets += 1
                if gets == 1:  # a redirect whose body stalls
                    writer.write(b"HTTP/1.1 307 Moved\r\nContent-Length: 100\r\n\r\n<Err")
                else:
                    body = b"<Error><Code>NoSuchKey</Code><Message>no</Message></Error>"
                    writer.write(
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n" % len(body)
                    )
                    writer.write(body)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    stack.push_async_callback(server.wait_closed)
    stack.callback(server.close)
    endpoint = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    bucket = DirectBucket(
        "bkt",
        endpoint_url=endpoint,
        target=ObjectTarget(f"{endpoint}/bkt", "s3", "us-east-1"),
        credentials=Credentials("AKIDEXAMPLE", "secret-example"),
        verify=True,
        timeout=0.3,
        pool_size=1,
    )
    lean = await entered(bucket, stack)  # type: ignore[arg-type]  # a DirectBucket serves too
    with pytest.raises(RetryableError) as stalled:
        async with lean.open("a.bin"):
            pass
    assert stalled.value.code == "timeout"
    with pytest.raises(NotFoundError):
        async with lean.open("b.bin"):
            pass
    assert gets == 2


async def test_a_bucket_nothing_listens_on_is_marked_unreachable(stack: Any) -> None:
    """The lean path marks a bucket that takes no connection `unreachable` (the hash index's
    GETs, in the origin's slot, feed the breaker with it; the engine drops the mark in any
    other slot: tests/test_engine_seam.py::test_unreachable_means_the_origin_only_in_the_origins_slot)."""
    from helpers import closed_port

    bucket = Bucket(
        "bkt",
        endpoint_url=f"http://127.0.0.1:{closed_port()}",
        region=None,
        path_style=True,
        timeout=2,
        pool_size=2,
        credentials=("AKIDEXAMPLE", "secret-example"),
    )
    await stack.enter_async_context(bucket)
    lean = await stack.enter_async_context(LeanBucket(bucket))
    for call in (
        lambda: lean.exists("k.jpg"),
        lambda: lean.put("k.jpg", b"jpeg", "image/jpeg", if_none_match=True),
    ):
        with pytest.raises(RetryableError) as marked:
            await call()
        assert marked.value.unreachable and marked.value.code == "s3_connection"
        assert "connection refused" in marked.value.message
