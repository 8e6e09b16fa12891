"""`tui-backfill demo hash-index`: the content-hash index against an embedded S3 server,
nothing to configure.

The first time, it writes 3,000 objects of mixed sizes (1 KiB to 2 MiB) under `assets/` and a
few outside it straight into the data directory of `rclone serve s3` (`state/demo-hash/s3`),
and an index with gaps (`state/demo-hash/index.sqlite3`: most rows without a hash, some
hashed, a few stale or wrong, objects with no row, orphan rows), all from a seeded RNG. Then it
starts the server on 127.0.0.1 and runs the job `demo-hash` with its own state file
(`state/demo-hash.sqlite3`), under the console or headless, and prints the index's coverage
before and after and what to try next. Each invocation continues the job: an unfinished run
resumes, a finished one is followed by a new run (which re-lists and skips what is hashed).
`--fresh` starts over: new bucket, new index, new state. Everything it started is stopped at
the end.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from tui_backfill.frontends.demo_names import HASH_JOB, HASH_STATE
from tui_backfill.outcomes import ConfigError
from tui_backfill.pipelines.config import resolve
from tui_backfill.pipelines.prepare import RunRequest
from tui_backfill.seams.index_table import Coverage, IndexTable
from tui_backfill.servers.hash_bucket import DEMO_PREFIX, make_hash_bucket
from tui_backfill.servers.rclone_s3 import RcloneS3

DEMO_DIR = Path("state/demo-hash")
DEMO_S3 = DEMO_DIR / "s3"
DEMO_INDEX = DEMO_DIR / "index.sqlite3"
DEMO_READY = DEMO_DIR / "READY"  # written last: a bucket and index made in full
DEMO_STATE, DEMO_JOB = HASH_STATE, HASH_JOB
DEMO_BUCKET = "demo-hash-bucket"
DEMO_OBJECTS = 3000
DEMO_MISMATCHES = DEMO_DIR / "mismatches.csv"
HASHED = "CASE WHEN content_hash IS NOT NULL AND content_hash != '' THEN 1 END"
COVERAGE_SQL = (  # the seed's coverage query
    f"SELECT COUNT(*) AS total, COUNT({HASHED}) AS with_hash, "
    f"ROUND(100.0 * COUNT({HASHED}) / COUNT(*), 2) AS coverage_percent FROM files"
)
# The hash-index options the demo passes on (the rest is the demo's own).
PASSED_ON = ("verify", "repair", "mismatch_file", "since", "limit_objects", "emit_sql")


def _say(text: str) -> None:
    print(f"demo: {text}", file=sys.stderr, flush=True)


def _wipe() -> None:
    from tui_backfill.state.lock import JobLock

    holder = JobLock(DEMO_STATE, DEMO_JOB).holder()
    if holder is not None:
        raise ConfigError(
            "--fresh", f"the demo job {DEMO_JOB!r} is running in process {holder}; stop it first"
        )
    shutil.rmtree(DEMO_DIR, ignore_errors=True)
    for suffix in ("", "-wal", "-shm", f".{DEMO_JOB}.lock"):
        Path(DEMO_STATE + suffix).unlink(missing_ok=True)
    Path(DEMO_STATE).with_suffix(".log").unlink(missing_ok=True)


def _make_bucket() -> None:
    """The demo's bucket and index, unless a complete pair is there from an earlier run."""
    if DEMO_READY.exists():
        return
    shutil.rmtree(DEMO_DIR, ignore_errors=True)  # a half-written one (interrupted)
    _say(f"writing {DEMO_OBJECTS:,} objects to {DEMO_S3 / DEMO_BUCKET} and the index {DEMO_INDEX}")
    facts = make_hash_bucket(DEMO_S3 / DEMO_BUCKET, DEMO_INDEX, objects=DEMO_OBJECTS)
    DEMO_READY.write_text("complete\n")
    _say(
        f"{facts.objects:,} objects under {DEMO_PREFIX} ({facts.total_bytes / 1e6:,.1f} MB) and "
        f"{facts.outside} outside it; index rows: {facts.no_hash:,} without a hash, "
        f"{facts.hashed:,} hashed, {facts.stale} hashed before their object changed, "
        f"{facts.wrong} with a wrong hash behind the right size and ETag (--verify finds "
        f"them), {facts.orphans} orphans (object deleted); {facts.missing:,} objects have no row"
    )


async def _coverage() -> Coverage:
    index = await IndexTable.open(str(DEMO_INDEX), create=False)  # read-only
    try:
        return await index.coverage(DEMO_PREFIX)
    finally:
        await index.close()


def _coverage_text(coverage: Coverage) -> str:
    return (
        f"{coverage.total:,} rows, {coverage.with_hash:,} with a hash "
        f"({coverage.coverage_percent:.2f} %)"
    )


async def _final_snapshot() -> dict[str, Any] | None:
    from tui_backfill.frontends.status import job_status
    from tui_backfill.state.sqlite import open_state

    async with open_state(DEMO_STATE) as store:
        status = await job_status(store, DEMO_STATE, DEMO_JOB, include_dry=False)
    return None if status is None else status.to_json()


