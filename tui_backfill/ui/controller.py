"""What the console drives: an engine in this process, or a run in another one.

Both controllers give the console the same two things: status snapshots and commands. The
local one talks to the engine directly; the attached one reads the snapshot the running
process publishes in the state database and writes to its command channel.
"""

from __future__ import annotations

from typing import Protocol

from tui_backfill.runner import PreparedRun
from tui_backfill.snapshot import StatusSnapshot, snapshot_from_json
from tui_backfill.state import FailedItem, JobLock, StateStore


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
        self._lock = JobLock(state_path, job)
        self.job = job
        self.max_concurrency = 6

    async def snapshot(self) -> StatusSnapshot | None:
        run = await self._store.latest_run(self.job, include_dry=False)
        if run is None or not run.snapshot:
            return None
        self.max_concurrency = int(run.settings.get("max_concurrency") or self.max_concurrency)
        data = dict(run.snapshot)
        live = self._lock.holder() is not None and run.status == "running"
        data["live"] = live
        if not live and data.get("state") in ("running", "pausing"):
            data["state"] = "paused"
        return snapshot_from_json(data)

    async def pause(self) -> None:
        await self._store.send_command(self.job, "hold")

    async def resume(self) -> None:
        await self._store.send_command(self.job, "resume")

    async def set_concurrency(self, value: int) -> None:
        await self._store.send_command(self.job, "concurrency", str(value))

    async def failed_items(self) -> list[FailedItem]:
        return await self._store.failed_items(self.job)
