"""A publish worker's own HTTP endpoint (`publish worker --serve PORT`, 127.0.0.1): Prometheus
`GET /metrics`, the snapshot at `GET /api/publish/status`, and `POST /api/publish/pause` /
`.../resume` for this instance. Job-wide commands go through the database (`pause --job
publish`); this is what a scraper or a local script asks one instance.

Metrics: the queue as the database says (gauges, the same for every instance of the job) and
this instance's counters since it started (counters, reset when the process restarts).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from tui_backfill.pipelines.publish.snapshot import PublishSnapshot

PREFIX = "tui_backfill_publish_"
BASE = "/api/publish"


class _Collector:
    def __init__(self, snap: PublishSnapshot) -> None:
        self.snap = snap

    def collect(self) -> list[Metric]:
        s, q, c = self.snap, self.snap.queue, self.snap.counters
        labels = ["job", "worker"]
        values = [s.job, s.worker or ""]
        jobs = GaugeMetricFamily(
            PREFIX + "queue_jobs",
            "Jobs of the queue by status (all instances).",
            labels=["job", "status"],
        )
        for status, count in (
            ("pending", q.pending),
            ("waiting_backoff", q.waiting_backoff),
            ("processing", q.processing),
            ("completed", q.completed),
            ("failed", q.failed),
            ("needing_attention", q.needing_attention),
        ):
            jobs.add_metric([s.job, status], count)
        files = GaugeMetricFamily(
            PREFIX + "files", "auction_files by publish_status.", labels=["job", "publish_status"]
        )
        for status, count in sorted(q.publish_status.items()):
            files.add_metric([s.job, str(status)], count)
        avg = GaugeMetricFamily(
            PREFIX + "avg_processing_seconds",
            "Average processing time of completed jobs.",
            labels=["job"],
        )
        avg.add_metric([s.job], q.avg_processing_seconds or 0.0)
        live = GaugeMetricFamily(
            PREFIX + "live_workers", "Instances of the job with a fresh heartbeat.", labels=["job"]
        )
        live.add_metric([s.job], len(s.live_workers))
        in_flight = GaugeMetricFamily(
            PREFIX + "in_flight", "Jobs this instance is processing.", labels=labels
        )
        in_flight.add_metric(values, s.in_flight)
        done = CounterMetricFamily(
            PREFIX + "instance_jobs",
            "Jobs this instance finished, by outcome.",
            labels=[*labels, "outcome"],
        )
        for outcome, count in (
            ("published", c.published),
            ("skipped", c.skipped),
            ("failed_attempt", c.failed_attempts),
            ("failed_permanent", c.failed_permanent),
            ("refused", c.refused),
            ("released", c.released),
        ):
            done.add_metric([*values, outcome], count)
        errors = CounterMetricFamily(
            PREFIX + "instance_errors",
            "Failed attempts of this instance, by code.",
            labels=[*labels, "code"],
        )
        for code, count in sorted(c.errors_by_code.items()):
            errors.add_metric([*values, code], count)
        downloaded = CounterMetricFamily(
            PREFIX + "instance_downloaded_bytes",
            "Source bytes this instance downloaded.",
            labels=labels,
        )
        downloaded.add_metric(values, c.bytes_downloaded)
        return [jobs, files, avg, live, in_flight, done, errors, downloaded]


def render_metrics(snap: PublishSnapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snap))
    body: bytes = generate_latest(registry)
    return body


def publish_app(worker: Any) -> web.Application:
    async def metrics(request: web.Request) -> web.Response:
        body = render_metrics(worker.snapshot())
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(request: web.Request) -> web.Response:
        return web.json_response(worker.snapshot().to_json())

    async def pause(request: web.Request) -> web.Response:
        worker.hold()
        return web.json_response(worker.snapshot().to_json())

    async def resume(request: web.Request) -> web.Response:
        worker.resume()
        return web.json_response(worker.snapshot().to_json())

    app = web.Application()
    app.router.add_get("/metrics", metrics, allow_head=False)
    app.router.add_get(BASE + "/status", status, allow_head=False)
    app.router.add_post(BASE + "/pause", pause)
    app.router.add_post(BASE + "/resume", resume)
    return app


async def serve_worker(worker: Any, port: int) -> tuple[web.AppRunner, str]:
    """Listen on 127.0.0.1:PORT (0: a free one); (runner, URL)."""
    runner = web.AppRunner(publish_app(worker), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{bound}"
