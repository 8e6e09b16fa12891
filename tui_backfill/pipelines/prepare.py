"""Preparing a run: settings against the state, the job lock, preflight, the SKU snapshot.

Everything here happens before any work, so every problem it finds is a ConfigError (exit 2):
bad or conflicting settings, a missing secret, the job already running elsewhere, an
unreadable catalog, an unreachable endpoint, a missing bucket, rejected credentials.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import urllib.parse
from collections.abc import Mapping
from typing import Any

from tui_backfill.core.engine import Engine
from tui_backfill.core.records import RunRecord, RunStatus
from tui_backfill.core.store import JobStore, StateUnavailable
from tui_backfill.outcomes import ConfigError, RunConflict
from tui_backfill.pipelines.config import (
    BY_NAME,
    OPTIONS,
    ExistsCheck,
    Resolved,
    Settings,
    validate,
    validate_for_run,
    with_pipeline,
)
from tui_backfill.pipelines.continuing import (
    PreparedRun,
    RunRequest,
    bucket_of,
    check_notify_given,
    check_same_settings,
    run_plan,
    settings_from_stored,
)
from tui_backfill.pipelines.mirror.pipeline import MirrorPipeline, MirrorPlan
from tui_backfill.pipelines.plan_file import open_plan_file
from tui_backfill.seams.notify import notify_label
from tui_backfill.seams.origins import S3Access, open_origin, preflight_origin
from tui_backfill.seams.sources import check_source, sku_batches
from tui_backfill.seams.templates import key_template
from tui_backfill.seams.urls import (
    redact_url,
    restore_secrets,
    secret_query_params,
    strip_password,
)
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


def _origin_with_secret(
    settings: Settings,
    stored: Mapping[str, Any],
    explicit_origin: str | None,
    env: Mapping[str, str],
) -> str:
    """The origin URL to use on continuing: the given one (it may carry a password), or the
    stored one with the password put back from ORIGIN_PASSWORD (it is never stored)."""
    if explicit_origin and strip_password(explicit_origin) == stored.get("origin"):
        return explicit_origin
    assert settings.origin is not None
    if secret_query_params(settings.origin):  # never stored: from the URL given again
        return restore_secrets(settings.origin, explicit_origin)
    if not stored.get("origin_password"):
        return settings.origin
    password = env.get("ORIGIN_PASSWORD")
    if not password:
        raise ConfigError(
            "ORIGIN_PASSWORD",
            "required to continue this run: its origin password is never stored; set it in the environment",
        )
    parts = urllib.parse.urlsplit(settings.origin)
    if parts.username is None:
        return settings.origin  # the password came from the environment in the first place
    host = parts.netloc.rsplit("@", 1)[1]
    secret = urllib.parse.quote(password, safe="")
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:{secret}@{host}"))


def _s3_access(settings: Settings) -> S3Access:
    return S3Access(
        endpoint_url=settings.origin_endpoint_url,
        region=settings.origin_region,
        path_style=settings.origin_path_style,
        profile=settings.origin_profile,
    )


def _origin_uses_keys(origin: str, env: Mapping[str, str]) -> bool:
    """Whether an s3:// origin is read with ORIGIN_AWS_* keys (never stored: a resume must
    find them in the environment again)."""
    return origin.startswith("s3://") and bool(env.get("ORIGIN_AWS_ACCESS_KEY_ID"))


def _check_origin_keys(stored: Mapping[str, Any], env: Mapping[str, str]) -> None:
    """A run that read its s3:// origin with a key pair does not go on anonymously."""
    if stored.get("origin_keys") and not env.get("ORIGIN_AWS_ACCESS_KEY_ID"):
        raise ConfigError(
            "ORIGIN_AWS_ACCESS_KEY_ID",
            "required to continue this run: its origin's key pair is never stored; set "
            "ORIGIN_AWS_ACCESS_KEY_ID and ORIGIN_AWS_SECRET_ACCESS_KEY in the environment",
        )


