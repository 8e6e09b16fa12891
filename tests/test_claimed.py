"""The engine's claimed-source loop on an in-memory queue (a unit of the core: the real
queues have their own contract suite, the worker its end-to-end tests)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pytest

from tui_backfill.core.claimed import ClaimedEngine, ClaimPlan, Guard, LeaseLost


@dataclass(frozen=True)
class Job:
    id: int


class MemoryQueue:
    def __init__(self, n: int) -> None:
        self.pending = [Job(i) for i in range(1, n + 1)]
        self.released: list[int] = []
        self.claims: list[int] = []
        self.renewals = 0
        self.taken: set[int] = set()  # ids another worker took over
        self.cut: list[int] = []  # handed back after starting (cut off at the shutdown bound)

    async def claim(self, limit: int) -> list[Job]:
        batch, self.pending = self.pending[:limit], self.pending[limit:]
        self.claims.append(len(batch))
        return batch

    async def renew(self, ids: Sequence[int]) -> set[int]:
        self.renewals += 1
        return set(ids) - self.taken

    async def release(self, items: Sequence[Job], *, started: bool = False) -> None:
        self.released += [j.id for j in items]
        self.cut += [j.id for j in items] if started else []
        self.pending = sorted([*items, *self.pending], key=lambda j: j.id)

    async def wait_for_work(self, timeout: float) -> None:
        await asyncio.sleep(min(timeout, 0.01))


def plan(**changes: object) -> ClaimPlan:
    base = {"concurrency": 2, "lease": 30.0, "poll": 0.01, "shutdown_timeout": 5.0, "burst": True}
    return ClaimPlan(**{**base, **changes})  # type: ignore[arg-type]


async def test_burst_processes_everything_once_within_the_bound() -> None:
    queue = MemoryQueue(25)
    done: list[int] = []
    running = 0
    most = 0

    async def process(job: Job, guard: Callable[[], None]) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.001)
        guard()
        done.append(job.id)
        running -= 1

    engine = ClaimedEngine(queue, process, plan())
    await asyncio.wait_for(engine.run(), 10)
    assert sorted(done) == list(range(1, 26))
    assert most == 2  # the concurrency bound, though 6 are claimed (4 ahead)
    assert queue.claims[0] == 6 and engine.claimed == 25 and queue.released == []
    got = [n for n in queue.claims if n]
    assert all(n >= 4 for n in got[1:-1]), queue.claims  # refilled in batches, not one by one


async def test_hold_hands_back_the_unstarted_and_stop_drains() -> None:
    queue = MemoryQueue(10)
    gate = asyncio.Event()
    started: list[int] = []

    async def process(job: Job, guard: Callable[[], None]) -> None:
        started.append(job.id)
        await gate.wait()

    engine = ClaimedEngine(queue, process, plan(burst=False))
    runner = asyncio.create_task(engine.run())
    while len(started) < 2:
        await asyncio.sleep(0.001)
    assert engine.hold()
    await asyncio.sleep(0.05)
    assert sorted(queue.released) == [3, 4, 5, 6]  # claimed ahead, never started: back
    assert engine.in_flight == 2
    gate.set()
    await asyncio.sleep(0.02)
    assert engine.claimed == 6  # no claim while held
    engine.stop()
    await asyncio.wait_for(runner, 5)
    assert started == [1, 2]


async def test_the_guard_refuses_after_the_lease_ran_out_by_the_clock() -> None:
    now = [0.0]
    queue = MemoryQueue(1)
    outcome: list[str] = []
    release = asyncio.Event()

    async def process(job: Job, guard: Callable[[], None]) -> None:
        guard()  # fine at the start
        await release.wait()  # frozen past the lease (a SIGSTOP)
        try:
            guard()
        except LeaseLost:
            outcome.append("lost")

    engine = ClaimedEngine(queue, process, plan(lease=10.0), clock=lambda: now[0])
    runner = asyncio.create_task(engine.run())
    await asyncio.sleep(0.01)
    now[0] = 9.5  # within GUARD_MARGIN of the lease's end
    release.set()
    await asyncio.wait_for(runner, 5)
    assert outcome == ["lost"]


@pytest.mark.parametrize("taken", [True, False])
async def test_a_renewal_that_finds_the_lease_taken_stops_side_effects(taken: bool) -> None:
    queue = MemoryQueue(1)
    if taken:
        queue.taken = {1}
    outcome: list[str] = []

    async def process(job: Job, guard: Callable[[], None]) -> None:
        while queue.renewals == 0:
            await asyncio.sleep(0.005)
        try:
            guard()
            outcome.append("ok")
        except LeaseLost:
            outcome.append("lost")

    engine = ClaimedEngine(queue, process, plan(lease=3.3))  # renewed every 1.1 s
    await asyncio.wait_for(engine.run(), 5)
    assert outcome == (["lost"] if taken else ["ok"])


async def test_stop_hands_back_what_outlives_the_shutdown_bound_marked_as_cut() -> None:
    """Stage two of a stop: in-flight items still running at the bound are cancelled and
    handed back (no attempt counted), marked as started: their side effects may exist."""
    queue = MemoryQueue(2)
    forever = asyncio.Event()

    async def process(job: Job, guard: Callable[[], None]) -> None:
        await forever.wait()

    engine = ClaimedEngine(queue, process, plan(burst=False, shutdown_timeout=0.2))
    runner = asyncio.create_task(engine.run())
    while engine.in_flight < 2:
        await asyncio.sleep(0.01)
    engine.stop()
    await asyncio.wait_for(runner, 5)
    assert sorted(queue.cut) == [1, 2] and engine.released == 2


async def test_a_failing_claim_or_item_does_not_stop_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A database that blinks during a claim, or an item whose recording fails: logged, and
    the loop goes on (the item's lease runs out; any process reclaims it)."""
    queue = MemoryQueue(10)
    claims = 0
    real_claim = queue.claim

    async def claim(limit: int) -> list[Job]:
        nonlocal claims
        claims += 1
        if claims == 2:
            raise ConnectionResetError("the database blinked")
        return await real_claim(limit)

    queue.claim = claim  # type: ignore[method-assign]
    done: list[int] = []

    async def process(job: Job, guard: Callable[[], None]) -> None:
        await asyncio.sleep(0.01)
        if job.id == 3:
            raise ConnectionResetError("lost at completion")
        done.append(job.id)

    engine = ClaimedEngine(queue, process, plan(concurrency=2, prefetch=2))
    await asyncio.wait_for(engine.run(), 5)
    assert sorted(done) == [1, 2, 4, 5, 6, 7, 8, 9, 10]
    messages = [r.getMessage() for r in caplog.records]
    assert any("claim: ConnectionResetError" in m for m in messages)
    assert any("item 3: ConnectionResetError" in m and "left to its lease" in m for m in messages)


