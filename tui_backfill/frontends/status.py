"""The status of a job, as every front end shows it: one typed `JobStatus`.

`status` (text and `--json`), the headless final JSON, the HTTP API's status endpoints,
`/metrics`, the attached console and `runs` all take a `JobStatus`: the pipeline's typed
snapshot (the engine's live one, or the stored one decoded once) with the facts of the run
around it. JSON is made once, by `JobStatus.to_json`, at the edge.

For a run whose process died, the snapshot shows the counters and checkpoint it committed
(what a resume continues from), not the last published view, and its state is `interrupted`.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from typing import Any

from tui_backfill.core.records import FailedItem, RunRecord, RunStatus
from tui_backfill.core.store import JobStore, StateUnavailable
from tui_backfill.outcomes import RunState
from tui_backfill.pipelines.mirror.snapshot import failed_item_json
from tui_backfill.pipelines.snapshots import (
    AnySnapshot,
    committed_snapshot,
    snapshot_from_json,
    starting_snapshot,
)
from tui_backfill.state.lock import JobLock


@dataclass(frozen=True, slots=True)
class JobStatus:
    """A job's latest run: its snapshot and the facts of the run record around it.

    `snapshot.state` is the effective state (`interrupted` when the run's process died) and
    `snapshot.live` says whether a process is running it now; `state` and `live` read them, so
    the snapshot and the run level cannot disagree. `run_status` None: the run record could not
    be read (a final snapshot whose state became unreadable); the run keys are then left out.
    """

    snapshot: AnySnapshot
    run_status: str | None
    exit_code: int | None = None
    max_concurrency: int | None = None
    host: str | None = None
    state_path: str | None = None  # absolute: where `resume --state` finds the run

    @property
    def state(self) -> str:
        return self.snapshot.state

    @property
    def live(self) -> bool:
        return self.snapshot.live

    @property
    def job(self) -> str:
        return self.snapshot.job

    @property
    def run_id(self) -> int:
        return self.snapshot.run_id

    def to_json(self) -> dict[str, Any]:
        """The snapshot's keys (the brief's) and the run keys: `runStatus`, `exitCode` (once
        the run has one), `maxConcurrency`, `host` (the machine whose process last ran it),
        `statePath` (the run's state file, absolute on that machine: a path, not a secret, so a
        client of the API can say `resume --state ...`; left out when unknown)."""
        output = self.snapshot.to_json()
        if self.run_status is None:
            return output
        output["runStatus"] = self.run_status
        if self.exit_code is not None:
            output["exitCode"] = self.exit_code
        output["maxConcurrency"] = self.max_concurrency
        output["host"] = self.host
        if self.state_path is not None:
            output["statePath"] = self.state_path
        return output

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobStatus:
        """The inverse of `to_json`, for clients of the HTTP API (`attach --url`)."""
        run_status = data.get("runStatus")
        exit_code = data.get("exitCode")
        maximum = data.get("maxConcurrency")
        host = data.get("host")
        state_path = data.get("statePath")
        return cls(
            snapshot_from_json(data),
            run_status=None if run_status is None else str(run_status),
            exit_code=None if exit_code is None else int(exit_code),
            max_concurrency=None if maximum is None else int(maximum),
            host=None if host is None else str(host),
            state_path=None if state_path is None else str(state_path),
        )

    @classmethod
    def of_run(cls, run: RunRecord, *, live: bool, state_path: str | None = None) -> JobStatus:
        """A stored run as `status` shows it (pure: a function of the record and `live`, which
        says a process holds the job's lock and this is the run it works on)."""
        if run.snapshot:
            snapshot = snapshot_from_json(run.snapshot, run.pipeline)
            if not live and run.status == RunStatus.RUNNING:
                snapshot = committed_snapshot(run, snapshot)  # its process died (crash, kill)
        else:  # nothing published yet (the run is starting): the committed view
            snapshot = committed_snapshot(run, starting_snapshot(run))
        state = RunState.INTERRUPTED.value if _interrupted(run, snapshot, live=live) else None
        snapshot = dataclasses.replace(snapshot, live=live, state=state or snapshot.state)
        return cls(
            snapshot,
            run_status=run.status,
            exit_code=run.exit_code,
            max_concurrency=run.settings.get("max_concurrency"),
            host=run.host,
            state_path=None if state_path is None else os.path.abspath(state_path),
        )

    @classmethod
    def of_engine(
        cls,
        snapshot: AnySnapshot,
        *,
        max_concurrency: int,
        state_path: str | None = None,
        ended: tuple[str, int] | None = None,
    ) -> JobStatus:
        """The run an engine of this process is doing now (its own fresh snapshot), on this
        machine: running, with no exit code yet, until the engine has ended it (`ended`: the
        run status and exit code its record gets, as `of_run` then reads them)."""
        run_status, exit_code = ended if ended is not None else (RunStatus.RUNNING.value, None)
        return cls(
            snapshot,
            run_status=str(run_status),
            exit_code=exit_code,
            max_concurrency=max_concurrency,
            host=socket.gethostname(),
            state_path=None if state_path is None else os.path.abspath(state_path),
        )


def _interrupted(run: RunRecord, snapshot: AnySnapshot, *, live: bool) -> bool:
    """The run's process died without pausing (crash, SIGKILL): no process holds it, yet the
    state says it was under way. The dead process cannot say so itself, so the reader does;
    the run stays resumable (`prepare` goes by the `running` status column, not this word).
    The status column decides first: a resume killed before its first publish still shows
    the earlier pause's snapshot, but that run is interrupted, as `runs` says."""
    if live:
        return False
    return run.status in (RunStatus.RUNNING, RunStatus.PREPARING) or snapshot.state in (
        RunState.RUNNING,
        RunState.PAUSING,
    )


def run_is_live(state_path: str, run: RunRecord) -> bool:
    """A process holds the job's lock and the run is not yet ended: that process runs it."""
    if run.status not in (RunStatus.RUNNING, RunStatus.PREPARING):
        return False
    return JobLock(state_path, run.job).holder() is not None


async def job_status(
    store: JobStore, state_path: str, job: str, *, include_dry: bool = True
) -> JobStatus | None:
    """The status of the job's latest run, or None when it has no runs."""
    run = await store.latest_run(job, include_dry=include_dry)
    if run is None:
        return None
    return JobStatus.of_run(run, live=run_is_live(state_path, run), state_path=state_path)


async def final_status(
    store: JobStore, snapshot: AnySnapshot, state_path: str | None = None
) -> JobStatus:
    """The final status of a run this process has just ended, as `status --json` shows it:
    the run keys are read back from the record its last commit wrote. A state that cannot be
    read now (the run already said why: exit 3) leaves them out rather than hide the snapshot."""
    try:
        run = await store.run(snapshot.run_id)
    except StateUnavailable:
        run = None
    if run is None:
        return JobStatus(snapshot, run_status=None)
    return JobStatus(
        snapshot,
        run_status=run.status,
        exit_code=run.exit_code,
        max_concurrency=run.settings.get("max_concurrency"),
        host=run.host,
        state_path=None if state_path is None else os.path.abspath(state_path),
    )


def failed_items_json(items: list[FailedItem]) -> list[dict[str, Any]]:
    """Failed items as JSON in the image job's names (`sku`, `angle`, `key`, `code`,
    `message`, `attempts`, `run_id`), the fields `GET .../failed` answers (tests/test_failed.py
    compares `failed --json` with the service's answer)."""
    return [failed_item_json(item) for item in items]
