"""The content-hash index as a pipeline: list the bucket in key order, hash each object's
bytes while streaming them, upsert `content_hash` into the index table.

A listing page (1,000 keys, `StartAfter` the watermark) and the index rows of the same key
range make one page of groups: every listed object, and every index row under the prefix
that has no object (an orphan, counted and never deleted). The skip rule is decided on the
page, without any request: a row with a hash whose size and ETag (where the table keeps
them) equal the listing's is `skipped`; so is an object older than `--since`.

Upserts are batched (100 rows, or 1 s) and always land before a checkpoint passes them
(`before_commit`), so a kill re-fetches at most the objects whose upsert had not landed.
Nothing is ever written to the bucket.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import hashlib
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from tui_backfill.core.pipeline import (
    Group,
    Item,
    OrderedSource,
    Progress,
    Result,
    Slot,
    StageFailed,
    Stages,
)
from tui_backfill.core.records import FailedItem
from tui_backfill.core.watermark import Position
from tui_backfill.outcomes import BackfillError, FatalError, NotFoundError
from tui_backfill.pipelines.hash_index.checkpoint import (
    MAX_MISMATCHES_KEPT,
    MEMBER,
    KeyCheckpoint,
    Mismatch,
)
from tui_backfill.pipelines.hash_index.listing import AHEAD, ListingAhead
from tui_backfill.pipelines.hash_index.snapshot import HashCounters, HashSnapshot
from tui_backfill.seams.index_table import IndexRow, IndexTable, Upsert
from tui_backfill.seams.s3_objects import ObjectReader
from tui_backfill.seams.s3_wire import Listed, ListedPage, unquote_etag

NAME = "hash-index"
log = logging.getLogger("tui_backfill.hash_index")

BATCH_ROWS = 100  # upserts land at least every 100 objects (fewer: see HashPlan.batch_rows)...
BATCH_SECONDS = 1.0  # ...or every second


def batch_rows_at(concurrency: int) -> int:
    """The rows a batch holds at `concurrency` (see HashPlan.batch_rows)."""
    return max((BATCH_ROWS - concurrency) // 2, 10)


# What each way an object ends adds to the counters.
UPDATED = ("scanned_objects", "updated")
SKIPPED = ("scanned_objects", "skipped")
SKIPPED_OLDER = ("scanned_objects", "skipped", "skipped_older")
WOULD_UPDATE = ("scanned_objects", "would_update")
VERIFIED = ("scanned_objects", "verified")
MISMATCHED = ("scanned_objects", "mismatched")
REPAIRED = ("scanned_objects", "mismatched", "updated")  # --repair wrote the actual hash
FAILED = ("scanned_objects",)
ORPHAN = ("orphans",)
# The results known from the listing alone, one each (a Result is immutable): a re-run
# builds one per object otherwise.
_AS_ORPHAN = Result("orphan", ORPHAN)
_AS_SKIPPED = Result("skipped", SKIPPED)
_AS_OLDER = Result("skipped", SKIPPED_OLDER)
_AS_WOULD_UPDATE = Result("wouldUpdate", WOULD_UPDATE)
ROWS_PAGE = 5_000  # index rows read at most for one page (a long run of orphans is paged)
_T = TypeVar("_T")


class Listing(Protocol):
    """What the pipeline needs of the bucket (tui_backfill.seams.bucket.Bucket)."""

    name: str
    endpoint_url: str | None

    async def list_page(self, prefix: str, *, start_after: str | None = None) -> ListedPage: ...

    def objects(self) -> ObjectReader: ...


@dataclass(frozen=True, slots=True)
class HashPlan:
    """The hash index's own facts of one run."""

    run_id: int
    prefix: str = ""
    start_after: str | None = None  # where a new run's listing starts (after a bounded run)
    verify: bool = False
    repair: bool = False
    since: datetime | None = None
    since_text: str | None = None
    limit_objects: int | None = None
    objects_before: int = 0  # objects this run counted before this process (a resume)
    done_after: frozenset[str] = frozenset()  # keys past the checkpoint finished before it
    mismatch_file: str | None = None
    mismatches: tuple[Mismatch, ...] = ()  # found before this process (a resume)
    index_label: str = ""
    # Rows a batch holds before it lands: at most this, and (100 - concurrency) / 2 at the
    # concurrency in force (`batch_rows_at`). What a kill loses must stay within
    # 100 + concurrency even when a batch is slow to land (a loaded disk): while one batch of
    # at most batch_rows + concurrency rows is being written, the next fills up to batch_rows,
    # and each object finished past that holds its slot until the write is done, so rows
    # written, rows waiting and objects being fetched together stay within
    # 2 x (batch_rows + concurrency) (up to a concurrency of 80: the batch has 10 rows at least).
    batch_rows: int = BATCH_ROWS

    @property
    def mode(self) -> str:
        return "repair" if self.repair else "verify" if self.verify else "hash"


