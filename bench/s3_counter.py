"""The counting ReverseProxy in a process of its own, for benchmarks.

Run in-process, the proxy would share the benchmark process (and its one core under the GIL)
with the origin, and its CPU could not be told apart from the origin's. As a child process it
has its own core and its own CPU figures (``/proc/PID/stat``). Usage:

    .venv/bin/python bench/s3_counter.py UPSTREAM_URL

prints ``PROXY http://127.0.0.1:PORT http://127.0.0.1:CONTROL_PORT`` on stdout and serves until
SIGTERM. The control port answers ``GET /counts`` (requests by kind, statuses by kind and
status, as JSON) and ``POST /reset``. :class:`CounterProcess` starts and queries it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from aiohttp import web

from tui_backfill.servers.proxy import ReverseProxy


class CounterProcess:
    """Starts ``s3_counter.py`` in front of ``upstream_url``; ``endpoint_url`` after start."""

    def __init__(self, upstream_url: str) -> None:
        self.upstream_url = upstream_url
        self.proc: asyncio.subprocess.Process | None = None
        self.endpoint_url = ""
        self.control_url = ""

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def __aenter__(self) -> Self:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(Path(__file__).resolve()), self.upstream_url,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        line = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).decode().split()
        if len(line) != 3 or line[0] != "PROXY":
            raise RuntimeError(f"s3_counter did not start: {line!r}")
        self.endpoint_url, self.control_url = line[1], line[2]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()

    def _call(self, method: str, path: str) -> dict[str, Any]:
        request = urllib.request.Request(self.control_url + path, method=method)
        with urllib.request.urlopen(request, timeout=10) as answer:
            return json.loads(answer.read())

    async def reset(self) -> None:
        await asyncio.to_thread(self._call, "POST", "/reset")

    async def counts(self) -> dict[str, Any]:
        return await asyncio.to_thread(self._call, "GET", "/counts")


def _counts(proxy: ReverseProxy) -> dict[str, Any]:
    kinds: dict[str, int] = {}
    for (_, kind), n in proxy.requests.items():
        kinds[kind] = kinds.get(kind, 0) + n
    return {
        "requests": kinds,
        "statuses": {f"{kind} {status}": n for (kind, status), n in proxy.statuses.items()},
    }


async def _serve(upstream: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with ReverseProxy(upstream) as proxy:

        async def counts(request: web.Request) -> web.Response:
            return web.json_response(_counts(proxy))

        async def reset(request: web.Request) -> web.Response:
            proxy.reset_counters()
            return web.json_response({})

        app = web.Application()
        app.router.add_get("/counts", counts)
        app.router.add_post("/reset", reset)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        control = f"http://127.0.0.1:{runner.addresses[0][1]}"
        print(f"PROXY {proxy.endpoint_url} {control}", flush=True)
        try:
            await stop.wait()
        finally:
            await runner.cleanup()


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(sys.argv[1]))
