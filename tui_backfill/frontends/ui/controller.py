"""What the console drives: an engine in this process, or a run in another one.

All controllers give the console the same two things: status snapshots and commands. The
local one talks to the engine directly; the attached one reads the snapshot the running
process publishes in the state database and writes to its command channel; the HTTP one
talks to a serving process's control API (`attach --url`).
"""

from __future__ import annotations

import os
import shlex
import socket
import time
import urllib.parse
from typing import Any, Protocol

from tui_backfill.core.records import Command, FailedItem
from tui_backfill.core.store import JobStore
from tui_backfill.frontends.demo_names import DEMO_COMMANDS
from tui_backfill.frontends.status import JobStatus, job_status
from tui_backfill.outcomes import ConfigError
from tui_backfill.pipelines.config import DEFAULT_STATE
from tui_backfill.pipelines.mirror.snapshot import failed_item_from_json
from tui_backfill.pipelines.prepare import PreparedRun
from tui_backfill.pipelines.snapshots import AnySnapshot

API = "/api/rsr-image-backfill"


class CommandFailed(Exception):
    """A command could not reach the run (its server went away, or refused): shown, not fatal."""


class Controller(Protocol):
    attached: bool
    job: str
    max_concurrency: int
    where: str  # what the console is attached to, as the operator named it

    async def snapshot(self) -> AnySnapshot | None: ...

    def lost_for(self) -> float | None:
        """Seconds since the last good snapshot while the run cannot be reached; else None."""
        ...

    def resume_ways(self) -> list[str]:
        """How to continue the run once stopped, the usual way first."""
        ...

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def set_concurrency(self, value: int) -> None: ...

    async def failed_items(self) -> list[FailedItem]: ...


def resume_command(job: str, state: str) -> str:
    """`tui-backfill resume` for this job and state file (`--state` only when not the
    default, which is relative to the working directory); a demo's own command for its job."""
    if (job, os.path.normpath(state)) in DEMO_COMMANDS:
        return DEMO_COMMANDS[job, os.path.normpath(state)]
    command = f"tui-backfill resume --job {shlex.quote(job)}"
    return command if state == DEFAULT_STATE else f"{command} --state {shlex.quote(state)}"


class LocalController:
    """The engine runs in this process; the console owns its run and its signals."""

    attached = False
    where = "this process"

    def __init__(self, prepared: PreparedRun) -> None:
        self.prepared = prepared
        self.engine = prepared.engine
        self.job = prepared.engine.plan.job
        self.max_concurrency = prepared.engine.plan.max_concurrency

    def lost_for(self) -> float | None:
        return None

    def resume_ways(self) -> list[str]:
        return [resume_command(self.job, self.prepared.settings.state)]

    async def snapshot(self) -> AnySnapshot | None:
        snapshot: AnySnapshot = self.engine.snapshot()
        return snapshot

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

    def __init__(self, store: JobStore, state_path: str, job: str) -> None:
        self._store = store
        self._state_path = state_path
        self.job = job
        self.where = state_path
        self.max_concurrency = 6

    def lost_for(self) -> float | None:
        return None  # the state file is read here: there is no connection to lose

    def resume_ways(self) -> list[str]:
        return [resume_command(self.job, self._state_path)]

    async def snapshot(self) -> AnySnapshot | None:
        status = await job_status(self._store, self._state_path, self.job, include_dry=False)
        if status is None:
            return None
        self.max_concurrency = status.max_concurrency or self.max_concurrency
        return status.snapshot

    async def pause(self) -> None:
        await self._store.send_command(self.job, Command.HOLD)

    async def resume(self) -> None:
        await self._store.send_command(self.job, Command.RESUME)

    async def set_concurrency(self, value: int) -> None:
        await self._store.send_command(self.job, Command.CONCURRENCY, str(value))

    async def failed_items(self) -> list[FailedItem]:
        return await self._store.failed_items(self.job)