async def test_an_item_past_its_slot_stays_in_flight_within_the_tail_bound() -> None:
    """`leave_slot` gives the slot to the next item (the publishing worker's next download
    overlaps this job's image work and PUTs), but the item stays leased and in flight: at most
    `tail` items past their slot at once, then leave_slot waits; a stop waits for them too."""
    queue = MemoryQueue(8)
    finish = asyncio.Event()
    in_slot = past_slot = most_past = 0
    finished: list[int] = []

    async def process(job: Job, guard: Guard) -> None:
        nonlocal in_slot, past_slot, most_past
        in_slot += 1
        await asyncio.sleep(0.001)  # "the download"
        in_slot -= 1
        await guard.leave_slot()
        past_slot += 1
        most_past = max(most_past, past_slot)
        await finish.wait()  # "the image work and the PUTs", held until the test says
        guard()
        finished.append(job.id)
        past_slot -= 1

    engine = ClaimedEngine(queue, process, plan(concurrency=1, finishing=3, lease=1.5))
    runner = asyncio.create_task(engine.run())
    for _ in range(500):
        if past_slot == 3 and engine.in_slots == 1:
            break
        await asyncio.sleep(0.005)
    # one slot, yet four items started: three past their slot, the fourth waiting for room
    assert (past_slot, engine.in_slots, engine.in_flight) == (3, 1, 4)
    renewals = queue.renewals
    await asyncio.sleep(0.6)
    assert queue.renewals > renewals  # past-slot items keep their leases
    engine.stop()
    await asyncio.sleep(0.05)
    assert not runner.done()  # the stop waits for the in-flight, past-slot items included
    finish.set()
    await asyncio.wait_for(runner, 5)
    assert most_past == 3 and sorted(finished) == [1, 2, 3, 4]
    assert queue.cut == [] and engine.in_flight == 0
    assert queue.released and min(queue.released) == 5  # the claimed-ahead, never started


async def test_a_stop_during_a_claim_ends_the_wait_that_follows() -> None:
    """SIGTERM while a claim is under way (a database round trip) that then finds nothing: the
    loop must not sit out its poll interval (a minute in production) before it drains."""

    class SlowEmptyQueue(MemoryQueue):
        async def claim(self, limit: int) -> list[Job]:
            await asyncio.sleep(0.2)
            return []

        async def wait_for_work(self, timeout: float) -> None:
            await asyncio.sleep(timeout)

    queue = SlowEmptyQueue(0)

    async def process(job: Job, guard: Guard) -> None:
        raise AssertionError("nothing to process")

    engine = ClaimedEngine(queue, process, plan(burst=False, poll=60.0))
    runner = asyncio.create_task(engine.run())
    await asyncio.sleep(0.1)  # inside the first claim
    engine.stop()
    await asyncio.wait_for(runner, 2)
