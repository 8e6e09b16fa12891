"""The pipeline seam: what a pipeline gives the engine, and what the engine gives it back.

The engine knows items (a group for the checkpoint, a member within it, a name, a payload),
slots, stages with retries and timeouts, results, counters by name, commits and commands —
never SKUs, angles or keys. A pipeline declares its counters, its item source, how one item
is processed (its stages), how a position is spelled in its checkpoint, and its snapshot.

Two kinds of item source: an ordered one (pages of groups in ascending key order, resumed from
a watermark position; this protocol and core/engine.py) and a claimed one (a queue with leases,
shared by many processes: the publishing worker's jobs table; core/claimed.py).
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from tui_backfill.core.counters import CounterSet
from tui_backfill.core.records import FailedItem
from tui_backfill.core.watermark import Position
from tui_backfill.outcomes import BackfillError, RunState

T = TypeVar("T")
S_co = TypeVar("S_co", bound="Snapshot", covariant=True)


@dataclass(frozen=True, slots=True)
class Result:
    """How one item ended. `counts` are the counters it adds one to; `error` set: it failed
    (attempts exhausted, or a permanent error) and is recorded as a failed item."""

    outcome: str
    counts: tuple[str, ...] = ()
    attempts: int = 0
    error: BackfillError | None = None
    nbytes: int = 0
    count_error: bool = False  # the error was no attempt (found by a check): count its code here
    # The source does not have the item (a 404): its key is remembered as absent until a later
    # outcome of it says otherwise (coverage's `fillable` leaves such keys out).
    absent: bool = False


@dataclass(slots=True)
class Item:
    """One unit of work. `preset`: its result is known without any stage (say, found by a
    listing); `carryover`: a failed item of an earlier run, retried first."""

    group: str
    member: int
    key: str  # its name in logs and in the failed-items table
    payload: Any = None
    carryover: bool = False
    preset: Result | None = None


@dataclass(slots=True)
class Group:
    """A position of an ordered source and its items (all of its members)."""

    key: str
    items: list[Item] = field(default_factory=list)


class Slot(enum.StrEnum):
    """Which bound a stage runs under."""

    ORIGIN = "origin"  # the politeness cap (`concurrency`): a stopping run sends no new request
    IO = "io"  # existence checks, listings, uploads: their own bound beside the fetches


class StageFailed(Exception):
    """A stage exhausted its attempts (or hit a permanent error)."""

    def __init__(self, error: BackfillError, attempts: int) -> None:
        super().__init__(error.message)
        self.error = error
        self.attempts = attempts


class Interrupted(Exception):
    """A stage was cut short by pause or stop: the item is left unfinished."""


class Stages(Protocol):
    """What the engine offers a pipeline for one item."""

    @property
    def dry_run(self) -> bool: ...

    @property
    def concurrency(self) -> int:
        """The origin fetches allowed at once now (the politeness cap; it may change)."""
        ...

    async def stage(
        self, call: Callable[[], Awaitable[T]], slot: Slot | None = None
    ) -> tuple[T, int]:
        """Run `call` under the retry policy (and, with `slot`, one slot per attempt);
        (its result, attempts). Raises StageFailed, NotFoundError, FatalError or Interrupted."""
        ...

    async def stage_outside_items(
        self, call: Callable[[], Awaitable[T]], slot: Slot | None = None
    ) -> tuple[T, int]:
        """The same for a call outside any item (a page's listing): plain sleeps between
        attempts, not cut short by a pause."""
        ...


class PlanSink(Protocol):
    """Where a dry run lists what it would do, one item at a time (`--plan-file`)."""

    def item(self, item: Item, result: Result) -> None:
        """One planned item: how the dry run found it would end."""
        ...

    async def close(self, *, complete: bool) -> None:
        """The dry run ended; `complete`: it planned every item (a partial plan is dropped)."""
        ...


class OrderedSource(Protocol):
    async def page(self, after: str | None) -> Sequence[Group]:
        """The next groups after `after` (None: from the start) in ascending order; empty at
        the end. The next page is read while this one is dispatched."""
        ...


@dataclass(frozen=True, slots=True)
class Progress:
    """The engine's view of a run, from which a pipeline builds its status snapshot."""

    job: str
    run_id: int
    state: RunState
    dry_run: bool
    started_at: str
    last_update_at: str
    concurrency: int
    planned_groups: int
    counters: CounterSet
    position: Position
    live: bool
    in_flight: int
    slots_in_use: int
    items_per_second: float
    groups_per_second: float
    bytes_per_second: float
    eta_seconds: float | None
    last_errors: Mapping[str, str]
    message: str
    checkpoint_saved_at: str
    checkpoint_saved_group: str | None
    held: bool = False  # a hold (released by resume in this process), not a stop


class Snapshot(Protocol):
    """A pipeline's status snapshot: immutable, rendered by every front end."""

    @property
    def state(self) -> str: ...

    def to_json(self) -> dict[str, Any]: ...

    def counter_rows(self) -> list[list[tuple[str, str]]]:
        """The console's counters: rows of (label, value) cells, labelled by the pipeline."""
        ...


class Pipeline(Protocol[S_co]):
    """One kind of job on the engine; `S_co` is its status snapshot."""

    name: str
    members: tuple[int, ...]  # the members of every group (angles; (0,) for one item a group)
    # The slots whose server's absence (core/breaker.py: unreachable attempts in a row) stops
    # the run, and what the run says is gone: {Slot.ORIGIN: "origin", Slot.IO: "destination"}.
    # In a slot not named, an unreachable attempt is an ordinary failure.
    breakers: Mapping[Slot, str]

    def source(self, stages: Stages) -> OrderedSource:
        """The ordered source of this run (its pages may use `stages` for their own calls)."""
        ...

    def carryover(self, failed: FailedItem) -> Item:
        """The item to retry for a failed item of an earlier run."""
        ...

    async def process(self, item: Item, stages: Stages) -> Result:
        """Run the item's stages; return how it ended (raise Interrupted when it did not)."""
        ...

    def checkpoint_json(self, position: Position) -> dict[str, Any]: ...

    async def before_commit(self) -> None:
        """Called under the commit lock before each checkpoint commit: a pipeline that
        batches writes of its own (the hash index's upserts) lands them here, so a checkpoint
        never passes an item whose write has not landed."""
        ...

    def problems(self, counters: Any) -> int:
        """Findings beyond failed items that make a completed run exit 1 (a verify run's
        mismatches); 0 for none."""
        ...

    def snapshot(self, progress: Progress) -> S_co: ...
