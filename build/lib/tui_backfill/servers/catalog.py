"""Synthetic product catalogs (SQLite) for the demo, the tests and the benchmarks.

``make_catalog(path, active, inactive)`` writes ``products (sku, active, name)`` with realistic
numeric SKUs ("100000", "100001", ...) interleaved with a few alphanumeric ones whose byte order
is instructive ("A1" sorts before "A_", "RSR-1234"), a few duplicate rows (the tool
deduplicates) and a shuffled insertion order. :data:`ACTIVE_SKUS_QUERY` is the "active SKU"
query; :func:`active_skus` returns what a run should scan (deduplicated, byte-wise sorted).

    python -m tui_backfill.servers.catalog catalog.sqlite3 --active 30392 --inactive 5000
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

__all__ = ["ACTIVE_SKUS_QUERY", "SPECIAL_SKUS", "active_skus", "make_catalog"]

ACTIVE_SKUS_QUERY = "SELECT sku FROM products WHERE active = 1"
SPECIAL_SKUS = ("A1", "A_", "RSR-1234", "A_1", "B-7", "RSR-0042", "Z9", "rsr-77")
_BATCH = 50_000
T = TypeVar("T")


def _sku_names(total: int, rng: random.Random) -> list[str]:
    """``total`` distinct SKUs: numeric from 100000, about 1 in 200 alphanumeric (none below 20)."""
    n_alpha = min(len(SPECIAL_SKUS) + total // 200, max(3, total // 10)) if total >= 20 else 0
    alpha: list[str] = list(SPECIAL_SKUS[:n_alpha])
    seen = set(alpha)
    while len(alpha) < n_alpha:
        candidate = rng.choice(
            (
                f"RSR-{rng.randrange(10000):04d}",
                f"{rng.choice('ABCXYZ')}{rng.randrange(1000)}",
                f"{rng.choice('ABC')}_{rng.randrange(100)}",
            )
        )
        if candidate not in seen:
            seen.add(candidate)
            alpha.append(candidate)
    numeric = [str(100000 + i) for i in range(total - n_alpha)]
    return numeric + alpha


def _shuffled(items: list[T], rng: random.Random) -> list[T]:
    out = list(items)
    rng.shuffle(out)
    return out


def make_catalog(
    path: str | Path,
    active: int,
    inactive: int = 0,
    *,
    seed: int = 20240611,
    duplicates: int | None = None,
) -> None:
    """Create (replace) the SQLite catalog at ``path``.

    :param active: distinct active SKUs (``active = 1``).
    :param inactive: distinct inactive SKUs (``active = 0``).
    :param duplicates: extra duplicate rows of active SKUs; default ``active // 500`` (>= 1
        when there are at least 20 active SKUs).
    """
    if active < 0 or inactive < 0:
        raise ValueError("active and inactive must be >= 0")
    rng = random.Random(seed)
    names = _sku_names(active + inactive, rng)
    mixed = _shuffled(names, rng)  # which SKUs are active: the first ``active`` of a shuffle
    rows = [(sku, 1) for sku in mixed[:active]] + [(sku, 0) for sku in mixed[active:]]
    if duplicates is None:
        duplicates = max(1, active // 500) if active >= 20 else 0
    if active:
        rows.extend((mixed[rng.randrange(active)], 1) for _ in range(duplicates))
    rows = _shuffled(rows, rng)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-journal", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode = OFF")
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute(
            "CREATE TABLE products (sku TEXT NOT NULL, active INTEGER NOT NULL, name TEXT)"
        )

        def batches() -> Iterator[list[tuple[str, int, str]]]:
            for start in range(0, len(rows), _BATCH):
                yield [(s, a, f"Product {s}") for s, a in rows[start : start + _BATCH]]

        with conn:
            for batch in batches():
                conn.executemany("INSERT INTO products (sku, active, name) VALUES (?, ?, ?)", batch)
    finally:
        conn.close()


def active_skus(path: str | Path) -> list[str]:
    """Active SKUs of the catalog, deduplicated and sorted byte-wise (SQLite BINARY order)."""
    conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        skus = {row[0] for row in conn.execute(ACTIVE_SKUS_QUERY)}
    finally:
        conn.close()
    return sorted(skus, key=lambda s: s.encode("utf-8"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m tui_backfill.servers.catalog",
        description="Write a synthetic SQLite product catalog.",
    )
    p.add_argument("path")
    p.add_argument("--active", type=int, required=True)
    p.add_argument("--inactive", type=int, default=0)
    p.add_argument("--seed", type=int, default=20240611)
    args = p.parse_args(argv)
    make_catalog(args.path, args.active, args.inactive, seed=args.seed)
    print(f"{args.path}: {args.active} active, {args.inactive} inactive SKUs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