@dataclass(frozen=True, slots=True)
class Hashed:
    """What a GET streamed through SHA-256 gave."""

    sha256: str
    size: int
    etag: str
    last_modified: datetime | None

    def upsert(self, key: str) -> Upsert:
        """The index row this hash makes for `key`."""
        return Upsert(key, self.sha256, self.size, self.etag, _iso(self.last_modified))


async def hash_object(objects: ObjectReader, key: str) -> Hashed:
    """One GET, its body streamed through SHA-256 (never whole in memory); a body shorter
    than its Content-Length is `truncated` and never hashed (retried by the caller).

    Each piece is hashed as it arrives, on the loop: about 0.2 ms for the largest (256 KiB
    at ~1.4 GB/s), so the loop stays live. Hashing in a thread (hashlib frees the GIL) cost
    more CPU than it freed here, GIL hand-offs included: 100 x 8 MiB took 1.76 s of CPU in
    all with 1 MiB blocks in a thread, 1.45 s inline (bench/RESULTS.md, 2026-12-06 23:00).
    """
    digest = hashlib.sha256()
    async with objects.open(key) as body:
        async for chunk in body.chunks():
            digest.update(chunk)
        info = body.info
        return Hashed(
            digest.hexdigest(), body.received, unquote_etag(info.etag), info.last_modified
        )


@dataclass(frozen=True, slots=True)
class Work:
    """An object to hash: the listing's entry and its index row (None: no row)."""

    listed: Listed | None  # None for a failed item of an earlier run (not listed now)
    row: IndexRow | None


def unchanged(row: IndexRow | None, listed: Listed, columns: frozenset[str]) -> bool:
    """The skip rule: a row with a hash whose size and ETag, where the table keeps them,
    equal the listing's."""
    if row is None or not row.content_hash:
        return False
    if "size" in columns and row.size != listed.size:
        return False
    return not ("etag" in columns and row.etag != listed.etag)


def already_indexed(row: IndexRow | None, hashed: Hashed, columns: frozenset[str]) -> bool:
    """The row holds this hash already, and the size and ETag where the table keeps them."""
    if row is None or row.content_hash != hashed.sha256:
        return False
    if "size" in columns and row.size != hashed.size:
        return False
    return not ("etag" in columns and row.etag != hashed.etag)


