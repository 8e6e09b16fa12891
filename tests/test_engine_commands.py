"""Engine commands at awkward moments, against real servers on loopback: a hold and a resume
that land while items wait in backoff, a hold after the last dispatch, a crash while the
catalog is read. Nothing may be lost or counted twice."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from tui_backfill.frontends.status import JobStatus
from tui_backfill.outcomes import RunState
from tui_backfill.pipelines.config import resolve
from tui_backfill.pipelines.prepare import RunRequest, prepare_run
from tui_backfill.servers.catalog import ACTIVE_SKUS_QUERY, active_skus
from tui_backfill.servers.origin import OriginServer, expected_body
from tui_backfill.state.sqlite import StateStore, open_state


@pytest.fixture
def aws_env(rclone_s3: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    for name, value in rclone_s3.env().items():
        monkeypatch.setenv(name, value)
    return rclone_s3


def flags(
    s3: Any, origin: OriginServer, catalog: Path, state: Path, **extra: Any
) -> dict[str, Any]:
    return {
        "state": str(state), "skus_db": str(catalog), "skus_query": ACTIVE_SKUS_QUERY,
        "origin": origin.url_template, "bucket": s3.bucket, "endpoint_url": s3.endpoint_url,
        "path_style": True, "timeout": 2.0, **extra,
    }  # fmt: skip


def assert_complete(s3: Any, skus: list[str], snapshot: Any) -> None:
    c = snapshot.counters
    assert snapshot.state == "completed"
    assert c.scanned_skus == len(skus)
    assert c.scanned_skus * 3 == c.uploaded + c.skipped_exists + c.no_remote + c.failed_items
    for sku in skus:
        for angle in (1, 2, 3):
            path = s3.data_dir / s3.bucket / f"rsr/highres/{sku}_{angle}_HR.jpg"
            assert path.read_bytes() == expected_body(sku, angle)


async def test_hold_and_resume_while_items_wait_in_backoff(
    aws_env: Any, origin: OriginServer, catalog_db: Any, tmp_path: Path
) -> None:
    origin.faults.fail_first_n = 1  # every item's first GET fails: all of them go to backoff
    catalog = catalog_db(12)
    resolved = resolve(
        flags(aws_env, origin, catalog, tmp_path / "s.sqlite3", backoff=0.5, limit_skus=12), env={}
    )
    prepared = await prepare_run(RunRequest(resolved))
    engine = prepared.engine
    try:
        run = asyncio.create_task(engine.run())
        while origin.gets < 3:
            await asyncio.sleep(0.01)
        engine.hold()
        engine.resume()  # before the interrupted items are even handled
        result = await asyncio.wait_for(run, 60)
    finally:
        await prepared.close()
    assert_complete(aws_env, active_skus(catalog), result.snapshot)
    assert result.snapshot.counters.uploaded == 36


async def test_hold_after_the_last_dispatch_waits_for_resume(
    aws_env: Any, origin: OriginServer, catalog_db: Any, tmp_path: Path
) -> None:
    origin.faults.latency = 0.3
    catalog = catalog_db(1)
    resolved = resolve(
        flags(aws_env, origin, catalog, tmp_path / "s.sqlite3", limit_skus=1), env={}
    )
    prepared = await prepare_run(RunRequest(resolved))
    engine = prepared.engine
    try:
        run = asyncio.create_task(engine.run())
        while origin.gets < 3:  # all three items are in flight: nothing is left to dispatch
            await asyncio.sleep(0.01)
        engine.hold()
        for _ in range(100):
            if engine.state is RunState.PAUSED:
                break
            await asyncio.sleep(0.02)
        assert engine.state is RunState.PAUSED and not run.done()  # held, not ended
        await asyncio.sleep(0.3)
        assert not run.done()
        engine.resume()
        result = await asyncio.wait_for(run, 30)
    finally:
        await prepared.close()
    assert result.exit_code == 0
    assert_complete(aws_env, active_skus(catalog), result.snapshot)


async def test_a_run_that_died_while_reading_the_catalog_is_dropped(tmp_path: Path) -> None:
    store = await StateStore.open(str(tmp_path / "s.sqlite3"))
    try:
        dead = await store.create_run("default", {"angles": "1-3"}, dry_run=False, range_after=None)
        assert await store.unfinished_run("default") is None  # 'preparing' is not resumable
        fresh = await store.create_run(
            "default", {"angles": "1-3"}, dry_run=False, range_after=None
        )
        assert await store.run(dead) is None and await store.run(fresh) is not None
    finally:
        await store.close()


async def _slot_bound_run(
    s3: Any, origin: OriginServer, catalog_db: Any, tmp_path: Path
) -> tuple[Any, asyncio.Task[Any], Path, Path]:
    """A 30-SKU run with one fetch slot and a slow origin, five fetches in: SKUs dispatched
    whose items still wait for the slot. (prepared run, its task, catalog, state)"""
    origin.faults.latency = 0.05
    catalog = catalog_db(30)
    state = tmp_path / "s.sqlite3"
    resolved = resolve(flags(s3, origin, catalog, state, limit_skus=30, concurrency=1), env={})
    prepared = await prepare_run(RunRequest(resolved))
    run = asyncio.create_task(prepared.engine.run())
    try:
        async with asyncio.timeout(30):
            while origin.gets < 5:
                await asyncio.sleep(0.01)
    except BaseException:
        prepared.engine.stop()
        await asyncio.gather(run, return_exceptions=True)
        await prepared.close()
        raise
    return prepared, run, catalog, state


async def test_scanned_skus_never_goes_back_across_pause_and_a_killed_resume(
    aws_env: Any, origin: OriginServer, catalog_db: Any, tmp_path: Path
) -> None:
    """A pause stops with SKUs dispatched whose items never ran (queued for the one fetch
    slot). The paused figure is the committed one, so a resume killed before any progress
    (its status column `running`, nothing committed since) reads the same scannedSkus."""
    prepared, run, catalog, state = await _slot_bound_run(aws_env, origin, catalog_db, tmp_path)
    engine = prepared.engine
    try:
        engine.stop()
        paused = await asyncio.wait_for(run, 30)
        record = await prepared.store.run(engine.plan.run_id)
    finally:
        await prepared.close()
    assert paused.exit_code == 75
    assert record is not None
    figure = paused.snapshot.counters.scanned_skus
    assert 0 < figure < 30
    assert JobStatus.of_run(record, live=False).to_json()["scannedSkus"] == figure
    assert record.counters.scanned_skus == figure

    # A resume whose process is killed right after it took the run: nothing committed since.
    resumed = await prepare_run(RunRequest(resolve(flags(aws_env, origin, catalog, state), env={}),
                                           resume_only=True))  # fmt: skip
    run_id = resumed.engine.plan.run_id
    await resumed.close()
    async with open_state(str(state)) as store:
        killed = await store.run(run_id)
    assert killed is not None and killed.status == "running"
    after = JobStatus.of_run(killed, live=False).to_json()
    assert after["state"] == "interrupted"
    assert after["uploaded"] == paused.snapshot.counters.uploaded
    assert after["scannedSkus"] == figure

    origin.faults.latency = 0
    final = await prepare_run(RunRequest(resolve(flags(aws_env, origin, catalog, state), env={}),
                                         resume_only=True))  # fmt: skip
    try:
        result = await asyncio.wait_for(final.engine.run(), 30)
    finally:
        await final.close()
    assert_complete(aws_env, active_skus(catalog), result.snapshot)


async def test_a_held_run_shows_the_scanned_skus_its_checkpoint_keeps(
    aws_env: Any, origin: OriginServer, catalog_db: Any, tmp_path: Path
) -> None:
    """Held in place (the console's `p`), with SKUs dispatched whose items never ran: the
    snapshot's scannedSkus is the committed figure, the one a kill -9 while held leaves."""
    prepared, run, _, _ = await _slot_bound_run(aws_env, origin, catalog_db, tmp_path)
    engine = prepared.engine
    try:
        engine.hold()
        for _ in range(1000):
            if engine.state is RunState.PAUSED:
                break
            await asyncio.sleep(0.01)
        assert engine.state is RunState.PAUSED
        shown = engine.snapshot().counters
        record = await prepared.store.run(engine.plan.run_id)
        assert record is not None
        after_kill = JobStatus.of_run(record, live=False).to_json()
        engine.stop()
        await asyncio.wait_for(run, 30)
    finally:
        await prepared.close()
    assert 0 < shown.scanned_skus < 30
    assert after_kill["scannedSkus"] == shown.scanned_skus
    assert after_kill["uploaded"] == shown.uploaded
