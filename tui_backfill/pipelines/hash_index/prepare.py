"""Preparing a hash-index run: settings against the state, the bucket's preflight, the index
table opened (created when missing, never in a dry run), the run created or continued.

Called by tui_backfill.pipelines.prepare under the job lock, after the pipeline check. Every
problem is a ConfigError (exit 2) found before anything is read from the bucket or written
to the index.
"""

from __future__ import annotations

import contextlib
import os

from tui_backfill.core.engine import Engine
from tui_backfill.core.records import RunRecord, RunStatus
from tui_backfill.core.store import JobStore
from tui_backfill.pipelines.config import Settings, validate, validate_for_run
from tui_backfill.pipelines.continuing import (
    PreparedRun,
    RunRequest,
    check_notify_given,
    check_same_settings,
    listing_bucket_of,
    run_plan,
    settings_from_stored,
)
from tui_backfill.pipelines.hash_index.checkpoint import KeyCheckpoint
from tui_backfill.pipelines.hash_index.pipeline import BATCH_ROWS, HashIndexPipeline, HashPlan
from tui_backfill.pipelines.hash_index.settings import check_modes, parse_since
from tui_backfill.pipelines.hash_index.snapshot import HashSnapshot
from tui_backfill.pipelines.plan_file import open_plan_file
from tui_backfill.seams.index_table import IndexTable
from tui_backfill.seams.notify import notify_label


async def prepare_hash_index(
    request: RunRequest,
    store: JobStore,
    stack: contextlib.AsyncExitStack,
    unfinished: RunRecord | None,
    *,
    continuing: bool,
) -> PreparedRun:
    """`unfinished`: the job's unfinished run, continued when `continuing`, else abandoned
    (`--fresh`) once the checks have passed."""
    resolved = request.resolved
    settings = resolved.settings
    abandoned, unfinished = (None, unfinished) if continuing else (unfinished, None)
    if unfinished is not None:
        if not request.resume_only:
            check_same_settings(unfinished, resolved)
        check_notify_given(unfinished.settings, resolved.explicit)
        settings = settings_from_stored(unfinished.settings, settings, resolved.explicit)
        validate(settings)
        validate_for_run(settings)
    else:
        validate_for_run(settings, resolved.explicit)
    check_modes(settings, resolved.explicit, dry_run=request.dry_run)
    bucket = listing_bucket_of(
        settings, pool_size=settings.max_concurrency + settings.upload_concurrency + 2
    )
    await stack.enter_async_context(bucket)
    await bucket.preflight(attempts=settings.max_attempts, backoff=settings.backoff)
    assert settings.index_db is not None
    index = await IndexTable.open(
        settings.index_db,
        settings.index_table,
        uploader_id=settings.uploader_id,
        create=not request.dry_run,
        emit_sql=settings.emit_sql,
        field_db=resolved.explicit.get("index_db", "--index-db"),
        field_table=resolved.explicit.get("index_table", "--index-table"),
        field_emit=resolved.explicit.get("emit_sql", "--emit-sql"),
    )
    stack.push_async_callback(index.close)
    if unfinished is not None:
        run = unfinished
        await store.set_run_status(run.id, RunStatus.RUNNING, pid=os.getpid())
    else:
        if abandoned is not None:
            await store.abandon_run(abandoned.id)
        run = await _create_run(store, settings, request)
    checkpoint: KeyCheckpoint = run.checkpoint
    counted = getattr(run.counters, "scanned_objects", 0)
    plan = HashPlan(
        run_id=run.id,
        prefix=settings.prefix,
        start_after=run.range_after,
        verify=settings.verify,
        repair=settings.repair,
        since=None if settings.since is None else parse_since(settings.since),
        since_text=settings.since,
        limit_objects=settings.limit_objects,
        objects_before=counted,
        done_after=frozenset(checkpoint.done_after),
        mismatch_file=settings.mismatch_file,
        mismatches=checkpoint.mismatches,
        index_label=f"{settings.index_db}:{settings.index_table}",
        batch_rows=BATCH_ROWS,
    )
    pipeline = HashIndexPipeline(plan, bucket=bucket, index=index)
    stack.push_async_callback(pipeline.close)
    # a listing's length is not known before it is read: no planned groups
    engine_plan = run_plan(run, settings, dry_run=request.dry_run, planned_groups=0)
    plan_file = open_plan_file(request, settings, stack)
    engine: Engine[HashSnapshot] = Engine(
        engine_plan, pipeline=pipeline, store=store, plan_sink=plan_file
    )
    return PreparedRun(engine, settings, store, unfinished is None, stack, plan_file)


async def _create_run(store: JobStore, settings: Settings, request: RunRequest) -> RunRecord:
    """A new run starts after where the job's previous completed run stopped when that one
    was bounded by --limit-objects (wrapping to the start once a run reached the end)."""
    range_after = None
    if not request.from_start:
        previous = await store.last_completed_run(settings.job)
        if previous is not None and not previous.checkpoint.listing_done:
            range_after = previous.checkpoint.last_key
    stored = settings.stored()
    stored["notify"] = notify_label(settings.notify_url)  # the URL itself is a secret
    run_id = await store.create_run(
        settings.job, stored, dry_run=request.dry_run, range_after=range_after
    )
    await store.set_run_status(run_id, RunStatus.RUNNING, pid=os.getpid())
    run = await store.run(run_id)
    assert run is not None
    return run