def older(listed: Listed, since: datetime | None) -> bool:
    """`--since T`: the object was last modified (to the second) before T."""
    modified = listed.last_modified
    return since is not None and modified is not None and modified.replace(microsecond=0) < since


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class _Pages:
    """The listing page by page, with each page's orphans, in ascending key order."""

    def __init__(self, pipeline: HashIndexPipeline, stages: Stages) -> None:
        self._pipeline = pipeline
        self._stages = stages
        self._ended = False
        plan = pipeline.plan
        self._budget = (
            None if plan.limit_objects is None else plan.limit_objects - plan.objects_before
        )
        # --limit-objects reads a few objects at a time (the batch API: 50): no page ahead
        self.listing = ListingAhead(
            self._list,
            self._stride_keys,
            self._count_rows,
            ahead=1 if plan.limit_objects is not None else AHEAD,
        )

    @property
    def concurrency(self) -> int:
        """The fetches the engine allows now (it may change during the run)."""
        return self._stages.concurrency

    async def page(self, after: str | None) -> Sequence[Group]:
        pipeline = self._pipeline
        plan = pipeline.plan
        if self._ended:
            return []
        start = after if after is not None else plan.start_after
        if self._budget is not None and self._budget <= 0:
            self._ended = True  # bounded by --limit-objects: the next run starts after here
            return []
        listed = await self.listing.page(start)
        objects = listed.objects
        last_page = not listed.truncated
        if self._budget is not None:
            objects, cut = self._within_budget(objects)
            last_page = last_page and not cut
        # The rows of the same key range; the last page's range runs to the prefix's end.
        upto = None if last_page else objects[-1].key if objects else start
        rows = await self._rows(start, upto)
        if len(rows) > ROWS_PAGE:
            # A long run of rows with no object (orphans): the page ends at the last row
            # taken, and the listing goes on after it, so memory stays bounded.
            bound = list(rows)[ROWS_PAGE - 1]
            rows = {key: row for key, row in rows.items() if key <= bound}
            objects = [listed for listed in objects if listed.key <= bound]
            last_page = False
        if self._budget is not None:
            self._budget -= sum(1 for listed in objects if listed.key not in plan.done_after)
        if last_page:
            self._ended = True
            pipeline.listing_done = True
        groups = [self._object(listed, rows.get(listed.key)) for listed in objects]
        keys = {listed.key for listed in objects}
        groups += [
            Group(key, [Item(key, MEMBER, key, preset=_AS_ORPHAN)])
            for key in rows
            if key not in keys
        ]
        groups.sort(key=lambda group: group.key)
        return groups

    def _within_budget(self, objects: list[Listed]) -> tuple[list[Listed], bool]:
        """The objects --limit-objects leaves this run (those finished before a resume cost
        nothing), and whether it cut the page short."""
        done = self._pipeline.plan.done_after
        left = self._budget or 0
        for n, listed in enumerate(objects):
            if listed.key in done:
                continue
            if left <= 0:
                return objects[:n], True
            left -= 1
        return objects, False

    async def _list(self, start: str | None) -> ListedPage:
        pipeline = self._pipeline
        return await self._spine(
            lambda: pipeline.bucket.list_page(pipeline.plan.prefix, start_after=start),
            f"listing after {start!r}",
        )

    async def _rows(self, start: str | None, upto: str | None) -> dict[str, IndexRow]:
        """The index rows of a page's key range (a first few of a long run of them), retried
        as the listing is while the index is busy."""
        pipeline = self._pipeline
        return await self._spine(
            lambda: pipeline.index.rows(start, upto, pipeline.plan.prefix, limit=ROWS_PAGE + 1),
            f"index rows after {start!r}",
        )

    async def _spine(self, call: Callable[[], Awaitable[_T]], what: str) -> _T:
        """A page's listing or index rows: the run's spine, without which nothing is known.
        Retried under the policy; when the attempts run out, the run stops, resumable."""
        try:
            value, _ = await self._stages.stage_outside_items(call, Slot.IO)
        except StageFailed as failed:
            raise FatalError(
                f"{what} failed {failed.attempts} times, last: {failed.error.message}",
                code=failed.error.code,
            ) from None
        return value

    async def _stride_keys(self, after: str | None, count: int, every: int) -> list[str]:
        index = self._pipeline.index
        return await index.stride_keys(after, self._pipeline.plan.prefix, every=every, count=count)

    async def _count_rows(self, after: str | None, upto: str) -> int:
        return await self._pipeline.index.count_rows(after, upto, self._pipeline.plan.prefix)

    def _object(self, listed: Listed, row: IndexRow | None) -> Group:
        preset = self._preset(listed, row)
        payload = Work(listed, row) if preset is None else None  # what process() reads
        return Group(listed.key, [Item(listed.key, MEMBER, listed.key, payload, preset=preset)])

    def _preset(self, listed: Listed, row: IndexRow | None) -> Result | None:
        """How the object ends when the listing and its row say so without a GET."""
        pipeline = self._pipeline
        plan = pipeline.plan
        if older(listed, plan.since):
            return _AS_OLDER
        if plan.verify:
            # nothing stored to verify
            return _AS_SKIPPED if row is None or not row.content_hash else None
        if unchanged(row, listed, pipeline.index.columns):
            return _AS_SKIPPED
        if self._stages.dry_run:
            return _AS_WOULD_UPDATE
        return None


