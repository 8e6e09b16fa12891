"""The image job's counters and status snapshot: the brief's exact keys.

`Counters` is what gets committed with the checkpoint; `StatusSnapshot` is the immutable view
the engine publishes a few times per second (built by the pipeline from the engine's
`Progress`). JSON with the brief's keys is produced here, at the edge, and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from tui_backfill.core.counters import CounterSet
from tui_backfill.core.records import FailedItem
from tui_backfill.pipelines.mirror.checkpoint import Checkpoint


@dataclass(slots=True, kw_only=True)
class Counters(CounterSet):
    """The image job's outcome counters (with the core's failed items, errors and carryover)."""

    GROUPS: ClassVar[str] = "scanned_skus"
    BYTES: ClassVar[str] = "bytes_uploaded"

    scanned_skus: int = 0
    attempted_downloads: int = 0
    uploaded: int = 0
    skipped_exists: int = 0
    no_remote: int = 0
    bytes_uploaded: int = 0
    found_at_start: int = 0  # existence split: present before we wrote anything
    would_fetch: int = 0  # dry run: missing items the run would fetch


@dataclass(frozen=True, slots=True)
class StatusSnapshot:
    """Everything that shows progress renders this. `to_json` spells the brief's keys."""

    job: str
    run_id: int
    state: str
    dry_run: bool
    started_at: str
    last_update_at: str
    angles_planned: str
    angles_per_sku: int
    concurrency: int
    planned_skus: int
    counters: Counters
    checkpoint: Checkpoint
    live: bool = True
    held: bool = False  # pausing or paused by a hold (resume releases it), not by a stop
    in_flight: int = 0  # items being worked on (existence, fetch, put)
    fetches_in_flight: int = 0  # origin requests now (at most `concurrency`)
    items_per_second: float = 0.0
    skus_per_second: float = 0.0
    bytes_per_second: float = 0.0
    eta_seconds: float | None = None
    last_errors: dict[str, str] = field(default_factory=dict)
    bucket: str = ""
    endpoint: str = ""
    origin: str = ""
    message: str = ""
    checkpoint_saved_at: str = ""  # when counters + checkpoint were last committed
    checkpoint_saved_sku: str | None = None

    @property
    def planned_items(self) -> int:
        return self.planned_skus * self.angles_per_sku

    @property
    def eta_skus_remaining(self) -> int:
        return max(self.planned_skus - self.counters.scanned_skus, 0)

    def counter_rows(self) -> list[list[tuple[str, str]]]:
        """The console's counters panel: rows of three (label, value) cells, the brief's keys."""
        c = self.counters
        return [
            [
                ("scannedSkus", f"{c.scanned_skus:,}"),
                ("uploaded", f"{c.uploaded:,}"),
                ("errorsTotal", f"{c.errors_total:,}"),
            ],
            [
                ("plannedItems", f"{self.planned_items:,}"),
                ("skippedExists", f"{c.skipped_exists:,}"),
                ("failedItems", f"{c.failed_items:,}"),
            ],
            [
                ("attemptedDownloads", f"{c.attempted_downloads:,}"),
                ("noRemote", f"{c.no_remote:,}"),
                # the cap (`concurrency`) bounds the origin fetches, not the items in flight
                ("fetching", f"{self.fetches_in_flight} of {self.concurrency}"),
            ],
            [
                ("anglesPlanned", self.angles_planned),
                ("etaSkusRemaining", f"{self.eta_skus_remaining:,}"),
                ("itemsInFlight", f"{self.in_flight}"),
            ],
        ]

    def plan_json(self) -> dict[str, int]:
        """A dry run's plan: the items planned, and which exist or are missing."""
        c = self.counters
        return {
            "skus": self.planned_skus,
            "items": self.planned_items,
            "existing": c.found_at_start,
            "missing": c.would_fetch,
        }

    def to_json(self) -> dict[str, Any]:
        c = self.counters
        # Items of the plan not in the bucket now: not done yet, noRemote or failed.
        still_missing = max(self.planned_items - c.uploaded - c.skipped_exists, 0)
        return {
            "job": self.job,
            "runId": self.run_id,
            "state": self.state,
            "live": self.live,
            "held": self.held,
            "dryRun": self.dry_run,
            "startedAt": self.started_at,
            "lastUpdateAt": self.last_update_at,
            "scannedSkus": c.scanned_skus,
            "attemptedDownloads": c.attempted_downloads,
            "uploaded": c.uploaded,
            "skippedExists": c.skipped_exists,
            "noRemote": c.no_remote,
            "errorsTotal": c.errors_total,
            "errorsByCode": dict(sorted(c.errors_by_code.items(), key=lambda kv: -kv[1])),
            "lastErrors": dict(self.last_errors),
            "anglesPlanned": self.angles_planned,
            "concurrency": self.concurrency,
            "checkpoint": self.checkpoint.to_json(),
            "etaSkusRemaining": self.eta_skus_remaining,
            "etaSeconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
            "plannedSkus": self.planned_skus,
            "plannedItems": self.planned_items,
            "failedItems": c.failed_items,
            "inFlight": self.in_flight,
            "fetchesInFlight": self.fetches_in_flight,
            "bytesUploaded": c.bytes_uploaded,
            "itemsPerSecond": round(self.items_per_second, 2),
            "skusPerSecond": round(self.skus_per_second, 2),
            "bytesPerSecond": round(self.bytes_per_second, 1),
            "wouldFetch": c.would_fetch,
            "existence": {
                "foundAtStart": c.found_at_start,
                "written": c.uploaded,
                "stillMissing": still_missing,
            },
            "carryover": {
                "planned": c.carryover_planned,
                "done": c.carryover_done,
                "failed": c.carryover_failed,
            },
            "bucket": self.bucket,
            "endpoint": self.endpoint,
            "origin": self.origin,
            "message": self.message,
            "checkpointSavedAt": self.checkpoint_saved_at,
            "checkpointSavedSku": self.checkpoint_saved_sku,
        }