def _origin_needs_password(origin: str, env: Mapping[str, str]) -> bool:
    """Whether the run used a password that a resume must read again from the environment."""
    parts = urllib.parse.urlsplit(origin)
    if parts.password is not None:
        return True
    return parts.scheme == "ftp" and bool(env.get("ORIGIN_PASSWORD"))


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
    origin_url = settings.origin
    if continuing:
        assert unfinished is not None
        if not request.resume_only:
            check_same_settings(unfinished, resolved)
        settings = settings_from_stored(unfinished.settings, settings, resolved.explicit)
        validate(settings)
        validate_for_run(settings)
        origin_url = _origin_with_secret(
            settings, unfinished.settings, resolved.settings.origin, env
        )
        _check_origin_keys(unfinished.settings, env)
        check_notify_given(unfinished.settings, resolved.explicit)
    else:
        validate_for_run(settings, resolved.explicit)
        await asyncio.to_thread(check_source, settings)  # runs the catalog query once
    bucket = bucket_of(settings, pool_size=settings.upload_concurrency + 2)
    await stack.enter_async_context(bucket)
    await bucket.preflight(attempts=settings.max_attempts, backoff=settings.backoff)
    if not request.dry_run:  # before a run exists: an absent origin leaves nothing behind
        await preflight_origin(
            origin_url or "", timeout=settings.timeout, env=env, s3=_s3_access(settings)
        )
    if continuing:
        assert unfinished is not None
        run = unfinished
        await store.set_run_status(run.id, RunStatus.RUNNING, pid=os.getpid())
    else:
        if unfinished is not None:
            await store.abandon_run(unfinished.id)
        run = await _create_run(
            store,
            settings,
            request,
            origin_has_password=_origin_needs_password(origin_url or "", env),
            origin_keys=_origin_uses_keys(origin_url or "", env),
        )
    origin = None
    if not request.dry_run:
        assert origin_url is not None
        origin = open_origin(
            origin_url,
            concurrency=settings.max_concurrency,
            timeout=settings.timeout,
            bandwidth=settings.bandwidth_bytes,
            env=env,
            s3=_s3_access(settings),
        )
        stack.push_async_callback(origin.close)
    angles = settings.angle_list
    pipeline = MirrorPipeline(
        MirrorPlan(
            run_id=run.id,
            angles=angles,
            angles_spec=settings.angles,
            key_template=key_template(settings.key_template),
            only_missing=settings.only_missing,
            exists_check=ExistsCheck(settings.exists_check),
            origin_label=redact_url(origin_url),
        ),
        store=store,
        bucket=bucket,
        origin=origin,
    )
    plan = run_plan(run, settings, dry_run=request.dry_run, planned_groups=run.planned_skus)
    plan_file = open_plan_file(request, settings, stack)
    engine = Engine(plan, pipeline=pipeline, store=store, plan_sink=plan_file)
    return PreparedRun(engine, settings, store, not continuing, stack, plan_file)


async def _create_run(
    store: JobStore,
    settings: Settings,
    request: RunRequest,
    *,
    origin_has_password: bool,
    origin_keys: bool,
) -> RunRecord:
    job = settings.job
    range_after = None
    if not request.from_start:
        previous = await store.last_completed_run(job)
        range_after = previous.range_last if previous else None
    stored = settings.stored()
    stored["origin_password"] = origin_has_password
    stored["origin_keys"] = origin_keys
    stored["notify"] = notify_label(settings.notify_url)  # the URL itself is a secret
    run_id = await store.create_run(job, stored, dry_run=request.dry_run, range_after=range_after)
    try:
        await store.snapshot_skus(run_id, sku_batches(settings), range_after, settings.limit_skus)
    except BaseException:
        await store.delete_run(run_id)
        raise
    run = await store.run(run_id)
    assert run is not None
    return run


__all__ = ["OPTIONS", "PreparedRun", "RunRequest", "prepare_run"]
