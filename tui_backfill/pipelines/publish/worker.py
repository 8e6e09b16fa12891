"""One instance of a publish job: claim jobs from the queue, run the media step, record.

The claimed-source loop: the queue is the coordination between instances (on one machine or
many), so there is no one-process lock and no checkpoint — a job is leased in one short
transaction, its lease is renewed by the heartbeat, and its completion is refused if the lease
went to another worker meanwhile. A claim takes up to one batch beyond the free slots, so the
claim's round trip hides behind the work; claimed jobs waiting for a slot are unstarted and are
handed back (no attempt counted) on pause and on SIGTERM.

Side effects are lease-guarded: before each PUT the worker checks its lease is still valid by
its own clock (renewed at `lease / 3`), so a worker frozen past its lease (SIGSTOP, a swapped
VM) and thawed later writes nothing the new holder also writes. A job seen again after a
failure or a reclaim first asks the bucket which variants exist, so a worker killed between
its PUTs and its completion costs no second PUT of what it wrote.

Two-stage shutdown (arq's): stop claiming and hand back the unstarted, wait up to
`shutdown_timeout` for in-flight jobs, then cancel what is left and hand it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tui_backfill.core.snapshot import RateMeter, utc_now_iso
from tui_backfill.outcomes import BackfillError, FatalError, NotFoundError
from tui_backfill.pipelines.publish.settings import PublishSettings
from tui_backfill.pipelines.publish.snapshot import (
    InstanceCounters,
    PublishSnapshot,
    instance_stats,
)
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
FIGURES_EVERY = 2.0  # seconds between reads of the queue's figures for the snapshot
COMMANDS_EVERY = 1.0
EXIT_OK, EXIT_FAILED, EXIT_FATAL = 0, 1, 3


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaseLost(Exception):
    """The job's lease expired by this worker's clock (or renew said it is gone)."""


@dataclass(slots=True)
class _Held:
    job: ClaimedJob
    deadline: float  # monotonic: the lease is ours until then (as renewed)
    started: bool = False
    task: asyncio.Task[None] | None = None


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
        self._cpu = ThreadPoolExecutor(
            max_workers=cores or os.cpu_count() or 1, thread_name_prefix="media"
        )
        self._policy = RetryPolicy(base=settings.retry_base, cap=settings.retry_cap)
        self.counters = InstanceCounters()
        self._held: dict[int, _Held] = {}
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._wake = asyncio.Event()
        self._stopping = False
        self._holding = False
        self._fatal: BackfillError | None = None
        self._started_at = utc_now_iso()
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
        self._stopping = True
        self._wake.set()

    def hold(self) -> None:
        """`p`: stop claiming, hand back the unstarted claims, let in-flight jobs finish."""
        if not self._holding:
            self._holding = True
            self.message = "held: no new claims; in-flight jobs finish"
            self._wake.set()

    def resume(self) -> None:
        if self._holding:
            self._holding = False
            self.message = ""
            self._wake.set()

    @property
    def state(self) -> str:
        if self._stopping:
            return "stopping"
        return "held" if self._holding else "running"

    @property
    def in_flight(self) -> int:
        return sum(1 for held in self._held.values() if held.started)

    # -- the snapshot --------------------------------------------------------------------------

    def snapshot(self) -> PublishSnapshot:
        per_second = self._rates.rates()[0]
        failed_per_second = self._failed_recent.rates()[0]
        error_rate = failed_per_second / per_second if per_second > 0 else 0.0
        return PublishSnapshot(
            job=self.settings.job,
            worker=self.id,
            state=self.state,
            started_at=self._started_at,
            last_update_at=utc_now_iso(),
            concurrency=self.settings.concurrency,
            in_flight=self.in_flight,
            counters=self.counters.copy(),
            per_second=per_second,
            error_rate=min(error_rate, 1.0),
            queue=self._figures,
            workers=self._workers,
            attention=self._attention,
            message=self.message,
        )

    def _sample(self) -> None:
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
        try:
            await self._claim_loop()
            await self._drain()
        finally:
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

    async def _claim_loop(self) -> None:
        batch = self.settings.concurrency
        while not self._stopping and self._fatal is None:
            if self._holding:
                await self._release_unstarted()
                await self._wait(None)
                continue
            want = self.settings.concurrency + batch - len(self._held)
            claimed: list[ClaimedJob] = []
            if want > 0:
                claimed = await self.queue.claim(
                    self.id, want, self.settings.lease, policy=self._policy
                )
                deadline = self._clock() + self.settings.lease
                for job in claimed:
                    held = _Held(job, deadline)
                    self._held[job.id] = held
                    held.task = asyncio.create_task(self._run_job(held), name=f"job-{job.id}")
                self.counters.claimed += len(claimed)
            if self.burst and not claimed and not self._held:
                return
            if len(claimed) < want:
                await self._wait(self.settings.poll_interval)  # nothing more now: wait for work
            elif len(self._held) >= self.settings.concurrency + batch:
                await self._wait(None)  # full: wait for a slot to free

    async def _wait(self, poll: float | None) -> None:
        """Until woken (a job finished, a command, a stop) or, with `poll`, until the queue
        may have work (NOTIFY) or `poll` seconds passed."""
        self._wake.clear()
        waits: list[asyncio.Task[Any]] = [asyncio.create_task(self._wake.wait())]
        if poll is not None:
            waits.append(asyncio.create_task(self.queue.wait_for_work(poll)))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _drain(self) -> None:
        """Stage two of a stop: hand back the unstarted, wait for in-flight jobs (bounded),
        cancel the rest and hand them back too."""
        await self._release_unstarted()
        tasks = [h.task for h in self._held.values() if h.task is not None]
        if tasks:
            timeout = self.settings.shutdown_timeout
            if not self._stopping:  # burst or fatal: nothing asks us to hurry
                timeout = max(timeout, self.settings.lease)
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        left = [h.job for h in self._held.values()]
        if left:
            await self.queue.release(self.id, left)
            self.counters.released += len(left)
            self._held.clear()

    async def _release_unstarted(self) -> None:
        unstarted = [h for h in self._held.values() if not h.started]
        if not unstarted:
            return
        for held in unstarted:
            if held.task is not None:
                held.task.cancel()
        await asyncio.gather(*(h.task for h in unstarted if h.task), return_exceptions=True)
        await self.queue.release(self.id, [h.job for h in unstarted])
        for held in unstarted:
            self._held.pop(held.job.id, None)
        self.counters.released += len(unstarted)
        self._wake.set()

    # -- the heartbeat -------------------------------------------------------------------------

    def _stats(self) -> str:
        return instance_stats(self.counters, in_flight=self.in_flight, rate=self._rates.rates()[0])

    async def _heartbeat(self) -> None:
        """Renew leases every lease/3; write the instance row; read commands and figures."""
        renew_every = self.settings.lease / 3
        last_renew = last_figures = last_commands = self._clock()
        while True:
            await asyncio.sleep(min(0.5, renew_every))
            now = self._clock()
            self._sample()
            try:
                if now - last_renew >= renew_every:
                    last_renew = now
                    await self._renew()
                    await self.queue.heartbeat(self.id, self.state, self._stats())
                if now - last_commands >= COMMANDS_EVERY:
                    last_commands = now
                    await self._take_commands()
                if now - last_figures >= FIGURES_EVERY:
                    last_figures = now
                    await self._refresh_figures()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database blinked: leases run out if it stays away
                log.warning("heartbeat: %s: %s", exc.__class__.__name__, exc)

    async def _renew(self) -> None:
        ids = [job_id for job_id in self._held]
        if not ids:
            return
        started = self._clock()
        still = await self.queue.renew(self.id, ids, self.settings.lease)
        for job_id in ids:
            held = self._held.get(job_id)
            if held is None:
                continue
            if job_id in still:
                held.deadline = started + self.settings.lease
            else:
                held.deadline = 0.0  # taken by another worker: no more side effects

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

    def _guard(self, held: _Held) -> None:
        if self._clock() >= held.deadline - 1.0:
            raise LeaseLost

    async def _run_job(self, held: _Held) -> None:
        job = held.job
        async with self._slots:
            if self._stopping or self._holding:
                return  # handed back by the drain / the hold (still unstarted)
            held.started = True
            begun = self._clock()
            try:
                await self._attempt(held)
            except LeaseLost:
                self.counters.refused += 1
                log.warning(
                    "job %s: lease lost before its side effects; left to its new holder", job.id
                )
            except asyncio.CancelledError:
                raise
            finally:
                self.counters.processing_seconds += self._clock() - begun
                self._held.pop(job.id, None)
                self._wake.set()

    async def _attempt(self, held: _Held) -> None:
        job = held.job
        if job.deleted or job.publish_status == "published":
            await self._complete(held, None)
            return
        try:
            body = await self.step.fetch(job.source_key)
            self.counters.bytes_downloaded += len(body)
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
                self._guard(held)
                if job.retry_count > 0 and await self.step.exists(key):
                    continue  # written by an earlier attempt of this job
                self._guard(held)
                await self.step.put(key, variant.data)
            published = Published(thumb_url=urls["thumb"], display_url=urls["display"])
        except LeaseLost:
            raise
        except FatalError as exc:
            # Not this job's fault (the store refuses our secret, the bucket our keys):
            # hand it back and stop the worker (exit 3).
            self._fatal = exc
            self.counters.count_error(exc.code)
            log.error("fatal: %s; stopping", exc.message)
            await self.queue.release(self.id, [job])
            self.counters.released += 1
            self._stopping = True
            self._wake.set()
            return
        except NotFoundError as exc:
            await self._fail(held, exc, permanent=True)
            return
        except BackfillError as exc:
            await self._fail(held, exc, permanent=bool(getattr(exc, "permanent", False)))
            return
        except Exception as exc:  # a defect: recorded as a failed attempt, never lost
            error = BackfillError(
                f"internal error: {exc.__class__.__name__}: {exc}", code="internal"
            )
            await self._fail(held, error, permanent=False)
            return
        await self._complete(held, published)

    async def _complete(self, held: _Held, published: Published | None) -> None:
        self._guard(held)
        if await self.queue.complete(self.id, held.job, published):
            if published is None:
                self.counters.skipped += 1
            else:
                self.counters.published += 1
        else:
            self.counters.refused += 1
            log.warning(
                "job %s: completion refused (the lease went to another worker)", held.job.id
            )

    async def _fail(self, held: _Held, error: BackfillError, *, permanent: bool) -> None:
        self.counters.count_error(error.code)
        text = f"{error.code}: {error.message}"
        final = permanent or held.job.retry_count + 1 >= held.job.max_retries
        if not await self.queue.fail(
            self.id, held.job, text, permanent=permanent, policy=self._policy
        ):
            self.counters.refused += 1
            return
        if final:
            self.counters.failed_permanent += 1
            log.warning("job %s (file %s) failed for good: %s", held.job.id, held.job.file_id, text)
        else:
            self.counters.failed_attempts += 1
            log.info(
                "job %s (file %s) attempt failed, retried after backoff: %s",
                held.job.id,
                held.job.file_id,
                text,
            )
