"""What the console drives: an engine in this process, or a run in another one.

Both controllers give the console the same two things: status snapshots and commands. The
local one talks to the engine directly; the attached one reads the snapshot the running
process publishes in the state database and writes to its command channel.
"""

from __future__ import annotations

from typing import Protocol

from tui_backfill.runner import PreparedRun
from tui_backfill.snapshot import StatusSnapshot, snapshot_from_json
from tui_backfill.state import FailedItem, StateStore
from tui_backfill.status import job_status


class Controller(Protocol):
    attached: bool
    job: str
    max_concurrency: int

    async def snapshot(self) -> StatusSnapshot | None: ...

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def set_concurrency(self, value: int) -> None: ...

    async def failed_items(self) -> list[FailedItem]: ...


class LocalController:
    """The engine runs in this process; the console owns its run and its signals."""

    attached = False

    def __init__(self, prepared: PreparedRun) -> None:
        self.prepared = prepared
        self.engine = prepared.engine
        self.job = prepared.engine.plan.job
        self.max_concurrency = prepared.engine.plan.max_concurrency

    async def snapshot(self) -> StatusSnapshot | None:
        return self.engine.snapshot()

    async def pause(self) -> None:
        self.engine.hold()

    async def resume(self) -> None:
        self.engine.resume()

    async def set_concurrency(self, value: int) -> None:
        self.engine.set_concurrency(value)

    def stop(self) -> None:
        self.engine.stop()

    async def failed_items(self) -> list[FailedItem]:
        return await self.prepared.store.failed_items(self.job)


class AttachedController:
    """A run going on in another process, seen through its state; closing never stops it."""

    attached = True

    def __init__(self, store: StateStore, state_path: str, job: str) -> None:
        self._store = store
        self._state_path = state_path
        self.job = job
        self.max_concurrency = 6

    async def snapshot(self) -> StatusSnapshot | None:
        data = await job_status(self._store, self._state_path, self.job, include_dry=False)
        if data is None or "anglesPlanned" not in data:
            return None
        self.max_concurrency = int(data.get("maxConcurrency") or self.max_concurrency)
        return snapshot_from_json(data)

    async def pause(self) -> None:
        await self._store.send_command(self.job, "hold")

    async def resume(self) -> None:
        await self._store.send_command(self.job, "resume")

    async def set_concurrency(self, value: int) -> None:
        await self._store.send_command(self.job, "concurrency", str(value))

    async def failed_items(self) -> list[FailedItem]:
        return await self._store.failed_items(self.job)
