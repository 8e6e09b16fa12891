"""One batch of the content-hash index: the seed's batch interface (`GET
/api/backfill-asset-index?limit=50&cursor=C&dry_run=true` on `serve`).

A batch lists up to `limit` objects (1 to 1,000: one ListObjectsV2 page) under the job's
prefix after `cursor` (the last key of the previous batch; None: from the start), applies the
pipeline's skip rule (`unchanged`, and `--since`), hashes the others with the pipeline's
`hash_object` (streamed SHA-256, at most `concurrency` at once, each retried under the retry
policy) and upserts the rows that change in one transaction at the end. Looping on the cursor
until `has_more` is false covers the prefix and leaves the index a `hash-index` run leaves.

A dry run hashes too (so `updated` says exactly which rows would change) but opens the index
read-only: it writes and creates nothing. An object that fails (attempts exhausted, or a
permanent error) is reported in `errors` and left out of the index; the cursor still passes it.
A failure of the whole batch (the listing failed, credentials rejected, the index cannot be
written) raises: a BackfillError (classified), or a ConfigError when the index cannot be opened.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from tui_backfill.core.retry import retrying
from tui_backfill.outcomes import BackfillError, NotFoundError
from tui_backfill.pipelines.hash_index.pipeline import (
    Listing,
    already_indexed,
    hash_object,
    older,
    unchanged,
)
from tui_backfill.seams.index_table import IndexRow, IndexTable, Upsert
from tui_backfill.seams.s3_wire import Listed

if TYPE_CHECKING:
    from tui_backfill.pipelines.config import Settings

LIMIT_DEFAULT, LIMIT_MAX = 50, 1000  # at most one listing page a batch

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class BatchError:
    key: str
    code: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"key": self.key, "code": self.code, "message": self.message}


@dataclass(frozen=True, slots=True)
class BatchResult:
    total: int  # objects in the batch
    updated: int  # rows written (in a dry run: rows that would be)
    skipped: int  # unchanged by the skip rule, older than --since, hashed and already right, gone
    cursor: str | None  # the last key of this batch when more follow, else None
    has_more: bool
    dry_run: bool
    errors: list[BatchError] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The seed's answer."""
        return {
            "success": True,
            "total": self.total,
            "updated": self.updated,
            "skipped": self.skipped,
            "cursor": self.cursor,
            "hasMore": self.has_more,
            "errors": [error.to_json() for error in self.errors],
            "dry_run": self.dry_run,
        }


@dataclass(frozen=True, slots=True)
class BatchPolicy:
    """How the batch goes about it: the job's settings."""

    concurrency: int
    max_attempts: int
    backoff: float
    since: datetime | None = None


async def _retried(call: Callable[[], Awaitable[_T]], policy: BatchPolicy) -> _T:
    """`call` under the retry policy (retryable errors only; the last one is raised)."""
    async for attempt in retrying(
        max_attempts=policy.max_attempts, backoff=policy.backoff, sleep=asyncio.sleep
    ):
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity re-raises the last error")


async def index_batch(
    bucket: Listing,
    index: IndexTable,
    *,
    prefix: str,
    after: str | None,
    limit: int,
    dry_run: bool,
    policy: BatchPolicy,
) -> BatchResult:
    """One batch (see the module's docstring); `index` opened with create=not dry_run."""
    if not 1 <= limit <= LIMIT_MAX:
        raise ValueError(f"limit {limit}: accepted 1 to {LIMIT_MAX}")
    page = await _retried(lambda: bucket.list_page(prefix, start_after=after), policy)
    objects = page.objects[:limit]
    has_more = bool(objects) and (len(page.objects) > limit or page.truncated)
    if not objects:
        return BatchResult(0, 0, 0, None, False, dry_run)
    rows = await index.rows(after, objects[-1].key, prefix)
    columns = index.columns
    s3 = bucket.objects()
    slots = asyncio.Semaphore(policy.concurrency)
    upserts: list[Upsert] = []
    errors: list[BatchError] = []
    skipped = 0

    async def one(listed: Listed, row: IndexRow | None) -> None:
        nonlocal skipped
        if older(listed, policy.since) or unchanged(row, listed, columns):
            skipped += 1
            return
        async with slots:
            try:
                hashed = await _retried(lambda: hash_object(s3, listed.key), policy)
            except NotFoundError:  # deleted since the listing: nothing to index
                skipped += 1
                return
            except BackfillError as exc:
                if exc.fatal:  # credentials rejected, bucket gone: the whole batch fails
                    raise
                errors.append(BatchError(listed.key, exc.code, exc.message))
                return
        if already_indexed(row, hashed, columns):
            skipped += 1
        else:
            upserts.append(hashed.upsert(listed.key))

    try:
        async with asyncio.TaskGroup() as group:
            for listed in objects:
                group.create_task(one(listed, rows.get(listed.key)))
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    upserts.sort(key=lambda row: row.key)
    if upserts and not dry_run:
        await _retried(lambda: index.upsert(upserts), policy)  # IndexBusy is retried
    errors.sort(key=lambda error: error.key)
    return BatchResult(
        total=len(objects),
        updated=len(upserts),
        skipped=skipped,
        cursor=objects[-1].key if has_more else None,
        has_more=has_more,
        dry_run=dry_run,
        errors=errors,
    )


async def run_batch(
    settings: Settings, *, after: str | None, limit: int, dry_run: bool
) -> BatchResult:
    """One batch of the job these settings describe: its bucket and prefix, its index (opened
    read-only in a dry run, created when missing otherwise), its concurrency and retry policy.
    The caller holds the job (no run of it goes on meanwhile)."""
    from tui_backfill.pipelines.continuing import listing_bucket_of
    from tui_backfill.pipelines.hash_index.settings import parse_since

    policy = BatchPolicy(
        concurrency=settings.concurrency,
        max_attempts=settings.max_attempts,
        backoff=settings.backoff,
        since=None if settings.since is None else parse_since(settings.since),
    )
    assert settings.index_db is not None
    index = await IndexTable.open(
        settings.index_db,
        settings.index_table,
        uploader_id=settings.uploader_id,
        create=not dry_run,
        emit_sql=settings.emit_sql,
    )
    try:
        async with listing_bucket_of(settings, pool_size=settings.concurrency + 2) as bucket:
            return await index_batch(
                bucket,
                index,
                prefix=settings.prefix,
                after=after,
                limit=limit,
                dry_run=dry_run,
                policy=policy,
            )
    finally:
        await index.close()
