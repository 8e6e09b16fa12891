"""The status snapshot: the one object every front end renders, and its counters.

`Counters` is what gets committed with the checkpoint; `StatusSnapshot` is the immutable view
the engine publishes a few times per second. JSON (with the brief's exact keys) is produced
here, at the edge, and nowhere else.
"""

from __future__ import annotations

import datetime as dt
from collections import deque
from dataclasses import dataclass, field, fields
from typing import Any

from tui_backfill.core.checkpoint import Checkpoint


def utc_now_iso(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return now.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(slots=True)
class Counters:
    """Outcome counters of one run. Mutable inside the engine; copied into snapshots."""

    scanned_skus: int = 0
    attempted_downloads: int = 0
    uploaded: int = 0
    skipped_exists: int = 0
    no_remote: int = 0
    failed_items: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)
    bytes_uploaded: int = 0
    found_at_start: int = 0  # existence split: present before we wrote anything
    would_fetch: int = 0  # dry run: missing items the run would fetch
    carryover_planned: int = 0  # failed items of earlier runs retried first
    carryover_done: int = 0
    carryover_failed: int = 0

    @property
    def errors_total(self) -> int:
        return sum(self.errors_by_code.values())

    def count_error(self, code: str) -> None:
        self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1

    def copy(self) -> Counters:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["errors_by_code"] = dict(self.errors_by_code)
        return Counters(**data)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Counters:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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

    def to_json(self) -> dict[str, Any]:
        c = self.counters
        # Items of the plan not in the bucket now: not done yet, noRemote or failed.
        still_missing = max(self.planned_items - c.uploaded - c.skipped_exists, 0)
        return {
            "job": self.job,
            "runId": self.run_id,
            "state": self.state,
            "live": self.live,
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


class RateMeter:
    """Rates over a sliding window, so the rate and ETA settle and do not jump around."""

    def __init__(self, window: float = 20.0) -> None:
        self._window = window
        self._samples: deque[tuple[float, float, float, float]] = deque()

    def add(self, now: float, items: float, skus: float, nbytes: float) -> None:
        """Record cumulative totals at time `now` (monotonic seconds)."""
        self._samples.append((now, items, skus, nbytes))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()

    def rates(self) -> tuple[float, float, float]:
        """Items/s, SKUs/s and bytes/s over the window (zeros until two samples exist)."""
        if len(self._samples) < 2:
            return 0.0, 0.0, 0.0
        t0, i0, s0, b0 = self._samples[0]
        t1, i1, s1, b1 = self._samples[-1]
        span = t1 - t0
        if span <= 0:
            return 0.0, 0.0, 0.0
        return (i1 - i0) / span, (s1 - s0) / span, (b1 - b0) / span


def eta_seconds(remaining_skus: int, skus_per_second: float) -> float | None:
    """Seconds left at the current rate; None while the rate is unknown."""
    if remaining_skus <= 0:
        return 0.0
    if skus_per_second <= 0:
        return None
    return remaining_skus / skus_per_second
