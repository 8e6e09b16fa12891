"""A dry run's plan file (`--dry-run --plan-file F`): what a run would do, one line per item.

Each line is a verb and the item's key (`fetch rsr/highres/100001_1_HR.jpg`), so
`grep '^fetch ' F | cut -d' ' -f2-` lists the keys a run would fetch. Lines starting with `#`
(the header) say what each verb means. Control characters in a key are escaped (`\\x0a`), so a
key is always one line. The file appears only once the dry run has planned every item: it is
written beside F under a temporary name and renamed; an interrupted dry run leaves F as it was.
A symlink F is followed (its target gets the plan; F stays a symlink). F must be a regular file
or a new name, and none of the run's inputs (its state, SKU source, index table, config file).
It holds keys and the job's and bucket's names, never an origin URL or a credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tui_backfill.core.pipeline import Item, Result
from tui_backfill.files import unwritable
from tui_backfill.outcomes import ConfigError
from tui_backfill.pipelines.config import BY_NAME, Settings
from tui_backfill.pipelines.continuing import RunRequest
from tui_backfill.seams.keys import visible

FAIL = "fail"

# The verbs of each pipeline: outcome of a dry-run item -> (verb, what a line means).
MIRROR_VERBS: Mapping[str, tuple[str, str]] = {
    "planned": ("fetch", "missing from the bucket: a run fetches it from the origin and writes it"),
    "skippedExists": ("skip", "already in the bucket: a run skips it (skippedExists)"),
}
HASH_VERBS: Mapping[str, tuple[str, str]] = {
    "wouldUpdate": ("hash", "a run downloads the object and writes its content_hash"),
    "skipped": ("skip", "its index row is up to date (or it is older than --since): no download"),
    "orphan": ("orphan", "an index row with no object: reported, never deleted"),
}
FAIL_MEANING = "a run would record it as a failed item (its reason is in the dry run's errors)"
# The engine retries the failed items of earlier runs first, but not in a dry run.
CARRYOVER_NOTE = (
    "# items that failed in earlier runs are retried first by a real run and are not listed here"
)


@dataclass(frozen=True, slots=True)
class PlanKind:
    """How a pipeline's plan file describes itself: its verbs and its header's words."""

    verbs: Mapping[str, tuple[str, str]]
    title: str  # formatted with the settings' job and bucket
    unit: str
    key: str


PLAN_KINDS: Mapping[str, PlanKind] = {
    "mirror": PlanKind(
        MIRROR_VERBS,
        title="tui-backfill dry run of job {job} (bucket {bucket})",
        unit="SKU x angle",
        key="the destination key",
    ),
    "hash-index": PlanKind(
        HASH_VERBS,
        title="tui-backfill dry run of hash-index job {job} (bucket {bucket})",
        unit="object of the listing or orphan row of the index",
        key="the object's key",
    ),
}

# SQLite keeps these beside a database file: overwriting one is overwriting the database.
_SQLITE_SIDECARS = ("", "-wal", "-shm", "-journal")
_NOT_REGULAR = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def run_inputs(
    settings: Settings, explicit: Mapping[str, str], config: str | None = None
) -> dict[str, str]:
    """The files a run reads or keeps (path -> what it is, in the operator's words): a plan
    file must be none of them."""
    inputs: dict[str, str] = {}

    def add(path: str | None, what: str, sidecars: tuple[str, ...] = ("",)) -> None:
        if path and "://" not in path:  # a postgresql:// catalog is no file
            # SQLite keeps its -wal and -shm beside the file a symlink leads to
            for base in dict.fromkeys((path, os.path.realpath(path))):
                for suffix in sidecars:
                    inputs.setdefault(base + suffix, what if not suffix else f"{what} ({suffix})")

    def named(option: str) -> str:
        return explicit.get(option, BY_NAME[option].flag)

    add(settings.state, f"{named('state')} file", _SQLITE_SIDECARS)
    add(f"{settings.state}.{settings.job}.lock", f"job lock (beside {named('state')})")
    add(settings.skus_file, f"{named('skus_file')} file")
    add(settings.skus_db, f"{named('skus_db')} catalog", _SQLITE_SIDECARS)
    add(settings.index_db, f"{named('index_db')} file", _SQLITE_SIDECARS)
    add(config, "--config file")
    return inputs


def check_plan_file(
    path: str, inputs: Mapping[str, str] | None = None, field: str = "--plan-file"
) -> str:
    """A file the dry run can write, with a symlink followed: a regular file or a new name, in
    a directory that exists, writable, and none of `inputs` (run_inputs). Returns the path the
    plan is written to (the symlink's target)."""
    target = Path(os.path.realpath(path))
    accepted = "give a regular file or a new name"
    try:
        mode: int | None = target.stat().st_mode
    except FileNotFoundError:
        mode = None
    except OSError as exc:
        raise ConfigError(field, f"{path}: {exc.strerror}; {accepted}") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise ConfigError(field, f"{path} is a directory; give a file")
    if mode is not None and not stat.S_ISREG(mode):
        kind = next((name for test, name in _NOT_REGULAR if test(mode)), "a special file")
        raise ConfigError(field, f"{path} is {kind}, not a regular file; {accepted}")
    if not target.parent.is_dir():
        raise ConfigError(field, f"{path}: its directory does not exist")
    for other, what in (inputs or {}).items():
        if _same_file(target, other):
            raise ConfigError(
                field, f"{path} is the run's {what}; give a file that is none of the run's inputs"
            )
    reason = unwritable(str(target))
    if reason is not None:
        raise ConfigError(field, f"{path}: {reason}; give a writable file")
    return str(target)


def _same_file(target: Path, other: str) -> bool:
    if Path(os.path.realpath(other)) == target:
        return True
    try:
        return os.path.samefile(target, other)  # another name of it (a hard link, a mount)
    except OSError:
        return False  # one of them does not exist (yet)


class PlanFile:
    """The engine's PlanSink for one dry run (tui_backfill.core.pipeline.PlanSink)."""

    def __init__(
        self, path: str, verbs: Mapping[str, tuple[str, str]], *, title: str, unit: str, key: str
    ) -> None:
        self.path = path  # as given (the messages name it)
        # A symlink stays one: the plan goes to its target, written beside the target.
        self._target = Path(os.path.realpath(path))
        self._verbs = {outcome: verb for outcome, (verb, _) in verbs.items()}
        self._temp = str(self._target.with_name(f".{self._target.name}.{os.getpid()}.partial"))
        self._file: TextIO | None = open(self._temp, "w", encoding="utf-8")
        self.lines = 0
        self.written = False  # whether close() put the plan in place
        self.failure: str | None = None  # why close() could not
        header = [
            f"# {title}: what a run would do",
            f"# one line per {unit}: VERB KEY, KEY being {key}",
            *(f"# {verb} KEY: {meaning}" for verb, meaning in verbs.values()),
            f"# {FAIL} KEY: {FAIL_MEANING}",
            CARRYOVER_NOTE,
        ]
        self._file.writelines(line + "\n" for line in header)

    def item(self, item: Item, result: Result) -> None:
        if self._file is None:
            return
        verb = FAIL if result.error is not None else self._verbs.get(result.outcome, FAIL)
        try:
            self._file.write(f"{verb} {visible(item.key)}\n")
        except OSError as exc:  # the disk filled: no plan, said at the end (exit 3)
            self.failure = exc.strerror or str(exc)
            self._close(complete=False)
            return
        self.lines += 1

    async def close(self, *, complete: bool) -> None:
        await asyncio.to_thread(self._close, complete)

    def _close(self, complete: bool) -> None:
        handle, self._file = self._file, None
        if handle is None:
            return
        try:
            handle.close()
            if complete:
                os.replace(self._temp, self._target)
                self.written = True
                return
        except OSError as exc:  # the disk filled, the target became a directory...
            self.failure = exc.strerror or str(exc)
        with contextlib.suppress(OSError):
            os.unlink(self._temp)

    def discard(self) -> None:
        """Drop an unfinished plan (the run ended before the engine closed it)."""
        self._close(False)


def open_plan_file(
    request: RunRequest, settings: Settings, stack: contextlib.AsyncExitStack
) -> PlanFile | None:
    """A dry run's plan file (None without --plan-file or --dry-run), checked against the
    run's inputs and dropped by `stack` unless the engine closed it first."""
    if request.plan_file is None or not request.dry_run:
        return None
    check_plan_file(request.plan_file, run_inputs(settings, request.resolved.explicit))
    kind = PLAN_KINDS[settings.pipeline]
    title = kind.title.format(job=settings.job, bucket=settings.bucket)
    try:
        plan_file = PlanFile(
            request.plan_file, kind.verbs, title=title, unit=kind.unit, key=kind.key
        )
    except OSError as exc:
        raise ConfigError("--plan-file", f"{request.plan_file}: {exc.strerror}") from None
    stack.callback(plan_file.discard)
    return plan_file
