"""One instance of a publish job: the media step on the engine's claimed-source loop.

The loop (core/claimed.py) claims jobs, renews their leases and hands each to `_attempt` with
a lease guard; this module says what a job is: skip it when its file is published or
soft-deleted, else download the source, make the variants off the event loop (a thread pool
of CONCURRENCY threads, at most the cores), PUT them, and record the CDN URLs with the job's completion. A job
holds one of the CONCURRENCY slots for its download only (core/claimed.py `Guard.leave_slot`):
the next download overlaps this job's image work, and its PUTs and completion overlap the next
job's, so the threads do not wait on I/O. Jobs past their download are bounded too (four a
slot), so a slow bucket holds the downloads back. A job seen
again after a failure or a reclaim first asks the bucket which variants exist, so a worker
killed between its PUTs and its completion costs no second PUT of what it wrote; the guard
before each PUT keeps a worker thawed after its lease ran out from writing at all.

Beside the loop, a heartbeat writes this instance's row (state and counters, read by `status`
on any machine), reads the commands addressed to the job or to this instance, and re-reads the
queue's figures for the snapshot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tui_backfill.core.claimed import ClaimedEngine, ClaimPlan, Guard, LeaseLost
from tui_backfill.core.snapshot import RateMeter, utc_now_iso
from tui_backfill.outcomes import BackfillError, FatalError, NotFoundError
from tui_backfill.pipelines.publish.settings import PublishSettings
from tui_backfill.pipelines.publish.snapshot import (
    InstanceCounters,
    PublishSnapshot,
    instance_stats,
)
from tui_backfill.seams.cpus import usable_cpus
from tui_backfill.seams.queue.base import (
    AttentionJob,
    ClaimedJob,
    JobQueue,
    Published,
    QueueFigures,
    RetryPolicy,
    WorkerRow,
)

log = logging.getLogger("tui_backfill.publish")

CACHE_CONTROL = "public, max-age=31536000, immutable"
FIGURES_EVERY = 2.0  # seconds between reads of the queue's figures for the snapshot, at least
FIGURES_SHARE = 0.02  # of each worker's time at most, the database spends counting the queue
FIGURES_STALE = 60.0  # seconds the console's queue figures may be old, at most
COMMANDS_EVERY = 1.0
EXIT_OK, EXIT_FAILED, EXIT_FATAL = 0, 1, 3
FINISHING_PER_SLOT = 4  # jobs past their download (image work, PUTs), per download slot


def figures_gap(took: float) -> float:
    """Seconds to the next read of the queue's figures after one that took `took`.

    The counts scan the jobs and files tables (0.12 s at 300,000 jobs on PostgreSQL), and every
    worker instance reads them for its snapshot; so a queue with a long history is counted less
    often, the database spending at most FIGURES_SHARE of its time per worker on it, and the
    figures never older than FIGURES_STALE.
    """
    return min(FIGURES_STALE, max(FIGURES_EVERY, took / FIGURES_SHARE))


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class _QueueSource:
    """The jobs table as the engine's claimed source, for this worker."""

    def __init__(self, queue: JobQueue, worker: str, lease: float, policy: RetryPolicy) -> None:
        self.queue, self.worker, self.lease, self.policy = queue, worker, lease, policy

    async def claim(self, limit: int) -> list[ClaimedJob]:
        return await self.queue.claim(self.worker, limit, self.lease, policy=self.policy)

    async def renew(self, ids: Sequence[int]) -> set[int]:
        return await self.queue.renew(self.worker, ids, self.lease)

    async def release(self, items: Sequence[ClaimedJob], *, started: bool = False) -> None:
        await self.queue.release(self.worker, items, started=started)

    async def wait_for_work(self, timeout: float) -> None:
        await self.queue.wait_for_work(timeout)


