"""The engine runs any pipeline: a pipeline defined in the tests (tests/keys_pipeline.py) runs
with pause, resume, kill and resume, its counters adding up; and the engine's own defects,
each provoked through that pipeline on a real SQLite state."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from keys_pipeline import KeysPipeline, engine_for, new_run

from tui_backfill.core.pipeline import Item, Result, Slot
from tui_backfill.core.records import RunRecord
from tui_backfill.outcomes import OriginUnreachable, RunState
from tui_backfill.state.sqlite import StateStore

KEYS = [f"k{i:03d}" for i in range(60)]
TESTS = Path(__file__).resolve().parent


async def keys_run(store: StateStore) -> RunRecord:
    """A new run of the job `keys` over KEYS, as the store has it."""
    record = await store.run(await new_run(store, "keys", KEYS))
    assert record is not None
    return record


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    store = await StateStore.open(str(tmp_path / "state.sqlite3"))
    yield store
    await store.close()


async def test_a_pipeline_from_the_tests_runs_to_completion(store: StateStore) -> None:
    record = await keys_run(store)
    run_id = record.id
    pipeline = KeysPipeline(KEYS)
    result = await engine_for(store, record, pipeline).run()
    assert result.exit_code == 0 and result.state is RunState.COMPLETED
    assert sorted(pipeline.seen) == KEYS
    stored = await store.run(run_id)
    assert stored is not None and stored.status == "completed"
    assert stored.counters.seen == stored.counters.scanned == len(KEYS)
    assert stored.checkpoint.last == KEYS[-1] and not stored.checkpoint.partial
    assert stored.snapshot is not None and stored.snapshot["checkpoint"]["lastKey"] == KEYS[-1]


async def test_pause_then_resume_sees_every_key_once(store: StateStore) -> None:
    record = await keys_run(store)
    run_id = record.id
    first = KeysPipeline(KEYS, delay=0.01)
    engine = engine_for(store, record, first)
    run = asyncio.create_task(engine.run())
    while len(first.seen) < 15:
        await asyncio.sleep(0.005)
    engine.stop()
    paused = await run
    assert paused.exit_code == 75 and paused.state is RunState.PAUSED
    record = await store.run(run_id)
    assert record is not None and record.status == "paused"
    assert record.counters.seen == len(first.seen)  # committed with the checkpoint
    second = KeysPipeline(KEYS)
    done = await engine_for(store, record, second).run()
    assert done.exit_code == 0
    assert sorted(first.seen + second.seen) == KEYS  # a graceful stop redoes nothing
    final = await store.run(run_id)
    assert final is not None and final.counters.seen == final.counters.scanned == len(KEYS)


async def test_kill_then_resume_loses_nothing(store: StateStore, tmp_path: Path) -> None:
    keys = [f"k{i:04d}" for i in range(400)]
    run_id = await new_run(store, "keys", keys)
    keys_file, seen_file = tmp_path / "keys.json", tmp_path / "seen.txt"
    keys_file.write_text(json.dumps(keys))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), *sys.path])}
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(TESTS / "keys_pipeline.py"), store.path, "keys", str(run_id),
        str(keys_file), str(seen_file), env=env,
    )  # fmt: skip
    try:
        for _ in range(1000):  # bounded: 10 s
            if seen_file.exists() and len(seen_file.read_text().split()) >= 120:
                break
            await asyncio.sleep(0.01)
        child.send_signal(signal.SIGKILL)
    finally:
        await child.wait()
    assert child.returncode == -signal.SIGKILL
    record = await store.run(run_id)
    assert record is not None and record.status == "running"  # interrupted, resumable
    before = seen_file.read_text().split()
    position = record.checkpoint
    assert position.last is not None  # checkpoints were committed before the kill
    behind = [k for k in keys if k <= position.last]
    assert set(behind) <= set(before)
    resumed = KeysPipeline(keys)
    result = await engine_for(store, record, resumed).run()
    assert result.exit_code == 0
    # Nothing lost; redone only what the checkpoint did not cover.
    assert set(before) | set(resumed.seen) == set(keys)
    assert not set(resumed.seen) & set(behind)
    assert len(resumed.seen) == len(set(resumed.seen))
    final = await store.run(run_id)
    assert final is not None and final.counters.scanned == len(keys)
    assert final.counters.seen == len(keys) + final.counters.failed_items - 0


async def test_an_unexpected_exception_is_a_failed_item_and_the_run_goes_on(
    store: StateStore, caplog: pytest.LogCaptureFixture
) -> None:
    record = await keys_run(store)

    async def broken(item: Item) -> None:
        if item.key == "k007":
            raise KeyError("a programming error")

    pipeline = KeysPipeline(KEYS, hook=broken)
    with caplog.at_level(logging.ERROR, logger="tui_backfill.engine"):
        result = await engine_for(store, record, pipeline).run()
    assert result.exit_code == 1  # completed with a failed item
    snap = result.snapshot
    assert snap.counters.failed_items == 1 and snap.counters.errors_by_code == {"internal": 1}
    assert snap.counters.seen + snap.counters.failed_items == len(KEYS) == snap.counters.scanned
    assert snap.position.last == KEYS[-1]  # the watermark did not stall
    failed = await store.failed_items("keys")
    assert [(f.key, f.code) for f in failed] == [("k007", "internal")]
    assert "KeyError" in failed[0].message
    assert any("k007" in r.getMessage() and r.exc_info for r in caplog.records)  # traceback


class FlakyStore:
    """The real store, whose snapshot publishing fails with an unexpected error at first."""

    def __init__(self, store: StateStore, failures: int) -> None:
        self._store = store
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def publish_snapshot(self, run_id: int, snapshot: dict[str, Any]) -> None:
        if self.failures:
            self.failures -= 1
            raise RuntimeError("publishing broke")
        await self._store.publish_snapshot(run_id, snapshot)


async def test_the_heartbeat_survives_an_unexpected_error_and_still_reads_commands(
    store: StateStore,
) -> None:
    record = await keys_run(store)
    flaky = FlakyStore(store, failures=2)
    pipeline = KeysPipeline(KEYS, delay=0.02)
    engine = engine_for(flaky, record, pipeline)  # type: ignore[arg-type]
    run = asyncio.create_task(engine.run())
    try:
        while len(pipeline.seen) < 5:
            await asyncio.sleep(0.01)
        await store.send_command("keys", "hold")  # from another process, through the state
        for _ in range(300):  # bounded: 6 s
            if engine.state is RunState.PAUSED:
                break
            await asyncio.sleep(0.02)
        assert engine.state is RunState.PAUSED  # the command was read: the heartbeat lives
        assert flaky.failures == 0
        await store.send_command("keys", "resume")
        result = await asyncio.wait_for(run, 30)
    finally:
        run.cancel()
    assert result.exit_code == 0 and sorted(pipeline.seen) == KEYS
    assert result.snapshot.counters.errors_by_code.get("internal") == 1  # once per kind


async def test_raising_concurrency_raises_the_items_in_flight(store: StateStore) -> None:
    record = await keys_run(store)
    gate = asyncio.Event()
    running = 0
    peak = 0

    async def blocked(item: Item) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1

    pipeline = KeysPipeline(KEYS, hook=blocked)
    engine = engine_for(store, record, pipeline, concurrency=1, io=1)
    pipeline.hook = None  # the hook runs inside the origin slot: count items, not fetches
    original = pipeline.process

    async def process(item: Item, stages: Any) -> Any:
        await blocked(item)
        return await original(item, stages)

    pipeline.process = process  # type: ignore[method-assign]
    run = asyncio.create_task(engine.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0.01)
        assert peak == 3  # concurrency 1 x 2 + 1 upload slot
        engine.set_concurrency(4)
        for _ in range(100):
            await asyncio.sleep(0.01)
        assert peak == 9  # 4 x 2 + 1
        gate.set()
        result = await asyncio.wait_for(run, 30)
    finally:
        run.cancel()
    assert result.exit_code == 0 and sorted(pipeline.seen) == KEYS


async def test_a_task_cancelled_before_its_first_step_hands_its_slot_back(
    store: StateStore,
) -> None:
    record = await keys_run(store)
    engine = engine_for(store, record, KeysPipeline(KEYS), concurrency=1, io=1)  # 3 item slots
    for key in ("a", "b", "c"):
        await engine._dispatch(Item(key, 0, key))
    for task in list(engine._tasks):
        task.cancel()  # before any of them ran a step
    await asyncio.gather(*engine._tasks, return_exceptions=True)
    await asyncio.sleep(0)
    assert engine._item_slots.used == 0
    await asyncio.wait_for(engine._dispatch(Item("d", 0, "d")), 1)  # a slot is free
    await asyncio.gather(*engine._tasks, return_exceptions=True)


async def test_a_live_concurrency_change_is_kept_for_the_resume(store: StateStore) -> None:
    record = await keys_run(store)
    run_id = record.id
    pipeline = KeysPipeline(KEYS, delay=0.1)
    engine = engine_for(store, record, pipeline)
    run = asyncio.create_task(engine.run())
    while len(pipeline.seen) < 2:
        await asyncio.sleep(0.01)
    engine.set_concurrency(5)
    await asyncio.sleep(0.6)  # a heartbeat or two
    engine.stop()
    assert (await run).exit_code == 75
    stored = await store.run(run_id)
    assert stored is not None and stored.settings["concurrency"] == 5


class CheckingStore:
    """The real store; each checkpoint commit checks that every key behind the position it
    writes has landed (the guarantee the hash index needs for its upserts)."""

    def __init__(self, store: StateStore, pipeline: KeysPipeline) -> None:
        self._store = store
        self._pipeline = pipeline
        self.commits = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def commit_checkpoint(
        self, run_id: int, counters: Any, checkpoint: Any, **kw: Any
    ) -> None:
        landed = set(self._pipeline.landed)
        last = checkpoint["lastKey"]
        behind = [k for k in self._pipeline.keys if last is not None and k <= last]
        assert set(behind) <= landed, sorted(set(behind) - landed)[:5]
        assert set(checkpoint["doneAfter"]) <= landed
        self.commits += 1
        await self._store.commit_checkpoint(run_id, counters, checkpoint, **kw)


async def test_a_pipeline_lands_its_own_writes_before_each_checkpoint(store: StateStore) -> None:
    record = await keys_run(store)
    pipeline = KeysPipeline(KEYS, delay=0.002)
    checking = CheckingStore(store, pipeline)
    result = await engine_for(checking, record, pipeline, checkpoint_every=3).run()  # type: ignore[arg-type]
    assert result.exit_code == 0
    assert checking.commits >= len(KEYS) // 3  # a commit every 3 keys, and the final one
    assert sorted(pipeline.landed) == KEYS and not pipeline.pending


async def test_a_failed_before_commit_stops_the_run_and_loses_nothing(store: StateStore) -> None:
    record = await keys_run(store)
    run_id = record.id
    pipeline = KeysPipeline(KEYS, delay=0.002)
    landed_before = pipeline.before_commit
    failures = [RuntimeError("the index is locked")]

    async def flaky() -> None:
        if failures and len(pipeline.seen) > 10:
            raise failures.pop()
        await landed_before()

    pipeline.before_commit = flaky  # type: ignore[method-assign]
    first = await engine_for(store, record, pipeline, checkpoint_every=3).run()
    assert first.exit_code == 3 and first.state is RunState.FAILED
    stored = await store.run(run_id)
    assert stored is not None and stored.status == "paused"
    # Nothing passed the checkpoint without having landed; a resume finishes the rest.
    last = stored.checkpoint.last
    assert last is not None and {k for k in KEYS if k <= last} <= set(pipeline.landed)
    again = KeysPipeline(KEYS)
    done = await engine_for(store, stored, again).run()
    assert done.exit_code == 0
    assert set(pipeline.landed) | set(again.landed) == set(KEYS)


async def test_a_concurrency_change_while_held_is_kept_at_once(store: StateStore) -> None:
    record = await keys_run(store)
    run_id = record.id
    pipeline = KeysPipeline(KEYS, delay=0.05)
    engine = engine_for(store, record, pipeline)
    run = asyncio.create_task(engine.run())
    try:
        while len(pipeline.seen) < 2:
            await asyncio.sleep(0.01)
        engine.hold()
        for _ in range(200):
            if engine.state is RunState.PAUSED:
                break
            await asyncio.sleep(0.02)
        engine.set_concurrency(4)
        await asyncio.sleep(1.0)  # a few heartbeats; no checkpoint is due while held
        stored = await store.run(run_id)
        assert stored is not None and stored.settings["concurrency"] == 4  # a kill now keeps it
        engine.stop()
        assert (await asyncio.wait_for(run, 30)).exit_code == 75
    finally:
        run.cancel()


async def test_a_dry_run_writes_its_plan_file_only_once_it_planned_every_item(
    store: StateStore, tmp_path: Path
) -> None:
    """--plan-file: one line per item, written under a temporary name and renamed when the dry
    run completes; a dry run stopped part way leaves the file as it was, and no temporary."""
    from dataclasses import replace

    from tui_backfill.core.engine import Engine
    from tui_backfill.pipelines.plan_file import PlanFile

    verbs = {"seen": ("visit", "a run visits it")}
    path = tmp_path / "plan.txt"

    async def dry_run(pipeline: KeysPipeline, *, stop_after: int | None = None) -> RunState:
        record = await keys_run(store)
        plan = replace(engine_for(store, record, pipeline).plan, dry_run=True)
        sink = PlanFile(str(path), verbs, title="dry run of keys", unit="key", key="the key")
        engine = Engine(plan, pipeline=pipeline, store=store, plan_sink=sink)
        run = asyncio.create_task(engine.run())
        while stop_after is not None and len(pipeline.seen) < stop_after:
            await asyncio.sleep(0.005)
        if stop_after is not None:
            engine.stop()
        return (await run).state

    assert await dry_run(KeysPipeline(KEYS)) is RunState.COMPLETED
    lines = path.read_text().splitlines()
    assert lines[:5] == [
        "# dry run of keys: what a run would do",
        "# one line per key: VERB KEY, KEY being the key",
        "# visit KEY: a run visits it",
        "# fail KEY: a run would record it as a failed item (its reason is in the dry run's "
        "errors)",
        "# items that failed in earlier runs are retried first by a real run and are not listed "
        "here",  # a dry run does not retry them (a real run does, first)
    ]
    assert sorted(lines[5:]) == [f"visit {key}" for key in KEYS]
    written = path.read_bytes()

    assert await dry_run(KeysPipeline(KEYS, delay=0.01), stop_after=10) is RunState.PAUSED
    assert path.read_bytes() == written
    assert not [name for name in os.listdir(tmp_path) if name.endswith(".partial")]


async def test_a_plan_file_that_cannot_be_put_in_place_says_so(tmp_path: Path) -> None:
    """close() tells whether the plan landed: a rename that fails (the path became a
    directory during the dry run) is reported, not raised, and leaves no temporary."""
    from tui_backfill.pipelines.plan_file import PlanFile

    path = tmp_path / "plan.txt"
    sink = PlanFile(str(path), {}, title="dry run of keys", unit="key", key="the key")
    path.mkdir()
    (path / "keep").write_text("x")
    await sink.close(complete=True)
    assert not sink.written and sink.failure == "Is a directory"
    assert sorted(os.listdir(tmp_path)) == ["plan.txt"] and path.is_dir()

    sink = PlanFile(str(tmp_path / "plan2.txt"), {}, title="t", unit="key", key="the key")
    await sink.close(complete=True)
    assert sink.written and sink.failure is None


async def test_rates_fall_to_zero_once_held_or_stopped_and_restart_on_resume(
    store: StateStore,
) -> None:
    """A held or stopped run moves nothing: its rates say 0 at once (not a 20 s average of
    the time before), and after a resume they measure the resumed run alone."""
    keys = [f"k{i:04d}" for i in range(1000)]  # more than it gets through: it is stopped
    record = await store.run(await new_run(store, "keys", keys))
    assert record is not None
    pipeline = KeysPipeline(keys, delay=0.01)
    engine = engine_for(store, record, pipeline)
    run = asyncio.create_task(engine.run())
    try:
        for _ in range(300):
            if engine.progress().items_per_second > 0:
                break
            await asyncio.sleep(0.02)
        assert engine.progress().items_per_second > 0
        engine.hold()
        held = engine.progress()
        assert held.state is RunState.PAUSING
        assert (held.items_per_second, held.groups_per_second, held.eta_seconds) == (0, 0, None)
        await asyncio.sleep(0.6)  # a heartbeat or two while held
        assert engine.progress().items_per_second == 0
        engine.resume()
        assert engine.progress().items_per_second == 0  # nothing measured since the resume
        for _ in range(300):
            if engine.progress().items_per_second > 0:
                break
            await asyncio.sleep(0.02)
        assert engine.progress().items_per_second > 0
        engine.stop()
        result = await asyncio.wait_for(run, 30)
        assert result.exit_code == 75
        stopped = engine.progress()
        assert (stopped.items_per_second, stopped.bytes_per_second) == (0, 0)
    finally:
        run.cancel()


@pytest.mark.parametrize("slot", [Slot.ORIGIN, Slot.IO])
async def test_unreachable_parks_its_item_with_the_breaker_of_the_slot_it_met_it_in(
    store: StateStore, slot: Slot
) -> None:
    """An `unreachable` error (nothing listens) parks its item with the breaker of the slot it
    was met in: the origin's, or the destination's (a bucket that takes no connection, on the
    lean S3 path). One item alone does not trip it: once that slot's server answers again the
    item is recorded failed, and the run completes."""
    record = await keys_run(store)

    async def refused(item: Item) -> None:
        if item.key == "k007":
            raise OriginUnreachable("S3 connection: connection refused", code="s3_connection")

    pipeline = KeysPipeline(KEYS, hook=refused, slot=slot)
    engine = engine_for(store, record, pipeline)
    parked: list[tuple[Slot, str]] = []
    for where, breaker in engine._breakers.items():

        def noted(
            item: Item, result: Any, now: float, where: Slot = where, park: Any = breaker.park
        ) -> None:
            parked.append((where, item.key))
            park(item, result, now)

        breaker.park = noted  # type: ignore[method-assign]
    result = await engine.run()
    assert result.exit_code == 1  # completed with the one failed item
    failed = await store.failed_items("keys")
    assert [(f.key, f.code) for f in failed] == [("k007", "s3_connection")]
    assert result.snapshot.counters.errors_by_code == {"s3_connection": 3}
    assert parked == [(slot, "k007")]


async def test_a_slots_answer_releases_only_the_items_parked_with_its_own_breaker(
    store: StateStore,
) -> None:
    """The destination answering says nothing of the origin (and the reverse): an item parked
    with one breaker stays parked through the other's answers, and is recorded when its own
    server answers (or the run ends, or it waited long enough)."""
    record = await keys_run(store)
    engine = engine_for(store, record, KeysPipeline(KEYS))
    recorded: list[str] = []

    async def record_item(item: Item, result: Any) -> None:
        recorded.append(item.key)

    engine._record = record_item  # type: ignore[method-assign]
    refused = Result("failed", error=OriginUnreachable("connection refused"))
    origin, destination = engine._breakers[Slot.ORIGIN], engine._breakers[Slot.IO]
    origin.park(Item("k001", 0, "k001"), refused, now=0.0)
    destination.park(Item("k002", 0, "k002"), refused, now=0.0)
    await engine._answered(destination)
    assert recorded == ["k002"] and [i.key for i, _ in origin.parked] == ["k001"]
    await engine._answered(origin)
    assert recorded == ["k002", "k001"]


@pytest.mark.parametrize(("slot", "server"), [(Slot.ORIGIN, "origin"), (Slot.IO, "destination")])
async def test_a_server_gone_mid_run_stops_it_with_nothing_failed_and_a_resume_finishes(
    store: StateStore, slot: Slot, server: str
) -> None:
    """From k020 on nothing listens in the slot's server: twenty unreachable attempts in a row
    stop the run (exit 3, `<server> unreachable`), the items that met it unfinished rather than
    failed; with the server back, a resume finishes every key."""
    record = await keys_run(store)
    gone = [True]

    async def refused(item: Item) -> None:
        if gone[0] and item.key >= "k020":
            raise OriginUnreachable("connection refused", code="connection")

    pipeline = KeysPipeline(KEYS, hook=refused, slot=slot)
    first = await engine_for(store, record, pipeline).run()
    assert first.exit_code == 3 and first.state is RunState.FAILED
    assert await store.failed_items("keys") == []
    stored = await store.run(record.id)
    assert stored is not None and stored.status == "paused"
    assert stored.message is not None
    assert stored.message.startswith(f"{server} unreachable: 20 connection failures in a row")
    gone[0] = False
    again = KeysPipeline(KEYS, slot=slot)
    done = await engine_for(store, stored, again).run()
    assert done.exit_code == 0 and await store.failed_items("keys") == []
    assert set(pipeline.landed) | set(again.landed) == set(KEYS)
