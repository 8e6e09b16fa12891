"""`job_status`, the reader every front end shows a job through (`status`, the attached console,
the HTTP API, `/metrics`): a run whose process is gone is `interrupted`, not `paused`."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_brief_keys

from tui_backfill.frontends.openapi import document
from tui_backfill.frontends.status import JobStatus, final_status, job_status
from tui_backfill.pipelines.mirror.checkpoint import Checkpoint
from tui_backfill.pipelines.mirror.snapshot import Counters, snapshot_from_json
from tui_backfill.state.lock import JobLock
from tui_backfill.state.sqlite import StateStore


async def _status_json(store: StateStore, state: str, job: str) -> dict[str, Any] | None:
    """What `status --json` prints: the JSON of the job's `JobStatus`."""
    status = await job_status(store, state, job)
    return None if status is None else status.to_json()


async def _running_run(store: StateStore, job: str, published: dict[str, Any] | None) -> int:
    """A run its process left 'running' in the state (what SIGKILL leaves behind)."""
    run_id = await store.create_run(job, {"angles": "1-2"}, dry_run=False, range_after=None)

    async def batches() -> Any:
        yield ["a", "b", "c"]

    await store.snapshot_skus(run_id, batches(), None, 3)
    await store.set_run_status(run_id, "running", pid=4242)
    await store.commit_checkpoint(
        run_id, Counters(scanned_skus=1, uploaded=2), Checkpoint(last_sku="a"), job=job
    )
    if published is not None:
        await store.publish_snapshot(run_id, published)
    return run_id


@pytest.mark.parametrize(
    "published",
    [
        {"state": "running", "scannedSkus": 2, "anglesPlanned": "1-2"},
        {"state": "pausing", "scannedSkus": 2, "anglesPlanned": "1-2"},
        # a resume killed before its first publish: the snapshot is the earlier pause's
        {"state": "paused", "scannedSkus": 1, "anglesPlanned": "1-2"},
        None,  # killed before it published anything
    ],
)
async def test_a_run_whose_process_died_is_interrupted(
    tmp_path: Path, published: dict[str, Any] | None
) -> None:
    state = str(tmp_path / "state.sqlite3")
    store = await StateStore.open(state)
    try:
        run_id = await _running_run(store, "job", published)
        status = await _status_json(store, state, "job")
        assert status is not None
        assert (status["state"], status["live"], status["runStatus"]) == (
            "interrupted", False, "running",
        )  # fmt: skip
        assert status["runId"] == run_id
        assert status["scannedSkus"] == 1  # the committed counters: what a resume continues
        assert status["checkpoint"]["lastSku"] == "a"

        lock = JobLock(state, "job")
        lock.acquire("job")  # a live process holds the job: its run is not interrupted
        try:
            live = await _status_json(store, state, "job")
        finally:
            lock.release()
        assert live is not None and live["live"] is True and live["state"] != "interrupted"
    finally:
        await store.close()


async def test_a_paused_or_completed_run_keeps_its_state(tmp_path: Path) -> None:
    state = str(tmp_path / "state.sqlite3")
    store = await StateStore.open(state)
    try:
        run_id = await _running_run(store, "job", None)
        for status_column, final in (("paused", "paused"), ("completed", "completed")):
            await store.commit_checkpoint(
                run_id, Counters(scanned_skus=3), Checkpoint(last_sku="c"), job="job",
                status=status_column, exit_code=75 if final == "paused" else 0,
                snapshot={"state": final, "anglesPlanned": "1-2"},
            )  # fmt: skip
            status = await _status_json(store, state, "job")
            assert status is not None and status["state"] == final
    finally:
        await store.close()


def test_the_api_document_lists_interrupted_among_the_states() -> None:
    schema = document(max_concurrency=6)["components"]["schemas"]["Snapshot"]
    states = schema["properties"]["state"]["enum"]
    assert states == ["running", "pausing", "paused", "interrupted", "completed", "failed"]


RUN_KEYS = {"runStatus", "maxConcurrency", "host"}  # and exitCode once the run has one


