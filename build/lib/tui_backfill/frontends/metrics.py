"""Prometheus exposition of the status snapshot, for the HTTP API's `GET /metrics`.

Rendered from the same `JobStatus` `/status` answers, so the two cannot disagree. The counters are
the run's: they restart from zero when a new run starts (`tui_backfill_run_id` changes), which
Prometheus' `rate()` treats as an ordinary counter reset. A private registry per call keeps
the process/platform collectors and any global state out of it.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from tui_backfill.frontends.status import JobStatus
from tui_backfill.outcomes import RunState
from tui_backfill.pipelines.hash_index.checkpoint import KeyCheckpoint
from tui_backfill.pipelines.hash_index.snapshot import HashCounters
from tui_backfill.pipelines.mirror.snapshot import StatusSnapshot

CONTENT_TYPE: str = CONTENT_TYPE_LATEST
PREFIX = "tui_backfill_"


def _outcomes(status: JobStatus) -> dict[str, int]:
    """`outcome` label of tui_backfill_items_total -> its count."""
    c = status.snapshot.counters
    if isinstance(c, HashCounters):
        return {
            "updated": c.updated,
            "skipped": c.skipped,
            "verified": c.verified,
            "mismatched": c.mismatched,
            "failed": c.failed_items,
        }
    return {
        "uploaded": c.uploaded,
        "skipped_exists": c.skipped_exists,
        "no_remote": c.no_remote,
        "failed": c.failed_items,
    }


def _counters(status: JobStatus) -> list[tuple[str, str, int]]:
    """(metric name, help, value) of the plain counters."""
    c = status.snapshot.counters
    if isinstance(c, HashCounters):
        return [
            ("scanned_objects", "Objects of the listing scanned in this run.", c.scanned_objects),
            ("bytes_hashed", "Bytes downloaded and hashed in this run.", c.bytes_hashed),
            ("orphans", "Index rows with no object, found in this run.", c.orphans),
        ]
    return [
        ("scanned_skus", "SKUs read from the source in this run.", c.scanned_skus),
        ("attempted_downloads", "Items for which a download was attempted.", c.attempted_downloads),
        ("bytes_uploaded", "Bytes written to the bucket in this run.", c.bytes_uploaded),
    ]


def _gauges(status: JobStatus) -> list[tuple[str, str, int | None]]:
    """(metric name, help, value) of the gauges; a value of None is left out."""
    s = status.snapshot
    gauges: list[tuple[str, str, int | None]] = [
        (
            "in_flight_fetches",
            "Origin fetches (object GETs for the hash index) in flight now (at most the concurrency).",
            s.fetches_in_flight,
        ),
        (
            "in_flight_items",
            "Items being worked on now (existence check, fetch or upload).",
            s.in_flight,
        ),
        ("concurrency", "Parallel fetches in force.", s.concurrency),
        (
            "max_concurrency",
            "Upper bound the concurrency may be raised to.",
            status.max_concurrency,
        ),
    ]
    if isinstance(s, StatusSnapshot):
        gauges += [
            ("planned_items", "Items planned in this run (SKUs x angles).", s.planned_items),
            ("planned_skus", "SKUs planned in this run.", s.planned_skus),
        ]
    gauges.append(("run_id", "Id of the run the other metrics describe.", s.run_id))
    return gauges


def _checkpoint(status: JobStatus, job: list[str]) -> Iterator[Metric]:
    """The checkpoint's position and what is finished past it, in the pipeline's words."""
    checkpoint = status.snapshot.checkpoint
    if isinstance(checkpoint, KeyCheckpoint):
        unit, noun, last, past = "key", "key", checkpoint.last_key, len(checkpoint.done_after)
        pending_help = "Keys past the checkpoint already finished."
    else:
        unit, noun = "sku", "SKU"
        last, past = checkpoint.last_sku, len(checkpoint.completed_angles)
        pending_help = "SKUs past the checkpoint with some of their angles finished."
    info = InfoMetricFamily(
        PREFIX + "checkpoint",
        f"The checkpoint: every {noun} up to last_{unit} (empty: none yet) is finished.",
        labels=["job"],
    )
    info.add_metric(job, {f"last_{unit}": str(last or "")})
    yield info
    pending = GaugeMetricFamily(
        PREFIX + f"checkpoint_pending_{unit}s", pending_help, labels=["job"]
    )
    pending.add_metric(job, float(past))
    yield pending


class SnapshotCollector:
    """Yields the metric families of one job's status (None: the job has no runs)."""

    def __init__(self, status: JobStatus | None, job: str) -> None:
        self.status = status
        self.job = job

    def collect(self) -> Iterator[Metric]:
        status = self.status
        job = [self.job]
        present = GaugeMetricFamily(
            PREFIX + "run_present",
            "1 when the job has a run (the other metrics describe it), 0 when it has none.",
            labels=["job"],
        )
        present.add_metric(job, 0.0 if status is None else 1.0)
        yield present

        current = None if status is None else status.state
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
        if status is None:
            return

        items = CounterMetricFamily(
            PREFIX + "items", "Items of this run by outcome.", labels=["job", "outcome"]
        )
        for outcome, count in _outcomes(status).items():
            items.add_metric([*job, outcome], float(count))
        yield items

        errors = CounterMetricFamily(
            PREFIX + "errors", "Failed attempts of this run by error code.", labels=["job", "code"]
        )
        by_code = status.snapshot.counters.errors_by_code
        for code, count in sorted(by_code.items(), key=lambda kv: -kv[1]):
            errors.add_metric([*job, str(code)], float(count))
        yield errors

        for name, doc, total in _counters(status):
            counter = CounterMetricFamily(PREFIX + name, doc, labels=["job"])
            counter.add_metric(job, float(total))
            yield counter
        for name, doc, maybe in _gauges(status):
            if maybe is not None:
                gauge = GaugeMetricFamily(PREFIX + name, doc, labels=["job"])
                gauge.add_metric(job, float(maybe))
                yield gauge

        live = GaugeMetricFamily(
            PREFIX + "live", "1 while a process is running the run.", labels=["job"]
        )
        live.add_metric(job, float(status.live))
        yield live

        yield from _checkpoint(status, job)


def render(status: JobStatus | None, *, job: str) -> bytes:
    """The Prometheus text exposition of the job's status (the one `/status` answers)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(status, job))
    return generate_latest(registry)