class MediaStep:
    """Download, variants, PUTs: what one job does. Built by `prepare_worker` from real seams;
    the worker calls `fetch`, `variants`, `exists` and `put`."""

    def __init__(
        self,
        *,
        fetch: Callable[[str], Any],
        variants: Callable[[bytes], Any],
        exists: Callable[[str], Any],
        put: Callable[[str, bytes], Any],
    ) -> None:
        self.fetch = fetch  # async (source_key) -> bytes
        self.variants = variants  # sync CPU (bytes) -> list[Variant]
        self.exists = exists  # async (key) -> bool
        self.put = put  # async (key, body) -> None


class PublishWorker:
    def __init__(
        self,
        settings: PublishSettings,
        queue: JobQueue,
        step: MediaStep,
        *,
        worker: str | None = None,
        burst: bool = False,
        cores: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.queue = queue
        self.step = step
        self.id = worker or worker_id()
        self.burst = burst
        self._clock = clock
        # One image thread a download slot, never more than the cores this process may use: a
        # CONCURRENCY set high for slow downloads does not decode that many images at once.
        self.image_threads = cores or min(settings.concurrency, usable_cpus())
        self._cpu = ThreadPoolExecutor(max_workers=self.image_threads, thread_name_prefix="media")
        self._policy = RetryPolicy(base=settings.retry_base, cap=settings.retry_cap)
        self.counters = InstanceCounters()
        self.engine: ClaimedEngine[ClaimedJob] = ClaimedEngine(
            _QueueSource(queue, self.id, settings.lease, self._policy),
            self._run_job,
            ClaimPlan(
                concurrency=settings.concurrency,
                # Past its download a job waits for an image thread, is in one, or writes.
                # Room for four a slot keeps the threads fed while the writes wait on the bucket
                # (two a slot stalled them: bench/publish_worker.py); the jobs waiting for a
                # thread hold only their compressed source.
                finishing=FINISHING_PER_SLOT * settings.concurrency,
                lease=settings.lease,
                poll=settings.poll_interval,
                shutdown_timeout=settings.shutdown_timeout,
                burst=burst,
            ),
            clock=clock,
        )
        self._fatal: BackfillError | None = None
        self._released_fatal = 0
        self._started_at = utc_now_iso()
        self._began = 0.0  # when run() began, by the clock
        self._ended: float | None = None  # when it returned
        self._rates = RateMeter(window=30.0)
        self._failed_recent = RateMeter(window=30.0)
        self._figures = QueueFigures()
        self._workers: tuple[WorkerRow, ...] = ()
        self._attention: tuple[AttentionJob, ...] = ()
        self._command_cursor = 0
        self.message = ""

    # -- commands (signals, console keys, command rows) ---------------------------------------

    def stop(self) -> None:
        """SIGTERM: stop claiming, finish in-flight within the shutdown timeout, exit 0."""
        self.engine.stop()

    def hold(self) -> None:
        """`p`: stop claiming, hand back the unstarted claims, let in-flight jobs finish."""
        if self.engine.hold():
            self.message = "held: no new claims; in-flight jobs finish"
            log.info("held: no new claims; %d job(s) in flight finish", self.in_flight)

    def resume(self) -> None:
        if self.engine.resume():
            self.message = ""
            log.info("resumed: claiming again")

    @property
    def state(self) -> str:
        if self._ended is not None:
            return "stopped"  # run() has returned: its claims are finished or handed back
        if self.engine.stopping:
            return "stopping"
        return "held" if self.engine.holding else "running"

    @property
    def in_flight(self) -> int:
        return self.engine.in_flight

    # -- the snapshot --------------------------------------------------------------------------

    def _sync(self) -> InstanceCounters:
        """The counters, with the loop's own (claims, hand-backs) brought in."""
        self.counters.claimed = self.engine.claimed
        self.counters.released = self.engine.released + self._released_fatal
        return self.counters

    def _rates_now(self) -> tuple[float, float]:
        """Jobs finished and attempts failed per second, recent; 0 once held or stopping (no
        new claims: the window's average of the time before would say it still works). Once
        stopped, the whole session's averages: what the final snapshot and `runs` report."""
        if self._ended is not None:
            seconds = max(self._ended - self._began, 1e-9)
            failed = self.counters.failed_attempts + self.counters.failed_permanent
            return self.counters.finished / seconds, failed / seconds
        if self.state != "running":
            return 0.0, 0.0
        return self._rates.rates()[0], self._failed_recent.rates()[0]

    def snapshot(self) -> PublishSnapshot:
        per_second, failed_per_second = self._rates_now()
        error_rate = failed_per_second / per_second if per_second > 0 else 0.0
        return PublishSnapshot(
            job=self.settings.job,
            worker=self.id,
            state=self.state,
            started_at=self._started_at,
            last_update_at=utc_now_iso(),
            concurrency=self.settings.concurrency,
            in_flight=self.in_flight,
            downloading=self.engine.in_slots,
            counters=self._sync().copy(),
            per_second=per_second,
            error_rate=min(error_rate, 1.0),
            queue=self._figures,
            workers=self._workers,
            attention=self._attention,
            message=self.message,
        )

    def _sample(self) -> None:
        if self.state != "running":  # a resumed worker is measured afresh
            self._rates.reset()
            self._failed_recent.reset()
            return
        now = self._clock()
        failed = self.counters.failed_attempts + self.counters.failed_permanent
        self._rates.add(now, self.counters.finished, 0, self.counters.bytes_downloaded)
        self._failed_recent.add(now, failed, 0, 0)

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> int:
        """Until stopped (or, with `burst`, until nothing is claimable and nothing in flight).
        The exit code: 0, 1 (burst: this instance failed jobs for good), 3 (fatal)."""
        # Commands address the instances live when they were sent: skip the job's older ones
        # (an old `pause` must not hold a worker started today).
        self._command_cursor, _ = await self.queue.take_commands(self.id, self.settings.job, 0)
        await self.queue.register_worker(self.id, self.settings.job)
        await self._refresh_figures()
        heartbeat = asyncio.create_task(self._heartbeat(), name="publish-heartbeat")
        self._began = self._clock()
        try:
            await self.engine.run()
        finally:
            self._ended = self._clock()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            self._cpu.shutdown(wait=False, cancel_futures=True)
            with contextlib.suppress(Exception):
                await self.queue.stop_worker(self.id, self._stats())
                await self._refresh_figures()  # the final snapshot shows the queue as left
        if self._fatal is not None:
            return EXIT_FATAL
        if self.burst and self.counters.failed_permanent:
            return EXIT_FAILED
        return EXIT_OK

    # -- the heartbeat -------------------------------------------------------------------------

    def _stats(self) -> str:
        return instance_stats(self._sync(), in_flight=self.in_flight, rate=self._rates_now()[0])

    async def _heartbeat(self) -> None:
        """Write the instance row every lease/3; read commands and figures."""
        beat_every = self.settings.lease / 3
        last_beat = last_figures = last_commands = self._clock()
        figures_every = FIGURES_EVERY
        while True:
            await asyncio.sleep(min(0.5, beat_every))
            now = self._clock()
            self._sample()
            try:
                if now - last_beat >= beat_every:
                    last_beat = now
                    await self.queue.heartbeat(self.id, self.state, self._stats())
                    await self._keep_identity()
                if now - last_commands >= COMMANDS_EVERY:
                    last_commands = now
                    await self._take_commands()
                if now - last_figures >= figures_every:
                    last_figures = counting = self._clock()
                    await self._refresh_figures()
                    figures_every = figures_gap(self._clock() - counting)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database blinked: shown, retried at the next beat
                log.warning("heartbeat: %s: %s", exc.__class__.__name__, exc)

    async def _keep_identity(self) -> None:
        """This instance's id stays its own: taken again if the database session that held it
        was lost; if another live instance took it meanwhile, this one stops (two instances
        with one id would share their leases)."""
        if self.engine.stopping or await self.queue.keep_identity(self.id):
            return
        log.error(
            "worker id %s was taken by another live instance while this one's hold on it was"
            " lost; stopping (its jobs in flight finish)",
            self.id,
        )
        self.stop()

    async def _take_commands(self) -> None:
        self._command_cursor, commands = await self.queue.take_commands(
            self.id, self.settings.job, self._command_cursor
        )
        for command in commands:
            if command == "pause":
                self.hold()
            elif command == "resume":
                self.resume()
            elif command == "stop":
                self.stop()

    async def _refresh_figures(self) -> None:
        self._figures = await self.queue.figures()
        self._workers = tuple(
            await self.queue.workers(self.settings.job, live_within=self.settings.lease)
        )
        self._attention = tuple(await self.queue.attention(10))

    # -- one job -------------------------------------------------------------------------------

    async def _run_job(self, job: ClaimedJob, guard: Guard) -> None:
        begun = self._clock()
        try:
            await self._attempt(job, guard)
        except LeaseLost:
            self.counters.refused += 1
            log.warning(
                "job %s: lease lost before its side effects; left to its new holder", job.id
            )
        finally:
            self.counters.processing_seconds += self._clock() - begun

    async def _attempt(self, job: ClaimedJob, guard: Guard) -> None:
        if job.deleted or job.publish_status == "published":
            await self._complete(job, guard, None)
            return
        try:
            body = await self.step.fetch(job.source_key)
            self.counters.bytes_downloaded += len(body)
            # The slot bounds downloads; the image work has its own bound (the pool's threads)
            # and the PUTs and the completion run beside: the next job's download overlaps
            # this one's image work, so the cores do not wait on I/O.
            await guard.leave_slot()
            variants = await asyncio.get_running_loop().run_in_executor(
                self._cpu, self.step.variants, body
            )
            del body
            urls: dict[str, str] = {}
            for variant in variants:
                key = self.settings.variant_key(
                    variant.name, lot_id=job.lot_id, file_id=job.file_id
                )
                urls[variant.name] = self.settings.cdn_url(key)
                guard()
                if (job.retry_count > 0 or job.interrupted) and await self.step.exists(key):
                    continue  # written by an earlier attempt of this job
                guard()
                await self.step.put(key, variant.data)
            published = Published(thumb_url=urls["thumb"], display_url=urls["display"])
        except LeaseLost:
            raise
        except FatalError as exc:
            # Not this job's fault (the store refuses our secret, the bucket our keys):
            # hand it back and stop the worker (exit 3). The jobs in flight beside it meet
            # the same refusal: said once.
            self.counters.count_error(exc.code)
            if self._fatal is None:
                self._fatal = exc
                log.error("fatal: %s; stopping", exc.message)
            await self.queue.release(self.id, [job])
            self._released_fatal += 1
            self.engine.stop()
            return
        except NotFoundError as exc:
            await self._fail(job, exc, permanent=True)
            return
        except BackfillError as exc:
            # Retried after its backoff only when another attempt can help (5xx, resets,
            # timeouts, truncation, throttling); a 400 or a bad image fails at once.
            await self._fail(job, exc, permanent=not exc.retryable)
            return
        except Exception as exc:  # a defect: recorded as a failed attempt, never lost
            error = BackfillError(
                f"internal error: {exc.__class__.__name__}: {exc}", code="internal"
            )
            await self._fail(job, error, permanent=False)
            return
        await self._complete(job, guard, published)

    async def _complete(self, job: ClaimedJob, guard: Guard, published: Published | None) -> None:
        guard()
        if await self.queue.complete(self.id, job, published):
            if published is None:
                self.counters.skipped += 1
            else:
                self.counters.published += 1
        else:
            self.counters.refused += 1
            log.warning("job %s: completion refused (the lease went to another worker)", job.id)

    async def _fail(self, job: ClaimedJob, error: BackfillError, *, permanent: bool) -> None:
        self.counters.count_error(error.code)
        text = f"{error.code}: {error.message}"
        final = permanent or job.retry_count + 1 >= job.max_retries
        if not await self.queue.fail(self.id, job, text, permanent=permanent, policy=self._policy):
            self.counters.refused += 1
            return
        if final:
            self.counters.failed_permanent += 1
            log.warning("job %s (file %s) failed for good: %s", job.id, job.file_id, text)
        else:
            self.counters.failed_attempts += 1
            log.info(
                "job %s (file %s) attempt failed, retried after backoff: %s",
                job.id,
                job.file_id,
                text,
            )
