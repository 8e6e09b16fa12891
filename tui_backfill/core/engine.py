"""The backfill engine: streams items, bounds concurrency, retries, accounts, checkpoints.

It knows nothing of any front end. It reads the run's SKU snapshot page by page, checks which
objects exist (a listing of bounded key ranges, or a HEAD per item), fetches what is missing
from the origin under the politeness cap, uploads beside the fetches with its own bound,
accounts every outcome, persists counters and checkpoint together, and publishes immutable
status snapshots. It takes commands: stop (graceful, resumable), hold/resume, concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

from tui_backfill.core.checkpoint import Checkpoint, WatermarkTracker
from tui_backfill.core.retry import retrying
from tui_backfill.core.slots import Slots
from tui_backfill.core.snapshot import Counters, RateMeter, StatusSnapshot, eta_seconds, utc_now_iso
from tui_backfill.outcomes import BackfillError, FatalError, NotFoundError, Outcome, RunState
from tui_backfill.pipelines.mirror.keys import printable, sku_problem
from tui_backfill.pipelines.mirror.templates import MAX_KEY_BYTES, Template
from tui_backfill.seams.origins import Fetched, Origin
from tui_backfill.state.sqlite import FailedItem, StateStore

T = TypeVar("T")

PAGE_SKUS = 500
PUBLISH_EVERY = 0.5  # seconds between snapshots written to the state for other processes
COMMAND_POLL = 0.5
SAMPLE_EVERY = 0.5


class Destination(Protocol):
    """What the engine needs of the bucket (tui_backfill.seams.bucket.Bucket)."""

    name: str
    endpoint_url: str | None

    async def exists(self, key: str) -> bool: ...

    async def put(
        self, key: str, body: bytes, content_type: str, *, if_none_match: bool
    ) -> bool: ...

    def list_keys(
        self, prefix: str, *, start_after: str | None = None, stop_after: str | None = None
    ) -> AsyncIterator[list[str]]: ...


class Stop(enum.Enum):
    NONE = 0
    STOP = 1  # graceful: finish in-flight, persist, leave the run resumable (exit 75)
    HOLD = 2  # pause in place until resume


class Interrupted(Exception):
    """A backoff wait was cut short by pause or stop: the item is left unfinished."""


@dataclass(frozen=True, slots=True)
class RunPlan:
    """The fixed facts of one run the engine executes."""

    job: str
    run_id: int
    angles: tuple[int, ...]
    angles_spec: str
    planned_skus: int
    key_template: Template
    only_missing: bool
    dry_run: bool
    exists_check: str  # "list" or "head"
    concurrency: int
    max_concurrency: int
    upload_concurrency: int
    max_attempts: int
    backoff: float
    checkpoint_every: int
    started_at: str
    counters: Counters = field(default_factory=Counters)
    checkpoint: Checkpoint = field(default_factory=Checkpoint)
    origin_label: str = ""
    checkpoint_saved_at: str = ""  # when `checkpoint` was saved, by an earlier process ("" unknown)


@dataclass(frozen=True, slots=True)
class RunResult:
    state: RunState
    exit_code: int
    snapshot: StatusSnapshot


class StageFailed(Exception):
    """A stage exhausted its attempts (or hit a permanent error)."""

    def __init__(self, error: BackfillError, attempts: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.attempts = attempts


@dataclass(frozen=True, slots=True)
class _Result:
    outcome: Outcome
    attempted: bool = False
    attempts: int = 0
    error: BackfillError | None = None
    found: bool = False  # present at the destination before we wrote it
    nbytes: int = 0


@dataclass(slots=True)
class _Item:
    sku: str
    angle: int
    key: str
    carryover: bool = False
    head: bool = False  # existence unknown from a listing: HEAD it


def _bad_sku(sku: str) -> _Result | None:
    """A SKU that breaks the rule of tui_backfill.pipelines.mirror.keys: its items are never looked up, fetched
    or written; each is a failed item `bad_sku` naming the reason."""
    problem = sku_problem(sku)
    if problem is None:
        return None
    message = f"SKU {printable(sku)} {problem}; not fetched, not written"
    return _Result(Outcome.FAILED, error=BackfillError(message, code="bad_sku"))


def _bad_key(key: str) -> _Result | None:
    """A key over S3's limit: a failed item `bad_key`."""
    size = len(key.encode())
    if size <= MAX_KEY_BYTES:
        return None
    message = f"key is {size:,} bytes, over S3's limit of {MAX_KEY_BYTES:,}; not fetched"
    return _Result(Outcome.FAILED, error=BackfillError(message, code="bad_key"))


