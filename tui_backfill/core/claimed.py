"""The engine's loop for a claimed source: a queue with leases shared by many processes.

An ordered source is paged by key and resumed from a checkpoint (core/engine.py); a claimed
source needs neither: the queue is the coordination between instances, on one machine or many.
This loop claims items under a bound of items in flight, keeps one batch claimed ahead (so a
claim's round trip hides behind the work, and claims come in batches), renews the leases it holds at a third of their
length, and hands each item to the pipeline's `process` with a guard that says whether the
lease is still this process's by its own clock — a process frozen past its lease (SIGSTOP, a
swapped VM) and thawed later must write nothing the new holder also writes. An item may leave
its slot before it is finished (`Guard.leave_slot`): the publishing worker holds a slot for the
download and the image work, and writes the variants and its completion beside the next item's
work, so the cores do not wait on the bucket and the database. Such an item is still in flight:
its lease is renewed and a stop waits for it.

Commands: `hold` stops claiming and hands back the claimed-but-unstarted items (no attempt
counted), in-flight ones finish; `resume` claims again; `stop` (SIGTERM) is arq's two-stage
shutdown: stop claiming and hand back the unstarted, wait up to the shutdown timeout for the
in-flight, then cancel what is left and hand it back marked as cut off (its side effects may
have happened). A failing claim or hand-back is logged and the loop goes on: the leases of what
it could not hand back run out, and any process reclaims them. `burst`: return when a claim finds
nothing and nothing is in flight.

It knows items only as things with an `id`; what a claim, a renewal or a hand-back means in a
database is the source's, what an item's work is the pipeline's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

log = logging.getLogger("tui_backfill.claimed")

J = TypeVar("J", bound="HasId")
GUARD_MARGIN = 1.0  # seconds: a lease this close to its end is treated as gone


class HasId(Protocol):
    @property
    def id(self) -> int: ...


class ClaimedSource(Protocol[J]):
    """A queue with leases (the publishing worker's jobs table; later, key ranges of one big
    job shared by many workers)."""

    async def claim(self, limit: int) -> list[J]:
        """Up to `limit` claimable items, leased to this process."""
        ...

    async def renew(self, ids: Sequence[int]) -> set[int]:
        """Extend the leases of these items; the ids still held."""
        ...

    async def release(self, items: Sequence[J], *, started: bool = False) -> None:
        """Hand items back (no attempt counted); `started`: they were cut off mid-way."""
        ...

    async def wait_for_work(self, timeout: float) -> None:
        """Return when an item may have become claimable, or after `timeout` seconds."""
        ...


class LeaseLost(Exception):
    """The item's lease ran out by this process's clock, or a renewal found it taken."""


@dataclass(frozen=True, slots=True)
class ClaimPlan:
    concurrency: int  # items processed at once
    lease: float  # seconds a claim is held without renewal
    poll: float  # seconds between claims when the queue had nothing (no wake-up came)
    shutdown_timeout: float  # stop: seconds the in-flight items get to finish
    burst: bool = False
    prefetch: int | None = None  # items claimed ahead of the slots (default: see `ahead`)
    finishing: int | None = None  # items past their slot at once (default: twice the slots)

    @property
    def tail(self) -> int:
        """Items that left their slot (`Guard.leave_slot`) and are finishing beside the slots."""
        return self.finishing if self.finishing is not None else 2 * self.concurrency

    @property
    def ahead(self) -> int:
        """Items claimed ahead of the busy slots, and the smallest claim once running: at least
        4, as a claim is one transaction (bench/publish_worker.py: 10 ms a job claimed one by
        one on PostgreSQL with 3 workers, 4 ms in claims of 4)."""
        return self.prefetch if self.prefetch is not None else max(self.concurrency, 4)


@dataclass(slots=True)
class _Held(Generic[J]):
    item: J
    deadline: float  # monotonic: the lease is ours until then (as renewed)
    started: bool = False
    task: asyncio.Task[None] | None = None


class Guard:
    """Handed to `process` with each item. Call it before every side effect: it raises
    LeaseLost once the lease is gone (or within GUARD_MARGIN of its end) by this process's
    clock. `leave_slot()` gives the item's slot to the next item while this one finishes beside
    (at most `ClaimPlan.tail` items at once; it waits for room), still leased and in flight."""

    __slots__ = ("_engine", "_held", "left")

    def __init__(self, engine: ClaimedEngine[Any], held: _Held[Any]) -> None:
        self._engine, self._held = engine, held
        self.left = False

    def __call__(self) -> None:
        if self._engine._clock() >= self._held.deadline - GUARD_MARGIN:
            raise LeaseLost

    async def leave_slot(self) -> None:
        if self.left:
            return
        engine = self._engine
        await engine._finishing.acquire()
        self.left = True
        engine._tail_count += 1
        engine._slots.release()
        engine._wake.set()  # room for a claim

    def _give_back(self) -> None:
        engine = self._engine
        if self.left:
            engine._tail_count -= 1
            engine._finishing.release()
        else:
            engine._slots.release()


class ClaimedEngine(Generic[J]):
    def __init__(
        self,
        source: ClaimedSource[J],
        process: Callable[[J, Guard], Awaitable[None]],
        plan: ClaimPlan,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self._process = process
        self.plan = plan
        self._clock = clock
        self._held: dict[int, _Held[J]] = {}
        self._slots = asyncio.Semaphore(plan.concurrency)
        self._finishing = asyncio.Semaphore(plan.tail)
        self._tail_count = 0  # items that left their slot and are finishing
        self._wake = asyncio.Event()
        self.stopping = False
        self.holding = False
        self.claimed = 0
        self.released = 0

    # -- commands ------------------------------------------------------------------------------

    def stop(self) -> None:
        self.stopping = True
        self._wake.set()

    def hold(self) -> bool:
        """True when this changed the state."""
        if self.holding:
            return False
        self.holding = True
        self._wake.set()
        return True

    def resume(self) -> bool:
        if not self.holding:
            return False
        self.holding = False
        self._wake.set()
        return True

    @property
    def in_flight(self) -> int:
        return sum(1 for held in self._held.values() if held.started)

    @property
    def in_slots(self) -> int:
        """In-flight items holding a slot (not yet past `Guard.leave_slot`)."""
        return self.in_flight - self._tail_count

    @property
    def held_ids(self) -> list[int]:
        return list(self._held)

    # -- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Claim and process until stopped (or drained, in burst mode); then drain."""
        renewer = asyncio.create_task(self._renew_leases(), name="lease-renewal")
        try:
            await self._claim_loop()
            await self._drain()
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def _claim_loop(self) -> None:
        ahead = self.plan.ahead
        room = self.plan.concurrency + ahead
        while not self.stopping:
            # Cleared before this round looks at anything: a stop, a command or a finished item
            # that comes while a claim is under way still ends the wait that follows it.
            self._wake.clear()
            if self.holding:
                await self._release_unstarted()
                await self._wait(None)
                continue
            want = room - (len(self._held) - self._tail_count)  # finishing items need no room
            if want < ahead and self._held:
                # Refill in batches: one claim (one transaction) per `ahead` items, not per item.
                await self._wait(None)
                continue
            deadline = self._clock() + self.plan.lease  # the lease starts within the claim
            try:
                claimed = await self.source.claim(want)
            except Exception as exc:  # the database blinked: the loop and its items go on
                log.warning("claim: %s: %s", exc.__class__.__name__, exc)
                await self._wait(self.plan.poll)
                continue
            for item in claimed:
                held = _Held(item, deadline)
                self._held[item.id] = held
                held.task = asyncio.create_task(self._run_item(held), name=f"item-{item.id}")
            self.claimed += len(claimed)
            if self.plan.burst and not claimed and not self._held:
                return
            if len(claimed) < want:
                await self._wait(self.plan.poll)  # nothing more now: wait for work

    async def _wait(self, poll: float | None) -> None:
        """Until woken (an item finished, a command, a stop: since this round of the loop began)
        or, with `poll`, until the source may have work or `poll` seconds passed."""
        if poll is None:  # the common case (a refill waits for room): no tasks to make
            await self._wake.wait()
            return
        waits: list[asyncio.Task[Any]] = [
            asyncio.create_task(self._wake.wait()),
            asyncio.create_task(self.source.wait_for_work(poll)),
        ]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)

    async def _drain(self) -> None:
        """Hand back the unstarted, wait for the in-flight (bounded), cancel and hand back the
        rest."""
        await self._release_unstarted()
        tasks = [h.task for h in self._held.values() if h.task is not None]
        if tasks:
            timeout = self.plan.shutdown_timeout
            if not self.stopping:  # burst: nothing asks us to hurry
                timeout = max(timeout, self.plan.lease)
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            cut = [h.item for h in self._held.values() if h.task in pending]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            if cut:  # cut off mid-way: handed back, marked so the next attempt looks first
                await self._hand_back(cut, started=True)
        left = [h.item for h in self._held.values()]
        if left:
            await self._hand_back(left, started=False)
        self._held.clear()

    async def _hand_back(self, items: list[J], *, started: bool) -> None:
        try:
            await self.source.release(items, started=started)
        except Exception as exc:  # their leases run out: any process reclaims them
            log.warning("hand-back of %d item(s): %s: %s", len(items), exc.__class__.__name__, exc)
            return
        self.released += len(items)

    async def _release_unstarted(self) -> None:
        unstarted = [h for h in self._held.values() if not h.started]
        if not unstarted:
            return
        for held in unstarted:
            if held.task is not None:
                held.task.cancel()
        await asyncio.gather(*(h.task for h in unstarted if h.task), return_exceptions=True)
        for held in unstarted:
            self._held.pop(held.item.id, None)
        await self._hand_back([h.item for h in unstarted], started=False)
        self._wake.set()

    async def _renew_leases(self) -> None:
        every = self.plan.lease / 3
        while True:
            await asyncio.sleep(every)
            try:
                await self._renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database blinked: leases run out if it stays away
                log.warning("lease renewal: %s: %s", exc.__class__.__name__, exc)

    async def _renew(self) -> None:
        ids = list(self._held)
        if not ids:
            return
        started = self._clock()
        still = await self.source.renew(ids)
        for item_id in ids:
            held = self._held.get(item_id)
            if held is None:
                continue
            # taken by another process: no more side effects
            held.deadline = started + self.plan.lease if item_id in still else 0.0

    # -- one item ------------------------------------------------------------------------------

    async def _run_item(self, held: _Held[J]) -> None:
        await self._slots.acquire()
        guard = Guard(self, held)
        try:
            if self.stopping or self.holding:
                return  # handed back by the drain / the hold (still unstarted)
            held.started = True
            try:
                await self._process(held.item, guard)
            except Exception as exc:  # a defect or a lost database: said, never silent
                log.error(
                    "item %s: %s: %s; left to its lease", held.item.id, exc.__class__.__name__, exc
                )
            finally:
                self._held.pop(held.item.id, None)
                self._wake.set()
        finally:
            guard._give_back()