def _next_steps(
    code: int, dry_run: bool, snapshot: dict[str, Any] | None, options: dict[str, Any]
) -> None:
    job = f"--job {DEMO_JOB} --state {DEMO_STATE}"
    steps: list[tuple[str, str]] = []
    if snapshot is not None:
        steps += [
            (f"tui-backfill status {job}", "the last run's snapshot"),
            (f"tui-backfill runs {job}", "the job's runs and their counters"),
        ]
        if snapshot.get("failedItems"):
            steps.append((f"tui-backfill failed {job}", "objects whose attempts ran out"))
    if code == 75:
        steps.append(("tui-backfill demo hash-index", "resume: continues from the checkpoint"))
    elif dry_run:
        steps.append(("tui-backfill demo hash-index", "the run the plan describes"))
    elif options.get("limit_objects"):
        steps.append(("tui-backfill demo hash-index --no-ui", "the next run continues after it"))
    else:
        steps.append(
            (
                "tui-backfill demo hash-index --no-ui",
                "again: lists the bucket, downloads nothing (all skipped)",
            )
        )
    if options.get("verify") and snapshot and snapshot.get("mismatched"):
        if not options.get("repair"):
            steps.append(
                ("tui-backfill demo hash-index --verify --repair", "write the actual hashes")
            )
    elif code != 75:
        steps.append(
            (
                f"tui-backfill demo hash-index --verify --mismatch-file {DEMO_MISMATCHES}",
                "re-hash every hashed object and compare (exit 1 on a mismatch)",
            )
        )
    steps += [
        ("tui-backfill demo hash-index --fresh", "start over: new bucket, index, state"),
        (f'sqlite3 -header {DEMO_INDEX} "{COVERAGE_SQL}"', "the coverage query"),
    ]
    lines = [f"  {note}:\n    {command}" for command, note in steps]
    _say("try next:\n" + "\n".join(lines))
    if code != 75 and not dry_run:
        _say(
            "to see a resume: quit with q (or Ctrl-C, or kill the process) while it runs, then "
            "run the demo again"
        )


async def _demo(no_ui: bool, dry_run: bool, options: dict[str, Any]) -> int:
    from tui_backfill.frontends.running import run_console, run_headless, wants_console
    from tui_backfill.state.sqlite import StateStore

    _make_bucket()
    before = await _coverage()
    async with RcloneS3(DEMO_S3, buckets=(DEMO_BUCKET,)) as s3:
        # The demo's own credentials, in this process only (the standard AWS chain reads them).
        os.environ.update(s3.env())
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
            os.environ.pop(name, None)
        flags = {
            "job": DEMO_JOB,
            "state": DEMO_STATE,
            "pipeline": "hash-index",
            "bucket": DEMO_BUCKET,
            "endpoint_url": s3.endpoint_url,
            "path_style": True,
            "prefix": DEMO_PREFIX,
            "index_db": str(DEMO_INDEX),
            "timeout": 5.0,
            "backoff": 0.2,
            **{name: value for name, value in options.items() if value not in (None, False)},
        }
        resolved = resolve(flags, env={})
        _say(
            f"S3 at {s3.endpoint_url} (bucket {DEMO_BUCKET}, prefix {DEMO_PREFIX}), index "
            f"{DEMO_INDEX}, state {DEMO_STATE} (job {DEMO_JOB})"
        )
        _say(f"coverage of {DEMO_PREFIX} in the index before: {_coverage_text(before)}")
        # An unfinished demo run continues with its own settings (the server's port changes).
        store = await StateStore.open(DEMO_STATE)
        try:
            unfinished = await store.unfinished_run(DEMO_JOB)
            if unfinished is not None and not dry_run:
                await store.update_settings(unfinished.id, {"endpoint_url": s3.endpoint_url})
                _say(f"continuing the unfinished run {unfinished.id} from its checkpoint")
        finally:
            await store.close()
        request = RunRequest(resolved, dry_run=dry_run)
        if not dry_run and wants_console(no_ui):
            code = await run_console(request)
        else:
            code = await run_headless(request)
    after = await _coverage()
    snapshot = await _final_snapshot()
    if dry_run:
        _say(f"dry run: nothing written; coverage of {DEMO_PREFIX}: {_coverage_text(after)}")
    else:
        orphans = (
            f"; {snapshot['orphans']:,} orphan rows (no object: reported, never deleted)"
            if snapshot
            else ""
        )
        _say(
            f"coverage of {DEMO_PREFIX}: {_coverage_text(before)} -> {_coverage_text(after)}"
            f"{orphans}"
        )
    _next_steps(code, dry_run, snapshot, options)
    return code


def run_demo_hash(
    *, no_ui: bool = False, fresh: bool = False, dry_run: bool = False, **options: Any
) -> int:
    """`options`: the hash-index options passed on (PASSED_ON), None when not given."""
    unknown = set(options) - set(PASSED_ON)
    if unknown:
        raise TypeError(f"not demo options: {sorted(unknown)}")
    if fresh:
        _wipe()
    return asyncio.run(_demo(no_ui, dry_run, options))
