"""The floor of a Python client: list + GET + SHA-256 with aiohttp alone, no botocore.

What the hash index's performance goals are read against when they look out of reach: the
leanest client this machine's Python can be. ListObjectsV2 pages (1,000 keys, parsed with
ElementTree) feed a queue; C workers GET each key and hash its body while streaming it
(`hashlib.sha256`, in the event loop's thread). Requests are signed by a hand-made SigV4 of a
few lines (the signing key derived once a day; the empty payload's hash is signed, as a real client
does); aiohttp itself raises on a body shorter than its Content-Length. Nothing else: no retries, no state, no index, no
botocore import (about 0.2 s of start-up and 1-2 ms of CPU a call in aiobotocore); any error
ends the process with a traceback (exit 1). Path-style addressing only; region us-east-1 unless
told. With `--list-only` it lists and hashes nothing: the floor of any re-run that must learn
what the bucket holds (the hash index's skip rule). With `--strides FILE` too (the keys after
which the pages begin, one a line: every 1,000th key, what the hash index's re-run takes from
its index) it asks for the same pages the re-run does, `--ahead` (4) at a time with StartAfter,
instead of one after another: the floor of a re-run that reads its listing ahead.

Run by `bench/hash_index.py` (contender `floor`); standalone:

    .venv/bin/python bench/hash_floor.py --bucket B --prefix P --endpoint-url URL --concurrency 8

Credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. Prints the JSON object of
bench/hash_loop.py: `objects`, `bytes`, `seconds` (first listing to last hash), `startedAt`,
`digest` (with `--list-only`: objects listed, and the digest of their keys with empty hashes).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import json
import os
import time
import urllib.parse
from pathlib import Path
from xml.etree import ElementTree

import aiohttp
from hash_digest import contender_parser, report, timed  # bench/, beside this script

PAGE = 1000
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def _quote(text: str, safe: str = "-_.~") -> str:
    return urllib.parse.quote(text, safe=safe)


class Signer:
    """SigV4 for GETs with an empty body, path-style, the day's signing key kept."""

    def __init__(self, endpoint_url: str, region: str, access_key: str, secret_key: str) -> None:
        self.host = urllib.parse.urlsplit(endpoint_url).netloc
        self.region = region
        self.access_key = access_key
        self.secret_key = secret_key
        self._day = ""
        self._key = b""

    def _signing_key(self, day: str) -> bytes:
        if day != self._day:
            key = ("AWS4" + self.secret_key).encode()
            for part in (day, self.region, "s3", "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._day, self._key = day, key
        return self._key

    def get(self, path: str, query: dict[str, str]) -> tuple[str, dict[str, str]]:
        """The URL's path-and-query and the headers of a signed GET."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        day = stamp[:8]
        canonical_query = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))
        canonical_path = _quote(path, "/-_.~")
        headers = {"host": self.host, "x-amz-content-sha256": EMPTY_SHA256, "x-amz-date": stamp}
        signed = ";".join(sorted(headers))
        canonical = "\n".join(
            [
                "GET",
                canonical_path,
                canonical_query,
                "".join(f"{k}:{headers[k]}\n" for k in sorted(headers)),
                signed,
                EMPTY_SHA256,
            ]
        )
        scope = f"{day}/{self.region}/s3/aws4_request"
        to_sign = (
            f"AWS4-HMAC-SHA256\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        )
        signature = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        del headers["host"]  # aiohttp sends it, from the URL
        headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.access_key}/{scope},"
            f" SignedHeaders={signed}, Signature={signature}"
        )
        return canonical_path + (f"?{canonical_query}" if canonical_query else ""), headers


async def list_page(
    http: aiohttp.ClientSession, signer: Signer, base: str, bucket: str, query: dict[str, str]
) -> tuple[list[str], str | None]:
    """One ListObjectsV2 page: its keys, and the continuation token when more follow."""
    target, headers = signer.get(f"/{bucket}", query)
    async with http.get(base + target, headers=headers) as answer:
        body = await answer.read()
    if answer.status != 200:
        raise SystemExit(f"ListObjectsV2: {answer.status} {body[:300]!r}")
    root = ElementTree.fromstring(body)
    ns = root.tag.partition("}")[0] + "}" if root.tag.startswith("{") else ""
    listed = [item.findtext(f"{ns}Key") or "" for item in root.iter(f"{ns}Contents")]
    if root.findtext(f"{ns}IsTruncated") != "true":
        return listed, None
    return listed, root.findtext(f"{ns}NextContinuationToken") or ""


async def main(args: argparse.Namespace) -> dict[str, float | int | str]:
    signer = Signer(
        args.endpoint_url,
        args.region,
        os.environ["AWS_ACCESS_KEY_ID"],
        os.environ["AWS_SECRET_ACCESS_KEY"],
    )
    base = args.endpoint_url.rstrip("/")
    hashes: dict[str, str] = {}
    hashed = 0
    keys: asyncio.Queue[str | None] = asyncio.Queue(maxsize=2 * PAGE)
    connector = aiohttp.TCPConnector(limit=args.concurrency + 1)
    async with aiohttp.ClientSession(connector=connector, skip_auto_headers=["User-Agent"]) as http:

        async def lister() -> None:
            query = {"list-type": "2", "prefix": args.prefix, "max-keys": str(PAGE)}
            if args.strides is not None:
                await along_strides(query)
            while args.strides is None:
                listed, token = await list_page(http, signer, base, args.bucket, query)
                for key in listed:
                    if args.list_only:
                        hashes[key] = ""
                    else:
                        await keys.put(key)
                if token is None:
                    break
                query["continuation-token"] = token
            for _ in range(args.concurrency):
                await keys.put(None)

        async def along_strides(query: dict[str, str]) -> None:
            """The first page and the page after each stride key, `ahead` at a time."""
            starts: list[str | None] = [None, *args.strides.read_text().split()]
            room = asyncio.Semaphore(args.ahead)

            async def page(start: str | None) -> list[str]:
                async with room:
                    asked = {**query, "start-after": start} if start else query
                    return (await list_page(http, signer, base, args.bucket, asked))[0]

            for listed in await asyncio.gather(*(page(start) for start in starts)):
                hashes.update(dict.fromkeys(listed, ""))

        async def worker() -> None:
            nonlocal hashed
            while (key := await keys.get()) is not None:
                target, headers = signer.get(f"/{args.bucket}/{key}", {})
                async with http.get(base + target, headers=headers) as answer:
                    if answer.status != 200:
                        raise SystemExit(f"GET {key}: {answer.status}")
                    sha = hashlib.sha256()
                    async for chunk in answer.content.iter_any():
                        sha.update(chunk)
                        hashed += len(chunk)
                hashes[key] = sha.hexdigest()

        started_at, seconds = await timed(lister(), *(worker() for _ in range(args.concurrency)))
    return report(hashes, hashed, started_at, seconds)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = contender_parser(__doc__)
    p.add_argument("--list-only", action="store_true", help="list, hash nothing")
    p.add_argument("--strides", type=Path, help="with --list-only: the pages' StartAfter keys")
    p.add_argument("--ahead", type=int, default=4, help="pages asked for at a time (--strides)")
    args = p.parse_args(argv)
    if args.strides is not None and not args.list_only:
        p.error("--strides goes with --list-only")
    if args.ahead < 1:
        p.error("--ahead: at least 1")
    return args


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(parse_args()))))
