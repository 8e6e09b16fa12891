"""The publishing worker's status: this instance's counters, and the job's queue as the
database says (queue depth, needing attention, average processing time, live instances).

Plain frozen data, rendered by the console, `status` (text and JSON), the headless line and
the heartbeat row other machines read. JSON is produced here, at the edge.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from tui_backfill.core.textfit import pack
from tui_backfill.seams.queue.base import AttentionJob, QueueFigures, WorkerRow


@dataclass(slots=True)
class InstanceCounters:
    """What one worker instance did in this session (mutable inside the worker)."""

    claimed: int = 0
    published: int = 0
    skipped: int = 0  # already published or soft-deleted: completed with no download
    failed_attempts: int = 0  # attempts that failed and will be retried after their backoff
    failed_permanent: int = 0  # jobs this instance failed for good (needing attention)
    refused: int = 0  # completions refused: the lease had gone to another worker
    released: int = 0  # claims handed back unstarted (pause, SIGTERM)
    bytes_downloaded: int = 0
    processing_seconds: float = 0.0  # summed over finished attempts
    errors_by_code: dict[str, int] = field(default_factory=dict)

    @property
    def finished(self) -> int:
        return self.published + self.skipped + self.failed_attempts + self.failed_permanent

    @property
    def errors_total(self) -> int:
        return sum(self.errors_by_code.values())

    def count_error(self, code: str) -> None:
        self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1

    def copy(self) -> InstanceCounters:
        data = asdict(self)
        return InstanceCounters(**data)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        return {
            "claimed": data["claimed"],
            "published": data["published"],
            "skipped": data["skipped"],
            "failedAttempts": data["failed_attempts"],
            "failedPermanent": data["failed_permanent"],
            "refused": data["refused"],
            "released": data["released"],
            "bytesDownloaded": data["bytes_downloaded"],
            "processingSeconds": round(data["processing_seconds"], 3),
            "errorsTotal": self.errors_total,
            "errorsByCode": dict(sorted(self.errors_by_code.items())),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstanceCounters:
        return cls(
            claimed=int(data.get("claimed", 0)),
            published=int(data.get("published", 0)),
            skipped=int(data.get("skipped", 0)),
            failed_attempts=int(data.get("failedAttempts", 0)),
            failed_permanent=int(data.get("failedPermanent", 0)),
            refused=int(data.get("refused", 0)),
            released=int(data.get("released", 0)),
            bytes_downloaded=int(data.get("bytesDownloaded", 0)),
            processing_seconds=float(data.get("processingSeconds", 0.0)),
            errors_by_code={str(k): int(v) for k, v in data.get("errorsByCode", {}).items()},
        )


def instance_stats(counters: InstanceCounters, *, in_flight: int, rate: float) -> str:
    """The heartbeat row's stats column: what `status` on another machine shows of it."""
    data = counters.to_json()
    data["inFlight"] = in_flight
    data["perMinute"] = round(rate * 60, 1)
    return json.dumps(data, sort_keys=True)


def _worker_json(row: WorkerRow) -> dict[str, Any]:
    try:
        stats = json.loads(row.stats) if row.stats else {}
    except ValueError:
        stats = {}
    return {
        "id": row.id,
        "state": row.state,
        "startedAt": row.started_at,
        "heartbeatAt": row.heartbeat_at,
        "stoppedAt": row.stopped_at,
        "stats": stats,
    }


