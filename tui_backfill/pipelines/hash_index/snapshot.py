"""The hash index's counters and status snapshot (DESIGN.md, "Content-hash index": the core
keys plus `scannedObjects`, `updated`, `skipped`, `bytesHashed`, `orphans`, and in verify
mode `verified`, `mismatched`).

At the end of a run `scannedObjects = updated + skipped + failedItems`, in verify mode
`scannedObjects = verified + mismatched + skipped + failedItems`, and in a dry run
`scannedObjects = wouldUpdate + skipped + failedItems`. Orphans (index rows whose object is
not in the bucket) are not objects: they are counted beside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from tui_backfill.core.counters import CounterSet
from tui_backfill.core.snapshot import fmt_bytes
from tui_backfill.pipelines.hash_index.checkpoint import KeyCheckpoint, Mismatch

MISMATCHES_SHOWN = 100  # in the snapshot; the checkpoint and --mismatch-file keep up to 10,000


@dataclass(slots=True, kw_only=True)
class HashCounters(CounterSet):
    GROUPS: ClassVar[str] = ""  # keys of the listing include orphans: objects are counted apart
    BYTES: ClassVar[str] = "bytes_hashed"

    scanned_objects: int = 0
    updated: int = 0  # index rows written (a new or changed hash, size/ETag refreshed, repaired)
    skipped: int = 0  # not downloaded: unchanged by the skip rule, or older than --since
    skipped_older: int = 0  # of `skipped`: LastModified before --since
    bytes_hashed: int = 0
    orphans: int = 0  # index rows under the prefix with no object
    verified: int = 0  # verify: the stored hash is the object's
    mismatched: int = 0  # verify: it is not
    would_update: int = 0  # dry run: rows a run would write


@dataclass(frozen=True, slots=True)
class HashSnapshot:
    """Everything that shows a hash-index run renders this; `to_json` spells the keys."""

    job: str
    run_id: int
    state: str
    dry_run: bool
    started_at: str
    last_update_at: str
    concurrency: int
    counters: HashCounters
    checkpoint: KeyCheckpoint
    mode: str = "hash"  # hash, verify, repair
    since: str | None = None
    live: bool = True
    held: bool = False  # pausing or paused by a hold (resume releases it), not by a stop
    in_flight: int = 0
    fetches_in_flight: int = 0  # object GETs now (at most `concurrency`)
    items_per_second: float = 0.0
    bytes_per_second: float = 0.0
    eta_seconds: float | None = None
    last_errors: dict[str, str] = field(default_factory=dict)
    bucket: str = ""
    prefix: str = ""
    endpoint: str = ""
    index: str = ""  # the index file and table, as `path:table`
    message: str = ""
    checkpoint_saved_at: str = ""
    checkpoint_saved_sku: str | None = None  # the key the last saved checkpoint reached

    pipeline: ClassVar[str] = "hash-index"

    @property
    def verify(self) -> bool:
        return self.mode != "hash"

    def counter_rows(self) -> list[list[tuple[str, str]]]:
        """The console's counters panel: rows of three (label, value) cells."""
        c = self.counters
        if self.verify:
            done, found, third = (
                ("verified", f"{c.verified:,}"),
                ("mismatched", f"{c.mismatched:,}"),
                ("orphans", f"{c.orphans:,}"),
            )
        else:
            done = (
                ("wouldUpdate", f"{c.would_update:,}")
                if self.dry_run
                else ("updated", f"{c.updated:,}")
            )
            found, third = ("orphans", f"{c.orphans:,}"), ("skippedOlder", f"{c.skipped_older:,}")
        return [
            [
                ("scannedObjects", f"{c.scanned_objects:,}"),
                done,
                ("errorsTotal", f"{c.errors_total:,}"),
            ],
            [("skipped", f"{c.skipped:,}"), found, ("failedItems", f"{c.failed_items:,}")],
            [
                ("bytesHashed", fmt_bytes(c.bytes_hashed)),
                third,
                # the cap (`concurrency`) bounds the object GETs, not the items in flight
                ("GETs", f"{self.fetches_in_flight} of {self.concurrency}"),
            ],
            [
                ("mode", self.mode + (f" ≥{self.since}" if self.since else "")),
                ("itemsInFlight", f"{self.in_flight}"),
            ],
        ]

    def plan_json(self) -> dict[str, int]:
        """A dry run's plan: how many rows a run would write."""
        c = self.counters
        return {
            "objects": c.scanned_objects,
            "wouldUpdate": c.would_update,
            "skipped": c.skipped,
            "orphans": c.orphans,
        }

    def to_json(self) -> dict[str, Any]:
        c = self.counters
        data: dict[str, Any] = {
            "job": self.job,
            "runId": self.run_id,
            "pipeline": self.pipeline,
            "state": self.state,
            "live": self.live,
            "held": self.held,
            "dryRun": self.dry_run,
            "startedAt": self.started_at,
            "lastUpdateAt": self.last_update_at,
            "mode": self.mode,
            "since": self.since,
            "scannedObjects": c.scanned_objects,
            "updated": c.updated,
            "skipped": c.skipped,
            "skippedOlder": c.skipped_older,
            "bytesHashed": c.bytes_hashed,
            "orphans": c.orphans,
            "errorsTotal": c.errors_total,
            "errorsByCode": dict(sorted(c.errors_by_code.items(), key=lambda kv: -kv[1])),
            "lastErrors": dict(self.last_errors),
            "concurrency": self.concurrency,
            "checkpoint": self.checkpoint.shown(),
            "failedItems": c.failed_items,
            "inFlight": self.in_flight,
            "fetchesInFlight": self.fetches_in_flight,
            "itemsPerSecond": round(self.items_per_second, 2),
            "bytesPerSecond": round(self.bytes_per_second, 1),
            "etaSeconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "carryover": {
                "planned": c.carryover_planned,
                "done": c.carryover_done,
                "failed": c.carryover_failed,
            },
            "bucket": self.bucket,
            "prefix": self.prefix,
            "endpoint": self.endpoint,
            "index": self.index,
            "message": self.message,
            "checkpointSavedAt": self.checkpoint_saved_at,
            "checkpointSavedKey": self.checkpoint_saved_sku,
        }
        if self.verify:
            data["verified"] = c.verified
            data["mismatched"] = c.mismatched
            data["mismatches"] = [
                m.to_json() for m in self.checkpoint.mismatches[:MISMATCHES_SHOWN]
            ]
        if self.dry_run:
            data["wouldUpdate"] = c.would_update
        return data


