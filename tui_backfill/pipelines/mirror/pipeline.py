"""The image backfill as a pipeline: for each SKU of the run's snapshot and each angle, know
whether the object exists, fetch it from the origin under the politeness cap, put it.

Existence comes from a listing of bounded key ranges (one request per 1,000 keys, looked up
exactly, never merged as sorted streams) or a HEAD per item. A SKU that breaks the key rule is
never fetched or written (`bad_sku`); a key over S3's limit is `bad_key`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

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
from tui_backfill.core.store import RunStore
from tui_backfill.core.watermark import Position
from tui_backfill.outcomes import BackfillError, NotFoundError
from tui_backfill.pipelines.config import ExistsCheck
from tui_backfill.pipelines.mirror.checkpoint import Checkpoint
from tui_backfill.pipelines.mirror.snapshot import StatusSnapshot
from tui_backfill.seams.keys import printable, sku_problem
from tui_backfill.seams.origins import Fetched, Origin
from tui_backfill.seams.templates import MAX_KEY_BYTES, Template

NAME = "mirror"
PAGE_SKUS = 500

# What each way an item ends adds to the counters (Result.counts).
FOUND = ("found_at_start", "skipped_exists")  # there before we looked
SKIPPED_ON_PUT = ("attempted_downloads", "skipped_exists")  # a conditional PUT met it (412)
UPLOADED = ("attempted_downloads", "uploaded")
NO_REMOTE = ("attempted_downloads", "no_remote")
PLANNED = ("would_fetch",)  # dry run: missing, would be fetched
ATTEMPTED = ("attempted_downloads",)


class Destination(Protocol):
    """What the pipeline needs of the bucket (tui_backfill.seams.bucket.Bucket)."""

    name: str
    endpoint_url: str | None

    async def exists(self, key: str) -> bool: ...

    async def put(
        self, key: str, body: bytes, content_type: str, *, if_none_match: bool
    ) -> bool: ...

    def list_keys(
        self, prefix: str, *, start_after: str | None = None, stop_after: str | None = None
    ) -> AsyncIterator[list[str]]: ...


@dataclass(frozen=True, slots=True)
class MirrorPlan:
    """The image job's own facts of one run."""

    run_id: int
    angles: tuple[int, ...]
    angles_spec: str
    key_template: Template
    only_missing: bool
    exists_check: ExistsCheck
    origin_label: str = ""


def _bad_sku(sku: str) -> Result | None:
    """A SKU that breaks the rule of tui_backfill.seams.keys: its items are never
    looked up, fetched or written; each is a failed item `bad_sku` naming the reason."""
    problem = sku_problem(sku)
    if problem is None:
        return None
    message = f"SKU {printable(sku)} {problem}; not fetched, not written"
    return Result("failed", error=BackfillError(message, code="bad_sku"), count_error=True)


def _bad_key(key: str) -> Result | None:
    """A key over S3's limit: a failed item `bad_key`."""
    size = len(key.encode())
    if size <= MAX_KEY_BYTES:
        return None
    message = f"key is {size:,} bytes, over S3's limit of {MAX_KEY_BYTES:,}; not fetched"
    return Result("failed", error=BackfillError(message, code="bad_key"), count_error=True)


class _SkuPages:
    """The run's SKU snapshot page by page, each with what a listing found in the bucket."""

    def __init__(self, pipeline: MirrorPipeline, stages: Stages) -> None:
        self._pipeline = pipeline
        self._stages = stages

    async def page(self, after: str | None) -> Sequence[Group]:
        mirror = self._pipeline
        plan = mirror.plan
        skus = await mirror.store.groups_page(plan.run_id, after, PAGE_SKUS)
        existing = await self._existing(skus) if skus else None
        groups = []
        for sku in skus:
            bad = _bad_sku(sku)
            items = []
            for angle in plan.angles:
                key = plan.key_template.render(sku, angle)
                item = Item(sku, angle, key, payload=existing is None)  # payload: HEAD it
                if bad is not None:  # never looked up, fetched or written
                    item.preset = bad
                elif existing is not None and key in existing:
                    item.preset = Result("skippedExists", FOUND)
                elif existing is not None and self._stages.dry_run:
                    # known missing: planned in SKU order, with no task (a plan file's order)
                    item.preset = _bad_key(key) or Result("planned", PLANNED)
                items.append(item)
            groups.append(Group(sku, items))
        return groups

    async def _existing(self, skus: list[str]) -> set[str] | None:
        """The keys of this page's SKUs that are in the bucket, from a listing of their key
        range; None when a HEAD per item must tell instead."""
        plan = self._pipeline.plan
        if not plan.only_missing or plan.exists_check is not ExistsCheck.LIST:
            return None
        template = plan.key_template
        if not template.sku_first:
            return None  # keys do not sort near their SKU: HEAD per item instead
        prefix = template.literal_prefix
        stop_after = prefix + max(sku + "\U0010ffff" for sku in skus)
        bucket = self._pipeline.bucket

        async def listing() -> set[str]:
            existing: set[str] = set()
            async for keys in bucket.list_keys(
                prefix, start_after=prefix + skus[0], stop_after=stop_after
            ):
                existing.update(keys)
            return existing

        # Retried and counted like any S3 call; a listing that keeps failing leaves the page
        # to a HEAD per item.
        try:
            existing, _ = await self._stages.stage_outside_items(listing, Slot.IO)
        except StageFailed:
            return None
        return existing


