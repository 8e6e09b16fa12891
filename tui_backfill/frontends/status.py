"""What `status`, the attached console and (later) the HTTP API show of a job: the latest
run's published snapshot, marked live or not; for a run whose process died, the counters and
checkpoint it committed (what a resume continues from), not the last published view."""

from __future__ import annotations

import dataclasses
from typing import Any

from tui_backfill.core.snapshot import snapshot_from_json
from tui_backfill.outcomes import RunState
from tui_backfill.pipelines.mirror.angles import parse_angles
from tui_backfill.state.sqlite import JobLock, RunRecord, StateStore


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
    snapshot["runStatus"] = run.status
    if run.exit_code is not None:
        snapshot["exitCode"] = run.exit_code
    snapshot["maxConcurrency"] = run.settings.get("max_concurrency")
    snapshot["host"] = run.host  # the machine whose process last ran it
    return snapshot
