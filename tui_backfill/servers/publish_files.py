"""The seed's media rows for the publishing worker's demo and benchmarks: `auction_files`
inserted by plain SQL with only the columns the seed's edge function writes."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path


def insert_files(queue_db: Path, files: Iterable[tuple[int, int, str]]) -> int:
    """(id, lot_id, source_key) rows into a SQLite queue's `auction_files` (existing ids kept)."""
    rows = list(files)
    with sqlite3.connect(queue_db) as db:
        db.executemany(
            "INSERT OR IGNORE INTO auction_files (id, lot_id, source_key, publish_status)"
            " VALUES (?, ?, ?, 'pending')",
            rows,
        )
    return len(rows)
