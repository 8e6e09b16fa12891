"""The lean S3 path's HTTP/1.1 wire (tui_backfill.seams.http1) against scripted servers on
127.0.0.1: what it sends, how it frames answers, when it reuses a connection, how it fails.

Each server is asyncio's, answering with bytes written by the test, and counts the
connections it accepted and the requests it read; the S3 path over it is tested against real
S3 servers in test_s3_lean.py and test_s3_direct.py.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tui_backfill.seams import http1, s3_wire
from tui_backfill.seams.connect_errors import unreachable_reason
from tui_backfill.seams.http1 import BadAnswer, CannotConnect, TruncatedBody, Wire

Answerer = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]


class Scripted:
    """A server that reads each request (head, and a body by Content-Length) and lets
    `answer(request, writer)` write the answer; the connection is closed when it returns
    False. Counts connections (`accepted`, and the most open at once) and keeps requests."""

    def __init__(self, answer: Answerer) -> None:
        self.answer = answer
        self.accepted = 0
        self.open_now = 0
        self.most_open = 0
        self.requests: list[bytes] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Scripted:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self.answer(request, writer):
                    return
                await writer.drain()
        finally:
            self.open_now -= 1
            writer.close()


def fixed(*answers: bytes, keep: bool = True) -> Answerer:
    """Answers written in turn (the last one again after), the connection kept or not."""
    sent = 0

    async def answer(request: bytes, writer: asyncio.StreamWriter) -> bool:
        nonlocal sent
        writer.write(answers[min(sent, len(answers) - 1)])
        sent += 1
        return keep

    return answer


OK_ABC = b'HTTP/1.1 200 OK\r\nContent-Length: 3\r\nETag: "e"\r\n\r\nabc'


def wire(limit: int = 4) -> Wire:
    return Wire(limit=limit, tls=None, connect_timeout=5.0)


async def test_requests_are_written_as_given_and_one_connection_serves_them_in_turn() -> None:
    async with Scripted(fixed(OK_ABC)) as server:
        client = wire()
        headers = {"Host": "h", "X-Amz-Date": "20261207T000000Z"}
        for method, body in (("GET", b""), ("PUT", b"hello"), ("PUT", b""), ("HEAD", b"")):
            async with await client.request(
                method, server.url + "/b/k%20x?q=1", headers, body
            ) as answer:
                assert answer.status == 200 and answer.ok
                got = await answer.read()
                assert got == (b"" if method == "HEAD" else b"abc")
                assert answer.headers.get("ETAG") == '"e"' and answer.content_length == 3
        client.close()
    assert server.accepted == 1
    assert server.requests == [
        b"GET /b/k%20x?q=1 HTTP/1.1\r\nHost: h\r\nX-Amz-Date: 20261207T000000Z\r\n\r\n",
        b"PUT /b/k%20x?q=1 HTTP/1.1\r\nHost: h\r\nX-Amz-Date: 20261207T000000Z\r\n"
        b"Content-Length: 5\r\n\r\nhello",
        b"PUT /b/k%20x?q=1 HTTP/1.1\r\nHost: h\r\nX-Amz-Date: 20261207T000000Z\r\n"
        b"Content-Length: 0\r\n\r\n",
        b"HEAD /b/k%20x?q=1 HTTP/1.1\r\nHost: h\r\nX-Amz-Date: 20261207T000000Z\r\n\r\n",
    ]


async def test_a_header_with_a_line_break_is_refused_before_anything_is_sent() -> None:
    async with Scripted(fixed(OK_ABC)) as server:
        with pytest.raises(ValueError, match="X-Evil"):
            await wire().request("GET", server.url + "/", {"X-Evil": "a\r\nInjected: 1"})
    assert server.accepted == 0


async def test_a_chunked_answer_is_read_whole_and_its_connection_kept() -> None:
    chunked = (
        b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\n<Erro\r\n"
        b"B\r\nr>NoSuchKey\r\n"
        b"0\r\nX-Trailer: t\r\n\r\n"
    )
    async with Scripted(fixed(chunked, OK_ABC)) as server:
        client = wire()
        async with await client.request("GET", server.url + "/k", {}) as answer:
            assert answer.status == 404 and not answer.ok and answer.content_length is None
            assert await answer.read() == b"<Error>NoSuchKey"
        async with await client.request("GET", server.url + "/k", {}) as answer:
            assert await answer.read() == b"abc"
    assert server.accepted == 1


async def test_a_malformed_chunk_is_a_bad_answer() -> None:
    bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n"
    async with Scripted(fixed(bad)) as server:
        answer = await wire().request("GET", server.url + "/k", {})
        with pytest.raises(BadAnswer, match="hexadecimal"):
            await answer.read()
        answer.close()


async def test_an_answer_without_a_length_ends_with_its_connection_which_is_not_reused() -> None:
    async def to_close(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * 70_000)
        return False

    async with Scripted(to_close) as server:
        client = wire()
        for _ in range(2):
            async with await client.request("GET", server.url + "/k", {}) as answer:
                assert answer.content_length is None
                assert await answer.read() == b"x" * 70_000
    assert server.accepted == 2


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\n",
    ],
)
async def test_a_server_that_says_it_closes_gets_a_new_connection_next_time(head: bytes) -> None:
    async with Scripted(fixed(head + b"abc")) as server:
        client = wire()
        for _ in range(2):
            async with await client.request("GET", server.url + "/k", {}) as answer:
                assert await answer.read() == b"abc"
    assert server.accepted == 2


async def test_a_connection_the_server_closed_while_idle_is_not_used_again() -> None:
    """The server closes without saying so beforehand: the next request, sent later, goes
    on a new connection and is answered (nothing fails, nothing is sent twice)."""
    async with Scripted(fixed(OK_ABC, keep=False)) as server:
        client = wire()
        for _ in range(3):
            async with await client.request("PUT", server.url + "/k", {}, b"v") as answer:
                assert await answer.read() == b"abc"
            await asyncio.sleep(0.05)  # the close reaches the client
    assert server.accepted == 3 and len(server.requests) == 3


async def test_a_connection_idle_past_the_keep_alive_bound_is_closed_not_reused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(http1, "KEEP_IDLE", 0.05)
    async with Scripted(fixed(OK_ABC)) as server:
        client = wire()
        for pause in (0.0, 0.0, 0.1):
            await asyncio.sleep(pause)
            async with await client.request("GET", server.url + "/k", {}) as answer:
                await answer.read()
    assert server.accepted == 2


async def test_interim_answers_are_skipped() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + OK_ABC
    async with Scripted(fixed(interim)) as server:
        async with await wire().request("PUT", server.url + "/k", {}, b"v") as answer:
            assert answer.status == 200 and await answer.read() == b"abc"


async def test_a_body_cut_short_is_truncated_and_its_connection_closed() -> None:
    async def cut(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"y" * 400)
        return False

    async with Scripted(cut) as server:
        answer = await wire().request("GET", server.url + "/k", {})
        assert await answer.content.read(1000) == b"y" * 400
        with pytest.raises(TruncatedBody, match="600 bytes before"):
            await answer.content.read(1000)
        answer.close()
    caught = s3_wire.classify(TruncatedBody("x"))
    assert caught.code == "s3_connection"  # a whole answer read (a listing) cut short


@pytest.mark.parametrize(
    ("sent", "says"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "status line"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "without a name"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "not a number"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "transfer coding"),
        (b"HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
    ],
)
async def test_what_is_not_an_http_answer_is_a_connection_fault(sent: bytes, says: str) -> None:
    async with Scripted(fixed(sent, keep=False)) as server:
        with pytest.raises(BadAnswer, match=says) as raised:
            await wire().request("GET", server.url + "/k", {})
    assert s3_wire.classify(raised.value).code == "s3_connection"


async def test_a_server_that_closes_before_answering_is_a_reset() -> None:
    async def hang_up(request: bytes, writer: asyncio.StreamWriter) -> bool:
        return False

    async with Scripted(hang_up) as server:
        with pytest.raises(ConnectionResetError, match="before its answer") as raised:
            await wire().request("PUT", server.url + "/k", {}, b"v")
    assert s3_wire.classify(raised.value).code == "s3_connection"
    assert len(server.requests) == 1  # sent once, never again


async def test_nothing_listening_is_told_apart_from_a_fault() -> None:
    async with Scripted(fixed(OK_ABC)) as server:
        url = server.url
    with pytest.raises(CannotConnect) as raised:
        await wire().request("GET", url + "/k", {})
    assert raised.value.os_error.errno == errno.ECONNREFUSED
    assert unreachable_reason(raised.value.os_error) == "connection refused"
    assert s3_wire.classify(raised.value).message == "S3 connection: connection refused"


async def test_no_more_connections_than_the_limit_and_a_cancelled_request_frees_its_slot() -> None:
    async def slow(request: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        writer.write(OK_ABC)
        return True

    async with Scripted(slow) as server:
        client = wire(limit=2)

        async def get() -> bytes:
            async with await client.request("GET", server.url + "/k", {}) as answer:
                return await answer.read()

        assert await asyncio.gather(*(get() for _ in range(6))) == [b"abc"] * 6
        assert server.most_open == 2 and server.accepted == 2

        one = wire(limit=1)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await one.request("GET", server.url + "/k", {})
        async with asyncio.timeout(2):  # the slot came back: not waiting forever
            async with await one.request("GET", server.url + "/k", {}) as answer:
                assert await answer.read() == b"abc"


async def test_an_answer_released_unread_closes_its_connection() -> None:
    async with Scripted(fixed(OK_ABC)) as server:
        client = wire(limit=1)
        answer = await client.request("GET", server.url + "/k", {})
        answer.release()  # body unread: the connection cannot carry another answer
        async with await client.request("GET", server.url + "/k", {}) as again:
            assert await again.read() == b"abc"
    assert server.accepted == 2


async def test_a_large_body_streams_with_reading_paused_while_unread() -> None:
    """8 MiB answered at once, read after a pause: no more than BUFFERED bytes (plus one
    socket read) wait in the client, and the body read is the body sent."""
    body = bytes(range(256)) * (8 * 4096)

    async def big(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        return True

    async with Scripted(big) as server:
        answer = await wire().request("GET", server.url + "/k", {})
        await asyncio.sleep(0.2)
        connection: Any = answer.content._connection
        assert connection._paused and connection._buffered <= http1.BUFFERED + 256 * 1024
        digest, most = hashlib.sha256(), 0
        while chunk := await answer.content.read(256 * 1024):
            most = max(most, len(chunk))
            digest.update(chunk)
        assert digest.digest() == hashlib.sha256(body).digest() and most <= 256 * 1024
        answer.release()


@pytest.mark.parametrize("resend", [False, True])
async def test_a_kept_alive_connection_dropped_at_the_next_request_is_resent_only_if_asked(
    resend: bool,
) -> None:
    """The server answers once per connection, then drops it when the next request comes
    (an idle timeout met at that instant). Without `resend_on_stale` the failure is the
    caller's (nothing sent twice); with it, the request goes once more on a new connection. A
    new connection dropped before its answer is never resent."""
    per_connection: dict[int, int] = {}

    async def once_per_connection(request: bytes, writer: asyncio.StreamWriter) -> bool:
        seen = per_connection[id(writer)] = per_connection.get(id(writer), 0) + 1
        if seen > 1:
            return False  # dropped, unanswered
        writer.write(OK_ABC)
        return True

    async with Scripted(once_per_connection) as server:
        client = Wire(limit=1, tls=None, connect_timeout=5.0, resend_on_stale=resend)
        async with await client.request("GET", server.url + "/k", {}) as answer:
            assert await answer.read() == b"abc"
        if resend:
            async with await client.request("GET", server.url + "/k", {}) as answer:
                assert await answer.read() == b"abc"
            assert server.accepted == 2 and len(server.requests) == 3
        else:
            with pytest.raises(ConnectionResetError, match="before its answer"):
                await client.request("GET", server.url + "/k", {})
            assert server.accepted == 1 and len(server.requests) == 2

    async def never(request: bytes, writer: asyncio.StreamWriter) -> bool:
        return False

    async with Scripted(never) as server:
        client = Wire(limit=1, tls=None, connect_timeout=5.0, resend_on_stale=True)
        with pytest.raises(ConnectionResetError):
            await client.request("GET", server.url + "/k", {})
        assert server.accepted == 1 and len(server.requests) == 1


async def test_a_url_without_a_path_asks_for_the_root_with_its_query() -> None:
    async with Scripted(fixed(OK_ABC)) as server:
        async with await wire().request("GET", server.url + "?key=a%2Fb", {}) as answer:
            assert await answer.read() == b"abc"
    assert server.requests[0].startswith(b"GET /?key=a%2Fb HTTP/1.1\r\n")


async def test_a_user_and_password_in_a_url_are_never_used_nor_told() -> None:
    async with Scripted(fixed(OK_ABC)) as server:
        url = server.url
    with pytest.raises(CannotConnect) as raised:
        await wire().request("GET", url.replace("://", "://op:pw-in-url@") + "/k", {})
    assert "pw-in-url" not in str(raised.value) and "op:" not in str(raised.value)


async def test_a_name_whose_every_address_refuses_is_absent_not_faulty(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A name with two addresses (the resolver's answer given here: 127.0.0.1 and 127.0.0.2),
    both refusing: the errno survives (asyncio's own merge of the two failures drops it), so
    the server is told absent; the addresses are tried in turn."""
    async with Scripted(fixed(OK_ABC)) as server:
        port = int(server.url.rpartition(":")[2])
    asked: list[str] = []

    async def resolve(host: str, port: int, **_: Any) -> list[Any]:
        asked.append(host)
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.2", port)),
        ]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", resolve)
    with pytest.raises(CannotConnect) as raised:
        await wire().request("GET", f"http://two-addresses.test:{port}/k", {})
    assert unreachable_reason(raised.value.os_error) == "connection refused"
    assert asked == ["two-addresses.test"]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
