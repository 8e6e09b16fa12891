"""What the hash index's Python contenders share (bench/hash_loop.py, the minimal loop;
bench/hash_floor.py, the floor) and the harness checks them by (bench/hash_index.py): their
command line, their timing and the JSON they print, whose `digest` is one SHA-256 over the
sorted `KEY HASH` lines of a run's hashes, so every hash is checked at once. Standard library
only, so the floor can import it without importing aiobotocore."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
from collections.abc import Awaitable


def digest_of(hashes: dict[str, str]) -> str:
    return hashlib.sha256(
        "".join(f"{k} {hashes[k]}\n" for k in sorted(hashes)).encode()
    ).hexdigest()


def contender_parser(description: str | None) -> argparse.ArgumentParser:
    """The options every contender takes; a contender adds its own."""
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--bucket", required=True)
    p.add_argument("--prefix", default="")
    p.add_argument("--endpoint-url", required=True)
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--concurrency", type=int, default=8, help="GETs in flight")
    return p


async def timed(*jobs: Awaitable[object]) -> tuple[float, float]:
    """Run the lister and the workers together: when they started (epoch) and how long."""
    started_at, started = time.time(), time.perf_counter()
    await asyncio.gather(*jobs)
    return started_at, time.perf_counter() - started


def report(
    hashes: dict[str, str], nbytes: int, started_at: float, seconds: float
) -> dict[str, float | int | str]:
    """The JSON object a contender prints on stdout."""
    return {
        "objects": len(hashes),
        "bytes": nbytes,
        "seconds": seconds,
        "startedAt": started_at,
        "digest": digest_of(hashes),
    }
