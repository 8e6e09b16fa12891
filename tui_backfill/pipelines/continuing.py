"""What every pipeline's run preparation shares: the request, the prepared run, and the rules
for continuing an unfinished run (its stored settings, the same settings or --fresh, the
secrets that must be given again, when its checkpoint was saved).

tui_backfill.pipelines.prepare (the image job, and the dispatch by pipeline) and
tui_backfill.pipelines.hash_index.prepare both build on it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tui_backfill.core.engine import Engine, RunPlan
from tui_backfill.core.records import RunRecord
from tui_backfill.core.store import JobStore
from tui_backfill.outcomes import ConfigError, RunConflict
from tui_backfill.pipelines.config import BY_NAME, FILE_OPTIONS, Resolved, Settings
from tui_backfill.seams.urls import redact_url

if TYPE_CHECKING:
    from tui_backfill.pipelines.plan_file import PlanFile
    from tui_backfill.seams.bucket import Bucket
    from tui_backfill.seams.s3_direct import DirectBucket


@dataclass(frozen=True, slots=True)
class RunRequest:
    resolved: Resolved
    dry_run: bool = False
    fresh: bool = False
    from_start: bool = False
    resume_only: bool = False  # `resume`: continue an unfinished run, never start one
    plan_file: str | None = None  # a dry run's list of what a run would do, one line an item


def settings_from_stored(
    stored: Mapping[str, Any], base: Settings, explicit: Mapping[str, str]
) -> Settings:
    """The run's stored settings, with the pacing options the user gave now."""
    values = {name: value for name, value in stored.items() if name in BY_NAME}
    for name in explicit:
        option = BY_NAME[name]
        if option.pacing or not option.stored:
            values[name] = getattr(base, name)
    values["job"] = base.job
    values["state"] = base.state
    cap = values.get("max_concurrency", base.max_concurrency)
    if "concurrency" not in explicit and values.get("concurrency", 0) > cap:
        values["concurrency"] = cap  # kept from a live change, under a cap lowered now
    return Settings(**values)


def check_same_settings(run: RunRecord, resolved: Resolved) -> None:
    """Continuing an unfinished run with other settings (bar pacing) needs --fresh."""
    given = resolved.settings.stored()
    for name, source in resolved.explicit.items():
        option = BY_NAME[name]
        if option.pacing or not option.stored:
            continue
        stored = run.settings.get(name, option.default)  # absent: stored before it existed
        if name in FILE_OPTIONS and isinstance(stored, str) and stored and "://" not in stored:
            stored = os.path.abspath(stored)  # stored as typed before paths were made absolute
        if given.get(name) != stored:
            shown_stored = _shown(redact_url(stored) if name == "origin" else stored)
            shown_given = _shown(
                redact_url(given.get(name)) if name == "origin" else given.get(name)
            )
            raise RunConflict(
                source,
                f"{shown_given} differs from the unfinished run {run.id} ({shown_stored}); "
                "run with the same settings to continue it, or add --fresh to abandon it",
            )


def _shown(value: Any) -> str:
    """A setting's value as a person gave it: a switch on or off, a text quoted."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return "none" if value is None else repr(value)


def check_notify_given(stored: Mapping[str, Any], explicit: Mapping[str, str]) -> None:
    """A run that notified its end goes on notifying: its URL is never stored, so a resume
    must give it again (an empty value turns the notification off)."""
    if stored.get("notify") and "notify_url" not in explicit:
        raise ConfigError(
            BY_NAME["notify_url"].env,
            f"required to continue this run: its notify URL ({stored['notify']}) is never "
            "stored; set it (or --notify-url) again, or to an empty value for no notification",
        )


@dataclass
class PreparedRun:
    """A run ready to go: the engine and what must be closed after it."""

    engine: Engine[Any]  # its snapshot is the pipeline's (tui_backfill.pipelines.snapshots)
    settings: Settings
    store: JobStore
    created: bool
    _stack: contextlib.AsyncExitStack
    plan_file: PlanFile | None = None  # a dry run's --plan-file: whether it was written

    async def close(self) -> None:
        await self._stack.aclose()


def checkpoint_saved_at(run: RunRecord) -> str:
    """When the checkpoint a continued run starts from was saved, as its last process said
    (its snapshot names the position it saved: `checkpointSavedSku`, or `...Key`)."""
    published = run.snapshot or {}
    saved = published.get("checkpointSavedSku", published.get("checkpointSavedKey"))
    if saved != run.checkpoint.position.last:
        return ""
    return str(published.get("checkpointSavedAt") or "")


def bucket_of(settings: Settings, *, pool_size: int) -> Bucket:
    """The settings' bucket (not yet entered), with `pool_size` connections."""
    from tui_backfill.seams.bucket import Bucket  # botocore is heavy: only its users import it

    return Bucket(
        settings.bucket or "",
        endpoint_url=settings.endpoint_url,
        region=settings.region,
        path_style=settings.path_style,
        timeout=settings.timeout,
        pool_size=pool_size,
    )


def listing_bucket_of(settings: Settings, *, pool_size: int) -> Bucket | DirectBucket:
    """The settings' bucket for listing and reading objects (the hash index): on the direct
    path when the settings and the environment decide everything (seams/s3_direct: no
    botocore, a start-up 0.2 s shorter), else through aiobotocore."""
    from tui_backfill.seams.s3_direct import bucket_for

    return bucket_for(
        settings.bucket or "",
        endpoint_url=settings.endpoint_url,
        region=settings.region,
        path_style=settings.path_style,
        timeout=settings.timeout,
        pool_size=pool_size,
    )


def run_plan(run: RunRecord, settings: Settings, *, dry_run: bool, planned_groups: int) -> RunPlan:
    """What the engine is told of a run (any pipeline): its settings, and where its stored
    counters and checkpoint leave it."""
    return RunPlan(
        job=settings.job,
        run_id=run.id,
        planned_groups=planned_groups,
        dry_run=dry_run,
        concurrency=settings.concurrency,
        max_concurrency=settings.max_concurrency,
        io_concurrency=settings.upload_concurrency,
        max_attempts=settings.max_attempts,
        backoff=settings.backoff,
        checkpoint_every=settings.checkpoint_every,
        started_at=run.started_at,
        counters=run.counters,
        position=run.checkpoint.position,
        checkpoint_saved_at=checkpoint_saved_at(run),
    )
