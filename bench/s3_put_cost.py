"""CPU of this process per S3 PUT (and HEAD): `Bucket.put` (aiobotocore) vs the lean path
(tui_backfill.seams.s3_lean, sent on its own wire, seams/http1) vs the lean path's signed
request sent by aiohttp (`AiohttpSent`: what the lean path did before the wire), against
`rclone serve s3` (its CPU is its own process's).

N objects of 30 KB per path, PUT as the publish worker does (If-None-Match: *, image/webp,
Cache-Control), in rounds of 50 interleaved between the two paths, 8 at a time; then a HEAD of
each. Prints CPU ms per call (time.process_time) and wall time, per path.
Usage: .venv/bin/python bench/s3_put_cost.py [N]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import yarl

from tui_backfill.pipelines.publish.worker import CACHE_CONTROL
from tui_backfill.seams.bucket import Bucket
from tui_backfill.seams.s3_lean import LeanBucket
from tui_backfill.servers.rclone_s3 import RcloneS3

ROUND = 50
IN_FLIGHT = 8


async def timed_round(call: Callable[[int], Awaitable[object]], start: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of ROUND calls, IN_FLIGHT at a time."""
    gate = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> None:
        async with gate:
            await call(i)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(start, start + ROUND)))
    return time.process_time() - cpu, time.perf_counter() - wall


class AiohttpSent:
    """The lean path's signed requests (`LeanBucket.signed`) sent by one aiohttp session, as
    s3_lean sent them before its own wire (no silent re-send, no Content-Type added)."""

    def __init__(self, lean: LeanBucket) -> None:
        self._lean = lean
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> AiohttpSent:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=IN_FLIGHT + 2),
            auto_decompress=False,
            skip_auto_headers=("Content-Type",),
        )
        self._session._retry_connection = False
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._session is not None
        await self._session.close()

    async def _send(self, method: str, key: str, headers: dict[str, str], body: bytes) -> int:
        assert self._session is not None
        url, sent = await self._lean.signed(method, key, headers, body)
        async with self._session.request(
            method, yarl.URL(url, encoded=True), headers=sent, data=body or None
        ) as answer:
            await answer.read()
            return answer.status

    async def put(
        self,
        key: str,
        body: bytes,
        content_type: str,
        *,
        if_none_match: bool,
        cache_control: str = "",
    ) -> bool:
        headers = {"Content-Type": content_type, "If-None-Match": "*"}
        if cache_control:
            headers["Cache-Control"] = cache_control
        return await self._send("PUT", key, headers, body) == 200

    async def exists(self, key: str) -> bool:
        return await self._send("HEAD", key, {}, b"") == 200


async def main(count: int) -> None:
    body = os.urandom(30 * 1024)
    with RcloneS3(Path(tempfile.mkdtemp(prefix="bench-put-")) / "s3", buckets=["bench"]) as s3:
        bucket = Bucket(
            "bench",
            endpoint_url=s3.endpoint_url,
            region=None,
            path_style=True,
            timeout=30,
            pool_size=IN_FLIGHT + 2,
            credentials=(s3.access_key, s3.secret_key),
        )
        async with bucket, LeanBucket(bucket) as lean, AiohttpSent(lean) as on_aiohttp:
            paths: dict[str, Bucket | LeanBucket | AiohttpSent] = {
                "aiobotocore": bucket,
                "lean-aiohttp": on_aiohttp,
                "lean": lean,
            }
            for name, path in paths.items():  # warm up: connections, first-call caches
                await path.put(f"{name}/warm", body, "image/webp", if_none_match=True)
            for verb in ("PUT", "HEAD"):
                cpu: dict[str, list[float]] = {name: [] for name in paths}
                wall: dict[str, float] = dict.fromkeys(paths, 0.0)
                for start in range(0, count, ROUND):
                    for name, path in paths.items():

                        async def call(
                            i: int,
                            path: Bucket | LeanBucket | AiohttpSent = path,
                            name: str = name,
                            verb: str = verb,
                        ) -> object:
                            key = f"{name}/{i:06d}.webp"
                            if verb == "HEAD":
                                return await path.exists(key)
                            return await path.put(
                                key,
                                body,
                                "image/webp",
                                if_none_match=True,
                                cache_control=CACHE_CONTROL,
                            )

                        used, took = await timed_round(call, start)
                        cpu[name].append(used / ROUND * 1000)
                        wall[name] += took
                for name in paths:
                    rounds = cpu[name]
                    print(
                        f"{verb:4} {name:12} {count} x 30 KB: CPU {statistics.mean(rounds):.2f} ms/call "
                        f"(median round {statistics.median(rounds):.2f}), wall {wall[name]:.1f} s"
                    )


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 500))
