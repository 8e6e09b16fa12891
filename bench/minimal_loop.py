"""The minimal loop of the card's libraries: the baseline tui-backfill is measured against.

For every (SKU, angle): HEAD the destination key (aiobotocore), and if it is missing GET the
object from the origin (aiohttp) and PUT it (aiobotocore). A semaphore of C is held around the
whole HEAD + GET + PUT of each object; one aiohttp session, one S3 client, botocore's retries
off (an item whose request fails is tried again by the loop, at most 3 attempts in all, so a
transient 500 from the S3 server does not lose it). No state, no checkpoint. Run by
``bench/peers.py``; standalone:

    .venv/bin/python bench/minimal_loop.py --skus-file SKUS --angles 3 --concurrency 3 \\
        --origin 'http://127.0.0.1:PORT/img/{sku}_{angle}.jpg' --bucket B --endpoint-url URL

S3 credentials come from the standard AWS environment variables. Prints one JSON object on
stdout: ``written``, ``noRemote``, ``skippedExists``, ``failed``, ``errors`` (failed attempts)
``seconds`` (from the first request to the last answer; client creation excluded) and
``startedAt`` (when that was, seconds since the epoch).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError

ATTEMPTS = 3


class _NotFound(Exception):
    pass


async def main(args: argparse.Namespace) -> dict[str, float | int]:
    with open(args.skus_file, encoding="utf-8") as f:
        skus = [line.strip() for line in f if line.strip()]
    items = [(sku, angle) for sku in skus for angle in range(1, args.angles + 1)]
    counts = {"written": 0, "noRemote": 0, "skippedExists": 0, "failed": 0, "errors": 0}
    config = AioConfig(
        retries={"total_max_attempts": 1},
        max_pool_connections=args.concurrency,
        s3={"addressing_style": "path"},
        connect_timeout=args.timeout,
        read_timeout=args.timeout,
    )
    sem = asyncio.Semaphore(args.concurrency)
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=args.concurrency), timeout=timeout) as http,
        get_session().create_client("s3", endpoint_url=args.endpoint_url, config=config) as s3,
    ):

        async def once(sku: str, angle: int) -> str:
            key = args.key_template.format(sku=sku, angle=angle)
            try:
                await s3.head_object(Bucket=args.bucket, Key=key)
                return "skippedExists"
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                    raise
            async with http.get(args.origin.format(sku=sku, angle=angle)) as answer:
                if answer.status == 404:
                    return "noRemote"
                answer.raise_for_status()
                body = await answer.read()
            await s3.put_object(Bucket=args.bucket, Key=key, Body=body, ContentType="image/jpeg")
            return "written"

        async def item(sku: str, angle: int) -> None:
            async with sem:
                for attempt in range(ATTEMPTS):
                    try:
                        counts[await once(sku, angle)] += 1
                        return
                    except (ClientError, aiohttp.ClientError, TimeoutError) as exc:
                        counts["errors"] += 1
                        if attempt == ATTEMPTS - 1:
                            counts["failed"] += 1
                            print(f"{sku}_{angle}: {exc!r}", file=sys.stderr)

        started_at, started = time.time(), time.perf_counter()
        await asyncio.gather(*(item(sku, angle) for sku, angle in items))
        seconds = time.perf_counter() - started
    return {**counts, "seconds": seconds, "startedAt": started_at}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--skus-file", required=True, help="one SKU per line")
    p.add_argument("--angles", type=int, default=3, help="angles 1..N per SKU")
    p.add_argument("--concurrency", type=int, default=3, help="objects in flight (HEAD + GET + PUT)")
    p.add_argument("--origin", required=True, help="URL template with {sku} and {angle}")
    p.add_argument("--bucket", required=True)
    p.add_argument("--endpoint-url", required=True)
    p.add_argument("--key-template", default="rsr/highres/{sku}_{angle}_HR.jpg")
    p.add_argument("--timeout", type=float, default=20.0)
    return p.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse_args()))))
