"""The engine: streams items, bounds concurrency, retries, accounts, checkpoints.

It knows nothing of any front end, and nothing of what a pipeline does with an item. It pages
through the pipeline's ordered source, dispatches each group's items under a bound of items in
flight, runs their stages under the retry policy and the slots (the politeness cap on origin
requests, a separate bound for existence checks and uploads), accounts every result into the
pipeline's counters, persists counters and checkpoint together, and publishes immutable status
snapshots. It takes commands: stop (graceful, resumable), hold/resume, concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from tui_backfill.core.breaker import Breaker
from tui_backfill.core.counters import CounterSet
from tui_backfill.core.failure_log import FailureLog
from tui_backfill.core.pipeline import (
    Group,
    Interrupted,
    Item,
    Pipeline,
    PlanSink,
    Progress,
    Result,
    Slot,
    Snapshot,
    StageFailed,
)
from tui_backfill.core.records import Command, FailedItem, RunStatus
from tui_backfill.core.retry import retrying
from tui_backfill.core.slots import Slots
from tui_backfill.core.snapshot import RateMeter, eta_seconds, utc_now_iso
from tui_backfill.core.store import RunStore
from tui_backfill.core.watermark import Position, Watermark
from tui_backfill.outcomes import BackfillError, FatalError, NotFoundError, RunState

T = TypeVar("T")
S = TypeVar("S", bound=Snapshot)
log = logging.getLogger("tui_backfill.engine")

PAGE_GROUPS = 500
PUBLISH_EVERY = 0.5  # seconds between snapshots written to the state for other processes
COMMAND_POLL = 0.5
SAMPLE_EVERY = 0.5


class Stop(enum.Enum):
    NONE = 0
    STOP = 1  # graceful: finish in-flight, persist, leave the run resumable (exit 75)
    HOLD = 2  # pause in place until resume


@dataclass(frozen=True, slots=True)
class RunPlan:
    """The fixed facts of one run the engine executes (whatever its pipeline)."""

    job: str
    run_id: int
    planned_groups: int
    dry_run: bool
    concurrency: int
    max_concurrency: int
    io_concurrency: int
    max_attempts: int
    backoff: float
    checkpoint_every: int
    started_at: str
    counters: CounterSet
    position: Position = field(default_factory=Position)
    checkpoint_saved_at: str = ""  # when `position` was saved, by an earlier process ("" unknown)


@dataclass(frozen=True, slots=True)
class RunResult(Generic[S]):
    state: RunState
    exit_code: int
    snapshot: S


def _internal(exc: BaseException) -> Result:
    """An unexpected exception in an item's work (a programming error): a failed item."""
    error = BackfillError(f"internal error: {exc.__class__.__name__}: {exc}", code="internal")
    return Result("failed", error=error, count_error=True)


