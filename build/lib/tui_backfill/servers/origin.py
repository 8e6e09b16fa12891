"""A real aiohttp image origin for the demo, the tests and the benchmarks (no mocks).

``GET``/``HEAD /{sku}_{angle}`` (optionally with an extension such as ``.jpg``, and under any
prefix such as ``/img/``) answers a small real JPEG that is deterministic and unique per
(sku, angle): one of a palette of 64x64 JPEGs, picked by hash, with a JPEG COM segment carrying
``"{sku}_{angle}"`` inserted right after the SOI marker. :func:`expected_body` returns exactly
the bytes served, so tests compare bucket contents byte for byte.

Latency L is kept as a real origin L away would keep it: each answer is prepared first and
leaves L after its request arrived (the handler's own work and this event loop's timer
lateness, learnt from its past waits, are taken off the wait), so a client sees L plus only
the loopback and its own costs.

Faults (:class:`OriginFaults`) are mutable at run time (``server.faults``): deterministic
missing objects (hash of sku/angle, so every process agrees), latency, slow answers, random
500/503, connection resets, stalls, truncated bodies, HTML error pages with status 200, and
``fail_first_n`` (the first N GETs of each path answer 503). Counters: ``requests`` (by
(method, path)), ``gets``, ``heads``, ``injected`` (by fault kind), ``query_strings`` (the raw
query string of each image request: the query is ignored for serving, so a test checks here
that a token or a ``{sku}`` field in an origin URL's query arrived as meant). ``GET /__stats`` returns them
as JSON and ``POST /__faults`` updates faults from JSON (both uncounted), for out-of-process use:

    python -m tui_backfill.servers.origin --port 0 --missing-fraction 0.03

prints ``ORIGIN http://127.0.0.1:PORT`` on stdout and serves until SIGTERM.

Directory listing (for clients that need one, such as rclone's ``http`` backend): with
``index=[names]``, ``GET``/``HEAD <index_prefix>`` (default ``/img/``) answers an HTML page of
``<a href="NAME">`` links, one per name (e.g. ``"100000_1.jpg"``), in the order given; the
names are served under that prefix like everywhere else (``index_template`` is the matching
URL template). The listing ignores faults and missing objects: a client learns that a listed
name is missing only from its own request. Counted in ``index_gets``, not in ``gets``/``heads``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import functools
import hashlib
import html
import io
import random
import signal
import sys
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

from aiohttp import web

__all__ = [
    "PALETTE_SIZE",
    "OriginFaults",
    "OriginServer",
    "expected_body",
    "is_missing",
    "parse_name",
]

PALETTE_SIZE = 32
_COM_MAX = 65533  # payload bytes of one JPEG COM segment (length field counts itself)
HTML_ERROR_PAGE = (
    b"<!DOCTYPE html><html><head><title>Service Unavailable</title></head>"
    b"<body><h1>Oops</h1><p>The image service is temporarily unavailable.</p></body></html>"
)


def _hash64(*parts: object, person: bytes = b"") -> int:
    text = "\x00".join(str(p) for p in parts).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8, person=person).digest(), "big")


@functools.cache
def _palette() -> tuple[bytes, ...]:
    """PALETTE_SIZE small distinct JPEGs (64x64, two colours, a diagonal band)."""
    from PIL import Image, ImageDraw

    images = []
    for i in range(PALETTE_SIZE):
        hue = i * 360 // PALETTE_SIZE
        base = Image.new("HSV", (64, 64), (hue * 255 // 360, 180, 220)).convert("RGB")
        draw = ImageDraw.Draw(base)
        accent = ((hue + 180) % 360) * 255 // 360
        band = Image.new("HSV", (1, 1), (accent, 200, 120)).convert("RGB").getpixel((0, 0))
        draw.polygon([(0, 40), (40, 0), (64, 0), (64, 24), (24, 64), (0, 64)], fill=band)
        draw.rectangle([4 + i, 4, 12 + i, 12], fill=(255, 255, 255))
        buf = io.BytesIO()
        base.save(buf, format="JPEG", quality=80)
        images.append(buf.getvalue())
    return tuple(images)


def _com_segments(text: bytes, total: int) -> bytes:
    """COM segments whose first payload starts with ``text``, ``total`` bytes in all if possible."""
    minimum = 4 + len(text)
    if total <= minimum or len(text) > _COM_MAX:
        return b"\xff\xfe" + (2 + len(text)).to_bytes(2, "big") + text[:_COM_MAX]
    count = -(-total // (_COM_MAX + 2))
    sizes = [total // count + (1 if i < total % count else 0) for i in range(count)]
    out = bytearray()
    for i, size in enumerate(sizes):
        payload_len = size - 4
        head = text if i == 0 else b""
        payload = head + b"." * (payload_len - len(head))
        out += b"\xff\xfe" + (payload_len + 2).to_bytes(2, "big") + payload
    return bytes(out)


@functools.lru_cache(maxsize=4096)
def expected_body(sku: str, angle: int, object_size: int | None = None) -> bytes:
    """Exactly the bytes the origin serves for (sku, angle) (and ``object_size``, if any)."""
    base = _palette()[_hash64(sku, angle, person=b"palette") % PALETTE_SIZE]
    text = f"{sku}_{angle}".encode()
    room = (object_size - len(base)) if object_size else 0
    return base[:2] + _com_segments(text, room) + base[2:]


def is_missing(sku: str, angle: int, fraction: float) -> bool:
    """Whether (sku, angle) is deterministically missing at ``fraction`` (same in all processes)."""
    if fraction <= 0:
        return False
    return _hash64(sku, angle, person=b"missing") / 2**64 < fraction


def parse_name(name: str) -> tuple[str, int] | None:
    """``"A_B_3.jpg"`` -> ``("A_B", 3)``: the last ``_`` separates sku and angle."""
    sku, sep, rest = name.rpartition("_")
    angle_text = rest.partition(".")[0]
    if not sep or not sku or not angle_text.isdigit():
        return None
    return sku, int(angle_text)


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


@dataclass
class OriginFaults:
    """Fault settings; all off by default. Mutate ``server.faults`` at run time."""

    missing: set[tuple[str, int]] = field(default_factory=set)
    missing_fraction: float = 0.0
    not_found: Callable[[str, int], bool] | None = None
    latency: float = 0.0  # seconds from a GET/HEAD's arrival to its answer
    slow_fraction: float = 0.0
    slow_delay: float = 0.0
    error_rate: float = 0.0  # random 500/503
    reset_rate: float = 0.0  # connection aborted, no answer
    stall_rate: float = 0.0  # sleep stall_seconds before answering
    stall_seconds: float = 60.0
    truncate_rate: float = 0.0  # full Content-Length, half the body, then close
    html_rate: float = 0.0  # 200 text/html error page
    fail_first_n: int = 0  # the first N GETs of each path answer 503

    def is_missing(self, sku: str, angle: int) -> bool:
        return (
            (sku, angle) in self.missing
            or is_missing(sku, angle, self.missing_fraction)
            or (self.not_found is not None and self.not_found(sku, angle))
        )

    def update(self, values: dict[str, Any]) -> None:
        """Set fields from a JSON-like dict (``missing`` as a list of [sku, angle])."""
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in values.items():
            if key not in names or key == "not_found":
                raise ValueError(f"unknown fault field {key!r}")
            if key == "missing":
                value = {(str(s), int(a)) for s, a in value}
            setattr(self, key, value)

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["missing"] = sorted([s, a] for s, a in self.missing)
        data["not_found"] = self.not_found is not None
        return data


class OriginServer:
    """The origin on 127.0.0.1 (port 0 by default); ``base_url`` and ``url_template`` after start.

    :param faults: initial faults (mutable afterwards through ``self.faults``).
    :param object_size: pad bodies to this many bytes (benchmarks use 64 KiB).
    :param seed: seed of the random generator deciding the rate-based faults.
    :param index: names listed by ``GET index_prefix`` (an HTML page of links); ``None``: no
        listing. Mutable afterwards through ``self.index``.
    :param index_prefix: path of the listing, starting and ending with ``/``.
    """

    def __init__(
        self,
        faults: OriginFaults | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        object_size: int | None = None,
        seed: int = 0,
        index: Iterable[str] | None = None,
        index_prefix: str = "/img/",
    ) -> None:
        if not (index_prefix.startswith("/") and index_prefix.endswith("/")):
            raise ValueError(f"index_prefix {index_prefix!r} must start and end with '/'")
        self.faults = faults if faults is not None else OriginFaults()
        self.index: list[str] | None = list(index) if index is not None else None
        self.index_prefix = index_prefix
        self.index_gets = 0
        self.host = host
        self.port = port
        self.object_size = object_size
        self.rng = random.Random(seed)
        self.requests: collections.Counter[tuple[str, str]] = collections.Counter()
        self.by_method: collections.Counter[str] = collections.Counter()
        self.injected: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[int] = collections.Counter()
        self.query_strings: collections.Counter[str] = collections.Counter()
        self._get_counts: collections.Counter[str] = collections.Counter()
        self._runner: web.AppRunner | None = None
        self._sleepers: set[asyncio.Future[None]] = set()
        self._closing = False
        # how late this loop's timers fire, learnt from the waits (asyncio rounds a wait up to
        # epoll's millisecond: 0.5 ms late on average to begin with)
        self._timer_lateness = 0.0005
        self.base_url = ""
        self.url_template = ""
        self.index_template = ""

    # -- counters ----------------------------------------------------------------------
    @property
    def gets(self) -> int:
        return self.by_method["GET"]

    @property
    def heads(self) -> int:
        return self.by_method["HEAD"]

    def reset_counters(self) -> None:
        for counter in (
            self.requests,
            self.by_method,
            self.injected,
            self.statuses,
            self.query_strings,
        ):
            counter.clear()
        self._get_counts.clear()
        self.index_gets = 0

    def stats(self) -> dict[str, Any]:
        return {
            "gets": self.gets,
            "heads": self.heads,
            "index_gets": self.index_gets,
            "requests": {f"{m} {p}": n for (m, p), n in self.requests.items()},
            "injected": dict(self.injected),
            "statuses": {str(k): v for k, v in self.statuses.items()},
        }

    def body_for(self, sku: str, angle: int) -> bytes:
        return expected_body(sku, angle, self.object_size)

    # -- lifecycle ---------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/__stats", self._handle_stats)
        app.router.add_post("/__faults", self._handle_faults)
        app.router.add_get(self.index_prefix, self._handle_index)  # HEAD too
        app.router.add_get("/{path:.*}", self._handle_image)  # HEAD too
        return app

    async def start(self) -> Self:
        self._closing = False
        self._runner = web.AppRunner(
            self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.base_url = f"http://{self.host}:{self.port}"
        self.url_template = self.base_url + "/{sku}_{angle}"
        self.index_template = self.base_url + self.index_prefix + "{sku}_{angle}.jpg"
        return self

    async def stop(self) -> None:
        self._closing = True  # waits that start from now on end at once
        for waiter in self._sleepers:  # answer now: the server is closing
            _wake(waiter)
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- handlers ----------------------------------------------------------------------
    async def _handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response({**self.stats(), "faults": self.faults.to_json()})

    async def _handle_faults(self, request: web.Request) -> web.Response:
        try:
            self.faults.update(await request.json())
        except (ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.faults.to_json())

    async def _handle_index(self, request: web.Request) -> web.Response:
        self.requests[(request.method, request.path)] += 1
        if self.index is None:
            return self._answer(404, text="no index\n")
        self.index_gets += 1
        links = "".join(
            f'<a href="{urllib.parse.quote(name)}">{html.escape(name)}</a>\n' for name in self.index
        )
        page = f"<!DOCTYPE html>\n<html><body><pre>\n{links}</pre></body></html>\n"
        return self._answer(200, text=page, content_type="text/html")

    async def _sleep(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the server closes meanwhile."""
        if seconds <= 0 or self._closing:
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        handle = loop.call_later(seconds, _wake, waiter)
        self._sleepers.add(waiter)
        try:
            await waiter
        finally:
            handle.cancel()
            self._sleepers.discard(waiter)

    async def _answer_at(self, due: float) -> None:
        """Wait until loop time ``due``, waking early by this loop's timer lateness.

        The lateness (asyncio rounds a wait up to epoll's millisecond, and an idle CPU wakes
        slowly) is a moving average of how late past waits ended (0 to 2 ms), so answers leave
        at ``due`` on average: one may leave a little early, another a little late.
        """
        loop = asyncio.get_running_loop()
        wake = due - self._timer_lateness
        if wake <= loop.time():
            return
        await self._sleep(wake - loop.time())
        if self._closing:
            return
        late = min(max(loop.time() - wake, 0.0), 0.002)
        self._timer_lateness += 0.05 * (late - self._timer_lateness)

    def _inject(self, kind: str) -> None:
        self.injected[kind] += 1

    def _answer(self, status: int, **kwargs: Any) -> web.Response:
        self.statuses[status] += 1
        return web.Response(status=status, **kwargs)

    async def _handle_image(self, request: web.Request) -> web.StreamResponse:
        arrived = asyncio.get_running_loop().time()
        method = request.method
        path = request.path
        self.requests[(method, path)] += 1
        self.by_method[method] += 1
        self.query_strings[request.query_string] += 1
        faults = self.faults
        parsed = parse_name(path.rsplit("/", 1)[-1])
        if parsed is None:
            return self._answer(404, text="not an image name\n")
        sku, angle = parsed
        due = arrived + faults.latency
        if faults.slow_fraction > 0 and self.rng.random() < faults.slow_fraction:
            self._inject("slow")
            due += faults.slow_delay
        body = self.body_for(sku, angle)  # made before the wait (cached), so it leaves on time
        await self._answer_at(due)
        if faults.is_missing(sku, angle):
            return self._answer(404, text="not found\n")
        if method == "HEAD":
            return self._answer(200, body=body, content_type="image/jpeg")

        self._get_counts[path] += 1
        if self._get_counts[path] <= faults.fail_first_n:
            self._inject("fail_first_n")
            return self._answer(503, text="warming up\n", headers={"Retry-After": "0"})
        draw = self.rng.random()
        for kind, rate in (
            ("error", faults.error_rate),
            ("reset", faults.reset_rate),
            ("stall", faults.stall_rate),
            ("truncate", faults.truncate_rate),
            ("html", faults.html_rate),
        ):
            if draw < rate:
                return await self._fault(kind, request, body)
            draw -= rate
        return self._answer(200, body=body, content_type="image/jpeg")

    async def _fault(self, kind: str, request: web.Request, body: bytes) -> web.StreamResponse:
        self._inject(kind)
        if kind == "error":
            status = self.rng.choice((500, 503))
            return self._answer(status, text=f"injected {status}\n")
        if kind == "html":
            return self._answer(200, body=HTML_ERROR_PAGE, content_type="text/html")
        if kind == "stall":
            await self._sleep(self.faults.stall_seconds)
            return self._answer(200, body=body, content_type="image/jpeg")
        if kind == "reset":
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing more is written
        # truncate: announce the full length, send half, close
        self.statuses[200] += 1
        response = web.StreamResponse(status=200, headers={"Content-Type": "image/jpeg"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        await asyncio.sleep(0)
        if request.transport is not None:
            request.transport.close()
        raise asyncio.CancelledError


# -- out-of-process entry point ------------------------------------------------------------
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tui_backfill.servers.origin",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--object-size", type=int, default=None)
    for f in dataclasses.fields(OriginFaults):
        if f.name in ("missing", "not_found"):
            continue
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            type=int if f.type == "int" else float,
            default=f.default,
        )
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    faults = OriginFaults(
        **{
            f.name: getattr(args, f.name)
            for f in dataclasses.fields(OriginFaults)
            if f.name not in ("missing", "not_found")
        }
    )
    server = OriginServer(
        faults, host=args.host, port=args.port, object_size=args.object_size, seed=args.seed
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        print(f"ORIGIN {server.base_url}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(_serve(_parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
