"""`tui-backfill demo publish --no-ui --files 60` from an empty directory: every good photo published as
two WebP variants, the three broken files needing attention (exit 1); run again: only the
three unpublished files get new jobs, nothing is published twice."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from helpers import REPO


def demo(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "TUI_BACKFILL_", "B2_", "RAID_"))
    }
    env.pop("DATABASE_URL", None)
    env.update(PYTHONPATH=str(REPO), AWS_CONFIG_FILE=os.devnull)
    return subprocess.run(
        [sys.executable, "-m", "tui_backfill", "demo", "publish", "--no-ui", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def test_demo_publish_headless(tmp_path: Path) -> None:
    first = demo(tmp_path, "--files", "60")
    assert first.returncode == 1, first.stderr[-3000:]  # three jobs failed for good
    snap = json.loads(first.stdout)
    assert (snap["published"], snap["queue"]["needingAttention"], snap["queue"]["pending"]) == (
        60,
        3,
        0,
    )
    # the final snapshot is of a stopped worker, with the session's rates (not the 0 of a
    # stopped meter): 3 of its 63 attempts failed
    assert snap["state"] == "stopped"
    assert snap["errorRate"] == round(3 / 63, 4) and snap["jobsPerMinute"] > 0
    bucket = tmp_path / "state/demo-publish/s3/IBA-Lot-Media/media"
    assert len([p for p in bucket.rglob("*.webp")]) == 120
    db = tmp_path / "state/demo-publish/queue.sqlite3"
    with sqlite3.connect(db) as conn:
        errors = sorted(
            e.split(":")[0]
            for (e,) in conn.execute("SELECT last_error FROM publish_jobs WHERE status = 'failed'")
        )
    assert errors == ["corrupt", "noRemote", "too_many_pixels"]
    second = demo(tmp_path, "--files", "60")
    snap = json.loads(second.stdout)
    # `enqueue` gives the three unpublished files new jobs (the seed's rule); nothing else runs
    assert (snap["published"], snap["claimed"], snap["failedPermanent"]) == (0, 3, 3)
