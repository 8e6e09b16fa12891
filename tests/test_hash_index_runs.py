"""Hash-index runs over time: `--limit-objects` bounds a run and the job's next run continues
after it (wrapping to the start once a run reached the listing's end); `resume --job` and
`run --job` of a hash-index job need no --pipeline; `coverage --job` answers the seed's query;
`runs` and `/metrics`-style figures read the hash index's counters."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from helpers import tool, tool_env

if TYPE_CHECKING:
    from conftest import S3Target

OBJECTS = 2_500


def put_objects(target: S3Target, count: int) -> dict[str, bytes]:
    assert target.data_dir is not None
    objects = {f"assets/o{n:05d}": os.urandom(512 + n % 97) for n in range(count)}
    for key, body in objects.items():
        path = target.data_dir / target.bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    return objects


def hash_args(target: S3Target, state: Path, index: Path, *extra: str) -> list[str]:
    return [
        "hash-index", "--no-ui", "--state", str(state), "--bucket", target.bucket,
        "--endpoint-url", target.endpoint_url, "--path-style", "--prefix", "assets/",
        "--index-db", str(index), "--backoff", "0.01", *extra,
    ]  # fmt: skip


def stored_hashes(index: Path) -> dict[str, str]:
    with sqlite3.connect(index) as db:
        return dict(
            db.execute("SELECT key, content_hash FROM files WHERE content_hash IS NOT NULL")
        )


async def test_limit_objects_advances_run_by_run_and_wraps(
    rclone_s3: S3Target, tmp_path: Path
) -> None:
    objects = put_objects(rclone_s3, OBJECTS)
    keys = sorted(objects)
    env = tool_env(rclone_s3)
    state, index = tmp_path / "state.sqlite3", tmp_path / "index.sqlite3"
    seen: list[dict[str, object]] = []
    for _ in range(3):
        result = await tool(*hash_args(rclone_s3, state, index, "--limit-objects", "1000"), env=env)
        assert result.rc == 0, result.err
        seen.append(json.loads(result.out))
    assert [s["scannedObjects"] for s in seen] == [1000, 1000, 500]
    assert [s["updated"] for s in seen] == [1000, 1000, 500]
    assert [s["checkpoint"]["lastKey"] for s in seen[:2]] == [keys[999], keys[1999]]  # type: ignore[index]
    assert stored_hashes(index) == {k: hashlib.sha256(v).hexdigest() for k, v in objects.items()}

    # the third run reached the end: the next one starts over, and finds all 1,000 unchanged
    result = await tool(*hash_args(rclone_s3, state, index, "--limit-objects", "1000"), env=env)
    assert result.rc == 0, result.err
    wrapped = json.loads(result.out)
    assert wrapped["scannedObjects"] == 1000 and wrapped["skipped"] == 1000
    assert wrapped["checkpoint"]["lastKey"] == keys[999]

    runs = await tool("runs", "--json", "--state", str(state), "--job", "hash-index", env=env)
    history = json.loads(runs.out)["runs"]
    assert [r["counters"]["updated"] for r in history] == [0, 500, 1000, 1000]
    assert [r["range"]["after"] for r in history] == [None, keys[1999], keys[999], None]

    coverage = await tool(
        "coverage", "--json", "--state", str(state), "--job", "hash-index", env=env
    )
    report = json.loads(coverage.out)
    assert (report["total"], report["with_hash"], report["coverage_percent"]) == (
        OBJECTS,
        OBJECTS,
        100.0,
    )


async def test_resume_and_run_by_job_name_alone(rclone_s3: S3Target, tmp_path: Path) -> None:
    """`run`, `status` and `resume` by the job's name alone read it as the hash index its
    runs were (no --pipeline): a new run asks for its index again, nothing is left to resume."""
    objects = put_objects(rclone_s3, 300)
    env = tool_env(rclone_s3)
    state, index = tmp_path / "state.sqlite3", tmp_path / "index.sqlite3"
    first = await tool(
        *hash_args(rclone_s3, state, index, "--job", "hx", "--limit-objects", "100"), env=env
    )
    assert first.rc == 0, first.err
    again = await tool("run", "--no-ui", "--state", str(state), "--job", "hx", env=env)
    # `run --job hx` knows hx is a hash index, but a new run needs its settings again
    assert again.rc == 2 and "--index-db" in again.err, again.err
    status = await tool("status", "--json", "--state", str(state), "--job", "hx", env=env)
    snap = json.loads(status.out)
    assert snap["pipeline"] == "hash-index" and snap["scannedObjects"] == 100
    resumed = await tool("resume", "--no-ui", "--state", str(state), "--job", "hx", env=env)
    assert resumed.rc == 2 and "nothing to resume" in resumed.err
    assert len(stored_hashes(index)) == 100 and len(objects) == 300
