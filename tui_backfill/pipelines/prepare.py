"""Preparing a run: settings against the state, the job lock, the job's pipeline; then that
pipeline's own preparation (preflight, the run created or continued): pipelines/mirror/prepare
and pipelines/hash_index/prepare, each imported only when its pipeline runs (a hash-index run
never loads the image backfill's origins, catalog sources and plan).

Everything here happens before any work, so every problem it finds is a ConfigError (exit 2):
bad or conflicting settings, a missing secret, the job already running elsewhere, an
unreadable catalog, an unreachable endpoint, a missing bucket, rejected credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Mapping

from tui_backfill.core.store import JobStore, StateUnavailable
from tui_backfill.outcomes import ConfigError, RunConflict
from tui_backfill.pipelines.config import BY_NAME, OPTIONS, Resolved, validate, with_pipeline
from tui_backfill.pipelines.continuing import PreparedRun, RunRequest
from tui_backfill.state.lock import JobLock
from tui_backfill.state.sqlite import StateStore


async def _check_pipeline(store: JobStore, request: RunRequest) -> Resolved:
    """A job's pipeline is fixed once it has run: naming a job of another one is exit 2.
    A request that says nothing of what the job does (`resume --job J`, or `run --job J`
    with no settings of a pipeline) takes the pipeline of the job's runs."""
    resolved = request.resolved
    settings = resolved.settings
    latest = await store.latest_run(settings.job)
    if latest is not None and "pipeline" not in resolved.explicit:
        if request.resume_only or not _names_settings(resolved):
            return with_pipeline(resolved, latest.pipeline)
    if latest is not None and latest.pipeline != settings.pipeline:
        raise ConfigError(
            resolved.explicit.get("pipeline", "--job"),
            f"job {settings.job!r} is a {latest.pipeline} job (fixed once it has run), not "
            f"{settings.pipeline}; give another --job for a {settings.pipeline} job",
        )
    return resolved


def _names_settings(resolved: Resolved) -> bool:
    """Whether the request gives settings of a run (beyond pacing and where state is)."""
    return any(BY_NAME[name].stored and not BY_NAME[name].pacing for name in resolved.explicit)


async def prepare_run(request: RunRequest, env: Mapping[str, str] | None = None) -> PreparedRun:
    """Validate, lock, preflight and plan; ConfigError for anything wrong before work starts."""
    env = os.environ if env is None else env
    resolved = request.resolved
    settings = resolved.settings
    validate(settings, resolved.explicit)
    stack = contextlib.AsyncExitStack()
    try:
        store = await StateStore.open(settings.state)
        stack.push_async_callback(store.close)
        lock = JobLock(settings.state, settings.job)
        await asyncio.to_thread(lock.acquire, settings.job)  # waits up to 1 s: not on the loop
        stack.callback(lock.release)
        # Commands left for an earlier holder of the job are dropped now, at once: one sent
        # from here on (`pause` needs a holder) is this process's, even before its run starts.
        await store.clear_commands(settings.job)
        prepared = await _prepare_locked(request, store, stack, env)
    except StateUnavailable as exc:  # the state failed us (full, locked) before any work
        await stack.aclose()
        raise ConfigError("--state", exc.message.removeprefix("state ")) from None
    except BaseException:
        await stack.aclose()
        raise
    return prepared


async def _prepare_locked(
    request: RunRequest, store: JobStore, stack: contextlib.AsyncExitStack, env: Mapping[str, str]
) -> PreparedRun:
    resolved = await _check_pipeline(store, request)
    request = dataclasses.replace(request, resolved=resolved)
    settings = resolved.settings
    job = settings.job
    unfinished = None if request.dry_run else await store.unfinished_run(job)
    if request.resume_only and unfinished is None:
        raise RunConflict(
            "--job",
            f"nothing to resume: job {job!r} has no paused or interrupted run in {settings.state}",
        )
    continuing = unfinished is not None and not request.fresh
    if settings.pipeline == "hash-index":
        from tui_backfill.pipelines.hash_index.prepare import prepare_hash_index

        return await prepare_hash_index(request, store, stack, unfinished, continuing=continuing)
    from tui_backfill.pipelines.mirror.prepare import prepare_mirror

    return await prepare_mirror(request, store, stack, unfinished, continuing=continuing, env=env)


__all__ = ["OPTIONS", "PreparedRun", "RunRequest", "prepare_run"]
