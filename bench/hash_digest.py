"""One SHA-256 over the sorted `KEY HASH` lines of a run's hashes: how bench/hash_index.py checks
every hash of a contender at once. Its own module, standard library only, so the floor
contender (bench/hash_floor.py) can import it without importing aiobotocore."""

from __future__ import annotations

import hashlib


def digest_of(hashes: dict[str, str]) -> str:
    return hashlib.sha256(
        "".join(f"{k} {hashes[k]}\n" for k in sorted(hashes)).encode()
    ).hexdigest()
