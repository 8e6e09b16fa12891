"""What `status`, the attached console and (later) the HTTP API show of a job: the latest
run's published snapshot, marked live or not; for a run whose process died, the counters and
checkpoint it committed (what a resume continues from), not the last published view."""

from __future__ import annotations

import dataclasses
from typing import Any

from tui_backfill.core.records import FailedItem, RunRecord
from tui_backfill.core.store import StateUnavailable
from tui_backfill.outcomes import RunState
from tui_backfill.pipelines.mirror.angles import parse_angles
from tui_backfill.pipelines.mirror.snapshot import (
    StatusSnapshot,
    failed_item_json,
    snapshot_from_json,
)
from tui_backfill.state.sqlite import JobLock, StateStore


def _as_committed(run: RunRecord, published: dict[str, Any]) -> dict[str, Any]:
    angles = str(run.settings.get("angles") or published.get("anglesPlanned") or "")
    view = dataclasses.replace(
        snapshot_from_json(published),
        job=run.job,
        run_id=run.id,
        started_at=run.started_at,
        angles_planned=angles,
        angles_per_sku=len(parse_angles(angles)) if angles else 0,
        planned_skus=run.planned_skus,
        counters=run.counters,
        checkpoint=run.checkpoint,
        checkpoint_saved_sku=run.checkpoint.last_sku,
        in_flight=0,
        fetches_in_flight=0,
        items_per_second=0.0,
        skus_per_second=0.0,
        bytes_per_second=0.0,
        eta_seconds=None,
    )
    return {**published, **view.to_json()}


def _interrupted(run: RunRecord, snapshot: dict[str, Any], *, live: bool) -> bool:
    """The run's process died without pausing (crash, SIGKILL): no process holds it, yet the
    state says it was under way. The dead process cannot say so itself, so the reader does;
    the run stays resumable (`prepare` goes by the `running` status column, not this word).
    The status column decides first: a resume killed before its first publish still shows
    the earlier pause's snapshot, but that run is interrupted, as `runs` says."""
    if live:
        return False
    return run.status in ("running", "preparing") or snapshot.get("state") in (
        RunState.RUNNING,
        RunState.PAUSING,
    )


async def job_status(
    store: StateStore, state_path: str, job: str, *, include_dry: bool = True
) -> dict[str, Any] | None:
    """The job's status snapshot as JSON, or None when it has no runs."""
    run = await store.latest_run(job, include_dry=include_dry)
    if run is None:
        return None
    snapshot = dict(run.snapshot or {})
    if not snapshot:  # nothing published yet (the run is starting): the committed view
        snapshot = _as_committed(
            run, {"state": "running", "startedAt": run.started_at, "lastUpdateAt": run.started_at}
        )
    live = JobLock(state_path, job).holder() is not None and run.status in ("running", "preparing")
    if not live and run.status == "running":
        snapshot = _as_committed(run, snapshot)  # its process died (crash, kill)
    snapshot["live"] = live
    if _interrupted(run, snapshot, live=live):
        snapshot["state"] = RunState.INTERRUPTED.value
    return with_run_keys(snapshot, run)


def with_run_keys(snapshot: dict[str, Any], run: RunRecord) -> dict[str, Any]:
    """`snapshot` with the keys of the run around it, from its stored record: `runStatus`,
    `exitCode` (once it has one), `maxConcurrency`, `host` (the machine whose process last
    ran it). One function, so `status --json` and the headless final JSON cannot differ."""
    keys: dict[str, Any] = {"runStatus": run.status}
    if run.exit_code is not None:
        keys["exitCode"] = run.exit_code
    keys["maxConcurrency"] = run.settings.get("max_concurrency")
    keys["host"] = run.host
    return {**snapshot, **keys}


async def final_json(store: StateStore, snapshot: StatusSnapshot) -> dict[str, Any]:
    """The final snapshot of a run this process has just ended, as `status --json` shows it:
    the run keys are read back from the record its last commit wrote. A state that cannot be
    read now (the run already said why: exit 3) leaves them out rather than hide the snapshot."""
    output = snapshot.to_json()
    try:
        run = await store.run(snapshot.run_id)
    except StateUnavailable:
        return output
    return output if run is None else with_run_keys(output, run)


def failed_items_json(items: list[FailedItem]) -> list[dict[str, Any]]:
    """Failed items as JSON in the image job's names (`sku`, `angle`, `key`, `code`,
    `message`, `attempts`, `run_id`), the fields `GET .../failed` answers (tests/test_failed.py
    compares `failed --json` with the service's answer)."""
    return [failed_item_json(item) for item in items]
