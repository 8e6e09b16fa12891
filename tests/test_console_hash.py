"""The console over a hash-index run, used as a person uses it: Pilot keys against a real
engine (rclone serve s3 behind a slowing proxy, a real index file), a snapshot at 80x24 of a
verify run with mismatches, every counter in full at any width; and its `/metrics`."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from test_console import FIXED_NOW, FixedController, screen_text, served_run, wait_for

from tui_backfill.frontends.ui.app import BackfillApp
from tui_backfill.frontends.ui.controller import HttpController, LocalController
from tui_backfill.frontends.ui.screens import HelpScreen, QuitScreen
from tui_backfill.outcomes import ConfigError
from tui_backfill.pipelines.config import resolve
from tui_backfill.pipelines.hash_index.checkpoint import KeyCheckpoint, Mismatch
from tui_backfill.pipelines.hash_index.snapshot import HashCounters, HashSnapshot
from tui_backfill.pipelines.prepare import RunRequest, prepare_run
from tui_backfill.servers.proxy import ProxyFaults


def fixed_hash_snapshot() -> HashSnapshot:
    counters = HashCounters(
        scanned_objects=18_240, verified=18_112, mismatched=3, skipped=119, orphans=66,
        failed_items=6, bytes_hashed=9_876_543_210, errors_by_code={"truncated": 4, "http_503": 11},
    )  # fmt: skip
    mismatches = tuple(
        Mismatch(f"assets/lot-{n}/photo.jpg", "a" * 64, "b" * 64) for n in (17, 204, 9911)
    )
    return HashSnapshot(
        job="hash-index", run_id=4, state="running", dry_run=False,
        started_at="2026-11-26T11:40:00.000Z", last_update_at="2026-11-26T12:00:00.000Z",
        concurrency=8, counters=counters, mode="verify",
        checkpoint=KeyCheckpoint("assets/lot-9911/photo.jpg", ("assets/lot-9913/a.jpg",),
                                 mismatches=mismatches),
        in_flight=19, fetches_in_flight=8, items_per_second=61.5, bytes_per_second=42_000_000.0,
        last_errors={"truncated": "S3 GET assets/x: truncated body, 1,024 of 65,536 bytes",
                     "http_503": "S3 503 SlowDown"},
        bucket="media-prod", prefix="assets/", endpoint="https://acct.r2.cloudflarestorage.com",
        index="index.sqlite3:files", checkpoint_saved_at="2026-11-26T11:59:58.000Z",
        checkpoint_saved_sku="assets/lot-9900/photo.jpg",
    )  # fmt: skip


def test_hash_console_snapshot(snap_compare: Any) -> None:
    app = BackfillApp(FixedController(fixed_hash_snapshot()), clock=lambda: FIXED_NOW, poll=False)  # type: ignore[arg-type]
    assert snap_compare(app, terminal_size=(80, 24))


@pytest.mark.parametrize("width", [80, 100, 157])
async def test_hash_counters_fit_every_width(width: int) -> None:
    app = BackfillApp(FixedController(fixed_hash_snapshot()), clock=lambda: FIXED_NOW, poll=False)  # type: ignore[arg-type]
    async with app.run_test(size=(width, 24)) as pilot:
        await pilot.pause()
        text = screen_text(app)
        rows = [line for line in text.splitlines() if "scannedObjects" in line or "mode" in line]
        assert len(rows) == 2 and not any("\u2026" in row for row in rows), rows
        assert "18,240" in rows[0] and "18,112" in rows[0] and rows[0].rstrip().endswith(" 15")
        assert "mismatched" in text and "orphans" in text and "lastKey assets/lot-9911" in text
        assert "objects 18,240" in text  # the progress line counts objects, not SKUs
        # the cap bounds the GETs (8 of 8), not the items in flight (19)
        assert re.search(r"GETs\s+8 of 8\b", text) and re.search(r"itemsInFlight\s+19\b", text)


@pytest.fixture
def bucket_objects(rclone_s3: Any) -> dict[str, bytes]:
    """300 objects of 32 KiB under assets/, written where rclone serves them."""
    objects = {f"assets/obj{n:04d}.bin": os.urandom(32 * 1024) for n in range(300)}
    for key, body in objects.items():
        path = rclone_s3.data_dir / rclone_s3.bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    return objects


async def test_keys_drive_a_real_hash_index_run(
    rclone_s3: Any,
    s3_proxy: Any,
    bucket_objects: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in rclone_s3.env().items():
        monkeypatch.setenv(name, value)
    proxy = await s3_proxy(rclone_s3, ProxyFaults(latency=0.02))  # long enough to press keys
    index = tmp_path / "index.sqlite3"
    flags = {
        "pipeline": "hash-index", "job": "hash-index", "state": str(tmp_path / "state.sqlite3"),
        "bucket": rclone_s3.bucket, "endpoint_url": proxy.endpoint_url, "path_style": True,
        "prefix": "assets/", "index_db": str(index), "concurrency": 2, "timeout": 5.0,
    }  # fmt: skip
    prepared = await prepare_run(RunRequest(resolve(flags, env={})))
    engine = prepared.engine
    app = BackfillApp(LocalController(prepared))
    try:
        async with app.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: engine.counters.updated > 0)
            text = screen_text(app)
            assert "RUNNING" in text and "scannedObjects" in text and "p Hold" in text

            await pilot.press("p")
            await wait_for(pilot, lambda: app.run_state == "paused")
            updated = engine.counters.updated
            await pilot.pause(0.5)
            assert engine.counters.updated == updated  # nothing moves while paused
            # a held run's checkpoint is saved with its upserts landed: the index has them all
            with sqlite3.connect(index) as db:
                (hashed,) = db.execute(
                    "SELECT count(*) FROM files WHERE content_hash IS NOT NULL"
                ).fetchone()
            assert hashed == updated
            assert "HELD" in screen_text(app)

            await pilot.press("?")  # the help names this console's counters
            await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
            help_text = screen_text(app)
            assert "skipped: not written (skip rule" in help_text
            assert "orphans: index rows with no object" in help_text
            assert "scannedSkus" not in help_text and "noRemote" not in help_text
            await pilot.press("escape")
            await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen))

            await pilot.press("r")
            await wait_for(pilot, lambda: app.run_state == "completed", timeout=60)
            assert "COMPLETED" in screen_text(app)
            await pilot.press("q")
            await wait_for(
                pilot,
                lambda: app.return_value is not None or isinstance(app.screen, QuitScreen),
                timeout=20,
            )
            if isinstance(app.screen, QuitScreen):
                await pilot.press("y")
                await wait_for(pilot, lambda: app.return_value is not None, timeout=20)
        assert app.return_value == 0
    finally:
        await prepared.close()
    with sqlite3.connect(index) as db:
        stored = dict(db.execute("SELECT key, content_hash FROM files"))
    assert stored == {key: hashlib.sha256(body).hexdigest() for key, body in bucket_objects.items()}
    final = dataclasses.asdict(engine.counters)
    assert final["scanned_objects"] == 300 and final["updated"] == 300


async def test_attach_by_url_to_a_served_hash_index_run(
    rclone_s3: Any, s3_proxy: Any, bucket_objects: dict[str, bytes], tmp_path: Path
) -> None:
    """`attach --url URL --job hash-index`: the console over `hash-index --serve PORT`,
    through the generic routes of the HTTP API (the image job's seed routes answer 409)."""
    proxy = await s3_proxy(rclone_s3, ProxyFaults(latency=0.02))
    index = tmp_path / "index.sqlite3"
    args = [
        "hash-index", "--no-ui", "--serve", "0", "--state", str(tmp_path / "state.sqlite3"),
        "--bucket", rclone_s3.bucket, "--endpoint-url", proxy.endpoint_url, "--path-style",
        "--prefix", "assets/", "--index-db", str(index), "--concurrency", "2",
    ]  # fmt: skip
    err_path = tmp_path / "run.err"
    env = {**os.environ, **rclone_s3.env()}
    async with served_run(args, env, err_path) as (proc, url):
        seed_only = HttpController(url)
        try:
            with pytest.raises(ConfigError, match="--job"):
                await seed_only.check()
        finally:
            await seed_only.close()
        controller = HttpController(url, job="hash-index")
        try:
            await controller.check()
            app = BackfillApp(controller)
            async with app.run_test(size=(80, 24)) as pilot:
                await wait_for(pilot, lambda: "scannedObjects" in screen_text(app))
                assert "ATTACHED" in screen_text(app) or "RUNNING" in screen_text(app)
                await pilot.press("p")
                await wait_for(pilot, lambda: app.run_state == "paused")
                await pilot.press("r")
                await wait_for(pilot, lambda: app.run_state in ("running", "completed"))
        finally:
            await controller.close()
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err_path.read_text()
    final = json.loads(out)
    assert final["state"] == "completed" and final["updated"] == 300


def test_metrics_of_a_hash_index_run() -> None:
    """`/metrics` of a hash-index job: its outcomes, bytes hashed, orphans, the key
    checkpoint (the image job's SKU figures are not invented for it)."""
    from test_metrics import samples

    from tui_backfill.frontends.metrics import render
    from tui_backfill.frontends.status import JobStatus

    status = JobStatus(fixed_hash_snapshot(), run_status="running", max_concurrency=64)
    parsed = samples(render(status, job="hash-index"))
    job = ("job", "hash-index")

    def value(name: str, **labels: str) -> float:
        return parsed[(name, frozenset({job, *labels.items()}))]

    assert value("tui_backfill_items_total", outcome="verified") == 18_112
    assert value("tui_backfill_items_total", outcome="mismatched") == 3
    assert value("tui_backfill_items_total", outcome="failed") == 6
    assert value("tui_backfill_scanned_objects_total") == 18_240
    assert value("tui_backfill_bytes_hashed_total") == 9_876_543_210
    assert value("tui_backfill_orphans_total") == 66
    assert value("tui_backfill_errors_total", code="truncated") == 4
    assert value("tui_backfill_checkpoint_info", last_key="assets/lot-9911/photo.jpg") == 1
    assert value("tui_backfill_checkpoint_pending_keys") == 1
    assert not any(name.startswith("tui_backfill_planned") for name, _ in parsed)


def test_status_text_of_a_hash_index_run() -> None:
    """`status` (text) of a hash-index job speaks of objects and keys, not SKUs."""
    from tui_backfill.frontends.headless import status_text
    from tui_backfill.frontends.status import JobStatus

    text = status_text(JobStatus(fixed_hash_snapshot(), run_status="running", host="vm"))
    lines = text.splitlines()
    assert lines[0] == "job hash-index  run 4  state running (live)  on vm"
    assert "objects 18,240  updated 0  skipped 119  orphans 66  failed 6" in lines
    assert "verified 18,112  mismatched 3" in lines
    assert lines[-1] == "checkpoint lastKey assets/lot-9911/photo.jpg  done after it 1"
    assert "SKU" not in text
