"""The origin's ceiling: aiohttp GETs alone, C at a time, nothing written anywhere.

What any client of this origin can reach with C parallel fetches on this machine: the origin's
latency L plus its own (and the loopback's) per-request cost. ``bench/peers.py`` runs it beside
the tools so "of C/L" can be read against what is reachable at all. Standalone:

    .venv/bin/python bench/get_loop.py --skus-file SKUS --angles 3 --concurrency 3 \\
        --origin 'http://127.0.0.1:PORT/img/{sku}_{angle}.jpg'

Prints one JSON object: ``fetched``, ``noRemote``, ``failed``, ``seconds`` (first request to
last answer) and ``startedAt`` (seconds since the epoch).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import aiohttp


async def main(args: argparse.Namespace) -> dict[str, float | int]:
    with open(args.skus_file, encoding="utf-8") as f:
        skus = [line.strip() for line in f if line.strip()]
    urls = [args.origin.format(sku=sku, angle=angle) for sku in skus for angle in range(1, args.angles + 1)]
    counts = {"fetched": 0, "noRemote": 0, "failed": 0}
    sem = asyncio.Semaphore(args.concurrency)
    connector = aiohttp.TCPConnector(limit=args.concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=20)) as http:

        async def get(url: str) -> None:
            async with sem, http.get(url) as answer:
                if answer.status == 404:
                    counts["noRemote"] += 1
                elif answer.status == 200:
                    await answer.read()
                    counts["fetched"] += 1
                else:
                    counts["failed"] += 1

        started_at, started = time.time(), time.perf_counter()
        await asyncio.gather(*(get(url) for url in urls))
        seconds = time.perf_counter() - started
    return {**counts, "seconds": seconds, "startedAt": started_at}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skus-file", required=True, help="one SKU per line")
    p.add_argument("--angles", type=int, default=3, help="angles 1..N per SKU")
    p.add_argument("--concurrency", type=int, default=3, help="GETs in flight")
    p.add_argument("--origin", required=True, help="URL template with {sku} and {angle}")
    return p.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse_args()))))