def snapshot_from_json(data: dict[str, Any]) -> StatusSnapshot:
    """The inverse of `StatusSnapshot.to_json` (for front ends reading a published snapshot)."""
    angles = str(data.get("anglesPlanned") or "")
    planned_skus = int(data.get("plannedSkus") or 0)
    planned_items = int(data.get("plannedItems") or 0)
    existence = data.get("existence") or {}
    carryover = data.get("carryover") or {}
    counters = Counters(
        scanned_skus=int(data.get("scannedSkus") or 0),
        attempted_downloads=int(data.get("attemptedDownloads") or 0),
        uploaded=int(data.get("uploaded") or 0),
        skipped_exists=int(data.get("skippedExists") or 0),
        no_remote=int(data.get("noRemote") or 0),
        failed_items=int(data.get("failedItems") or 0),
        errors_by_code={str(k): int(v) for k, v in (data.get("errorsByCode") or {}).items()},
        bytes_uploaded=int(data.get("bytesUploaded") or 0),
        found_at_start=int(existence.get("foundAtStart") or 0),
        would_fetch=int(data.get("wouldFetch") or 0),
        carryover_planned=int(carryover.get("planned") or 0),
        carryover_done=int(carryover.get("done") or 0),
        carryover_failed=int(carryover.get("failed") or 0),
    )
    return StatusSnapshot(
        job=str(data.get("job") or ""),
        run_id=int(data.get("runId") or 0),
        state=str(data.get("state") or "running"),
        dry_run=bool(data.get("dryRun")),
        started_at=str(data.get("startedAt") or ""),
        last_update_at=str(data.get("lastUpdateAt") or ""),
        angles_planned=angles,
        angles_per_sku=planned_items // planned_skus if planned_skus else 0,
        concurrency=int(data.get("concurrency") or 0),
        planned_skus=planned_skus,
        counters=counters,
        checkpoint=Checkpoint.from_json(data.get("checkpoint") or {}),
        live=bool(data.get("live", True)),
        held=bool(data.get("held", False)),
        in_flight=int(data.get("inFlight") or 0),
        fetches_in_flight=int(data.get("fetchesInFlight") or 0),
        items_per_second=float(data.get("itemsPerSecond") or 0.0),
        skus_per_second=float(data.get("skusPerSecond") or 0.0),
        bytes_per_second=float(data.get("bytesPerSecond") or 0.0),
        eta_seconds=data.get("etaSeconds"),
        last_errors={str(k): str(v) for k, v in (data.get("lastErrors") or {}).items()},
        bucket=str(data.get("bucket") or ""),
        endpoint=str(data.get("endpoint") or ""),
        origin=str(data.get("origin") or ""),
        message=str(data.get("message") or ""),
        checkpoint_saved_at=str(data.get("checkpointSavedAt") or ""),
        checkpoint_saved_sku=data.get("checkpointSavedSku"),
    )


def failed_item_json(item: FailedItem) -> dict[str, Any]:
    """A failed item of the image job as the API and `failed --json` spell it."""
    return {
        "sku": item.group,
        "angle": item.member,
        "key": item.key,
        "code": item.code,
        "message": item.message,
        "attempts": item.attempts,
        "run_id": item.run_id,
    }


def failed_item_from_json(data: dict[str, Any]) -> FailedItem:
    return FailedItem(
        str(data["sku"]),
        int(data["angle"]),
        str(data["key"]),
        str(data["code"]),
        str(data["message"]),
        int(data["attempts"]),
        int(data["run_id"]),
    )
