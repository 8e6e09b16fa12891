"""A real RAID-like publishing endpoint (aiohttp on 127.0.0.1) for the worker's tests and demo.

``GET <path>?key=<source_key>`` (path ``/pub`` by default) with ``Authorization: Bearer
<token>`` answers the bytes stored under that key in ``images`` (a dict, mutable at run time);
401 without the right token, 404 for an unknown key, 400 without ``key``.

Faults (:class:`RaidFaults`, mutable through ``server.faults``): ``fail_times`` (key -> n: the
first n GETs of that key answer 503, then 200), ``always_503`` (keys), ``truncate`` (keys: the
full Content-Length, half the body, then the connection closes), ``chunked`` (keys: the body
without a Content-Length, in chunks), ``stall`` (keys: the head is
sent after ``stall_seconds``), ``trickle`` (keys: the body in pieces of 500 bytes, one every
``trickle_seconds``), ``latency`` (seconds before every answer). Counters:
``requests`` (GETs per key, authorised or not), ``gets`` (all GETs of the path),
``unauthorized`` (401s), ``statuses``. ``GET /__stats`` returns them as JSON and ``POST
/__faults`` updates the faults from JSON (both unauthenticated and uncounted), for use from
another process:

    python -m tui_backfill.servers.raid --port 0 --images 300 [--samples] [--token T]

serves `many_images(N)` (keys ``raid/0/00000.jpg``...; ``--samples`` adds `sample_images()`),
prints ``RAID http://127.0.0.1:PORT/pub`` on stdout and serves until SIGTERM. ``--keys-file
PATH`` also writes the served keys there, one a line.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import hmac
import os
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web

__all__ = ["DEFAULT_TOKEN", "RaidFaults", "RaidServer"]

DEFAULT_TOKEN = "raid-test-secret"


@dataclass
class RaidFaults:
    """Fault settings, all off by default; mutate ``server.faults`` at run time."""

    fail_times: dict[str, int] = field(default_factory=dict)
    always_503: set[str] = field(default_factory=set)
    truncate: set[str] = field(default_factory=set)
    stall: set[str] = field(default_factory=set)
    chunked: set[str] = field(default_factory=set)
    trickle: set[str] = field(default_factory=set)
    stall_seconds: float = 60.0
    trickle_seconds: float = 0.1
    latency: float = 0.0

    def update(self, values: dict[str, Any]) -> None:
        """Set fields from JSON (sets as lists, ``fail_times`` as an object)."""
        for name, value in values.items():
            if name == "fail_times":
                self.fail_times = {str(k): int(v) for k, v in value.items()}
            elif name in ("always_503", "truncate", "stall", "chunked", "trickle"):
                setattr(self, name, {str(k) for k in value})
            elif name in ("stall_seconds", "trickle_seconds", "latency"):
                setattr(self, name, float(value))
            else:
                raise ValueError(f"unknown fault field {name!r}")

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for name in ("always_503", "truncate", "stall", "chunked", "trickle"):
            data[name] = sorted(data[name])
        return data


class RaidServer:
    """The endpoint on 127.0.0.1 (port 0 by default); ``endpoint`` is its URL after start."""

    def __init__(
        self,
        images: dict[str, bytes] | None = None,
        *,
        token: str = DEFAULT_TOKEN,
        path: str = "/pub",
        faults: RaidFaults | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if not path.startswith("/") or path.startswith("/__"):
            raise ValueError(f"path {path!r} must start with '/' (and not '/__')")
        self.images = images if images is not None else {}
        self.token = token
        self.path = path
        self.faults = faults if faults is not None else RaidFaults()
        self.host = host
        self.port = port
        self.requests: collections.Counter[str] = collections.Counter()
        self.statuses: collections.Counter[int] = collections.Counter()
        self.gets = 0
        self.unauthorized = 0
        self._served: collections.Counter[str] = collections.Counter()  # for fail_times
        self._runner: web.AppRunner | None = None
        self.base_url = ""
        self.endpoint = ""

    # -- counters ----------------------------------------------------------------------
    def reset_counters(self) -> None:
        self.requests.clear()
        self.statuses.clear()
        self._served.clear()
        self.gets = 0
        self.unauthorized = 0

    def stats(self) -> dict[str, Any]:
        return {
            "gets": self.gets,
            "unauthorized": self.unauthorized,
            "requests": dict(self.requests),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "images": len(self.images),
        }

    # -- lifecycle ---------------------------------------------------------------------
    def make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/__stats", self._handle_stats, allow_head=False)
        app.router.add_post("/__faults", self._handle_faults)
        app.router.add_get(self.path, self._handle_pub, allow_head=False)
        return app

    async def start(self) -> Self:
        self._runner = web.AppRunner(
            self.make_app(), access_log=None, handle_signals=False, shutdown_timeout=0.5
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        self.base_url = f"http://{self.host}:{self.port}"
        self.endpoint = self.base_url + self.path
        return self

    async def stop(self) -> None:
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
        except (ValueError, TypeError, AttributeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(self.faults.to_json())

    def _answer(self, status: int, **kwargs: Any) -> web.Response:
        self.statuses[status] += 1
        return web.Response(status=status, **kwargs)

    def _authorised(self, request: web.Request) -> bool:
        given = request.headers.get("Authorization", "")
        return hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode())

    async def _handle_pub(self, request: web.Request) -> web.StreamResponse:
        self.gets += 1
        key = request.query.get("key")
        if key is not None:
            self.requests[key] += 1
        faults = self.faults
        if faults.latency > 0:
            await asyncio.sleep(faults.latency)
        if not self._authorised(request):
            self.unauthorized += 1
            return self._answer(
                401, text="unauthorized\n", headers={"WWW-Authenticate": 'Bearer realm="raid"'}
            )
        if not key:
            return self._answer(400, text="the key parameter is required\n")
        body = self.images.get(key)
        if body is None:
            return self._answer(404, text="no such key\n")
        if key in faults.stall:
            await asyncio.sleep(faults.stall_seconds)
        self._served[key] += 1
        if key in faults.always_503 or self._served[key] <= faults.fail_times.get(key, 0):
            return self._answer(503, text="busy\n", headers={"Retry-After": "1"})
        if key in faults.truncate:
            return await self._truncated(request, body)
        if key in faults.chunked:
            return await self._chunked(request, body)
        if key in faults.trickle:
            return await self._trickled(request, body, faults.trickle_seconds)
        return self._answer(200, body=body, content_type="application/octet-stream")

    async def _chunked(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """The whole body in 64 KiB chunks, without a Content-Length (chunked encoding)."""
        self.statuses[200] += 1
        response = web.StreamResponse(status=200)
        response.content_type = "application/octet-stream"
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 64 * 1024):
            await response.write(body[start : start + 64 * 1024])
        await response.write_eof()
        return response

    async def _trickled(
        self, request: web.Request, body: bytes, every: float
    ) -> web.StreamResponse:
        """The full Content-Length, then the body 500 bytes at a time, one piece every `every`
        seconds (never idle long, yet slow)."""
        self.statuses[200] += 1
        response = web.StreamResponse(status=200)
        response.content_type = "application/octet-stream"
        response.content_length = len(body)
        await response.prepare(request)
        for start in range(0, len(body), 500):
            await asyncio.sleep(every)
            await response.write(body[start : start + 500])
        await response.write_eof()
        return response

    async def _truncated(self, request: web.Request, body: bytes) -> web.StreamResponse:
        """The full Content-Length, half the body, then the connection closes."""
        self.statuses[200] += 1
        response = web.StreamResponse(status=200)
        response.content_type = "application/octet-stream"
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        await asyncio.sleep(0)
        if request.transport is not None:
            request.transport.close()
        raise asyncio.CancelledError  # nothing more is written


# -- out-of-process entry point ------------------------------------------------------------
def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m tui_backfill.servers.raid",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--path", default="/pub")
    p.add_argument(
        "--token",
        default=os.environ.get("RAID_PUBLISHER_SECRET", DEFAULT_TOKEN),
        help="the bearer token required (default: $RAID_PUBLISHER_SECRET, else a test value)",
    )
    p.add_argument("--images", type=int, default=0, help="serve many_images(N)")
    p.add_argument("--seed", type=int, default=0, help="seed of many_images")
    p.add_argument("--samples", action="store_true", help="also serve sample_images()")
    p.add_argument("--keys-file", type=Path, default=None, help="write the served keys here")
    return p.parse_args(argv)


async def _serve(args: argparse.Namespace) -> None:
    from tui_backfill.servers.images import many_images, sample_images

    images = many_images(args.images, args.seed) if args.images > 0 else {}
    if args.samples:
        images.update(sample_images())
    if args.keys_file is not None:
        args.keys_file.write_text("".join(f"{key}\n" for key in images))
    server = RaidServer(images, token=args.token, path=args.path, host=args.host, port=args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        print(f"RAID {server.endpoint}", flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    asyncio.run(_serve(_parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
