"""Preparing an image-backfill (mirror) run: the catalog checked and snapshotted, the bucket's
and the origin's preflight, the run created or continued with the origin's secrets read again.

Called by tui_backfill.pipelines.prepare under the job lock, after the pipeline check (as
pipelines/hash_index/prepare is for its pipeline). Every problem is a ConfigError (exit 2)
found before any work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from tui_backfill.core.engine import Engine
from tui_backfill.core.records import RunRecord, RunStatus
from tui_backfill.core.store import JobStore
from tui_backfill.outcomes import ConfigError
from tui_backfill.pipelines.config import ExistsCheck, Settings, validate, validate_for_run
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
from tui_backfill.seams.s3_lean import LeanBucket
from tui_backfill.seams.sources import check_source, sku_batches
from tui_backfill.seams.templates import key_template
from tui_backfill.seams.urls import (
    redact_url,
    restore_secrets,
    secret_query_params,
    strip_password,
)

if TYPE_CHECKING:
    from tui_backfill.seams.bucket import Bucket


async def prepare_mirror(
    request: RunRequest,
    store: JobStore,
    stack: contextlib.AsyncExitStack,
    unfinished: RunRecord | None,
    *,
    continuing: bool,
    env: Mapping[str, str],
) -> PreparedRun:
    """`unfinished`: the job's unfinished run, continued when `continuing`, else abandoned
    (`--fresh`) once the checks have passed."""
    resolved = request.resolved
    settings = resolved.settings
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
    # The objects' PUTs and HEADs without aiobotocore's per-call CPU (seams/s3_lean, on its
    # own wire: 0.16 ms a PUT against 0.83), as the listings already were (Bucket.list_keys);
    # the preflight above stays on the client, and so do its error lines.
    lean = await stack.enter_async_context(LeanBucket(bucket))
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
        bucket=LeanWrites(bucket, lean),
        origin=origin,
    )
    plan = run_plan(run, settings, dry_run=request.dry_run, planned_groups=run.planned_skus)
    plan_file = open_plan_file(request, settings, stack)
    engine = Engine(plan, pipeline=pipeline, store=store, plan_sink=plan_file)
    return PreparedRun(engine, settings, store, not continuing, stack, plan_file)


class LeanWrites:
    """The destination as the mirror uses it: the Bucket's name, endpoint and listings; its
    objects' HEADs and PUTs sent by `lean`."""

    def __init__(self, bucket: Bucket, lean: LeanBucket) -> None:
        self.name = bucket.name
        self.endpoint_url = bucket.endpoint_url
        self.list_keys = bucket.list_keys
        self.exists = lean.exists
        self.put = lean.put


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