class MirrorPipeline:
    """Fetch -> put, for SKUs x angles."""

    name = NAME
    # An origin or a bucket that goes away mid-run stops it; its items stay unfinished.
    breakers: Mapping[Slot, str] = MappingProxyType({Slot.ORIGIN: "origin", Slot.IO: "destination"})

    def __init__(
        self,
        plan: MirrorPlan,
        *,
        store: RunStore,
        bucket: Destination,
        origin: Origin | None,
    ) -> None:
        self.plan = plan
        self.members = plan.angles
        self.store = store
        self.bucket = bucket
        self.origin = origin

    def source(self, stages: Stages) -> OrderedSource:
        return _SkuPages(self, stages)

    def carryover(self, failed: FailedItem) -> Item:
        key = self.plan.key_template.render(failed.group, failed.member)
        return Item(failed.group, failed.member, key, payload=True, carryover=True)

    def checkpoint_json(self, position: Position) -> dict[str, Any]:
        return Checkpoint.at(position).to_json()

    async def before_commit(self) -> None:
        """Nothing to land: each item's PUT is done when the item is."""

    def problems(self, counters: Any) -> int:
        """None beyond failed items."""
        return 0

    async def process(self, item: Item, stages: Stages) -> Result:
        """Existence, fetch, put. Returns how the item ended; raises when it did not end."""
        plan = self.plan
        # The scan already kept unusable SKUs from being dispatched; carryover items come from
        # the failed-items table, not the scan, so their SKUs are checked here.
        bad = (_bad_sku(item.group) if item.carryover else None) or _bad_key(item.key)
        if bad is not None:
            return bad
        if plan.only_missing and (
            item.payload or plan.exists_check is ExistsCheck.HEAD or not plan.key_template.sku_first
        ):
            try:
                exists, _ = await stages.stage(lambda: self.bucket.exists(item.key), Slot.IO)
            except StageFailed as failed:
                return Result("failed", attempts=failed.attempts, error=failed.error)
            if exists:
                return Result("skippedExists", FOUND)
        if stages.dry_run:
            return Result("planned", PLANNED)
        origin = self.origin
        assert origin is not None
        try:
            fetched, attempts = await stages.stage(
                lambda: origin.fetch(item.group, item.member), Slot.ORIGIN
            )
        except NotFoundError:
            return Result("noRemote", NO_REMOTE, attempts=1, absent=True)
        except StageFailed as failed:
            return Result("failed", ATTEMPTED, attempts=failed.attempts, error=failed.error)
        try:
            written, _ = await stages.stage(lambda: self._put(item, fetched), Slot.IO)
        except StageFailed as failed:
            return Result("failed", ATTEMPTED, attempts=failed.attempts, error=failed.error)
        if not written:  # a conditional PUT found the object there (412)
            return Result("skippedExists", SKIPPED_ON_PUT, attempts=attempts)
        return Result("uploaded", UPLOADED, attempts=attempts, nbytes=len(fetched.body))

    async def _put(self, item: Item, fetched: Fetched) -> bool:
        return await self.bucket.put(
            item.key, fetched.body, fetched.content_type, if_none_match=self.plan.only_missing
        )

    def snapshot(self, progress: Progress) -> StatusSnapshot:
        plan = self.plan
        return StatusSnapshot(
            job=progress.job,
            run_id=progress.run_id,
            state=progress.state.value,
            dry_run=progress.dry_run,
            started_at=progress.started_at,
            last_update_at=progress.last_update_at,
            angles_planned=plan.angles_spec,
            angles_per_sku=len(plan.angles),
            concurrency=progress.concurrency,
            planned_skus=progress.planned_groups,
            counters=progress.counters,  # type: ignore[arg-type]
            checkpoint=Checkpoint.at(progress.position),
            in_flight=progress.in_flight,
            fetches_in_flight=progress.slots_in_use,
            items_per_second=progress.items_per_second,
            skus_per_second=progress.groups_per_second,
            bytes_per_second=progress.bytes_per_second,
            eta_seconds=progress.eta_seconds,
            last_errors=dict(progress.last_errors),
            bucket=self.bucket.name,
            endpoint=self.bucket.endpoint_url or "",
            origin=plan.origin_label,
            message=progress.message,
            checkpoint_saved_at=progress.checkpoint_saved_at,
            checkpoint_saved_sku=progress.checkpoint_saved_group,
            live=progress.live,
            held=progress.held,
        )
