"""A synthetic bucket and content-hash index with gaps, for the hash-index demo and tests.

``make_hash_bucket(bucket_dir, index_db)`` writes objects straight into a directory that
``rclone serve s3`` serves as a bucket (its files are the objects: the file's MD5 is the
ETag, its mtime the LastModified), and an index SQLite file with the seed's schema
``files(key TEXT PRIMARY KEY, content_hash, size, etag, uploaded_at, uploader_id)`` in the
state a real index is found in: most rows of objects under the prefix without a hash, some
hashed, a few hashed before their object was replaced (size and ETag differ: re-hashed), a
few with a wrong hash whose size and ETag still match (the skip rule keeps them; ``--verify``
finds them), objects with no row at all, and orphan rows whose object was deleted. A few
objects lie outside the prefix. Everything comes from one seeded RNG: the same seed writes
the same bytes, keys, times and rows.

    python -m tui_backfill.servers.hash_bucket DIR/bucket DIR/index.sqlite3 --objects 3000
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sqlite3
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

__all__ = ["DEMO_PREFIX", "HashBucketFacts", "make_hash_bucket"]

DEMO_PREFIX = "assets/"
DEFAULT_SEED = 20261206
KiB = 1024
# What each object under the prefix finds in the index (fractions of the objects).
NO_HASH, HASHED, MISSING = 0.70, 0.15, 0.15  # of the rest after STALE and WRONG
STALE, WRONG, ORPHANS = 10, 5, 25  # counts: replaced since hashed; wrong hash; deleted objects
OUTSIDE = (
    "README.txt",
    "backups/index-2026-05-01.sql",
    "tmp/upload-7f3a.part",
    "tmp/upload-91c2.part",
    "thumbs-old/0001.webp",
)
KINDS = (("photos", "jpg", 0.6), ("docs", "pdf", 0.15), ("thumbs", "webp", 0.25))
# Keys a real bucket has too: spaces, non-ASCII, and names whose byte order is not their
# "natural" order.
SPECIAL_KEYS = (
    "assets/docs/Katalog Frühjahr 2026.pdf",
    "assets/docs/price list (final).pdf",
    "assets/photos/A1.jpg",
    "assets/photos/A_1.jpg",
)
START = datetime(2026, 1, 5, tzinfo=UTC)
SPAN = timedelta(days=176)  # LastModified between 2026-01-05 and 2026-06-30


@dataclass(frozen=True)
class HashBucketFacts:
    """What was written (the figures the demo and the tests expect)."""

    objects: int  # under the prefix
    outside: int  # outside the prefix
    total_bytes: int
    rows: int  # index rows
    rows_with_hash: int
    no_hash: int  # objects whose row has no hash
    hashed: int  # objects whose row has the right hash, size and ETag
    stale: int  # objects whose row has an old hash, size and ETag
    wrong: int  # objects whose row has a wrong hash with the right size and ETag
    missing: int  # objects with no row
    orphans: int  # rows with no object


def _size(rng: random.Random) -> int:
    """Mixed sizes from 1 KiB to 2 MiB, mostly small (as a media bucket's are)."""
    draw = rng.random()
    if draw < 0.85:
        return rng.randint(1 * KiB, 32 * KiB)
    if draw < 0.985:
        return rng.randint(32 * KiB, 256 * KiB)
    return rng.randint(256 * KiB, 2048 * KiB)


def _keys(rng: random.Random, count: int) -> list[str]:
    keys = list(SPECIAL_KEYS[: min(len(SPECIAL_KEYS), count)])
    seen = set(keys)
    serial = 0
    while len(keys) < count:
        serial += 1
        kind, ext = rng.choices([(k, e) for k, e, _ in KINDS], [w for *_, w in KINDS])[0]
        key = f"{DEMO_PREFIX}{kind}/{rng.randrange(1000, 9999)}/{serial:05d}.{ext}"
        if key not in seen:
            seen.add(key)
            keys.append(key)
    return keys


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _write(bucket_dir: Path, key: str, body: bytes, moment: datetime) -> None:
    path = bucket_dir / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(body)
    stamp = moment.timestamp()
    os.utime(path, (stamp, stamp))


def make_hash_bucket(
    bucket_dir: str | Path,
    index_db: str | Path,
    *,
    objects: int = 3000,
    seed: int = DEFAULT_SEED,
) -> HashBucketFacts:
    """Write ``objects`` objects under ``assets/`` (plus a few outside it) into
    ``bucket_dir`` and the index with its gaps into ``index_db`` (replaced if present)."""
    rng = random.Random(seed)
    bucket = Path(bucket_dir)
    bucket.mkdir(parents=True, exist_ok=True)
    index = Path(index_db)
    index.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(f"{index}{suffix}").unlink(missing_ok=True)
    rows: list[tuple[str, str | None, int, str, str, str]] = []
    counts = dict.fromkeys(("no_hash", "hashed", "stale", "wrong", "missing"), 0)
    total_bytes = 0
    keys = _keys(rng, objects)
    special = rng.sample(range(len(SPECIAL_KEYS), len(keys)), min(STALE + WRONG, len(keys) // 4))
    stale = set(special[:STALE])
    wrong = set(special[STALE:])
    for position, key in enumerate(keys):
        body = rng.randbytes(_size(rng))
        moment = START + timedelta(seconds=rng.randrange(int(SPAN.total_seconds())))
        _write(bucket, key, body, moment)
        total_bytes += len(body)
        sha256 = hashlib.sha256(body).hexdigest()
        etag = hashlib.md5(body, usedforsecurity=False).hexdigest()
        uploaded = _iso(moment)
        if position in stale:  # hashed, then the object was replaced: size and ETag differ
            old = rng.randbytes(rng.randint(1 * KiB, 32 * KiB))
            old_etag = hashlib.md5(old, usedforsecurity=False).hexdigest()
            rows.append((key, hashlib.sha256(old).hexdigest(), len(old), old_etag, uploaded, "web"))
            counts["stale"] += 1
            continue
        if position in wrong:  # a wrong hash behind the right size and ETag: --verify finds it
            bad = hashlib.sha256(body + b"\n").hexdigest()
            rows.append((key, bad, len(body), etag, uploaded, "legacy-import"))
            counts["wrong"] += 1
            continue
        draw = rng.random()
        if draw < NO_HASH:
            rows.append((key, None, len(body), etag, uploaded, "web"))
            counts["no_hash"] += 1
        elif draw < NO_HASH + HASHED:
            rows.append((key, sha256, len(body), etag, uploaded, "web"))
            counts["hashed"] += 1
        else:
            counts["missing"] += 1
    for serial in range(ORPHANS):  # rows whose object was deleted (hashed when uploaded)
        key = f"{DEMO_PREFIX}photos/deleted/{serial:04d}.jpg"
        body = rng.randbytes(64)
        rows.append(
            (
                key,
                hashlib.sha256(body).hexdigest(),
                len(body),
                hashlib.md5(body, usedforsecurity=False).hexdigest(),
                _iso(START),
                "web",
            )
        )
    for key in OUTSIDE:
        body = rng.randbytes(rng.randint(100, 4 * KiB))
        _write(bucket, key, body, START + timedelta(days=rng.randrange(176)))
    rng.shuffle(rows)  # a table's insertion order is not key order
    conn = sqlite3.connect(index)
    try:
        with conn:
            conn.execute(
                "CREATE TABLE files (key TEXT PRIMARY KEY, content_hash TEXT, size INTEGER, "
                "etag TEXT, uploaded_at TEXT, uploader_id TEXT)"
            )
            conn.executemany("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)", rows)
    finally:
        conn.close()
    return HashBucketFacts(
        objects=len(keys),
        outside=len(OUTSIDE),
        total_bytes=total_bytes,
        rows=len(rows),
        rows_with_hash=sum(1 for row in rows if row[1] is not None),
        orphans=ORPHANS,
        **counts,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "bucket_dir", help="the bucket's directory (rclone serve s3 serves its parent)"
    )
    parser.add_argument("index_db", help="the index SQLite file to write (replaced)")
    parser.add_argument("--objects", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    facts = make_hash_bucket(args.bucket_dir, args.index_db, objects=args.objects, seed=args.seed)
    print(facts, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