class Engine(Generic[S]):
    def __init__(
        self,
        plan: RunPlan,
        *,
        pipeline: Pipeline[S],
        store: RunStore,
        clock: Callable[[], float] = time.monotonic,
        poll_commands: bool = True,
        plan_sink: PlanSink | None = None,
    ) -> None:
        self.plan = plan
        self._plan_sink = plan_sink if plan.dry_run else None  # a dry run's list of items
        self.pipeline = pipeline
        self._store = store
        self._clock = clock
        self._poll_commands = poll_commands
        self.counters = plan.counters.copy()
        self._tracker = Watermark(pipeline.members, plan.position)
        # Groups behind the position we resumed from (the committed count minus partial ones).
        self._base_finished = plan.counters.groups - len(plan.position.partial)
        self._fetch_slots = Slots(plan.concurrency)
        self._io_slots = Slots(plan.io_concurrency)
        self._item_slots = Slots(self._items_bound(plan.concurrency))
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = Stop.NONE
        self._interrupt = asyncio.Event()  # set while stopping or holding: cuts backoff waits
        self._resumed = asyncio.Event()
        self._redo: list[Item] = []  # items interrupted by a hold, dispatched again on resume
        # A server's absence in the slots the pipeline names (the origin's, the destination's)
        self._breakers = {slot: Breaker(server) for slot, server in pipeline.breakers.items()}
        self._parking = asyncio.Lock()  # parked items leave their breaker and are recorded
        self._state = RunState.RUNNING
        self._fatal: FatalError | None = None
        self._pending_failed: list[FailedItem] = []
        self._pending_resolved: list[tuple[str, int]] = []
        # (key, whether the source answered 404) of items finished since the last commit
        self._pending_absence: list[tuple[str, bool]] = []
        self._commit_lock = asyncio.Lock()
        self._finished_at_commit = 0
        self._last_errors: dict[str, str] = {}
        self._rates = RateMeter()
        self._items_done = 0
        self._last_published = 0.0
        self._saved_at = plan.checkpoint_saved_at
        self._saved_group: str | None = plan.position.last
        self._ended_at: str | None = None  # when this process's part of the run ended
        # (run status, exit code) once the run has ended here: what its record then says, so
        # a reader of this engine never sees an ended snapshot with a run still "running"
        self.ended: tuple[str, int] | None = None
        self._stored_concurrency: int | None = None  # written with the first commit
        self._beat_errors: set[str] = set()  # heartbeat failures already logged
        self._tracebacks: set[type[BaseException]] = set()  # internal errors already logged
        self._failure_log = FailureLog(log)

    def _concurrency_unsaved(self) -> bool:
        """Changed live since the settings last stored it (before the first commit: since the
        run's own setting)."""
        saved = self._stored_concurrency
        return self._fetch_slots.limit != (self.plan.concurrency if saved is None else saved)

    def _items_bound(self, concurrency: int) -> int:
        """Items in flight: enough to keep every fetch slot and every upload slot busy."""
        return concurrency * 2 + self.plan.io_concurrency

    # -- commands ---------------------------------------------------------------------------

    def stop(self) -> None:
        """Graceful stop: no new work, in-flight items finish, checkpoint persisted."""
        self._stop = Stop.STOP
        self._interrupt.set()
        self._resumed.set()  # a held run wakes up to stop
        if self._state in (RunState.RUNNING, RunState.PAUSED):
            self._state = RunState.PAUSING

    def hold(self) -> None:
        """Pause in place until `resume` (not once the run has ended in this process)."""
        if self._stop is Stop.NONE and self._ended_at is None:
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
        """The politeness cap, live; the items in flight follow it. Kept with the run's
        settings, so a resume continues at it (unless told otherwise)."""
        value = max(1, min(value, self.plan.max_concurrency))
        self._fetch_slots.set_limit(value)
        self._item_slots.set_limit(self._items_bound(value))
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

    @property
    def dry_run(self) -> bool:
        return self.plan.dry_run

    async def _apply_command(self, command: str, arg: str | None) -> None:
        if command == Command.STOP:
            self.stop()
        elif command == Command.HOLD:
            self.hold()
        elif command == Command.RESUME:
            self.resume()
        elif command == Command.CONCURRENCY and arg is not None and arg.lstrip("-").isdigit():
            self.set_concurrency(int(arg))

    # -- the snapshot -----------------------------------------------------------------------

    def _scanned(self, *, committed: bool) -> int:
        return self._base_finished + self._tracker.scanned(committed=committed)

    def _counters_now(self, *, committed: bool) -> CounterSet:
        counters = self.counters.copy()
        if counters.GROUPS:
            setattr(counters, counters.GROUPS, self._scanned(committed=committed))
        return counters

    def progress(self) -> Progress:
        # Once the run is held, stopping or has ended in this process, the committed figure:
        # groups dispatched but left with no finished item are not scanned (a resume scans
        # them), so a held or paused snapshot says what its checkpoint says and a later crash
        # cannot lower it.
        settled = self._ended_at is not None or self._stop is not Stop.NONE
        counters = self._counters_now(committed=settled)
        # Only a moving run has rates: held, pausing or ended, it moves nothing now.
        moving = self._state is RunState.RUNNING
        items_rate, groups_rate, bytes_rate = self._rates.rates() if moving else (0.0, 0.0, 0.0)
        return Progress(
            job=self.plan.job,
            run_id=self.plan.run_id,
            state=self._state,
            dry_run=self.plan.dry_run,
            started_at=self.plan.started_at,
            last_update_at=self._ended_at or utc_now_iso(),
            concurrency=self._fetch_slots.limit,
            planned_groups=self.plan.planned_groups,
            counters=counters,
            position=self._tracker.position(),
            live=self._ended_at is None,
            in_flight=len(self._tasks),
            slots_in_use=self._fetch_slots.used,
            items_per_second=items_rate,
            groups_per_second=groups_rate,
            bytes_per_second=bytes_rate,
            # only a moving run has an ETA
            eta_seconds=(
                eta_seconds(self.plan.planned_groups - counters.groups, groups_rate)
                if moving
                else None
            ),
            last_errors=dict(self._last_errors),
            message=self._fatal.message if self._fatal else "",
            checkpoint_saved_at=self._saved_at,
            checkpoint_saved_group=self._saved_group,
            held=self._stop is Stop.HOLD,
        )

    def snapshot(self) -> S:
        return self.pipeline.snapshot(self.progress())

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> RunResult[S]:
        """Run to completion, stop or fatal error; the checkpoint is persisted on every path."""
        background = [asyncio.create_task(self._heartbeat(), name="engine-heartbeat")]
        try:
            try:
                if not self.plan.dry_run:
                    await self._retry_carryover()
                await self._scan()
                await self._drain()
                await self._record_parked()
            except FatalError as exc:
                self._fatal = exc
                await self._abandon_in_flight()
            except Exception as exc:  # a bug outside any item (say, in a source's page)
                log.exception("the run stops: unexpected error (the checkpoint is kept)")
                self._fatal = FatalError(
                    f"internal error: {exc.__class__.__name__}: {exc}", code="internal"
                )
                self.stop()
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

    async def _finish(self) -> RunResult[S]:
        # The snapshot stops moving here: one lastUpdateAt for the console, the stored
        # snapshot and the headless output alike, and no longer live in this process.
        self._ended_at = utc_now_iso()
        if self._fatal is not None:
            self._state = RunState.FAILED
            status, exit_code = RunStatus.PAUSED, 3  # resumable once the cause is fixed
        elif self._stop is not Stop.NONE:
            self._state = RunState.PAUSED
            status, exit_code = RunStatus.PAUSED, 75
        else:
            self._state = RunState.COMPLETED
            status = RunStatus.COMPLETED
            c = self.counters
            problems = c.failed_items or c.carryover_failed or self.pipeline.problems(c)
            exit_code = 1 if problems else 0
        message = self._fatal.message if self._fatal else None
        self.ended = (status, exit_code)
        self._failure_log.flush()
        if self._plan_sink is not None:
            await self._plan_sink.close(complete=self._state is RunState.COMPLETED)
        try:
            await self._commit(status=status, exit_code=exit_code, message=message)
        except FatalError:
            self._state, exit_code = RunState.FAILED, 3
            self.ended = (RunStatus.PAUSED, exit_code)
        return RunResult(self._state, exit_code, self.snapshot())

    async def _heartbeat(self) -> None:
        """Sample rates, publish the snapshot for other processes, poll the command channel.
        Each step outlives its own errors: a dead heartbeat, or one whose first step keeps
        failing, would leave commands unread and a hold never completed."""
        next_poll = 0.0
        while True:
            now = self._clock()
            await self._beat_step("sample", self._sample, now)
            if now - self._last_published >= PUBLISH_EVERY and self._ended_at is None:
                self._last_published = now
                await self._beat_step("publish", self._publish)
            if self._poll_commands and now >= next_poll:
                next_poll = now + COMMAND_POLL
                await self._beat_step("commands", self._read_commands)
            if any(breaker.overdue(now) for breaker in self._breakers.values()):
                await self._beat_step("parked", self._record_overdue, now)
            if self._concurrency_unsaved() and self._ended_at is None and not self.plan.dry_run:
                # kept for a resume at once (also while held), not at the next checkpoint
                await self._beat_step("concurrency", self._commit)
            if self._state is RunState.PAUSING and not self._tasks and self._stop is Stop.HOLD:
                self._state = RunState.PAUSED
                await self._beat_step("hold", self._commit)
            await asyncio.sleep(SAMPLE_EVERY / 2)

    async def _beat_step(
        self, name: str, step: Callable[..., Awaitable[None]], *args: float
    ) -> None:
        try:
            await step(*args)
        except FatalError as exc:
            if self._fatal is None:
                self._fatal = exc
            self.stop()
        except BackfillError as exc:  # e.g. the state locked for a while by another process
            self._count_error(exc)
        except Exception as exc:
            kind = f"{name}: {exc.__class__.__name__}"
            if kind not in self._beat_errors:  # once per kind: it may recur at every beat
                self._beat_errors.add(kind)
                log.exception("heartbeat %s (the run goes on)", kind)
                self._count_error(BackfillError(f"heartbeat {kind}: {exc}", code="internal"))

    async def _sample(self, now: float) -> None:
        if self._state is not RunState.RUNNING:
            self._rates.reset()  # a resumed run is measured afresh, not across its pause
            return
        counters = self.counters
        nbytes = getattr(counters, counters.BYTES) if counters.BYTES else 0
        self._rates.add(now, self._items_done, self._scanned(committed=False), nbytes)

    async def _publish(self) -> None:
        await self._store.publish_snapshot(self.plan.run_id, self.snapshot().to_json())

    async def _read_commands(self) -> None:
        for command, arg in await self._store.take_commands(self.plan.job):
            await self._apply_command(command, arg)

    async def _wait_if_held(self) -> bool:
        """Block while held; True when the run must stop dispatching for good."""
        while self._stop is Stop.HOLD:
            await self._resumed.wait()
        return self._stop is Stop.STOP or self._fatal is not None

    async def _dispatch(self, item: Item) -> None:
        await self._item_slots.acquire()
        task = asyncio.create_task(self._run_item(item), name=f"item {item.key}")
        self._tasks.add(task)
        # Released when the task ends, however: also a task cancelled before its first step.
        task.add_done_callback(self._item_done)

    def _item_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._item_slots.release()

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
            await self._dispatch(self.pipeline.carryover(failed))
        await self._drain()
        await self._record_parked()
        await self._commit()

    async def _scan(self) -> None:
        source = self.pipeline.source(self)
        # The next page is read while the current one is dispatched.
        next_page = asyncio.create_task(source.page(self._tracker.last))
        try:
            while True:
                groups = await next_page
                if not groups:
                    return
                next_page = asyncio.create_task(source.page(groups[-1].key))
                for group in groups:
                    # the common case checked inline: a coroutine per group costs more
                    if (self._stop is not Stop.NONE or self._fatal is not None) and (
                        await self._wait_if_held()
                    ):
                        return
                    if self._redo:
                        await self._dispatch_redo()
                    if self._settled(group):
                        await self._commit_if_due()
                        continue
                    done = self._tracker.done_members(group.key)
                    self._tracker.dispatch(group.key)
                    for item in group.items:
                        if item.member in done:
                            continue
                        if self._stop is not Stop.NONE and await self._wait_if_held():
                            return  # the group's other items stay unfinished: a resume redoes them
                        if item.preset is not None:
                            await self._record(item, item.preset)
                        else:
                            await self._dispatch(item)
        finally:
            next_page.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await next_page

    # -- stages (what a pipeline's items run under) -----------------------------------------

    async def _interruptible_sleep(self, seconds: float) -> None:
        if self._interrupt.is_set():
            raise Interrupted
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._interrupt.wait(), seconds)
            raise Interrupted

    def _count_error(self, exc: BackfillError) -> None:
        self.counters.count_error(exc.code)
        if exc.code not in self._last_errors:  # the cause, once per code, for journald
            log.warning("first %s error: %s", exc.code, exc.message)
        self._last_errors[exc.code] = exc.message

    async def _attempt(self, call: Callable[[], Awaitable[T]], slot: Slot | None) -> T:
        """One attempt under its slot: failures are counted by code; a fatal one stops the
        run; a slot's server answering (a 404 too) ends its run of unreachable errors."""
        breaker = self._breakers.get(slot) if slot is not None else None
        try:
            if slot is Slot.ORIGIN:
                async with self._fetch_slots.hold():
                    if self._stop is not Stop.NONE:
                        raise Interrupted  # stopped while queued for a slot: no new request
                    value = await call()
                # The slot went to the next queued item, whose task is now ready; yield so it
                # sends its request before this task spends a millisecond or two on the next
                # stage.
                await asyncio.sleep(0)
            elif slot is Slot.IO:
                async with self._io_slots.hold():
                    value = await call()
            else:
                return await call()
            await self._answered(breaker)
            return value
        except NotFoundError:
            await self._answered(breaker)
            raise
        except BackfillError as exc:
            self._count_error(exc)
            if exc.fatal:
                self._fatal = (
                    exc if isinstance(exc, FatalError) else FatalError(exc.message, exc.code)
                )
                self.stop()
            elif exc.unreachable:
                if breaker is not None:
                    exc.unreachable_in = slot
                    self._unreachable(breaker, exc)
                else:  # outside the slots (a state or index write): an ordinary failure
                    exc.unreachable = False
            raise

    async def _answered(self, breaker: Breaker | None) -> None:
        if breaker is None:
            return
        breaker.answered()
        if breaker.parked:
            await self._record_parked([breaker])

    def _unreachable(self, breaker: Breaker, exc: BackfillError) -> None:
        """The slot's server is gone, not failing: enough in a row stop the run
        (core/breaker.py)."""
        fatal = breaker.unreachable(exc)
        if fatal is not None and self._fatal is None:
            self._fatal = fatal
            self.stop()
            raise fatal

    async def _record_parked(self, breakers: Iterable[Breaker] | None = None) -> None:
        """Parked items are failed items after all (their server answered, the run ends, or
        they waited long enough); a tripped breaker left none (they stay unfinished). Only
        `breakers`' when given: the destination's answer says nothing of the origin."""
        async with self._parking:  # the end of a run waits for a batch being recorded
            if self._fatal is not None:
                return
            for breaker in self._breakers.values() if breakers is None else breakers:
                for item, result in breaker.release():
                    await self._record(item, result)

    async def _record_overdue(self, now: float) -> None:
        await self._record_parked([b for b in self._breakers.values() if b.overdue(now)])

    async def stage(
        self,
        call: Callable[[], Awaitable[T]],
        slot: Slot | None = None,
        *,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> tuple[T, int]:
        """One stage of an item under the retry policy; returns (result, attempts).

        The first attempt runs straight: nearly every stage succeeds at once, and tenacity's
        machinery costs about 75 µs a stage (5 % of an object's CPU at zero latency). A
        retryable failure hands the stage to tenacity, which starts by waiting out that first
        failure, so the schedule of attempts and waits is the policy's own. Waits are cut
        short by a pause or stop unless `sleep` says otherwise.
        """
        try:
            return await self._attempt(call, slot), 1
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
                    return await self._attempt(call, slot), attempts
        except BackfillError as exc:
            if exc.fatal or isinstance(exc, NotFoundError):
                raise
            raise StageFailed(exc, attempts) from None
        raise AssertionError("unreachable: tenacity reraises")

    async def stage_outside_items(
        self, call: Callable[[], Awaitable[T]], slot: Slot | None = None
    ) -> tuple[T, int]:
        """A stage outside any item (say, a page's listing): plain sleeps between attempts."""
        return await self.stage(call, slot, sleep=asyncio.sleep)

    # -- one item ---------------------------------------------------------------------------

    async def _run_item(self, item: Item) -> None:
        try:
            result = await self.pipeline.process(item, self)
        except Interrupted:
            if self._stop is not Stop.STOP:
                self._redo.append(item)  # held (or already resumed): dispatched again
            return
        except (asyncio.CancelledError, FatalError):
            return  # unfinished: the checkpoint does not cover it, a resume redoes it
        except Exception as exc:
            if type(exc) not in self._tracebacks:  # the traceback once per kind of error
                self._tracebacks.add(type(exc))
                log.exception("item %r: unexpected error (a failed item 'internal')", item.key)
            result = _internal(exc)
        if result.error is not None and result.error.unreachable:
            if self._fatal is None:
                slot = Slot(result.error.unreachable_in or Slot.ORIGIN)
                breaker = self._breakers.get(slot)
                if breaker is not None:
                    breaker.park(item, result, self._clock())
                    return
                result.error.unreachable = False  # no breaker there: an ordinary failure
        with contextlib.suppress(FatalError):
            # A checkpoint this item triggered could not be written (state full, locked):
            # _commit has kept it pending and stopped the run, whose final commit tries again.
            await self._record(item, result)

    async def _record(self, item: Item, result: Result) -> None:
        """Account one finished item; commit a checkpoint when enough groups are behind it."""
        if self._tally(item, result):
            self._tracker.finish(item.group, item.member)
            await self._commit_if_due()

    async def _commit_if_due(self) -> None:
        if self._tracker.finished_groups - self._finished_at_commit >= self.plan.checkpoint_every:
            await asyncio.shield(self._commit())

    def _settled(self, group: Group) -> bool:
        """A group whose every item the source finished (`preset`, e.g. found by a listing),
        while no group before it is open: accounted, and the watermark moved past it, without
        the dispatch and finish of each item (what a re-run pays for each skipped object).
        False, with nothing done, for any other group: the usual path takes it."""
        items = group.items
        if not items or self._stop is not Stop.NONE or self._tracker.in_flight:
            return False
        for item in items:
            if item.preset is None or item.carryover:
                return False
        if not self._tracker.pass_finished(group.key, {item.member for item in items}):
            return False
        for item in items:
            if item.preset is not None:  # (every one: checked above)
                self._tally(item, item.preset)
        return True

    def _tally(self, item: Item, result: Result) -> bool:
        """The counters, failed item and absence of one finished item; False for a failed
        item of an earlier run (carryover), which is not part of the run's position."""
        counters = self.counters
        self._items_done += 1
        if result.nbytes and counters.BYTES:
            counters.add(counters.BYTES, result.nbytes)
        failed = None
        if result.error is not None:
            if result.count_error:
                self._count_error(result.error)
            error = result.error
            self._failure_log.failed(
                item.key, result.attempts, error.code, error.message, self._clock()
            )
            failed = FailedItem(
                item.group,
                item.member,
                item.key,
                result.error.code,
                result.error.message,
                result.attempts,
                self.plan.run_id,
            )
        if self.plan.dry_run:
            failed = None  # a dry run leaves nothing behind, not even failed items (but counts)
            if self._plan_sink is not None:
                self._plan_sink.item(item, result)
        else:  # the latest outcome of a key says whether the source is known not to have it
            self._pending_absence.append((item.key, result.absent))
        if item.carryover:
            if result.error is not None:
                counters.carryover_failed += 1
                if failed is not None:
                    self._pending_failed.append(failed)
            else:
                counters.carryover_done += 1
                self._pending_resolved.append((item.group, item.member))
            return False  # carryover is not part of the run's counters
        for name in result.counts:
            counters.add(name)
        if result.error is not None:
            counters.failed_items += 1
            if failed is not None:
                self._pending_failed.append(failed)
        return True

    async def _commit(
        self, *, status: str | None = None, exit_code: int | None = None, message: str | None = None
    ) -> None:
        """Counters + checkpoint + failed items in one transaction, shielded from cancellation."""
        async with self._commit_lock:
            self._finished_at_commit = self._tracker.finished_groups
            counters = self._counters_now(committed=True)
            failed, self._pending_failed = self._pending_failed, []
            resolved, self._pending_resolved = self._pending_resolved, []
            absence, self._pending_absence = self._pending_absence, []
            latest = dict(absence)  # a key finished twice (carryover, then the scan): the last
            absent = [key for key, gone in latest.items() if gone]
            present = [key for key, gone in latest.items() if not gone]
            position = self._tracker.position()
            saved_at = utc_now_iso()
            snapshot = None
            if status:  # the stored final snapshot names the save it is part of
                progress = replace(
                    self.progress(),
                    checkpoint_saved_at=saved_at,
                    checkpoint_saved_group=position.last,
                )
                snapshot = self.pipeline.snapshot(progress).to_json()
            # A concurrency changed live goes with the run's settings, so a resume keeps it.
            concurrency = self._fetch_slots.limit
            settings = (
                None if concurrency == self._stored_concurrency else {"concurrency": concurrency}
            )
            try:
                await self.pipeline.before_commit()  # its own writes land before the position
                await self._store.commit_checkpoint(
                    self.plan.run_id,
                    counters,
                    self.pipeline.checkpoint_json(position),
                    job=self.plan.job,
                    failed=failed,
                    resolved=resolved,
                    absent=absent,
                    present=present,
                    status=status,
                    exit_code=exit_code,
                    message=message,
                    snapshot=snapshot,
                    settings=settings,
                )
            except Exception as exc:
                # The state cannot be written (full, read-only, locked), or the pipeline's own
                # writes did not land: keep what was pending and stop the run; it is resumable
                # from the last checkpoint that did land.
                self._pending_failed[:0] = failed
                self._pending_resolved[:0] = resolved
                self._pending_absence[:0] = absence
                if isinstance(exc, FatalError):
                    fatal = exc
                else:  # a pipeline's before_commit failed: its writes may not have landed
                    log.exception("a commit failed: the run stops at the last checkpoint")
                    fatal = FatalError(
                        f"internal error: {exc.__class__.__name__}: {exc}", code="internal"
                    )
                if self._fatal is None:
                    self._fatal = fatal
                self.stop()
                raise fatal from None
            self._saved_at, self._saved_group = saved_at, position.last
            self._stored_concurrency = concurrency
