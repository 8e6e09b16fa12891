"""The state store as the engine, the run preparation and the front ends see it.

`tui_backfill.state.sqlite` implements it (the embedded default); a PostgreSQL store comes
with scale-out and must pass the same tests. Stores raise their own classified errors, never
a driver's: `StateUnavailable` (fatal for a run: full, read-only, corrupted, locked past the
busy timeout; exit 3, resumable once fixed) and `StateBusy` (a read that may succeed on the
next beat).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol

from tui_backfill.core.counters import CounterSet
from tui_backfill.core.records import Command, FailedItem, RunRecord
from tui_backfill.outcomes import BackfillError, FatalError


class StateUnavailable(FatalError):
    """The state cannot be written or read now; the run stops at its last checkpoint."""

    code = "state"


class StateBusy(BackfillError):
    """A read or small write failed for now (another process holds a lock): try again later."""

    code = "state"


class RunStore(Protocol):
    """What the engine needs of the state while it runs a job."""

    async def groups_page(self, run_id: int, after: str | None, limit: int) -> list[str]: ...

    async def commit_checkpoint(
        self,
        run_id: int,
        counters: CounterSet,
        checkpoint: dict[str, Any],
        *,
        job: str,
        failed: Iterable[FailedItem] = (),
        resolved: Iterable[tuple[str, int]] = (),
        absent: Iterable[str] = (),
        present: Iterable[str] = (),
        status: str | None = None,
        exit_code: int | None = None,
        message: str | None = None,
        snapshot: dict[str, Any] | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        """Counters, checkpoint, failed items (and resolved ones), keys the source does not
        have (`absent`) and keys no longer known so (`present`), the run's status, its final
        snapshot and changes to its stored settings, in one transaction."""
        ...

    async def publish_snapshot(self, run_id: int, snapshot: dict[str, Any]) -> None: ...

    async def take_commands(self, job: str) -> list[tuple[str, str | None]]: ...

    async def failed_items(
        self, job: str, *, exclude_run: int | None = None
    ) -> list[FailedItem]: ...

    async def update_settings(self, run_id: int, changes: dict[str, Any]) -> None: ...

    async def run(self, run_id: int) -> RunRecord | None: ...


class JobStore(RunStore, Protocol):
    """The whole store, as the run preparation and the front ends use it."""

    @property
    def path(self) -> str:
        """Where the state is (a file, later a database URL with its secret removed)."""
        ...

    async def close(self) -> None: ...

    async def latest_run(self, job: str, *, include_dry: bool = True) -> RunRecord | None: ...

    async def unfinished_run(self, job: str) -> RunRecord | None: ...

    async def last_completed_run(self, job: str) -> RunRecord | None: ...

    async def runs(self, job: str, *, limit: int) -> list[RunRecord]:
        """The job's runs, newest first."""
        ...

    async def create_run(
        self, job: str, settings: dict[str, Any], *, dry_run: bool, range_after: str | None
    ) -> int: ...

    async def snapshot_skus(
        self, run_id: int, batches: AsyncIterator[list[str]], range_after: str | None, limit: int
    ) -> tuple[str | None, int, int]:
        """The run's ordered source, read once: (range_after, planned, source size)."""
        ...

    async def set_run_status(self, run_id: int, status: str, *, pid: int | None = None) -> None: ...

    async def abandon_run(self, run_id: int) -> None: ...

    async def delete_run(self, run_id: int) -> None: ...

    async def absent_keys(self, job: str, after: str, limit: int) -> list[str]:
        """Keys whose latest attempt found them absent at the source, in key order."""
        ...

    async def untracked_no_remote(self, job: str) -> int:
        """Absences counted by runs from before the store kept absent keys (not among them)."""
        ...

    async def forget_failed(self, job: str, key: str) -> int: ...

    async def forget_all_failed(self, job: str) -> int: ...

    async def send_command(self, job: str, command: Command, arg: str | None = None) -> None: ...

    async def clear_commands(self, job: str) -> None: ...
