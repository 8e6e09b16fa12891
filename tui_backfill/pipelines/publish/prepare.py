"""A publish worker made ready: settings checked, the queue opened (and its schema checked, or
on SQLite created), the bucket's preflight passed, the media step wired to the real seams.

Everything that can be wrong before the first claim is found here, as a ConfigError (exit 2):
a missing secret, a malformed CDN_BASE_URL, an unreachable DATABASE_URL, a seed database
lacking the worker's columns, a missing bucket, rejected credentials, a worker id another live
instance holds. A database lacking one of the worker's indexes (made by an older `init-db`) is
only warned of: the worker runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

from tui_backfill.outcomes import ConfigError
from tui_backfill.pipelines.publish.settings import PublishSettings, validate_queue, validate_worker
from tui_backfill.pipelines.publish.worker import (
    CACHE_CONTROL,
    MediaStep,
    PublishWorker,
    worker_id,
)
from tui_backfill.seams.queue import open_queue, redact_url
from tui_backfill.seams.queue.base import JobQueue

log = logging.getLogger("tui_backfill.publish")


@contextlib.asynccontextmanager
async def opened_queue(
    settings: PublishSettings, *, create: bool = False
) -> AsyncIterator[JobQueue]:
    """The job's queue. `create`: make the tables on SQLite (a worker's first start); on
    PostgreSQL only `init-db` changes the schema, and a missing column is exit 2."""
    validate_queue(settings, create=create)
    queue = await open_queue(settings.database_url)
    try:
        if create and settings.database_url.startswith("sqlite:"):
            from tui_backfill.seams.queue.sqlite import SqliteQueue

            assert isinstance(queue, SqliteQueue)
            others = await queue.unrelated_tables()
            if others:
                shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
                raise ConfigError(
                    settings.where("database_url"),
                    f"{redact_url(settings.database_url)} holds other tables ({shown}) and no"
                    " publish queue; check the path, or run `tui-backfill publish init-db` to add"
                    " the queue's tables to it",
                )
            await queue.init_db()
        else:
            await queue.check_schema()
        yield queue
    finally:
        await queue.close()


def _variant_specs(settings: PublishSettings) -> list[Any]:
    from tui_backfill.seams.media.variants import VariantSpec

    return [
        VariantSpec("thumb", *settings.box("thumb_size")),
        VariantSpec("display", *settings.box("display_size")),
    ]


@contextlib.asynccontextmanager
async def prepared_worker(
    settings: PublishSettings, *, burst: bool = False, worker: str | None = None
) -> AsyncIterator[PublishWorker]:
    from tui_backfill.seams.media.source import download_source, source_session
    from tui_backfill.seams.media.variants import keep_image_blocks, make_variants
    from tui_backfill.seams.s3_lean import LeanBucket

    validate_worker(settings)
    credentials = (
        (settings.key_id, settings.app_key) if settings.key_id and settings.app_key else None
    )
    async with contextlib.AsyncExitStack() as stack:
        queue = await stack.enter_async_context(opened_queue(settings, create=True))
        instance = worker or worker_id()
        if not await queue.hold_identity(instance):
            # two live instances with one id would share their leases
            shared = "" if worker else " (this default, host:pid, is another machine's too)"
            raise ConfigError(
                "--worker-id",
                f"{instance!r} is the id of a worker instance running now on this queue (a"
                f" frozen one counts); give each instance its own id{shared}",
            )
        missing = await queue.missing_indexes()
        if missing:  # a schema from an older init-db: it works, its claims slow down with age
            log.warning(
                "the queue database lacks the index%s %s: claims slow down as the jobs table"
                " grows; `tui-backfill publish init-db` adds %s",
                "es" if len(missing) > 1 else "",
                ", ".join(missing),
                "them" if len(missing) > 1 else "it",
            )
        bucket = await stack.enter_async_context(_bucket(settings, credentials))
        await _preflight(bucket, settings)
        await _reach_store(settings)
        # The variants' PUTs and HEADs without aiobotocore's per-call CPU (s3_lean); the
        # preflight above stays on the bucket's own path, and so do its error lines.
        objects = await stack.enter_async_context(LeanBucket(bucket))
        http = await stack.enter_async_context(
            source_session(connections=settings.concurrency * 2 + 2)
        )

        async def put(key: str, body: bytes) -> None:
            await objects.put(
                key, body, "image/webp", if_none_match=True, cache_control=CACHE_CONTROL
            )

        fetch = functools.partial(
            _fetch,
            download_source,
            http,
            settings.raid_endpoint,
            settings.raid_secret,
            settings.max_source_bytes,
            settings.timeout,
            settings.min_source_rate,
        )
        variants = functools.partial(
            make_variants,
            specs=_variant_specs(settings),
            quality=settings.webp_quality,
            max_pixels=settings.max_pixels,
        )
        step = MediaStep(fetch=fetch, variants=variants, exists=objects.exists, put=put)
        publish = PublishWorker(settings, queue, step, worker=instance, burst=burst)
        # A job's images hold about two blocks at once (the decode, then a variant): twice the
        # threads are kept, so a thread's next job reuses the pages of the last.
        keep_image_blocks(2 * publish.image_threads)
        yield publish


def _bucket(settings: PublishSettings, credentials: tuple[str, str] | None) -> Any:
    """The bucket (not yet entered): on the direct path when the settings and the environment
    decide everything (seams/s3_direct: the same URL, signature and preflight messages, and no
    botocore in the process, about 0.12 s of CPU less at every start), else through
    aiobotocore."""
    from tui_backfill.seams.s3_direct import bucket_for

    return bucket_for(
        settings.bucket,
        endpoint_url=settings.endpoint_url,
        region=settings.region,
        path_style=settings.path_style,
        timeout=settings.timeout,
        pool_size=settings.concurrency * 4 + 2,  # the jobs past their download
        credentials=credentials,
    )


# The bucket seam names the image job's fields; a publish worker's come from B2_* (or flags).
_BUCKET_FIELDS = {
    "AWS_ACCESS_KEY_ID": "key_id",
    "--bucket": "bucket",
    "--endpoint-url": "endpoint_url",
}


async def _preflight(bucket: Any, settings: PublishSettings) -> None:
    """HeadBucket before the first claim; its refusal named in the worker's own variables."""
    try:
        await bucket.preflight()
    except ConfigError as exc:
        name = _BUCKET_FIELDS.get(exc.field)
        if name is None or (name == "key_id" and not settings.key_id):
            raise
        message = str(exc).removeprefix(f"{exc.field}: ")
        raise ConfigError(settings.where(name), message) from None


async def _reach_store(settings: PublishSettings) -> None:
    """The private store's host takes connections, before the first claim: a mistyped
    RAID_PUB_ENDPOINT (host or port) is exit 2 naming it, not an attempt spent on every job
    until the whole queue needs attention. (Its answers are the jobs' to judge: a request
    without a key proves nothing, and a wrong secret is found by the first download.)"""
    parts = urllib.parse.urlsplit(settings.raid_endpoint)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        async with asyncio.timeout(min(settings.timeout, 10.0)):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError) as exc:
        reason = "no answer" if isinstance(exc, TimeoutError) else exc.strerror or str(exc)
        raise ConfigError(
            settings.where("raid_endpoint"),
            f"the private store at {host}:{port} cannot be reached ({reason}); check the address",
        ) from None
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _fetch(
    download: Any,
    http: Any,
    endpoint: str,
    secret: str,
    max_bytes: int,
    timeout: float,
    min_rate: float,
    key: str,
) -> bytes:
    body: bytes = await download(
        http, endpoint, key, secret, max_bytes=max_bytes, timeout=timeout, min_rate=min_rate
    )
    return body