class Engine:
    def __init__(
        self,
        plan: RunPlan,
        *,
        store: StateStore,
        bucket: Destination,
        origin: Origin | None,
        clock: Callable[[], float] = time.monotonic,
        poll_commands: bool = True,
    ) -> None:
        self.plan = plan
        self._store = store
        self._bucket = bucket
        self._origin = origin
        self._clock = clock
        self._poll_commands = poll_commands
        self.counters = plan.counters.copy()
        self._tracker = WatermarkTracker(plan.angles, plan.checkpoint)
        # SKUs behind the checkpoint we resumed from (the committed count minus partial ones).
        self._base_finished = plan.counters.scanned_skus - len(plan.checkpoint.completed_angles)
        self._fetch_slots = Slots(plan.concurrency)
        self._s3_slots = Slots(plan.upload_concurrency)
        self._item_slots = asyncio.Semaphore(plan.concurrency * 2 + plan.upload_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = Stop.NONE
        self._interrupt = asyncio.Event()  # set while stopping or holding: cuts backoff waits
        self._resumed = asyncio.Event()
        self._redo: list[_Item] = []  # items interrupted by a hold, dispatched again on resume
        self._state = RunState.RUNNING
        self._fatal: FatalError | None = None
        self._pending_failed: list[FailedItem] = []
        self._pending_resolved: list[tuple[str, int]] = []
        self._commit_lock = asyncio.Lock()
        self._finished_at_commit = 0
        self._last_errors: dict[str, str] = {}
        self._rates = RateMeter()
        self._items_done = 0
        self._last_published = 0.0
        self._saved_at = plan.checkpoint_saved_at
        self._saved_sku: str | None = plan.checkpoint.last_sku
        self._ended_at: str | None = None  # when this process's part of the run ended

    # -- commands ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Graceful stop: no new work, in-flight items finish, checkpoint persisted."""
        self._stop = Stop.STOP
        self._interrupt.set()
        self._resumed.set()  # a held run wakes up to stop
        if self._state in (RunState.RUNNING, RunState.PAUSED):
            self._state = RunState.PAUSING

    def hold(self) -> None:
        """Pause in place until `resume`."""
        if self._stop is Stop.NONE:
            self._stop = Stop.HOLD
            self._interrupt.set()
            self._resumed.clear()
            self._state = RunState.PAUSING

    def resume(self) -> None:
        if self._stop is Stop.HOLD:
            self._stop = Stop.NONE
            self._interrupt.clear()
            self._state = RunState.RUNNING
            self._resumed.set()

    def set_concurrency(self, value: int) -> int:
        value = max(1, min(value, self.plan.max_concurrency))
        self._fetch_slots.set_limit(value)
        return value

    @property
    def concurrency(self) -> int:
        return self._fetch_slots.limit

    @property
    def stop_requested(self) -> bool:
        """A graceful stop is under way (the run will end paused)."""
        return self._stop is Stop.STOP

    @property
    def state(self) -> RunState:
        return self._state

    async def _apply_command(self, command: str, arg: str | None) -> None:
        if command == "stop":
            self.stop()
        elif command == "hold":
            self.hold()
        elif command == "resume":
            self.resume()
        elif command == "concurrency" and arg is not None and arg.lstrip("-").isdigit():
            self.set_concurrency(int(arg))

    # -- the snapshot -----------------------------------------------------------------------

    def _scanned(self, *, committed: bool) -> int:
        return self._base_finished + self._tracker.scanned(committed=committed)

    def snapshot(self) -> StatusSnapshot:
        counters = self.counters.copy()
        counters.scanned_skus = self._scanned(committed=False)
        items_rate, skus_rate, bytes_rate = self._rates.rates()
        return StatusSnapshot(
            job=self.plan.job,
            run_id=self.plan.run_id,
            state=self._state.value,
            dry_run=self.plan.dry_run,
            started_at=self.plan.started_at,
            last_update_at=self._ended_at or utc_now_iso(),
            angles_planned=self.plan.angles_spec,
            angles_per_sku=len(self.plan.angles),
            concurrency=self._fetch_slots.limit,
            planned_skus=self.plan.planned_skus,
            counters=counters,
            checkpoint=self._tracker.checkpoint(),
            in_flight=len(self._tasks),
            fetches_in_flight=self._fetch_slots.used,
            items_per_second=items_rate,
            skus_per_second=skus_rate,
            bytes_per_second=bytes_rate,
            # only a moving run has an ETA (a paused one's rate decays: its ETA would drift)
            eta_seconds=(
                eta_seconds(self.plan.planned_skus - counters.scanned_skus, skus_rate)
                if self._state is RunState.RUNNING
                else None
            ),
            last_errors=dict(self._last_errors),
            bucket=self._bucket.name,
            endpoint=self._bucket.endpoint_url or "",
            origin=self.plan.origin_label,
            message=self._fatal.message if self._fatal else "",
            checkpoint_saved_at=self._saved_at,
            checkpoint_saved_sku=self._saved_sku,
            live=self._ended_at is None,
        )

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> RunResult:
        """Run to completion, stop or fatal error; the checkpoint is persisted on every path."""
        background = [asyncio.create_task(self._heartbeat(), name="engine-heartbeat")]
        try:
            try:
                if not self.plan.dry_run:
                    await self._retry_carryover()
                await self._scan()
                await self._drain()
            except FatalError as exc:
                self._fatal = exc
                await self._abandon_in_flight()
            except asyncio.CancelledError:
                # Cancelled from outside (a second signal): still leave a resumable checkpoint.
                await self._abandon_in_flight()
                self._stop = Stop.STOP
                await asyncio.shield(self._finish())
                raise
            return await asyncio.shield(self._finish())
        finally:
            for task in background:
                task.cancel()
            for task in background:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _finish(self) -> RunResult:
        # The snapshot stops moving here: one lastUpdateAt for the console, the stored
        # snapshot and the headless output alike, and no longer live in this process.
        self._ended_at = utc_now_iso()
        if self._fatal is not None:
            self._state = RunState.FAILED
            status, exit_code = "paused", 3  # resumable once the cause is fixed
        elif self._stop is not Stop.NONE:
            self._state = RunState.PAUSED
            status, exit_code = "paused", 75
        else:
            self._state = RunState.COMPLETED
            status = "completed"
            exit_code = 1 if self.counters.failed_items or self.counters.carryover_failed else 0
        message = self._fatal.message if self._fatal else None
        try:
            await self._commit(status=status, exit_code=exit_code, message=message)
        except FatalError:
            self._state, exit_code = RunState.FAILED, 3
        return RunResult(self._state, exit_code, self.snapshot())

    async def _heartbeat(self) -> None:
        """Sample rates, publish the snapshot for other processes, poll the command channel."""
        next_poll = 0.0
        while True:
            try:
                next_poll = await self._beat(next_poll)
            except FatalError as exc:
                if self._fatal is None:
                    self._fatal = exc
                self.stop()
            except sqlite3.Error as exc:  # e.g. locked for a while by another process: go on
                self._count_error(BackfillError(f"state: {exc}", code="state"))
            await asyncio.sleep(SAMPLE_EVERY / 2)

    async def _beat(self, next_poll: float) -> float:
        now = self._clock()
        self._rates.add(
            now, self._items_done, self._scanned(committed=False), self.counters.bytes_uploaded
        )
        if now - self._last_published >= PUBLISH_EVERY and self._ended_at is None:
            self._last_published = now
            await self._store.publish_snapshot(self.plan.run_id, self.snapshot().to_json())
        if self._poll_commands and now >= next_poll:
            next_poll = now + COMMAND_POLL
            for command, arg in await self._store.take_commands(self.plan.job):
                await self._apply_command(command, arg)
        if self._state is RunState.PAUSING and not self._tasks and self._stop is Stop.HOLD:
            self._state = RunState.PAUSED
            await self._commit()
        return next_poll

    async def _wait_if_held(self) -> bool:
        """Block while held; True when the run must stop dispatching for good."""
        while self._stop is Stop.HOLD:
            await self._resumed.wait()
        return self._stop is Stop.STOP or self._fatal is not None

    async def _dispatch(self, item: _Item) -> None:
        await self._item_slots.acquire()
        task = asyncio.create_task(self._run_item(item), name=f"item {item.key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drain(self) -> None:
        """Wait for in-flight items; a hold near the end still waits for resume or stop."""
        while True:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
                if self._fatal is not None:
                    raise self._fatal
                continue
            if await self._wait_if_held():
                return
            if not self._redo:
                return
            await self._dispatch_redo()

    async def _dispatch_redo(self) -> None:
        redo, self._redo = self._redo, []
        for item in redo:
            await self._dispatch(item)

    async def _abandon_in_flight(self) -> None:
        self._interrupt.set()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _retry_carryover(self) -> None:
        """Failed items of earlier runs go first, whatever range this run scans."""
        carryover = await self._store.failed_items(self.plan.job, exclude_run=self.plan.run_id)
        if not carryover:
            return
        # Items handled before a stop of this run are no longer in the table (or are this run's).
        c = self.counters
        c.carryover_planned = c.carryover_done + c.carryover_failed + len(carryover)
        for failed in carryover:
            if await self._wait_if_held():
                return
            key = self.plan.key_template.render(failed.sku, failed.angle)
            await self._dispatch(_Item(failed.sku, failed.angle, key, carryover=True))
        await self._drain()
        await self._commit()

    async def _scan(self) -> None:
        plan = self.plan
        after = self._tracker.last_sku
        # Listing of the next page runs while the current one is dispatched.
        next_page = asyncio.create_task(self._load_page(after))
        try:
            while True:
                skus, existing = await next_page
                if not skus:
                    return
                next_page = asyncio.create_task(self._load_page(skus[-1]))
                for sku in skus:
                    if await self._wait_if_held():
                        return
                    if self._redo:
                        await self._dispatch_redo()
                    done = self._tracker.done_angles(sku)
                    self._tracker.dispatch(sku)
                    bad = _bad_sku(sku)
                    for angle in plan.angles:
                        if angle in done:
                            continue
                        if self._stop is not Stop.NONE and await self._wait_if_held():
                            return  # the SKU's other angles stay unfinished: a resume redoes them
                        key = plan.key_template.render(sku, angle)
                        if bad is not None:  # never looked up, fetched or written
                            await self._record(_Item(sku, angle, key), bad)
                        elif existing is not None and key in existing:
                            await self._record(
                                _Item(sku, angle, key), _Result(Outcome.SKIPPED_EXISTS, found=True)
                            )
                        else:
                            await self._dispatch(_Item(sku, angle, key, head=existing is None))
        finally:
            next_page.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await next_page

    async def _load_page(self, after: str | None) -> tuple[list[str], set[str] | None]:
        skus = await self._store.run_skus_page(self.plan.run_id, after, PAGE_SKUS)
        if not skus or not self.plan.only_missing or self.plan.exists_check != "list":
            return skus, None
        template = self.plan.key_template
        if not template.sku_first:
            return skus, None  # keys do not sort near their SKU: HEAD per item instead
        prefix = template.literal_prefix
        stop_after = prefix + max(sku + "\U0010ffff" for sku in skus)

        async def listing() -> set[str]:
            existing: set[str] = set()
            async with self._s3_slots.hold():
                async for keys in self._bucket.list_keys(
                    prefix, start_after=prefix + skus[0], stop_after=stop_after
                ):
                    existing.update(keys)
            return existing

        # Retried and counted like any S3 call (plain sleeps: this runs outside any item);
        # a listing that keeps failing leaves the page to a HEAD per item.
        try:
            existing, _ = await self._stage(listing, sleep=asyncio.sleep)
        except StageFailed:
            return skus, None
        return skus, existing

    # -- one item ---------------------------------------------------------------------------

    async def _interruptible_sleep(self, seconds: float) -> None:
        if self._interrupt.is_set():
            raise Interrupted
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._interrupt.wait(), seconds)
            raise Interrupted

    def _count_error(self, exc: BackfillError) -> None:
        self.counters.count_error(exc.code)
        self._last_errors[exc.code] = exc.message

    async def _attempt(self, call: Callable[[], Awaitable[T]]) -> T:
        """One attempt: failures are counted by code; a fatal one stops the run."""
        try:
            return await call()
        except NotFoundError:
            raise
        except BackfillError as exc:
            self._count_error(exc)
            if exc.fatal:
                self._fatal = (
                    exc if isinstance(exc, FatalError) else FatalError(exc.message, exc.code)
                )
                self.stop()
            raise

    async def _stage(
        self,
        call: Callable[[], Awaitable[T]],
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> tuple[T, int]:
        """One stage of an item under the retry policy; returns (result, attempts).

        The first attempt runs straight: nearly every stage succeeds at once, and tenacity's
        machinery costs about 75 µs a stage (5 % of an object's CPU at zero latency). A
        retryable failure hands the stage to tenacity, which starts by waiting out that first
        failure, so the schedule of attempts and waits is the policy's own.
        """
        try:
            return await self._attempt(call), 1
        except BackfillError as exc:
            if exc.fatal or isinstance(exc, NotFoundError):
                raise
            if not exc.retryable or self.plan.max_attempts <= 1:
                raise StageFailed(exc, 1) from None
            first_failure: list[BackfillError] = [exc]
        attempts = 1
        policy = retrying(
            max_attempts=self.plan.max_attempts,
            backoff=self.plan.backoff,
            sleep=sleep or self._interruptible_sleep,
        )
        try:
            async for attempt in policy:
                with attempt:
                    if first_failure:
                        raise first_failure.pop()  # attempt 1, already made above
                    attempts += 1
                    return await self._attempt(call), attempts
        except BackfillError as exc:
            if exc.fatal or isinstance(exc, NotFoundError):
                raise
            raise StageFailed(exc, attempts) from None
        raise AssertionError("unreachable: tenacity reraises")

    async def _exists(self, key: str) -> bool:
        async with self._s3_slots.hold():
            return await self._bucket.exists(key)

    async def _fetch(self, item: _Item) -> Fetched:
        assert self._origin is not None
        async with self._fetch_slots.hold():
            if self._stop is not Stop.NONE:
                raise Interrupted  # stopped while queued for a slot: no new origin request
            fetched = await self._origin.fetch(item.sku, item.angle)
        # The slot went to the next queued item, whose task is now ready; yield so it sends its
        # origin request before this task spends a millisecond or two of CPU preparing the PUT.
        await asyncio.sleep(0)
        return fetched

    async def _put(self, item: _Item, fetched: Fetched) -> bool:
        async with self._s3_slots.hold():
            return await self._bucket.put(
                item.key, fetched.body, fetched.content_type, if_none_match=self.plan.only_missing
            )

    async def _run_item(self, item: _Item) -> None:
        try:
            result = await self._process(item)
        except Interrupted:
            if self._stop is not Stop.STOP:
                self._redo.append(item)  # held (or already resumed): dispatched again
            return
        except (asyncio.CancelledError, FatalError):
            return  # unfinished: the checkpoint does not cover it, a resume redoes it
        finally:
            self._item_slots.release()
        with contextlib.suppress(FatalError):
            # A checkpoint this item triggered could not be written (state full, locked):
            # _commit has kept it pending and stopped the run, whose final commit tries again.
            await self._record(item, result)

    async def _process(self, item: _Item) -> _Result:
        """Existence, fetch, put. Returns how the item ended; raises when it did not end."""
        plan = self.plan
        # The scan already kept unusable SKUs from being dispatched; carryover items come from
        # the failed-items table, not the scan, so their SKUs are checked here.
        bad = (_bad_sku(item.sku) if item.carryover else None) or _bad_key(item.key)
        if bad is not None:
            return bad
        if plan.only_missing and (
            item.carryover
            or item.head
            or plan.exists_check == "head"
            or not plan.key_template.sku_first
        ):
            try:
                exists, _ = await self._stage(lambda: self._exists(item.key))
            except StageFailed as failed:
                return _Result(Outcome.FAILED, attempts=failed.attempts, error=failed.error)
            if exists:
                return _Result(Outcome.SKIPPED_EXISTS, found=True)
        if plan.dry_run:
            return _Result(Outcome.PLANNED)
        try:
            fetched, attempts = await self._stage(lambda: self._fetch(item))
        except NotFoundError:
            return _Result(Outcome.NO_REMOTE, attempted=True, attempts=1)
        except StageFailed as failed:
            return _Result(
                Outcome.FAILED, attempted=True, attempts=failed.attempts, error=failed.error
            )
        try:
            written, _ = await self._stage(lambda: self._put(item, fetched))
        except StageFailed as failed:
            return _Result(
                Outcome.FAILED, attempted=True, attempts=failed.attempts, error=failed.error
            )
        if not written:  # a conditional PUT found the object there (412)
            return _Result(Outcome.SKIPPED_EXISTS, attempted=True, attempts=attempts)
        return _Result(
            Outcome.UPLOADED, attempted=True, attempts=attempts, nbytes=len(fetched.body)
        )

    async def _record(self, item: _Item, result: _Result) -> None:
        """Account one finished item; commit a checkpoint when enough SKUs are behind it."""
        counters = self.counters
        self._items_done += 1
        counters.bytes_uploaded += result.nbytes
        failed = None
        if result.outcome is Outcome.FAILED:
            assert result.error is not None
            if result.error.code in ("bad_sku", "bad_key"):
                self._count_error(result.error)
            failed = FailedItem(
                item.sku,
                item.angle,
                item.key,
                result.error.code,
                result.error.message,
                result.attempts,
                self.plan.run_id,
            )
        if self.plan.dry_run:
            failed = None  # a dry run leaves nothing behind, not even failed items (but counts)
        if item.carryover:
            if failed is not None:
                counters.carryover_failed += 1
                self._pending_failed.append(failed)
            else:
                counters.carryover_done += 1
                self._pending_resolved.append((item.sku, item.angle))
            return  # carryover is not part of the run's counters, its existence split included
        counters.found_at_start += result.found
        counters.attempted_downloads += result.attempted
        if result.outcome is Outcome.UPLOADED:
            counters.uploaded += 1
        elif result.outcome is Outcome.SKIPPED_EXISTS:
            counters.skipped_exists += 1
        elif result.outcome is Outcome.NO_REMOTE:
            counters.no_remote += 1
        elif result.outcome is Outcome.PLANNED:
            counters.would_fetch += 1
        elif result.outcome is Outcome.FAILED:
            counters.failed_items += 1
            if failed is not None:
                self._pending_failed.append(failed)
        self._tracker.finish(item.sku, item.angle)
        if self._tracker.finished_skus - self._finished_at_commit >= self.plan.checkpoint_every:
            await asyncio.shield(self._commit())

    async def _commit(
        self, *, status: str | None = None, exit_code: int | None = None, message: str | None = None
    ) -> None:
        """Counters + checkpoint + failed items in one transaction, shielded from cancellation."""
        async with self._commit_lock:
            self._finished_at_commit = self._tracker.finished_skus
            counters = self.counters.copy()
            counters.scanned_skus = self._scanned(committed=True)
            failed, self._pending_failed = self._pending_failed, []
            resolved, self._pending_resolved = self._pending_resolved, []
            checkpoint = self._tracker.checkpoint()
            saved_at = utc_now_iso()
            snapshot = None
            if status:  # the stored final snapshot names the save it is part of
                snapshot = replace(
                    self.snapshot(),
                    checkpoint_saved_at=saved_at,
                    checkpoint_saved_sku=checkpoint.last_sku,
                ).to_json()
            try:
                await self._store.commit_checkpoint(
                    self.plan.run_id,
                    counters,
                    checkpoint,
                    job=self.plan.job,
                    failed=failed,
                    resolved=resolved,
                    status=status,
                    exit_code=exit_code,
                    message=message,
                    snapshot=snapshot,
                )
            except FatalError as exc:
                # The state cannot be written (full, read-only, locked): keep what was pending
                # and stop the run; it is resumable from the last checkpoint that did land.
                self._pending_failed[:0] = failed
                self._pending_resolved[:0] = resolved
                if self._fatal is None:
                    self._fatal = exc
                self.stop()
                raise
            self._saved_at, self._saved_sku = saved_at, checkpoint.last_sku
