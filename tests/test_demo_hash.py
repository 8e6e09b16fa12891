"""`tui-backfill demo hash-index`: the real command in a temporary working directory.

The first run fills the index of the demo's 3,000 objects under `assets/` (coverage 100 %:
every object has its SHA-256, except the five planted wrong hashes behind the right size and
ETag, which the skip rule keeps for --verify to find); the second lists the bucket again and
downloads nothing. Also: `demo` alone is still the image demo, and its options stay its own.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import REPO

from tui_backfill.frontends.cli import build_parser

BUCKET_DIR = Path("state/demo-hash/s3/demo-hash-bucket")
INDEX = Path("state/demo-hash/index.sqlite3")


def demo(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "TUI_BACKFILL_", "ORIGIN_"))
    }
    env.update(PYTHONPATH=str(REPO), AWS_CONFIG_FILE=os.devnull)
    return subprocess.run(
        [sys.executable, "-m", "tui_backfill", "demo", "hash-index", "--no-ui", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )


def snapshot(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr[-3000:]
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def objects(cwd: Path) -> dict[str, str]:
    """Every object of the demo's bucket on disk, key -> SHA-256."""
    root = cwd / BUCKET_DIR
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in root.rglob("*")
        if path.is_file()
    }


def index_rows(cwd: Path) -> dict[str, str | None]:
    conn = sqlite3.connect(f"{(cwd / INDEX).as_uri()}?mode=ro", uri=True)
    try:
        return dict(conn.execute("SELECT key, content_hash FROM files").fetchall())
    finally:
        conn.close()


def test_demo_hash_fills_the_index_then_reruns_by_listing_only(tmp_path: Path) -> None:
    run = demo(tmp_path)
    first = snapshot(run)
    assert first["job"] == "demo-hash" and first["pipeline"] == "hash-index"
    assert first["state"] == "completed"
    assert first["scannedObjects"] == 3000
    assert first["updated"] + first["skipped"] == 3000
    assert first["updated"] > 2000 and first["skipped"] > 0  # most rows lacked a hash
    assert first["orphans"] == 25 and first["failedItems"] == 0 and first["errorsTotal"] == 0

    stored = objects(tmp_path)
    under = {key: sha for key, sha in stored.items() if key.startswith("assets/")}
    assert len(under) == 3000 and len(stored) > len(under)  # a few objects outside the prefix
    rows = index_rows(tmp_path)
    assert all(key.startswith("assets/") for key in rows)  # nothing outside the prefix
    assert all(rows.get(key) for key in under)  # coverage: 100 % of the objects
    wrong = {key for key, sha in under.items() if rows[key] != sha}
    assert len(wrong) == 5  # the planted wrong hashes: same size and ETag, so skipped
    orphans = set(rows) - set(under)
    assert len(orphans) == 25 and all(rows[key] for key in orphans)  # reported, never deleted
    assert (
        "coverage of assets/: 2,563 rows, 486 with a hash (18.96 %) -> 3,025 rows, 3,025 with a hash (100.00 %)"
        in run.stderr
    )

    second = snapshot(demo(tmp_path))
    assert second["runId"] == first["runId"] + 1
    assert second["scannedObjects"] == 3000
    assert second["skipped"] == 3000  # re-listed only: nothing downloaded, nothing written
    assert second["updated"] == 0 and second["bytesHashed"] == 0
    assert index_rows(tmp_path) == rows


@pytest.mark.parametrize(
    ("argv", "which"),
    [
        (["demo"], "images"),
        (["demo", "--no-ui"], "images"),
        (["demo", "images", "--limit-skus", "5"], "images"),
        (["demo", "hash-index"], "hash-index"),
        (["demo", "--no-ui", "hash-index", "--fresh"], "hash-index"),
    ],
)
def test_demo_names_which_demo(argv: list[str], which: str) -> None:
    assert build_parser().parse_args(argv).which == which


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["demo", "--verify"], "--verify"),
        (["demo", "images", "--since", "2026-06-01"], "--since"),
        (["demo", "hash-index", "--limit-skus", "5"], "--limit-skus"),
    ],
)
def test_demo_options_belong_to_their_demo(
    argv: list[str], field: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from tui_backfill.frontends.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tui-backfill: error: {field}:") and err.count("\n") == 1
