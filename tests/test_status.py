"""`job_status`, the reader every front end shows a job through (`status`, the attached console,
the HTTP API, `/metrics`): a run whose process is gone is `interrupted`, not `paused`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tui_backfill.frontends.openapi import document
from tui_backfill.frontends.status import job_status
from tui_backfill.pipelines.mirror.checkpoint import Checkpoint
from tui_backfill.pipelines.mirror.snapshot import Counters
from tui_backfill.state.sqlite import JobLock, StateStore


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
        status = await job_status(store, state, "job")
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
            live = await job_status(store, state, "job")
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
            status = await job_status(store, state, "job")
            assert status is not None and status["state"] == final
    finally:
        await store.close()


def test_the_api_document_lists_interrupted_among_the_states() -> None:
    schema = document(max_concurrency=6)["components"]["schemas"]["Snapshot"]
    states = schema["properties"]["state"]["enum"]
    assert states == ["running", "pausing", "paused", "interrupted", "completed", "failed"]
