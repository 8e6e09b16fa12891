"""What the state store keeps, as typed records: runs, failed items, commands, run statuses.

Counters and checkpoints are stored as their pipeline's JSON; a pipeline registers a `RunCodec`
(its counters class and checkpoint decoder) under its name, and records of its runs are decoded
with it. The registry lives here, below the store, so the store never imports a pipeline.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tui_backfill.core.counters import CounterSet

DEFAULT_PIPELINE = "mirror"  # runs stored before pipelines existed are image backfills


class RunStatus(enum.StrEnum):
    """A run's status in the store (`runs` in `tui-backfill runs`)."""

    PREPARING = "preparing"  # reading its source; dropped if its process dies now
    RUNNING = "running"  # or interrupted, when no process holds the job
    PAUSED = "paused"
    COMPLETED = "completed"
    ABANDONED = "abandoned"


UNFINISHED = (RunStatus.RUNNING, RunStatus.PAUSED)


class Command(enum.StrEnum):
    """What another process (or the API) asks of a running job through the state."""

    STOP = "stop"  # graceful: finish in-flight items, persist, exit 75
    HOLD = "hold"  # pause in place until resume
    RESUME = "resume"
    CONCURRENCY = "concurrency"  # with the new value as its argument


@dataclass(frozen=True, slots=True)
class RunCodec:
    """How a pipeline's counters and checkpoint are read back from their JSON."""

    counters: type[CounterSet]
    checkpoint: Callable[[dict[str, Any]], Any]
    empty_checkpoint: Callable[[], dict[str, Any]]


_CODECS: dict[str, RunCodec] = {}


def register_codec(pipeline: str, codec: RunCodec) -> None:
    _CODECS[pipeline] = codec


def codec_for(pipeline: str) -> RunCodec:
    """The codec of a pipeline. The pipelines package registers them all when it is imported
    (every front end and the run preparation import it), so that the store, below the
    pipelines, reads any run without importing one. KeyError for a pipeline not registered."""
    try:
        return _CODECS[pipeline]
    except KeyError:
        known = ", ".join(sorted(_CODECS))
        raise KeyError(f"unknown pipeline {pipeline!r}; known: {known}") from None


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One run of a job. `planned_skus`/`catalog_skus` count the groups of its ordered source
    (SKUs for the image job: the names are the seed's)."""

    id: int
    job: str
    status: str
    dry_run: bool
    settings: dict[str, Any]
    started_at: str
    ended_at: str | None
    range_after: str | None
    range_last: str | None
    planned_skus: int
    catalog_skus: int
    counters: Any  # the pipeline's CounterSet
    checkpoint: Any  # the pipeline's checkpoint
    snapshot: dict[str, Any] | None
    pid: int | None
    exit_code: int | None
    message: str | None
    host: str | None = None  # the machine whose process last ran it (schema 2; None before)

    @property
    def pipeline(self) -> str:
        return str(self.settings.get("pipeline") or DEFAULT_PIPELINE)

    @property
    def unfinished(self) -> bool:
        return self.status in UNFINISHED and not self.dry_run


@dataclass(frozen=True, slots=True)
class FailedItem:
    """An item whose attempts are exhausted (or that failed for good), with its last error;
    the job's next run retries it first. `group`/`member`: its place in the ordered source
    (the image job's SKU and angle)."""

    group: str
    member: int
    key: str
    code: str
    message: str
    attempts: int
    run_id: int
