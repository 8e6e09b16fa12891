"""A job as another process sees it: read through the state file, driven through its command
channel (pause, hold, resume, concurrency), like the CLI's `status` and `pause` do.

`JobService` reads and drives its own job this way when a run of it goes on in another process;
the API's generic routes (`/api/jobs/{job}/...`) reach every other job of the same state file
through it. It never starts a run: only a `serve` of that job does (`serve --job NAME`).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from tui_backfill.core.records import Command
from tui_backfill.frontends.errors import ApiError
from tui_backfill.frontends.status import JobStatus, job_status
from tui_backfill.pipelines.mirror.snapshot import failed_item_json
from tui_backfill.state.lock import JobLock
from tui_backfill.state.sqlite import open_state

PAUSE_WAIT_SECONDS = 120.0


class StateJob:
    """One job of one state file, seen from outside the process running it."""

    def __init__(self, state_path: str, job: str, *, served: str | None = None) -> None:
        self.state_path = state_path
        self.job = job
        self.served = served  # the job the server asking runs, when it is another one

    # -- reading -----------------------------------------------------------------------------
    async def status_or_none(self) -> JobStatus | None:
        """The status of its latest run, or None when it has none (or there is no state yet:
        reading never creates the state file)."""
        if not Path(self.state_path).exists():
            return None
        async with open_state(self.state_path) as store:
            return await job_status(store, self.state_path, self.job)

    async def status(self) -> JobStatus:
        status = await self.status_or_none()
        if status is None:
            raise self.no_runs()
        return status

    async def failed_items(self) -> list[dict[str, Any]] | None:
        """Its failed items as the API spells them; None when the job has no runs."""
        if not Path(self.state_path).exists():
            return None
        async with open_state(self.state_path) as store:
            items = await store.failed_items(self.job)
            if not items and await store.latest_run(self.job) is None:
                return None
        return [failed_item_json(item) for item in items]

    async def runs(self, limit: int) -> list[dict[str, Any]]:
        """Its runs, newest first (empty when it has none)."""
        from tui_backfill.frontends.history import run_history

        if not Path(self.state_path).exists():
            return []
        async with open_state(self.state_path) as store:
            return await run_history(store, self.job, limit=limit, state_path=self.state_path)

    def no_runs(self) -> ApiError:
        return ApiError(404, f"job {self.job!r} has no runs in {self.state_path}")

    # -- driving the process that runs it ------------------------------------------------------
    async def holder(self) -> int | None:
        """The pid of the process running the job, or None."""
        return await asyncio.to_thread(JobLock(self.state_path, self.job).holder)

    async def send(self, command: Command, arg: str | None = None) -> None:
        async with open_state(self.state_path) as store:
            await store.send_command(self.job, command, arg)

    async def pause(self) -> tuple[int, dict[str, Any]]:
        """The graceful stop: sent, then answered once its process has let the job go (200,
        the paused status) or, after PAUSE_WAIT_SECONDS, still finishing (202)."""
        if await self.holder() is None:
            raise await self._not_running("nothing to pause")
        await self.send(Command.STOP)
        deadline = time.monotonic() + PAUSE_WAIT_SECONDS
        while await self.holder() is not None:
            if time.monotonic() > deadline:
                return 202, {"message": f"job {self.job!r} is still finishing in-flight items"}
            await asyncio.sleep(0.1)
        return 200, (await self.status()).to_json()

    async def command(self, name: Command, arg: str | None = None) -> tuple[int, dict[str, Any]]:
        """hold, resume or concurrency: sent to the process running the job (202)."""
        holder = await self.holder()
        if holder is None:
            raise await self._not_running(f"nothing to {name}")
        await self.send(name, arg)
        what = name.value if arg is None else f"{name.value} {arg}"
        return 202, {"message": f"{what} sent to job {self.job!r} running in process {holder}"}

    async def _not_running(self, what: str) -> ApiError:
        if await self.status_or_none() is None:
            return self.no_runs()
        message = f"job {self.job!r} is not running ({what})"
        if self.served is not None and self.served != self.job:
            message += (
                f"; this server starts runs of job {self.served!r} only: start "
                f"`tui-backfill serve --job {self.job}` (or `resume --job {self.job}`) for it"
            )
        return ApiError(409, message)