def snapshot_from_json(data: dict[str, Any]) -> HashSnapshot:
    """The inverse of `HashSnapshot.to_json` (for front ends reading a published snapshot)."""
    carryover = data.get("carryover") or {}
    counters = HashCounters(
        scanned_objects=int(data.get("scannedObjects") or 0),
        updated=int(data.get("updated") or 0),
        skipped=int(data.get("skipped") or 0),
        skipped_older=int(data.get("skippedOlder") or 0),
        bytes_hashed=int(data.get("bytesHashed") or 0),
        orphans=int(data.get("orphans") or 0),
        verified=int(data.get("verified") or 0),
        mismatched=int(data.get("mismatched") or 0),
        would_update=int(data.get("wouldUpdate") or 0),
        failed_items=int(data.get("failedItems") or 0),
        errors_by_code={str(k): int(v) for k, v in (data.get("errorsByCode") or {}).items()},
        carryover_planned=int(carryover.get("planned") or 0),
        carryover_done=int(carryover.get("done") or 0),
        carryover_failed=int(carryover.get("failed") or 0),
    )
    checkpoint = KeyCheckpoint.from_json(data.get("checkpoint") or {})
    mismatches = tuple(Mismatch.from_json(m) for m in data.get("mismatches") or ())
    return HashSnapshot(
        job=str(data.get("job") or ""),
        run_id=int(data.get("runId") or 0),
        state=str(data.get("state") or "running"),
        dry_run=bool(data.get("dryRun")),
        started_at=str(data.get("startedAt") or ""),
        last_update_at=str(data.get("lastUpdateAt") or ""),
        concurrency=int(data.get("concurrency") or 0),
        counters=counters,
        checkpoint=KeyCheckpoint(checkpoint.last_key, checkpoint.done_after, mismatches=mismatches),
        mode=str(data.get("mode") or "hash"),
        since=data.get("since"),
        live=bool(data.get("live", True)),
        held=bool(data.get("held", False)),
        in_flight=int(data.get("inFlight") or 0),
        fetches_in_flight=int(data.get("fetchesInFlight") or 0),
        items_per_second=float(data.get("itemsPerSecond") or 0.0),
        bytes_per_second=float(data.get("bytesPerSecond") or 0.0),
        eta_seconds=data.get("etaSeconds"),
        last_errors={str(k): str(v) for k, v in (data.get("lastErrors") or {}).items()},
        bucket=str(data.get("bucket") or ""),
        prefix=str(data.get("prefix") or ""),
        endpoint=str(data.get("endpoint") or ""),
        index=str(data.get("index") or ""),
        message=str(data.get("message") or ""),
        checkpoint_saved_at=str(data.get("checkpointSavedAt") or ""),
        checkpoint_saved_sku=data.get("checkpointSavedKey"),
    )