@dataclass(frozen=True, slots=True)
class PublishSnapshot:
    """The status of a publish job as one instance (or a reader of the database) sees it."""

    job: str
    worker: str | None  # this instance's id; None when read from the database alone
    state: str  # running | held | stopping | stopped | idle (no live instance)
    started_at: str
    last_update_at: str
    concurrency: int
    in_flight: int
    counters: InstanceCounters
    per_second: float  # jobs finished per second, recent
    error_rate: float  # failed attempts / finished attempts, recent (0..1)
    queue: QueueFigures
    workers: tuple[WorkerRow, ...] = ()
    attention: tuple[AttentionJob, ...] = ()
    message: str = ""
    downloading: int = (
        0  # in-flight jobs holding a slot (their download); the rest in image work or PUTs
    )

    @property
    def live_workers(self) -> list[WorkerRow]:
        return [w for w in self.workers if w.stopped_at is None and w.state != "lost"]

    def to_json(self) -> dict[str, Any]:
        q = self.queue
        return {
            "pipeline": "publish",
            "job": self.job,
            "worker": self.worker,
            "state": self.state,
            "startedAt": self.started_at,
            "lastUpdateAt": self.last_update_at,
            "concurrency": self.concurrency,
            "inFlight": self.in_flight,
            "downloading": self.downloading,
            "jobsPerMinute": round(self.per_second * 60, 1),
            "errorRate": round(self.error_rate, 4),
            **self.counters.to_json(),
            "queue": {
                "pending": q.pending,
                "waitingBackoff": q.waiting_backoff,
                "processing": q.processing,
                "completed": q.completed,
                "failed": q.failed,
                "needingAttention": q.needing_attention,
                "avgProcessingSeconds": None
                if q.avg_processing_seconds is None
                else round(q.avg_processing_seconds, 3),
                "publishStatus": dict(sorted(q.publish_status.items())),
            },
            "liveWorkers": len(self.live_workers),
            "workers": [_worker_json(w) for w in self.workers],
            "needingAttention": [
                {
                    "jobId": a.id,
                    "fileId": a.file_id,
                    "retryCount": a.retry_count,
                    "lastError": a.last_error,
                }
                for a in self.attention
            ],
            "message": self.message,
        }

    def counter_rows(self) -> list[list[tuple[str, str]]]:
        """The console's figures in the operator's words: the queue as the database says (all
        instances), with this instance's in-flight jobs, rate and error rate."""
        q = self.queue
        avg = "-" if q.avg_processing_seconds is None else f"{q.avg_processing_seconds:.2f} s"
        return [
            [("queue depth", f"{q.pending:,}"), ("downloads", f"{self.downloading}/{self.concurrency}"), ("jobs/min", f"{self.per_second * 60:,.1f}")],
            [("waiting retry", f"{q.waiting_backoff:,}"), ("processing", f"{q.processing:,}"), ("error rate", f"{self.error_rate:.1%}")],
            [("completed", f"{q.completed:,}"), ("failed", f"{q.failed:,}"), ("avg processing", avg)],
            [("need attention", f"{q.needing_attention:,}"), ("live workers", f"{len(self.live_workers)}"), ("in flight here", f"{self.in_flight}")],
        ]  # fmt: skip

    def instance_line(self) -> str:
        """What this instance did in its session, one line."""
        c = self.counters
        return (
            f"this worker: {c.published:,} published, {c.skipped:,} skipped, "
            f"{c.failed_attempts:,} to retry, {c.failed_permanent:,} failed for good"
        )

    def status_text(self, width: int = 80) -> str:
        """`status` for a publish job: the queue, then the instances, then what needs a person;
        lines of at most `width`, a longer one continued on indented lines."""
        q = self.queue
        lines = [
            [
                f"job {self.job} (publish): {self.state},",
                f"{len(self.live_workers)} live worker(s),",
                f"{self.per_second * 60:,.1f} jobs/min,",
                f"error rate {self.error_rate:.1%}",
            ],
            [
                f"queue: {q.pending:,} pending ({q.waiting_backoff:,} waiting for backoff),",
                f"{q.processing:,} processing,",
                f"{q.completed:,} completed,",
                f"{q.failed:,} failed ({q.needing_attention:,} need attention)",
            ],
        ]
        if q.avg_processing_seconds is not None:
            lines.append([f"average processing time: {q.avg_processing_seconds:.2f} s"])
        if q.publish_status:
            summary = ", ".join(f"{k} {v:,}" for k, v in sorted(q.publish_status.items()))
            lines.append([f"files: {summary}"])
        out = [line for fields in lines for line in pack(fields, width, sep=" ")]
        for row in self.workers[:10]:
            stats = _worker_json(row)["stats"]
            fields = [
                f"worker {row.id}: {row.state},",
                f"heartbeat {row.heartbeat_at},",
                f"{stats.get('inFlight', 0)} in flight,",
                f"{stats.get('published', 0):,} published,",
                f"{stats.get('failedPermanent', 0):,} failed",
            ]
            out += ["  " + line for line in pack(fields, width - 2, sep=" ")]
        for job in self.attention[:10]:
            error = job.last_error.splitlines()[0][:60] if job.last_error else ""
            fields = [f"needs attention: job {job.id} file {job.file_id}:", *error.split(" ")]
            out += ["  " + line for line in pack(fields, width - 2, sep=" ")]
        return "\n".join(out)
