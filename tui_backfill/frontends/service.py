"""The job as a long-lived process drives it: what the HTTP API's endpoints do.

`serve` owns at most one run of its job at a time (started by `POST .../run`, in this process).
`run --serve` adopts the run its process is already doing. A run of the same job going on in
another process is read through the state (status) and driven through its command channel
(pause, hold, resume, concurrency), like the CLI's `pause` and the attached console do.

Failures are `ApiError`s with the HTTP status that says whose problem it is: 400 the request
(naming the field), 404 nothing there, 409 the job's state does not allow it, 502 an outside
system (S3 endpoint, bucket, credentials, catalog) refused. Nothing here knows aiohttp.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tui_backfill.core.records import Command
from tui_backfill.frontends.errors import ApiError
from tui_backfill.frontends.state_job import PAUSE_WAIT_SECONDS, StateJob
from tui_backfill.frontends.status import JobStatus
from tui_backfill.outcomes import BackfillError, ConfigError, JobBusy, RunConflict, RunState
from tui_backfill.pipelines.config import Resolved, validate
from tui_backfill.seams.keysets import key_file_page, load_key_file
from tui_backfill.state.lock import JobLock

__all__ = ["PAUSE_WAIT_SECONDS", "ApiError", "JobService", "RunParams", "parse_run_request"]
GAP_CACHE_SECONDS = 60.0
WATCHED_WITHIN = 2.0  # a status read this recent: an attached console is polling (every 1 s)
LINGER_SECONDS = 1.5  # how long `run --serve` waits for it to read the run's final state


# -- the parameters of POST .../run -----------------------------------------------------------

# API field -> (option name or None for a run flag, accepted type)
RUN_FIELDS: dict[str, tuple[str | None, type]] = {
    "limitSkus": ("limit_skus", int),
    "angles": ("angles", str),
    "concurrency": ("concurrency", int),
    "onlyMissing": ("only_missing", bool),
    "limitObjects": ("limit_objects", int),
    "dryRun": (None, bool),
    "fresh": (None, bool),
    "fromStart": (None, bool),
}
# Fields that mean something to one pipeline only: given for a job of another, they are 400.
PIPELINE_OF_FIELD: dict[str, str] = {
    "limitSkus": "mirror",
    "angles": "mirror",
    "onlyMissing": "mirror",
    "limitObjects": "hash-index",
}
MAX_LIMIT_SKUS = 100_000_000
MAX_LIMIT_OBJECTS = 100_000_000_000
MAX_ANGLES_TEXT = 200
_INT_TEXT = re.compile(r"-?[0-9]{1,12}")


@dataclass(frozen=True, slots=True)
class RunParams:
    overrides: dict[str, Any] = field(default_factory=dict)  # option name -> value
    fields: dict[str, str] = field(default_factory=dict)  # option name -> API field
    dry_run: bool = False
    fresh: bool = False
    from_start: bool = False


def _typed(name: str, kind: type, value: Any, *, from_query: bool) -> Any:
    if from_query and isinstance(value, str):
        text = value.strip()
        if kind is bool:
            if text.lower() in ("true", "1", "yes"):
                return True
            if text.lower() in ("false", "0", "no"):
                return False
            raise ApiError(400, f"{value!r} is not a boolean; accepted true or false", name)
        if kind is int:
            # ASCII digits only: str.isdigit() also accepts "²" and lstrip("-") "--5", which
            # int() then refuses (a 500 before)
            if not _INT_TEXT.fullmatch(text):
                raise ApiError(400, f"{value!r} is not an integer", name)
            return int(text)
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ApiError(400, "must be a boolean (true or false)", name)
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ApiError(400, "must be an integer", name)
        return value
    if not isinstance(value, str):
        raise ApiError(400, "must be a string", name)
    return value


def run_fields(pipeline: str) -> tuple[str, ...]:
    """The fields POST .../run accepts for a job of this pipeline."""
    return tuple(name for name in RUN_FIELDS if PIPELINE_OF_FIELD.get(name, pipeline) == pipeline)


def check_fields_for(params: RunParams, pipeline: str, job: str) -> None:
    """A field of another pipeline's runs is 400 naming it (`limitSkus` for a hash-index job)."""
    for name in params.fields.values():
        owner = PIPELINE_OF_FIELD.get(name, pipeline)
        if owner != pipeline:
            raise ApiError(
                400,
                f"only for a {owner} job; job {job!r} is a {pipeline} job, whose runs take: "
                f"{', '.join(run_fields(pipeline))}",
                name,
            )


