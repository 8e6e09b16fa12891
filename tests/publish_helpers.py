"""Helpers of the publishing worker's tests: a clean environment in the seed's names, files
and jobs inserted by plain SQL (as the seed's edge function does), and the queue read back."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from conftest import S3Target
from helpers import REPO, tool

RAID_SECRET = "raid-s3cret-token-0042"
CDN = "https://cdn.example.test/lots"
SEED_NAMES = (
    "DATABASE_URL", "RAID_PUBLISHER_SECRET", "RAID_PUB_ENDPOINT", "B2_KEY_ID", "B2_APP_KEY",
    "B2_BUCKET", "B2_ENDPOINT", "B2_REGION", "CDN_BASE_URL", "WORKER_POLL_INTERVAL",
    "MAX_RETRIES", "LOG_LEVEL", "CONCURRENCY",
)  # fmt: skip


def publish_env(target: S3Target, raid_url: str, database_url: str, **extra: str) -> dict[str, str]:
    """The seed's variables pointed at the test servers, nothing inherited that could leak in
    (no AWS_*, TUI_BACKFILL_*, seed names or profiles of this machine)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "TUI_BACKFILL_", "ORIGIN_")) and k not in SEED_NAMES
    }
    env.update(
        PYTHONPATH=str(REPO),
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        DATABASE_URL=database_url,
        RAID_PUBLISHER_SECRET=RAID_SECRET,
        RAID_PUB_ENDPOINT=raid_url,
        B2_KEY_ID=target.access_key,
        B2_APP_KEY=target.secret_key,
        B2_BUCKET=target.bucket,
        B2_ENDPOINT=target.endpoint_url,
        B2_REGION=target.region,
        CDN_BASE_URL=CDN,
        WORKER_POLL_INTERVAL="200",
        MAX_RETRIES="5",
        TUI_BACKFILL_PATH_STYLE="true",
        TUI_BACKFILL_TIMEOUT="5",
        TUI_BACKFILL_RETRY_BASE="0.2",
        TUI_BACKFILL_LEASE="6",
        TUI_BACKFILL_SHUTDOWN_TIMEOUT="20",
    )
    env.update(extra)
    return env


def insert_files_sqlite(path: Path, files: Iterable[tuple[int, int, str]]) -> None:
    """(id, lot_id, source_key) rows with only the seed's minimal columns."""
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO auction_files (id, lot_id, source_key, publish_status) VALUES (?, ?, ?, 'pending')",
            list(files),
        )


def rows_sqlite(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return [tuple(r) for r in db.execute(sql, args).fetchall()]


async def queue_files(db: Path, env: dict[str, str], files: Iterable[tuple[int, int, str]]) -> None:
    """The SQLite queue at `db` made by `publish init-db`, `files` (id, lot_id, source_key)
    inserted by plain SQL as the seed's application does, and a job each by `publish enqueue`."""
    assert (await tool("publish", "init-db", env=env)).rc == 0
    insert_files_sqlite(db, files)
    assert (await tool("publish", "enqueue", env=env)).rc == 0
