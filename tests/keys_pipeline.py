"""A pipeline defined in the tests, on the engine, without touching the engine: an ordered
source of keys (in memory) and one stage that records what it saw. The seam's proof, and the
engine's test bench for defects that no real pipeline can provoke on purpose."""

from __future__ import annotations

import asyncio
import bisect
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from tui_backfill.core.counters import CounterSet
from tui_backfill.core.engine import Engine, RunPlan
from tui_backfill.core.pipeline import Group, Item, Progress, Result, Slot, StageFailed, Stages
from tui_backfill.core.records import FailedItem, RunCodec, RunRecord, register_codec
from tui_backfill.core.watermark import Position
from tui_backfill.state.sqlite import StateStore

NAME = "test-keys"


@dataclass(slots=True, kw_only=True)
class KeyCounters(CounterSet):
    GROUPS: ClassVar[str] = "scanned"
    scanned: int = 0
    seen: int = 0


def position_json(position: Position) -> dict[str, Any]:
    return {"lastKey": position.last, "doneAfter": sorted(position.partial)}


def position_from_json(data: dict[str, Any]) -> Position:
    return Position(data.get("lastKey"), {key: (0,) for key in data.get("doneAfter") or []})


register_codec(NAME, RunCodec(KeyCounters, position_from_json, lambda: position_json(Position())))


@dataclass(frozen=True, slots=True)
class KeySnapshot:
    state: str
    counters: KeyCounters
    position: Position
    in_flight: int

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            **self.counters.to_json(),
            "checkpoint": position_json(self.position),
        }


class KeySource:
    def __init__(self, keys: Sequence[str], page_size: int) -> None:
        self._keys = sorted(keys)
        self._page = page_size

    async def page(self, after: str | None) -> Sequence[Group]:
        start = 0 if after is None else bisect.bisect_right(self._keys, after)
        return [Group(k, [Item(k, 0, k)]) for k in self._keys[start : start + self._page]]


@dataclass
class KeysPipeline:
    keys: Sequence[str]
    delay: float = 0.0
    page_size: int = 7
    seen: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)  # seen, not landed yet
    landed: list[str] = field(default_factory=list)  # landed by before_commit
    hook: Callable[[Item], Any] | None = None  # runs inside the stage, before it records
    name: str = NAME
    members: tuple[int, ...] = (0,)
    slot: Slot = Slot.ORIGIN  # the slot the visit runs in
    breakers: Mapping[Slot, str] = field(
        default_factory=lambda: {Slot.ORIGIN: "origin", Slot.IO: "destination"}
    )

    def source(self, stages: Stages) -> KeySource:
        return KeySource(self.keys, self.page_size)

    def carryover(self, failed: FailedItem) -> Item:
        return Item(failed.group, failed.member, failed.key, carryover=True)

    async def process(self, item: Item, stages: Stages) -> Result:
        async def visit() -> None:
            if self.hook is not None:
                await self.hook(item)
            await asyncio.sleep(self.delay)
            self.seen.append(item.key)
            self.pending.append(item.key)

        try:
            await stages.stage(visit, self.slot)
        except StageFailed as failed:
            return Result("failed", attempts=failed.attempts, error=failed.error)
        return Result("seen", ("seen",))

    def checkpoint_json(self, position: Position) -> dict[str, Any]:
        return position_json(position)

    async def before_commit(self) -> None:
        """Keys seen since the last commit land now (the way the hash index batches upserts)."""
        self.landed.extend(self.pending)
        self.pending.clear()

    def problems(self, counters: Any) -> int:
        return 0

    def snapshot(self, progress: Progress) -> KeySnapshot:
        return KeySnapshot(
            progress.state.value,
            progress.counters,
            progress.position,
            progress.in_flight,  # type: ignore[arg-type]
        )


async def new_run(store: StateStore, job: str, keys: Sequence[str]) -> int:
    run_id = await store.create_run(job, {"pipeline": NAME}, dry_run=False, range_after=None)

    async def none() -> Any:
        return
        yield

    await store.snapshot_skus(run_id, none(), None, 0)  # 'running', with no snapshot of its own
    return run_id


def engine_for(
    store: StateStore,
    record: RunRecord,
    pipeline: KeysPipeline,
    *,
    concurrency: int = 2,
    io: int = 2,
    checkpoint_every: int = 5,
) -> Engine[KeySnapshot]:
    plan = RunPlan(
        job=record.job,
        run_id=record.id,
        planned_groups=len(pipeline.keys),
        dry_run=False,
        concurrency=concurrency,
        max_concurrency=6,
        io_concurrency=io,
        max_attempts=3,
        backoff=0.05,
        checkpoint_every=checkpoint_every,
        started_at=record.started_at,
        counters=record.counters,
        position=record.checkpoint,
    )
    return Engine(plan, pipeline=pipeline, store=store)


async def main(state: str, job: str, run_id: int, keys_file: str, seen_file: str) -> None:
    """A child process for the kill test: runs the job, appending each key it sees."""
    keys = json.loads(Path(keys_file).read_text())
    store = await StateStore.open(state)
    record = await store.run(run_id)
    assert record is not None

    async def note(item: Item) -> None:
        with open(seen_file, "a") as f:
            f.write(item.key + "\n")

    pipeline = KeysPipeline(keys, delay=0.01, hook=note)
    await engine_for(store, record, pipeline).run()


if __name__ == "__main__":
    import sys

    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]))