def _published(
    run_id: int, state: str, *, live: bool, counters: Counters | None = None
) -> dict[str, Any]:
    """A snapshot as the engine publishes it (every key of StatusSnapshot.to_json)."""
    snapshot = snapshot_from_json(
        {"job": "job", "runId": run_id, "anglesPlanned": "1-2", "plannedSkus": 3}
    )
    return dataclasses.replace(
        snapshot,
        state=state,
        live=live,
        angles_per_sku=2,
        started_at="2026-01-01T00:00:00.000Z",
        last_update_at="2026-01-01T00:00:05.000Z",
        counters=counters or Counters(scanned_skus=2, uploaded=3, skipped_exists=1),
        checkpoint=Checkpoint(last_sku="b"),
    ).to_json()


async def test_job_status_json_has_the_brief_keys_and_the_run_keys(tmp_path: Path) -> None:
    """A committed (completed), a live and an interrupted run: one typed `JobStatus` each, whose
    one `to_json` carries the brief's keys and the run keys; the headless final JSON is made by
    the same object (`final_status`), so it equals what `status --json` prints after the run."""
    state = str(tmp_path / "state.sqlite3")
    store = await StateStore.open(state)
    try:
        settings = {"angles": "1-2", "max_concurrency": 5}
        run_id = await store.create_run("job", settings, dry_run=False, range_after=None)

        async def batches() -> Any:
            yield ["a", "b", "c"]

        await store.snapshot_skus(run_id, batches(), None, 3)
        await store.set_run_status(run_id, "running", pid=4242)
        await store.publish_snapshot(run_id, _published(run_id, "running", live=True))

        lock = JobLock(state, "job")
        lock.acquire("job")
        try:
            live = await job_status(store, state, "job")
        finally:
            lock.release()
        interrupted = await job_status(store, state, "job")

        counters = Counters(scanned_skus=3, uploaded=5, skipped_exists=1)
        final = _published(run_id, "completed", live=False, counters=counters)
        await store.commit_checkpoint(
            run_id, counters, Checkpoint(last_sku="c"), job="job", status="completed",
            exit_code=0, snapshot=final,
        )  # fmt: skip
        committed = await job_status(store, state, "job")
        headless = await final_status(store, snapshot_from_json(final), state)
    finally:
        await store.close()

    host = socket.gethostname()
    assert live is not None and interrupted is not None and committed is not None
    for status, (state_word, is_live, run_status) in (
        (live, ("running", True, "running")),
        (interrupted, ("interrupted", False, "running")),
        (committed, ("completed", False, "completed")),
    ):
        data = status.to_json()
        assert_brief_keys(data)
        assert RUN_KEYS <= set(data), sorted(data)
        assert (data["state"], data["live"], data["runStatus"]) == (state_word, is_live, run_status)
        assert (status.state, status.live, status.run_status) == (state_word, is_live, run_status)
        assert (data["maxConcurrency"], data["host"], data["runId"]) == (5, host, run_id)
        assert data["statePath"] == os.path.abspath(state)  # where `resume --state` finds it
        assert JobStatus.from_json(data).to_json() == data  # what `attach --url` reads back
    assert "exitCode" not in live.to_json() and committed.to_json()["exitCode"] == 0
    assert interrupted.snapshot.counters.scanned_skus == 0  # the committed counters, not 2
    assert committed.snapshot.counters.uploaded == 5
    # `status --json` after the run and the headless final JSON: the same object, so the same JSON
    assert headless == committed
    assert headless.to_json() == committed.to_json()
    # The API's live status of a run in its own process has the same keys (it lacked `host`).
    in_process = JobStatus.of_engine(live.snapshot, max_concurrency=5, state_path=state).to_json()
    assert set(in_process) == set(live.to_json()) and in_process["host"] == host
    # An engine that has ended its run answers what the run's record then says, not "running"
    # beside a completed snapshot (served runs answered so for the instant before their end)
    ended = JobStatus.of_engine(
        committed.snapshot, max_concurrency=5, state_path=state, ended=("completed", 0)
    )
    assert ended.to_json() == committed.to_json()
