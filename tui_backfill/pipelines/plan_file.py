"""A dry run's plan file (`--dry-run --plan-file F`): what a run would do, one line per item.

Each line is a verb and the item's key (`fetch rsr/highres/100001_1_HR.jpg`), so
`grep '^fetch ' F | cut -d' ' -f2-` lists the keys a run would fetch. Lines starting with `#`
(the header) say what each verb means. Control characters in a key are escaped (`\\x0a`), so a
key is always one line. The file appears only once the dry run has planned every item: it is
written beside F under a temporary name and renamed; an interrupted dry run leaves F as it was.
It holds keys and the job's and bucket's names, never an origin URL or a credential.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from tui_backfill.core.pipeline import Item, Result
from tui_backfill.files import unwritable
from tui_backfill.outcomes import ConfigError
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


def check_plan_file(path: str, field: str = "--plan-file") -> None:
    """A file the dry run can write: not a directory, in a directory that exists, writable."""
    target = Path(path)
    if target.is_dir():
        raise ConfigError(field, f"{path} is a directory; give a file")
    if not target.resolve().parent.is_dir():
        raise ConfigError(field, f"{path}: its directory does not exist")
    reason = unwritable(path)
    if reason is not None:
        raise ConfigError(field, f"{path}: {reason}; give a writable file")


class PlanFile:
    """The engine's PlanSink for one dry run (tui_backfill.core.pipeline.PlanSink)."""

    def __init__(
        self, path: str, verbs: Mapping[str, tuple[str, str]], *, title: str, unit: str, key: str
    ) -> None:
        self.path = path
        self._verbs = {outcome: verb for outcome, (verb, _) in verbs.items()}
        self._temp = str(Path(path).with_name(f".{Path(path).name}.{os.getpid()}.partial"))
        self._file: TextIO | None = open(self._temp, "w", encoding="utf-8")
        self.lines = 0
        header = [
            f"# {title}: what a run would do",
            f"# one line per {unit}: VERB KEY, KEY being {key}",
            *(f"# {verb} KEY: {meaning}" for verb, meaning in verbs.values()),
            f"# {FAIL} KEY: {FAIL_MEANING}",
        ]
        self._file.writelines(line + "\n" for line in header)

    def item(self, item: Item, result: Result) -> None:
        if self._file is None:
            return
        verb = FAIL if result.error is not None else self._verbs.get(result.outcome, FAIL)
        self._file.write(f"{verb} {visible(item.key)}\n")
        self.lines += 1

    async def close(self, *, complete: bool) -> None:
        await asyncio.to_thread(self._close, complete)

    def _close(self, complete: bool) -> None:
        handle, self._file = self._file, None
        if handle is None:
            return
        handle.close()
        if complete:
            os.replace(self._temp, self.path)
        else:
            with contextlib.suppress(OSError):
                os.unlink(self._temp)

    def discard(self) -> None:
        """Drop an unfinished plan (the run ended before the engine closed it)."""
        self._close(False)


def open_plan_file(
    path: str | None, verbs: Mapping[str, tuple[str, str]], *, title: str, unit: str, key: str
) -> PlanFile | None:
    if path is None:
        return None
    try:
        return PlanFile(path, verbs, title=title, unit=unit, key=key)
    except OSError as exc:
        raise ConfigError("--plan-file", f"{path}: {exc.strerror}") from None
