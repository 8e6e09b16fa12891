"""Prometheus exposition of the status snapshot, for the HTTP API's `GET /metrics`.

Rendered from the same snapshot `/status` returns, so the two cannot disagree. The counters are
the run's: they restart from zero when a new run starts (`tui_backfill_run_id` changes), which
Prometheus' `rate()` treats as an ordinary counter reset. A private registry per call keeps
the process/platform collectors and any global state out of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from tui_backfill.outcomes import RunState

CONTENT_TYPE: str = CONTENT_TYPE_LATEST
PREFIX = "tui_backfill_"

# Snapshot key -> `outcome` label of tui_backfill_items_total.
OUTCOMES = {
    "uploaded": "uploaded",
    "skippedExists": "skipped_exists",
    "noRemote": "no_remote",
    "failedItems": "failed",
}
# Snapshot key -> (metric name, help) of the plain counters and gauges.
COUNTERS = {
    "scannedSkus": ("scanned_skus", "SKUs read from the source in this run."),
    "attemptedDownloads": ("attempted_downloads", "Items for which a download was attempted."),
    "bytesUploaded": ("bytes_uploaded", "Bytes written to the bucket in this run."),
}
GAUGES = {
    "fetchesInFlight": (
        "in_flight_fetches",
        "Origin fetches in flight now (at most the concurrency).",
    ),
    "inFlight": (
        "in_flight_items",
        "Items being worked on now (existence check, fetch or upload).",
    ),
    "concurrency": ("concurrency", "Parallel fetches in force."),
    "maxConcurrency": ("max_concurrency", "Upper bound the concurrency may be raised to."),
    "plannedItems": ("planned_items", "Items planned in this run (SKUs x angles)."),
    "plannedSkus": ("planned_skus", "SKUs planned in this run."),
    "runId": ("run_id", "Id of the run the other metrics describe."),
}


def _number(value: Any) -> float:
    """A snapshot value as a sample value; missing or null counts as 0."""
    if isinstance(value, bool):
        return float(value)
    return float(value) if isinstance(value, int | float) else 0.0


class SnapshotCollector:
    """Yields the metric families of one snapshot (None: the job has no runs)."""

    def __init__(self, snapshot: dict[str, Any] | None, job: str) -> None:
        self.snapshot = snapshot
        self.job = job

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        job = [self.job]
        present = GaugeMetricFamily(
            PREFIX + "run_present",
            "1 when the job has a run (the other metrics describe it), 0 when it has none.",
            labels=["job"],
        )
        present.add_metric(job, 0.0 if snap is None else 1.0)
        yield present

        current = None if snap is None else str(snap.get("state") or "")
        states = [s.value for s in RunState]
        if current and current not in states:
            states.append(current)  # an unknown state is still shown, not dropped
        state = GaugeMetricFamily(
            PREFIX + "run_state",
            "1 for the run's current state, 0 for the others (all 0 with no run).",
            labels=["job", "state"],
        )
        for value in states:
            state.add_metric([*job, value], 1.0 if value == current else 0.0)
        yield state
        if snap is None:
            return

        items = CounterMetricFamily(
            PREFIX + "items", "Items of this run by outcome.", labels=["job", "outcome"]
        )
        for key, outcome in OUTCOMES.items():
            items.add_metric([*job, outcome], _number(snap.get(key)))
        yield items

        errors = CounterMetricFamily(
            PREFIX + "errors", "Failed attempts of this run by error code.", labels=["job", "code"]
        )
        for code, count in (snap.get("errorsByCode") or {}).items():
            errors.add_metric([*job, str(code)], _number(count))
        yield errors

        for key, (name, doc) in COUNTERS.items():
            counter = CounterMetricFamily(PREFIX + name, doc, labels=["job"])
            counter.add_metric(job, _number(snap.get(key)))
            yield counter
        for key, (name, doc) in GAUGES.items():
            if key in snap and snap[key] is not None:
                gauge = GaugeMetricFamily(PREFIX + name, doc, labels=["job"])
                gauge.add_metric(job, _number(snap[key]))
                yield gauge

        live = GaugeMetricFamily(
            PREFIX + "live", "1 while a process is running the run.", labels=["job"]
        )
        live.add_metric(job, _number(bool(snap.get("live"))))
        yield live

        checkpoint = snap.get("checkpoint") or {}
        info = InfoMetricFamily(
            PREFIX + "checkpoint",
            "The checkpoint: every SKU up to last_sku (empty: none yet) is finished.",
            labels=["job"],
        )
        info.add_metric(job, {"last_sku": str(checkpoint.get("lastSku") or "")})
        yield info
        pending = GaugeMetricFamily(
            PREFIX + "checkpoint_pending_skus",
            "SKUs past the checkpoint with some of their angles finished.",
            labels=["job"],
        )
        pending.add_metric(job, float(len(checkpoint.get("completedAngles") or {})))
        yield pending


def render(snapshot: dict[str, Any] | None, *, job: str) -> bytes:
    """The Prometheus text exposition of `snapshot` (the `/status` JSON) for `job`."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(snapshot, job))
    return generate_latest(registry)