def _check_known(name: str) -> None:
    if name not in RUN_FIELDS:
        raise ApiError(400, f"unknown field; accepted: {', '.join(RUN_FIELDS)}", name)


def parse_run_request(query: Mapping[str, str], body: Mapping[str, Any]) -> RunParams:
    """POST .../run takes its fields as query parameters, in a JSON body, or both (not the
    same field twice)."""
    typed: dict[str, Any] = {}
    for name, text in query.items():
        _check_known(name)
        if name in body or name in typed:
            raise ApiError(400, "given more than once", name)
        typed[name] = _typed(name, RUN_FIELDS[name][1], text, from_query=True)
    return parse_run_params({**typed, **body})


def parse_run_params(data: Mapping[str, Any]) -> RunParams:
    """Check the request's fields and types; the values are checked against the job later."""
    params: dict[str, Any] = {}
    for name, value in data.items():
        _check_known(name)
        params[name] = _typed(name, RUN_FIELDS[name][1], value, from_query=False)
    limit = params.get("limitSkus")
    if limit is not None and not 1 <= limit <= MAX_LIMIT_SKUS:
        raise ApiError(
            400, f"{limit} is out of range; accepted 1 to {MAX_LIMIT_SKUS:,}", "limitSkus"
        )
    objects = params.get("limitObjects")
    if objects is not None and not 1 <= objects <= MAX_LIMIT_OBJECTS:
        raise ApiError(
            400, f"{objects} is out of range; accepted 1 to {MAX_LIMIT_OBJECTS:,}", "limitObjects"
        )
    angles = params.get("angles")
    if angles is not None and len(angles) > MAX_ANGLES_TEXT:
        raise ApiError(400, f"longer than {MAX_ANGLES_TEXT} characters", "angles")
    overrides: dict[str, Any] = {}
    fields: dict[str, str] = {}
    for name, value in params.items():
        option = RUN_FIELDS[name][0]
        if option is not None:
            overrides[option] = value
            fields[option] = name
    return RunParams(
        overrides,
        fields,
        dry_run=bool(params.get("dryRun", False)),
        fresh=bool(params.get("fresh", False)),
        from_start=bool(params.get("fromStart", False)),
    )


# -- the gap, in pages -------------------------------------------------------------------------


@dataclass
class _GapCache:
    """One computed gap. Its temporary directory is removed once it is retired (replaced, or
    the server closing) and no page read uses it: a read never finds its file gone."""

    made: float  # time.monotonic()
    directory: tempfile.TemporaryDirectory[str]
    db_path: str
    report: dict[str, Any]
    readers: int = 0  # page reads under way
    retired: bool = False
    removed: bool = False


# -- the service ------------------------------------------------------------------------------