class HttpController:
    """A run served over HTTP (`run --serve PORT` or `serve`), through its control API."""

    attached = True

    def __init__(
        self, url: str, *, token: str = "", timeout: float = 5.0, job: str | None = None
    ) -> None:
        """`job`: attach through the generic routes of that job (any pipeline); else the
        image job's seed routes."""
        import aiohttp

        self.url = url.rstrip("/")
        self.where = self.url
        self.job = job or ""
        self._api = f"/api/jobs/{urllib.parse.quote(job, safe='')}" if job else API
        self.max_concurrency = 6
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._session = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
        )
        self._last: AnySnapshot | None = None
        self._state_path: str | None = None  # the run's state, as its status says (absolute)
        self._host: str | None = None
        self._answered_at = 0.0  # time.monotonic() of the last good snapshot
        self._lost = False

    async def _call(self, method: str, path: str, body: dict[str, object] | None = None) -> Any:
        import aiohttp

        try:
            async with self._session.request(
                method, f"{self.url}{self._api}{path}", json=body
            ) as answer:
                data = await answer.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise CommandFailed(
                f"{path[1:]}: {self.url} did not answer ({exc.__class__.__name__})"
            ) from None
        if answer.status >= 400 or not isinstance(data, dict):
            error = data.get("error") if isinstance(data, dict) else data
            raise CommandFailed(f"{path[1:]}: {answer.status} {error}")
        return data

    async def check(self) -> None:
        """Reachable and speaking the API: else a one-line ConfigError."""
        import aiohttp

        try:
            async with self._session.get(f"{self.url}{self._api}/status") as answer:
                if answer.status == 401:
                    raise ConfigError("TUI_BACKFILL_API_TOKEN", "the server wants a bearer token")
                if answer.status == 409 and self._api == API:  # not an image job
                    raise ConfigError(
                        "--job",
                        f"{self.url} serves a job of another pipeline; attach with --job NAME",
                    )
                if answer.status not in (200, 404):
                    raise ConfigError("--url", f"{self.url} answered {answer.status} to /status")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ConfigError(
                "--url", f"cannot reach {self.url}: {exc.__class__.__name__}"
            ) from None

    async def snapshot(self) -> AnySnapshot | None:

        try:
            data = await self._call("GET", "/status")
        except CommandFailed:
            # The serving process is gone or unreachable: the last view, marked lost (the
            # console keeps polling, and picks up again when it answers).
            self._lost = self._last is not None
            return self._last
        if "anglesPlanned" not in data and "scannedObjects" not in data:
            return None
        status = JobStatus.from_json(data)
        self.job = status.job or self.job
        self.max_concurrency = status.max_concurrency or self.max_concurrency
        self._state_path = status.state_path or self._state_path
        self._host = status.host or self._host
        self._last = status.snapshot
        self._answered_at = time.monotonic()
        self._lost = False
        return self._last

    def lost_for(self) -> float | None:
        return time.monotonic() - self._answered_at if self._lost else None

    def resume_ways(self) -> list[str]:
        """`resume` where the run's state is (its process exits on a stop), or the resume of
        the API to a `serve` (which continues the run in its own process)."""
        return [
            resume_command(self.job, self._state_here()),
            f"POST {self.url}{self._api}/resume (to a serve)",
        ]

    def _state_here(self) -> str:
        """The served run's state path as `--state` takes it here: relative to this working
        directory when the run is on this machine and below it (the default state then needs
        no `--state`), else absolute (a server's status that says none: the default)."""
        if self._state_path is None:
            return DEFAULT_STATE
        if self._host == socket.gethostname():
            relative = os.path.relpath(self._state_path)
            if relative != os.pardir and not relative.startswith(os.pardir + os.sep):
                return relative
        return self._state_path

    async def pause(self) -> None:
        await self._call("POST", "/hold")

    async def resume(self) -> None:
        await self._call("POST", "/resume")

    async def set_concurrency(self, value: int) -> None:
        await self._call("POST", "/concurrency", {"concurrency": value})

    async def failed_items(self) -> list[FailedItem]:
        data = await self._call("GET", "/failed")
        return [failed_item_from_json(item) for item in data["items"]]

    async def close(self) -> None:
        await self._session.close()