class HashIndexPipeline:
    """GET -> SHA-256 -> upsert, for every object of a bucket listing."""

    name = NAME
    members: tuple[int, ...] = (MEMBER,)
    # The bucket's GETs (the origin's slot). Its listings and index reads (the IO slot) are
    # the run's spine: their attempts running out stop it already (_spine).
    breakers: Mapping[Slot, str] = MappingProxyType({Slot.ORIGIN: "origin"})

    def __init__(self, plan: HashPlan, *, bucket: Listing, index: IndexTable) -> None:
        self.plan = plan
        self.bucket = bucket
        self.index = index
        self.objects = bucket.objects()
        self.listing_done = False
        self._pending: list[Upsert] = []
        self._pending_since = 0.0
        self._flush_lock = asyncio.Lock()
        # a key redone after a crash is listed once
        self._mismatches: list[Mismatch] = list({m.key: m for m in plan.mismatches}.values())
        self._mismatch_keys = {m.key for m in self._mismatches}
        self._mismatches_written = -1 if plan.mismatch_file else len(self._mismatches)
        self._flusher: asyncio.Task[None] | None = None
        self._flush_failures = 0
        self._pages: _Pages | None = None

    # -- the source -------------------------------------------------------------------------

    def source(self, stages: Stages) -> OrderedSource:
        if self._flusher is None and not stages.dry_run:
            self._flusher = asyncio.create_task(self._flush_every_second(), name="index-flush")
        self._pages = _Pages(self, stages)
        return self._pages

    def carryover(self, failed: FailedItem) -> Item:
        return Item(failed.group, MEMBER, failed.key, payload=Work(None, None), carryover=True)

    # -- one object -------------------------------------------------------------------------

    async def process(self, item: Item, stages: Stages) -> Result:
        work: Work = item.payload
        row = work.row
        if work.listed is None:  # a failed item of an earlier run: its row as it is now
            rows = await self.index.rows(None, item.key, item.key)
            row = rows.get(item.key)
        # Verify compares a stored hash; an object without one (a failed item of an earlier
        # hash run, retried by a verify run) is hashed and written as a hash run would.
        stored = row.content_hash.lower() if self.plan.verify and row and row.content_hash else ""
        try:
            hashed, attempts = await stages.stage(lambda: self._hash(item.key), Slot.ORIGIN)
        except NotFoundError:  # deleted since the listing: nothing to index
            return Result("skipped", SKIPPED, attempts=1)
        except StageFailed as failed:
            return Result("failed", FAILED, attempts=failed.attempts, error=failed.error)
        nbytes = hashed.size
        if stored:
            if stored == hashed.sha256:
                return Result("verified", VERIFIED, nbytes=nbytes, attempts=attempts)
            assert row is not None and row.content_hash is not None
            if item.key not in self._mismatch_keys and len(self._mismatches) < MAX_MISMATCHES_KEPT:
                self._mismatch_keys.add(item.key)
                self._mismatches.append(Mismatch(item.key, row.content_hash, hashed.sha256))
            if self.plan.repair:
                await self._upsert(item.key, hashed)
                return Result("mismatched", REPAIRED, nbytes=nbytes, attempts=attempts)
            return Result("mismatched", MISMATCHED, nbytes=nbytes, attempts=attempts)
        if already_indexed(row, hashed, self.index.columns):
            return Result(
                "skipped", SKIPPED, nbytes=nbytes, attempts=attempts
            )  # hashed, and it was right already
        await self._upsert(item.key, hashed)
        return Result("updated", UPDATED, nbytes=nbytes, attempts=attempts)

    async def _hash(self, key: str) -> Hashed:
        return await hash_object(self.objects, key)

    # -- the index writes -------------------------------------------------------------------

    async def _upsert(self, key: str, hashed: Hashed) -> None:
        """Queue the row; the batch lands at `batch_rows`, after a second, or before a checkpoint."""
        if not self._pending:
            self._pending_since = time.monotonic()
        self._pending.append(hashed.upsert(key))
        concurrency = self._pages.concurrency if self._pages is not None else 0
        if len(self._pending) >= min(self.plan.batch_rows, batch_rows_at(concurrency)):
            with contextlib.suppress(Exception):  # kept pending; the checkpoint tries again
                await self._flush()

    async def _flush(self) -> None:
        async with self._flush_lock:
            batch, self._pending = self._pending, []
            if not batch:
                return
            try:
                await self.index.upsert(batch)
            except BaseException as exc:
                self._pending[:0] = batch
                self._flush_failures += 1
                if self._flush_failures == 1:
                    log.warning(
                        "index upsert failed (kept; tried again at the checkpoint): %s", exc
                    )
                if isinstance(exc, BackfillError) and not exc.fatal:
                    # still locked after the busy timeout: the run stops at its checkpoint
                    raise FatalError(exc.message, code=exc.code) from None
                raise

    async def _flush_every_second(self) -> None:
        while True:
            await asyncio.sleep(BATCH_SECONDS / 4)
            if self._pending and time.monotonic() - self._pending_since >= BATCH_SECONDS:
                with contextlib.suppress(Exception):
                    await self._flush()

    async def before_commit(self) -> None:
        """The batch lands before the checkpoint passes it; the mismatch list is written."""
        await self._flush()
        if self.plan.mismatch_file and len(self._mismatches) != self._mismatches_written:
            await asyncio.to_thread(self._write_mismatches, list(self._mismatches))
            self._mismatches_written = len(self._mismatches)

    def _write_mismatches(self, mismatches: list[Mismatch]) -> None:
        path = self.plan.mismatch_file
        assert path is not None
        partial = f"{path}.partial"
        with open(partial, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(("key", "stored", "actual"))
            for mismatch in mismatches:
                writer.writerow((mismatch.key, mismatch.stored, mismatch.actual))
        os.replace(partial, path)

    async def close(self) -> None:
        if self._pages is not None:
            await self._pages.listing.close()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher

    # -- what the engine shows --------------------------------------------------------------

    def problems(self, counters: Any) -> int:
        """Mismatches found by a verify run make its exit code 1, as failed items do (those
        of retried failed items too, which the run's counters leave out)."""
        return max(int(getattr(counters, "mismatched", 0)), len(self._mismatches))

    def checkpoint(self, position: Position) -> KeyCheckpoint:
        return KeyCheckpoint.at(
            position, listing_done=self.listing_done, mismatches=tuple(self._mismatches)
        )

    def checkpoint_json(self, position: Position) -> dict[str, Any]:
        return self.checkpoint(position).to_json()

    def snapshot(self, progress: Progress) -> HashSnapshot:
        counters = progress.counters
        assert isinstance(counters, HashCounters)
        return HashSnapshot(
            job=progress.job,
            run_id=progress.run_id,
            state=progress.state.value,
            dry_run=progress.dry_run,
            started_at=progress.started_at,
            last_update_at=progress.last_update_at,
            concurrency=progress.concurrency,
            counters=counters,
            checkpoint=self.checkpoint(progress.position),
            mode=self.plan.mode,
            since=self.plan.since_text,
            live=progress.live,
            held=progress.held,
            in_flight=progress.in_flight,
            fetches_in_flight=progress.slots_in_use,
            items_per_second=progress.items_per_second,
            bytes_per_second=progress.bytes_per_second,
            eta_seconds=None,
            last_errors=dict(progress.last_errors),
            bucket=self.bucket.name,
            prefix=self.plan.prefix,
            endpoint=self.bucket.endpoint_url or "",
            index=self.plan.index_label,
            message=progress.message,
            checkpoint_saved_at=progress.checkpoint_saved_at,
            checkpoint_saved_sku=progress.checkpoint_saved_group,
        )