class JobService:
    """One job of one state file, driven over HTTP."""

    def __init__(self, base: Resolved, *, env: Mapping[str, str] | None = None) -> None:
        self.base = base
        self._env = os.environ if env is None else env
        self._engine: Any = None  # the Engine of the run going on in this process
        self._prepared: Any = None  # its PreparedRun when this service started it
        self._task: asyncio.Task[Any] | None = None
        self._finished = asyncio.Event()
        self._finished.set()
        self._starting = asyncio.Lock()  # held while a run (or a dry run) is being started
        self._closing = False
        self._gap: _GapCache | None = None
        self._gap_lock = asyncio.Lock()  # one gap computation at a time (single flight)
        self._batching = asyncio.Lock()  # held while a batch of the hash index is processed
        self.adopted = False
        self._notices: set[asyncio.Task[None]] = set()  # --notify-url deliveries under way
        self._status_read = asyncio.Event()  # set by every status read (attached consoles)
        self._status_read_at = -WATCHED_WITHIN  # time.monotonic() of the latest
        self._finished_at = 0.0

    @property
    def job(self) -> str:
        return self.base.settings.job

    @property
    def pipeline(self) -> str:
        return self.base.settings.pipeline

    @property
    def state_path(self) -> str:
        return self.base.settings.state

    @property
    def max_concurrency(self) -> int:
        if self._engine is not None:
            return int(self._engine.plan.max_concurrency)
        return self.base.settings.max_concurrency

    # -- the run in this process -------------------------------------------------------------
    def expect_adoption(self) -> None:
        """`run --serve`: the API listens before the run is prepared; it never starts one."""
        self.adopted = True

    def adopt(self, engine: Any) -> None:
        """`run --serve`: the run this process is doing (its owner awaits it, then `finished`)."""
        self._engine = engine
        self.adopted = True
        self._finished.clear()

    def finished(self) -> None:
        self._finished.set()
        self._finished_at = time.monotonic()

    async def let_watchers_see_the_end(self) -> None:
        """`run --serve` at its end: a console polling the status (`attach --url`) reads the
        final state (stopped, completed) before the server goes, at most LINGER_SECONDS later;
        else all it could say is that its connection was lost."""
        if self._status_read_at < self._finished_at - WATCHED_WITHIN:
            return  # nobody watches
        if self._status_read_at >= self._finished_at:
            return  # already read since the end
        self._status_read.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._status_read.wait(), LINGER_SECONDS)

    @property
    def live(self) -> bool:
        return self._engine is not None and not self._finished.is_set()

    def _not_batching(self) -> None:
        if self._batching.locked():
            raise ApiError(
                409,
                f"a batch of job {self.job!r} is being processed here "
                "(GET /api/backfill-asset-index); try again once it has answered",
            )

    def _not_starting(self) -> None:
        """While a run or a dry run is being started here, other commands wait their turn."""
        if self._starting.locked():
            raise ApiError(
                409, f"a run of job {self.job!r} is being started here; try again shortly"
            )

    async def _settle(self) -> None:
        """A run that has ended (its snapshot says so) but is still closing: let it close."""
        if self.live and self._engine.state in (
            RunState.COMPLETED,
            RunState.FAILED,
            RunState.PAUSED,
        ):
            if self._stopping or self._engine.state is not RunState.PAUSED:
                await self._wait_finished(10.0)

    @property
    def _stopping(self) -> bool:
        return self.live and self._engine.stop_requested

    async def start(self, params: RunParams) -> tuple[int, dict[str, Any]]:
        """POST .../run: (202, the new run) or, for a dry run, (200, the plan)."""
        check_fields_for(params, self.pipeline, self.job)
        if self.adopted:
            raise ApiError(
                409, f"this process serves its own run of job {self.job!r}; it cannot start another"
            )
        self._refuse_when_closing()
        self._not_starting()
        self._not_batching()
        await self._settle()
        async with self._starting:
            if self.live:
                raise ApiError(
                    409,
                    f"job {self.job!r} is already running in this process (run {self._engine.plan.run_id})",
                )
            holder = await asyncio.to_thread(JobLock(self.state_path, self.job).holder)
            if holder is not None:
                raise ApiError(409, f"job {self.job!r} is already running in process {holder}")
            from tui_backfill.pipelines.prepare import RunRequest

            request = RunRequest(
                self._resolved(params),
                dry_run=params.dry_run,
                fresh=params.fresh,
                from_start=params.from_start,
            )
            prepared = await self._prepare(request, params)
            if params.dry_run:
                return 200, await self._dry_run(prepared)
            self._own(prepared)
            snapshot = prepared.engine.snapshot().to_json()
            return 202, {
                "runId": prepared.engine.plan.run_id,
                "continued": not prepared.created,
                **snapshot,
            }

    async def resume(self) -> tuple[int, dict[str, Any]]:
        """POST .../resume: release a held run, or continue a paused/interrupted one here."""
        self._not_starting()
        self._not_batching()  # the lock it holds is no run to command
        await self._settle()
        if self.live:
            if self._stopping:
                raise ApiError(409, f"job {self.job!r} is pausing; resume it once it has paused")
            self._engine.resume()
            return 200, self._live_status().to_json()
        if self.adopted:
            raise ApiError(409, f"job {self.job!r} is not running in this process")
        if await self.elsewhere.holder() is not None:
            return await self.elsewhere.command(Command.RESUME)
        from tui_backfill.pipelines.prepare import RunRequest

        self._refuse_when_closing()
        async with self._starting:
            prepared = await self._prepare(RunRequest(self.base, resume_only=True), RunParams())
            self._own(prepared)
            snapshot = prepared.engine.snapshot().to_json()
            return 202, {"runId": prepared.engine.plan.run_id, "continued": True, **snapshot}

    async def pause(self) -> tuple[int, dict[str, Any]]:
        """POST .../pause: the graceful stop; answers once the checkpoint is persisted."""
        self._not_starting()
        self._not_batching()  # the lock it holds is no run to command
        if self.live:
            self._engine.stop()
            if not await self._wait_finished(PAUSE_WAIT_SECONDS):
                return 202, {
                    "message": "still finishing in-flight items",
                    **self._live_status().to_json(),
                }
            return 200, self._engine.snapshot().to_json()
        if self.adopted:
            raise ApiError(409, f"job {self.job!r} is not running in this process")
        if await self.elsewhere.holder() is None:
            raise ApiError(409, f"job {self.job!r} is not running (nothing to pause)")
        return await self.elsewhere.pause()

    async def hold(self) -> tuple[int, dict[str, Any]]:
        """POST .../hold: the console's `p` — paused in place until resume."""
        self._not_starting()
        self._not_batching()  # the lock it holds is no run to command
        if self.live:
            self._engine.hold()
            return 200, self._live_status().to_json()
        if await self._holder_elsewhere() is None:
            raise ApiError(409, f"job {self.job!r} is not running (nothing to hold)")
        return await self.elsewhere.command(Command.HOLD)

    async def set_concurrency(self, value: int) -> tuple[int, dict[str, Any]]:
        self._not_starting()
        self._not_batching()  # the lock it holds is no run to command
        if not 1 <= value <= self.max_concurrency:
            raise ApiError(
                400, f"{value} is out of range; accepted 1 to {self.max_concurrency}", "concurrency"
            )
        if self.live:
            self._engine.set_concurrency(value)
            return 200, self._live_status().to_json()
        holder = await self._holder_elsewhere()
        if holder is None:
            raise ApiError(409, f"job {self.job!r} is not running")
        await self.elsewhere.send(Command.CONCURRENCY, str(value))
        return 202, {"message": f"concurrency {value} sent to job {self.job!r} (process {holder})"}

    # -- reading -----------------------------------------------------------------------------
    @property
    def elsewhere(self) -> StateJob:
        """This job as another process sees it (a run of it in another process)."""
        return StateJob(self.state_path, self.job)

    async def status(self) -> JobStatus:
        status = await self.status_or_none()
        if status is None:
            raise self.elsewhere.no_runs()
        self._status_read_at = time.monotonic()
        self._status_read.set()
        return status

    async def status_or_none(self) -> JobStatus | None:
        """The status, or None when the job has no runs (for /metrics)."""
        if self.live:
            return self._live_status()
        return await self.elsewhere.status_or_none()

    async def failed_items(self) -> list[dict[str, Any]]:
        return await self.elsewhere.failed_items() or []

    async def runs(self, limit: int) -> list[dict[str, Any]]:
        return await self.elsewhere.runs(limit)

    async def coverage(self) -> dict[str, Any]:
        """The seed's stats: expected objects of the whole catalog, present, missing."""
        report, _ = await self._coverage(with_gap=False)
        report.pop("gapFile", None)
        report.pop("fillableFile", None)
        return report

    async def gap(self, *, after: str | None, limit: int) -> dict[str, Any]:
        """A page of the missing keys in key order, after `after`. The first page computes the
        gap (one bucket listing); the pages that continue it read that result for a minute."""
        cache = await self._acquire_gap(after)
        try:
            keys = await asyncio.to_thread(key_file_page, cache.db_path, after, limit + 1)
        finally:
            await self._release_gap(cache)
        more = len(keys) > limit
        keys = keys[:limit]
        report = cache.report
        return {
            "missing": report["missing"],
            "fillable": report["fillable"],
            "noRemoteUntracked": report["noRemoteUntracked"],
            "expected": report["expected"],
            "coveragePercent": report["coveragePercent"],
            "keys": keys,
            "nextAfter": keys[-1] if more else None,
        }

    def _gap_usable(self, after: str | None) -> _GapCache | None:
        """The current gap when a continued page may read it (fresh enough), else None."""
        cache = self._gap
        if after is None or cache is None or cache.removed:
            return None
        return cache if time.monotonic() - cache.made <= GAP_CACHE_SECONDS else None

    async def _acquire_gap(self, after: str | None) -> _GapCache:
        """The gap to read a page from, counted as in use until `_release_gap`.

        Single flight: first pages asked while a computation runs wait for it and share its
        result instead of listing the bucket again (N concurrent first pages cost one
        listing, and no two computations race to replace and remove each other's files)."""
        asked = time.monotonic()
        cache = self._gap_usable(after)
        if cache is None:
            async with self._gap_lock:
                cache = self._gap
                # computed while this request waited for the lock: share it
                shared = cache is not None and not cache.removed and cache.made >= asked
                if not shared:
                    cache = self._gap_usable(after) or await self._replace_gap()
        assert cache is not None
        cache.readers += 1  # no await since the check: it cannot be retired in between
        return cache

    async def _release_gap(self, cache: _GapCache) -> None:
        cache.readers -= 1
        await self._remove_if_unused(cache)

    async def _replace_gap(self) -> _GapCache:
        """Compute the gap (the caller holds the lock) and retire the one it replaces."""
        if self._closing:
            raise ApiError(409, "the server is shutting down; it computes no gap")
        report, directory = await self._coverage(with_gap=True)
        assert directory is not None
        db_path = str(Path(directory.name) / "gap.sqlite3")
        try:
            await asyncio.to_thread(load_key_file, str(Path(directory.name) / "gap.txt"), db_path)
        except BaseException:
            await asyncio.to_thread(directory.cleanup)
            raise
        old, cache = self._gap, _GapCache(time.monotonic(), directory, db_path, report)
        self._gap = cache
        cache.retired = self._closing  # closed meanwhile: removed after this read
        if old is not None:
            await self._retire(old)
        return cache

    async def _retire(self, cache: _GapCache) -> None:
        cache.retired = True
        await self._remove_if_unused(cache)

    @staticmethod
    async def _remove_if_unused(cache: _GapCache) -> None:
        """Remove a retired gap's files once no page read uses them (in a thread: file work
        stays off the event loop)."""
        if cache.retired and cache.readers == 0 and not cache.removed:
            cache.removed = True
            await asyncio.to_thread(cache.directory.cleanup)

    async def _coverage(
        self, *, with_gap: bool
    ) -> tuple[dict[str, Any], tempfile.TemporaryDirectory[str] | None]:
        from tui_backfill.pipelines.mirror.coverage import coverage_report

        directory = None
        if with_gap:
            directory = await asyncio.to_thread(
                tempfile.TemporaryDirectory, prefix="tui-backfill-gap-"
            )
        gap_file = str(Path(directory.name) / "gap.txt") if directory is not None else None
        try:
            report = await coverage_report(self.base, gap_file=gap_file)
        except BaseException as exc:
            if directory is not None:
                await asyncio.to_thread(directory.cleanup)
            if isinstance(exc, (ConfigError, BackfillError)):
                raise ApiError(502, f"coverage: {exc}") from None
            raise
        return report, directory

    # -- the hash index's batch interface ------------------------------------------------------
    async def index_batch(self, *, cursor: str | None, limit: int, dry_run: bool) -> dict[str, Any]:
        """GET /api/backfill-asset-index: one batch of the hash index (the seed's answer).

        Never beside a run of the job (this process's, or another's: 409), nor beside another
        batch here. A batch that writes holds the job lock meanwhile, so no run starts under
        it; a dry run writes nothing and only checks that no process holds the job."""
        if self.pipeline != "hash-index":
            raise ApiError(
                409,
                f"job {self.job!r} is a {self.pipeline} job; the batch interface fills a "
                "content-hash index: serve a hash-index job (--pipeline hash-index)",
            )
        if self.base.settings.verify:
            raise ApiError(
                409,
                f"job {self.job!r} is set to --verify; the batch interface fills the index "
                f"(verify with POST /api/jobs/{self.job}/run)",
            )
        self._refuse_when_closing()
        self._not_starting()
        self._not_batching()
        await self._settle()
        if self.live:
            raise ApiError(
                409,
                f"job {self.job!r} is running in this process (run {self._engine.plan.run_id}); "
                "the batch interface waits for it to end",
            )
        async with self._batching:
            lock = JobLock(self.state_path, self.job)
            if dry_run:
                holder = await asyncio.to_thread(lock.holder)
                if holder is not None:
                    raise ApiError(409, f"job {self.job!r} is running in process {holder}")
            else:
                try:
                    await asyncio.to_thread(lock.acquire, self.job)
                except JobBusy as exc:
                    raise ApiError(409, str(exc).split(": ", 1)[-1]) from None
            try:
                return await self._batch(cursor=cursor, limit=limit, dry_run=dry_run)
            finally:
                if not dry_run:
                    lock.release()

    async def _batch(self, *, cursor: str | None, limit: int, dry_run: bool) -> dict[str, Any]:
        from tui_backfill.pipelines.hash_index.batch import run_batch

        try:
            result = await run_batch(self.base.settings, after=cursor, limit=limit, dry_run=dry_run)
        except ConfigError as exc:  # the index file or table cannot be opened
            raise ApiError(502, f"index: {exc}") from None
        except BackfillError as exc:  # the listing, the bucket, or the index write failed
            raise ApiError(502, f"batch failed ({exc.code}): {exc.message}") from None
        return result.to_json()

    # -- lifecycle ---------------------------------------------------------------------------
    def _refuse_when_closing(self) -> None:
        if self._closing:
            raise ApiError(409, "the server is shutting down; it starts no run")

    async def close(self) -> None:
        """Server shutdown: no new run; one being started, then the run this service started,
        stops gracefully (checkpoint kept)."""
        self._closing = True
        async with self._starting:  # a start under way finishes first (and is then stopped)
            pass
        if self._task is not None and not self._task.done():
            self._engine.stop()
            await self._wait_finished(PAUSE_WAIT_SECONDS)
        if self._notices:  # each is bounded by its own budget (seams.notify.BUDGET)
            await asyncio.wait(set(self._notices))
        if self._gap is not None:  # removed now, or by the last page read still using it
            await self._retire(self._gap)
            self._gap = None

    # -- helpers -----------------------------------------------------------------------------
    def _resolved(self, params: RunParams) -> Resolved:
        settings = self.base.settings.replace(**params.overrides)
        explicit = {**self.base.explicit, **params.fields}
        try:
            validate(settings, explicit)
        except ConfigError as exc:
            raise ApiError(400, str(exc).split(": ", 1)[-1], exc.field) from None
        return Resolved(settings, explicit)

    async def _prepare(self, request: Any, params: RunParams) -> Any:
        from tui_backfill.pipelines.prepare import prepare_run

        api_fields = set(params.fields.values())
        try:
            return await prepare_run(request, self._env)
        except JobBusy as exc:
            raise ApiError(409, str(exc).split(": ", 1)[-1]) from None
        except RunConflict as exc:
            where = exc.field if exc.field in api_fields else None
            message = str(exc).split(": ", 1)[-1].replace("add --fresh", "send fresh=true")
            raise ApiError(409, message, where) from None
        except ConfigError as exc:
            if exc.field in api_fields:
                raise ApiError(400, str(exc).split(": ", 1)[-1], exc.field) from None
            raise ApiError(502, f"cannot start: {exc}") from None

    def _own(self, prepared: Any) -> None:
        self._prepared = prepared
        self._engine = prepared.engine
        self._finished.clear()
        self._task = asyncio.create_task(
            self._run_owned(prepared), name=f"run {prepared.engine.plan.run_id}"
        )

    async def _run_owned(self, prepared: Any) -> None:
        run_id = prepared.engine.plan.run_id
        notice: dict[str, Any] | None = None
        try:
            result = await prepared.engine.run()
            print(
                f"tui-backfill: run {run_id} of job {self.job!r} ended "
                f"{result.snapshot.state} (exit code {result.exit_code})",
                file=sys.stderr,
                flush=True,
            )
            with contextlib.suppress(Exception):  # the notice is no reason to say it stopped
                notice = await self._run_notice(prepared, result)
        except Exception as exc:  # the engine persisted what it could; say why it stopped
            print(
                f"tui-backfill: run {run_id} of job {self.job!r} stopped: {exc.__class__.__name__}: {exc}",
                file=sys.stderr,
                flush=True,
            )
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(prepared.close())
            self._finished.set()
        if notice is not None:
            self._notify(prepared.settings.notify_url, notice)

    async def _run_notice(self, prepared: Any, result: Any) -> dict[str, Any] | None:
        """What --notify-url gets for a run this service ran (None without a URL)."""
        if not prepared.settings.notify_url:
            return None
        from tui_backfill.frontends.notices import notice_of
        from tui_backfill.frontends.status import final_status

        status = (
            await final_status(prepared.store, result.snapshot, prepared.settings.state)
        ).to_json()
        return notice_of(prepared, result.exit_code, status)

    def _notify(self, url: str, notice: dict[str, Any]) -> None:
        """Deliver in the background (a new run may start meanwhile); `close` waits for it,
        bounded by the delivery's own budget."""
        from tui_backfill.frontends.notices import notify_run_end

        task = asyncio.create_task(notify_run_end(url, notice, signals=False))
        self._notices.add(task)
        task.add_done_callback(self._notices.discard)

    async def _dry_run(self, prepared: Any) -> dict[str, Any]:
        engine = prepared.engine
        try:
            result = await engine.run()
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(prepared.store.delete_run(engine.plan.run_id))
            await prepared.close()
        snap = result.snapshot
        if snap.state != "completed":
            raise ApiError(
                409, f"the dry run ended {snap.state} before it finished (paused from elsewhere?)"
            )
        answer = {**snap.to_json(), "plan": snap.plan_json()}  # as `--dry-run` prints it
        if prepared.settings.notify_url:
            from tui_backfill.frontends.notices import notice_of

            self._notify(
                prepared.settings.notify_url, notice_of(prepared, result.exit_code, answer)
            )
        return answer

    async def _wait_finished(self, seconds: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._finished.wait(), seconds)
        return self._finished.is_set()

    def _live_status(self) -> JobStatus:
        return JobStatus.of_engine(
            self._engine.snapshot(),
            max_concurrency=self.max_concurrency,
            state_path=self.state_path,
            ended=self._engine.ended,
        )

    async def _holder_elsewhere(self) -> int | None:
        """The pid of another process running the job (never, for `run --serve`'s own API)."""
        if self.adopted:
            return None
        return await self.elsewhere.holder()
