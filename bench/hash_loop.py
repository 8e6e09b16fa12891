"""The minimal loop of the content-hash index: what `tui-backfill hash-index` is measured against.

ListObjectsV2 pages of the prefix (1,000 keys a page, aiobotocore) feed a queue; C workers GET
each key and hash its body with `hashlib.sha256` while streaming it (chunks of up to 1 MiB,
hashed in the event loop's thread, never a whole object in memory). One S3 client with the
project's settings (`tui_backfill/seams/bucket.py` `client_config`: botocore's retries off, no
checksum headers, path-style addressing, a fixed User-Agent, no parameter validation). Nothing
else: no retries, no state, no index; any error ends the process with a traceback (exit 1).
Run by `bench/hash_index.py`; standalone:

    .venv/bin/python bench/hash_loop.py --bucket B --prefix P --endpoint-url URL --concurrency 8

S3 credentials come from the standard AWS environment variables. Prints one JSON object on
stdout: `objects`, `bytes` (hashed), `seconds` (from the first listing to the last hash; client
creation and imports excluded), `startedAt` (seconds since the epoch) and `digest`: the SHA-256
of the sorted lines `KEY SHA256HEX\\n`, so a caller can check every hash at once.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from hash_digest import contender_parser, report, timed  # bench/, beside this script

CHUNK = 1 << 20
PAGE = 1000


async def main(args: argparse.Namespace) -> dict[str, float | int | str]:
    config = AioConfig(
        region_name=args.region,
        connect_timeout=min(args.timeout, 10.0),
        read_timeout=args.timeout,
        max_pool_connections=args.concurrency,
        retries={"total_max_attempts": 1, "mode": "standard"},
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        user_agent="hash-loop",
        parameter_validation=False,
    )
    hashes: dict[str, str] = {}
    hashed = 0
    keys: asyncio.Queue[str | None] = asyncio.Queue(maxsize=2 * PAGE)
    async with get_session().create_client(
        "s3", endpoint_url=args.endpoint_url, config=config
    ) as s3:

        async def lister() -> None:
            request = {"Bucket": args.bucket, "Prefix": args.prefix, "MaxKeys": PAGE}
            while True:
                page = await s3.list_objects_v2(**request)
                for obj in page.get("Contents", ()):
                    await keys.put(obj["Key"])
                if not page.get("IsTruncated"):
                    break
                request["ContinuationToken"] = page["NextContinuationToken"]
            for _ in range(args.concurrency):
                await keys.put(None)

        async def worker() -> None:
            nonlocal hashed
            while (key := await keys.get()) is not None:
                answer = await s3.get_object(Bucket=args.bucket, Key=key)
                sha = hashlib.sha256()
                async with answer["Body"] as body:
                    async for chunk in body.iter_chunks(CHUNK):
                        sha.update(chunk)
                        hashed += len(chunk)
                hashes[key] = sha.hexdigest()

        started_at, seconds = await timed(lister(), *(worker() for _ in range(args.concurrency)))
    return report(hashes, hashed, started_at, seconds)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = contender_parser(__doc__)
    p.add_argument(
        "--timeout", type=float, default=20.0, help="connect and read (idle) timeout, seconds"
    )
    return p.parse_args(argv)


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse_args()))))