async def test_a_content_length_that_is_no_ascii_number_is_refused_and_frees_its_slot(
    method: str,
) -> None:
    bad = "HTTP/1.1 200 OK\r\nContent-Length: ²\r\n\r\n".encode()
    async with Scripted(fixed(bad, OK_ABC)) as server:
        client = wire(limit=1)
        with pytest.raises(BadAnswer, match="not a number"):
            await client.request(method, server.url + "/k", {})
        async with asyncio.timeout(2):
            async with await client.request("GET", server.url + "/k", {}) as answer:
                assert await answer.read() == b"abc"


async def test_a_body_to_the_close_cut_by_a_reset_is_truncated_not_short() -> None:
    async def reset(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 1000)
        await writer.drain()
        await asyncio.sleep(0.05)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST, not FIN
        return False

    async with Scripted(reset) as server:
        answer = await wire().request("GET", server.url + "/k", {})
        with pytest.raises(TruncatedBody, match="broke"):
            await answer.read()
        answer.close()


async def test_the_limit_is_on_connections_in_use_to_every_server_together() -> None:
    """Two servers, a limit of 2: never more than 2 requests in flight across both (a
    relocated bucket's second server does not double it)."""
    in_flight = most = 0

    async def slow(request: bytes, writer: asyncio.StreamWriter) -> bool:
        nonlocal in_flight, most
        in_flight += 1
        most = max(most, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        writer.write(OK_ABC)
        return True

    async with Scripted(slow) as one, Scripted(slow) as two:
        client = wire(limit=2)

        async def get(url: str) -> bytes:
            async with await client.request("GET", url + "/k", {}) as answer:
                return await answer.read()

        got = await asyncio.gather(*(get(server.url) for server in (one, two) * 3))
    assert got == [b"abc"] * 6 and most == 2
