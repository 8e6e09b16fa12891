"""Every pipeline's status snapshot, read back by the pipeline that made it.

Front ends render whichever snapshot a job's run has: the image job's `StatusSnapshot` or the
hash index's `HashSnapshot`. A stored or published snapshot says which by its `pipeline` key
(absent: an image job's, stored before there were others).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from tui_backfill.core.records import RunRecord
from tui_backfill.outcomes import RunState
from tui_backfill.pipelines.hash_index.snapshot import HashSnapshot
from tui_backfill.pipelines.hash_index.snapshot import (
    snapshot_from_json as hash_snapshot_from_json,
)
from tui_backfill.pipelines.mirror.angles import parse_angles
from tui_backfill.pipelines.mirror.snapshot import StatusSnapshot
from tui_backfill.pipelines.mirror.snapshot import snapshot_from_json as mirror_from_json

AnySnapshot = StatusSnapshot | HashSnapshot


def snapshot_from_json(data: dict[str, Any], pipeline: str | None = None) -> AnySnapshot:
    """A snapshot from its JSON, decoded by its pipeline (`pipeline` given, or its key)."""
    if (pipeline or data.get("pipeline")) == HashSnapshot.pipeline:
        return hash_snapshot_from_json(data)
    return mirror_from_json(data)


def starting_snapshot(run: RunRecord) -> AnySnapshot:
    """The view of a run that has published nothing yet (it is starting)."""
    empty = snapshot_from_json({}, run.pipeline)
    return dataclasses.replace(
        empty,
        state=RunState.RUNNING.value,
        started_at=run.started_at,
        last_update_at=run.started_at,
    )


def committed_snapshot(run: RunRecord, published: AnySnapshot) -> AnySnapshot:
    """The run as its last commit left it (counters and checkpoint), over what it published:
    what a resume continues from after its process died (nothing in flight, no rates)."""
    committed = dataclasses.replace(
        published,
        job=run.job,
        run_id=run.id,
        started_at=run.started_at,
        counters=run.counters,
        checkpoint=run.checkpoint,
        checkpoint_saved_sku=run.checkpoint.position.last,
        in_flight=0,
        fetches_in_flight=0,
        held=False,
        items_per_second=0.0,
        bytes_per_second=0.0,
        eta_seconds=None,
    )
    if isinstance(committed, HashSnapshot):
        return committed
    angles = str(run.settings.get("angles") or committed.angles_planned or "")
    return dataclasses.replace(
        committed,
        angles_planned=angles,
        angles_per_sku=len(parse_angles(angles)) if angles else 0,
        planned_skus=run.planned_skus,
        skus_per_second=0.0,
    )
