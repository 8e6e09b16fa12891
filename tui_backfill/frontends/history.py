"""Run history: the past runs of a job, newest first (`tui-backfill runs`, `GET .../runs`).

Each run becomes one JSON-ready entry (camelCase, like the status snapshot): its state, a short
outcome word, when it started and ended, its slice of the catalog, its counters and the coverage
of its slice before and after it. Everything comes from the state database; nothing here talks
to the bucket or the origin.

Coverage is that of the run's own SKU slice (`plannedItems` = `plannedSkus` x angles), computed
from the counters committed with the checkpoint, without any bucket request:

- `coverage.before` = `foundAtStart` / `plannedItems`: the objects of the slice that were already
  in the bucket when the run looked (its existence check);
- `coverage.after` = (`uploaded` + `skippedExists`) / `plannedItems`: the objects of the slice in
  the bucket once the run had taken them up;

both as percentages rounded to 2 decimals, None when nothing is planned (a run still reading the
catalog). For an unfinished run both cover only the part scanned so far. After a crash, objects
written before it and redone count as found at start (the redo sees them), so `before` can be a
little high for a crashed-and-resumed run. Failed items of earlier runs retried at the start of a
run (`carryover`) are not part of the slice's counters.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from tui_backfill.core.records import RunRecord
from tui_backfill.core.store import JobStore
from tui_backfill.core.textfit import pack, terminal_columns
from tui_backfill.frontends.status import JobStatus
from tui_backfill.outcomes import ConfigError
from tui_backfill.pipelines.hash_index.snapshot import HashCounters
from tui_backfill.pipelines.mirror.angles import parse_angles
from tui_backfill.state.lock import JobLock

# Outcome words (`outcome`), with the exit code that goes with each.
COMPLETED = "completed"  # exit 0
COMPLETED_WITH_FAILURES = "completed-with-failures"  # exit 1: failed items recorded
# exit 1 of a hash-index `--verify` run: stored hashes that differ from the objects (no failed
# item; with failed items too, the run is completed-with-failures)
COMPLETED_WITH_MISMATCHES = "completed-with-mismatches"
PAUSED = "paused"  # exit 75: pause, SIGINT, SIGTERM, SIGHUP; resumable
INTERRUPTED = "interrupted"  # its process died (SIGKILL, crash); resumable
FAILED = "failed"  # exit 3: a fatal error stopped it; resumable once fixed
ABANDONED = "abandoned"  # a fresh run was requested instead of continuing it
RUNNING = "running"  # a live process is running it now

_EXIT_FAILED_ITEMS, _EXIT_FATAL = 1, 3


def run_outcome(status: str, exit_code: int | None, *, live: bool) -> str:
    """The outcome word of a run from its stored status and exit code.

    `live`: a process holds the job's lock and this is the run it is working on. A stored exit
    code of a run that went on after it (resumed after a pause) is stale, so the status decides
    first.
    """
    if status == "completed":
        return COMPLETED_WITH_FAILURES if exit_code == _EXIT_FAILED_ITEMS else COMPLETED
    if status == "abandoned":
        return ABANDONED
    if status == "paused":
        return FAILED if exit_code == _EXIT_FATAL else PAUSED
    # 'running' or 'preparing': live, or its process is gone
    return RUNNING if live else INTERRUPTED


def _percent(part: int, whole: int) -> float | None:
    if whole <= 0:
        return None
    return round(min(part / whole, 1.0) * 100, 2)


def _duration(started: str, ended: str | None) -> float | None:
    if not ended:
        return None
    try:
        seconds = (
            dt.datetime.fromisoformat(ended) - dt.datetime.fromisoformat(started)
        ).total_seconds()
    except ValueError:
        return None
    return round(max(seconds, 0.0), 3)


def _angles_per_sku(spec: str) -> int:
    try:
        return len(parse_angles(spec)) if spec else 0
    except ConfigError:
        return 0


def history_entry(run: RunRecord, *, live: bool = False) -> dict[str, Any]:
    """One run as a JSON-ready entry (pure: a function of the stored record and `live`).

    Counters are the ones committed with the run's checkpoint; for the live run, the ones of
    its latest published snapshot (fresher by up to a checkpoint interval).
    """
    counters = run.counters
    published = run.snapshot or {}
    if live and published:
        counters = JobStatus.of_run(run, live=True).snapshot.counters
    if isinstance(counters, HashCounters):
        return _hash_entry(run, counters, published, live=live)
    angles = str(run.settings.get("angles") or published.get("anglesPlanned") or "")
    planned_items = run.planned_skus * _angles_per_sku(angles)
    present = counters.uploaded + counters.skipped_exists
    return {
        **_run_keys(run, published, live=live),
        "anglesPlanned": angles,
        "range": {"after": run.range_after, "last": run.range_last},
        "catalogSkus": run.catalog_skus,
        "plannedSkus": run.planned_skus,
        "plannedItems": planned_items,
        "lastSku": run.checkpoint.last_sku,
        "counters": {
            "scannedSkus": counters.scanned_skus,
            "uploaded": counters.uploaded,
            "skippedExists": counters.skipped_exists,
            "noRemote": counters.no_remote,
            "failedItems": counters.failed_items,
            "errorsTotal": counters.errors_total,
            "errorsByCode": dict(sorted(counters.errors_by_code.items(), key=lambda kv: -kv[1])),
            "attemptedDownloads": counters.attempted_downloads,
            "bytesUploaded": counters.bytes_uploaded,
            "foundAtStart": counters.found_at_start,
        },
        "carryover": {
            "planned": counters.carryover_planned,
            "done": counters.carryover_done,
            "failed": counters.carryover_failed,
        },
        "coverage": {
            "before": _percent(counters.found_at_start, planned_items),
            "after": _percent(present, planned_items),
        },
    }


def _run_keys(run: RunRecord, published: dict[str, Any], *, live: bool) -> dict[str, Any]:
    status = run.status
    if status == "running" and not live:
        status = INTERRUPTED  # its process is gone: resumable, as `status` shows it
    return {
        "runId": run.id,
        "job": run.job,
        "status": status,
        "outcome": run_outcome(run.status, run.exit_code, live=live),
        "live": live,
        "host": run.host,
        "dryRun": run.dry_run,
        "exitCode": run.exit_code,
        "startedAt": run.started_at,
        "endedAt": run.ended_at,
        "durationSeconds": _duration(run.started_at, run.ended_at),
        "lastUpdateAt": published.get("lastUpdateAt"),
        "message": run.message,
    }


def _hash_entry(
    run: RunRecord, counters: HashCounters, published: dict[str, Any], *, live: bool
) -> dict[str, Any]:
    """A hash-index run: its listing range, its counters (no coverage of a slice: the
    index's coverage is `coverage --job`)."""
    keys = _run_keys(run, published, live=live)
    mismatches_only = counters.mismatched and not counters.failed_items
    if keys["outcome"] == COMPLETED_WITH_FAILURES and mismatches_only:
        keys["outcome"] = COMPLETED_WITH_MISMATCHES
    return {
        **keys,
        "pipeline": run.pipeline,
        "range": {"after": run.range_after},
        "lastKey": run.checkpoint.last_key,
        "counters": {
            "scannedObjects": counters.scanned_objects,
            "updated": counters.updated,
            "skipped": counters.skipped,
            "orphans": counters.orphans,
            "verified": counters.verified,
            "mismatched": counters.mismatched,
            "failedItems": counters.failed_items,
            "bytesHashed": counters.bytes_hashed,
            "errorsTotal": counters.errors_total,
            "errorsByCode": dict(sorted(counters.errors_by_code.items(), key=lambda kv: -kv[1])),
        },
        "carryover": {
            "planned": counters.carryover_planned,
            "done": counters.carryover_done,
            "failed": counters.carryover_failed,
        },
        "coverage": None,
    }


async def run_history(
    store: JobStore, job: str, *, limit: int = 50, state_path: str | None = None
) -> list[dict[str, Any]]:
    """The job's runs, newest first, at most `limit` (see the module's docstring).

    `state_path` (default: the store's own path) locates the job's lock, which tells a live
    run from one whose process died.
    """
    if limit < 1:
        return []
    runs = await store.runs(job, limit=limit)
    holder = JobLock(state_path or store.path, job).holder()
    # Only the newest run not yet ended can be the one a live process works on.
    current = next((r.id for r in runs if r.status in ("running", "preparing")), None)
    return [history_entry(run, live=holder is not None and run.id == current) for run in runs]


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 60:
        return f"{value:.1f}s"
    total = int(value)
    hours, rest = divmod(total, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


def history_text(entries: list[dict[str, Any]], width: int | None = None) -> str:
    """A compact table: a header, then one line per run; where that is wider than `width`
    (the terminal's; 80 without one), two lines per run, the counters on the second."""
    wide = _history_wide(entries)
    if max(len(line) for line in wide) <= (width or terminal_columns()):
        return "\n".join(wide)
    return "\n".join(_history_narrow(entries, width or terminal_columns()))


def _history_wide(entries: list[dict[str, Any]]) -> list[str]:
    hash_index = bool(entries) and entries[0]["coverage"] is None
    figures = "counters" if hash_index else "uploaded/skipped/noRemote/failed"
    tail = "orphans, verify" if hash_index else "coverage before→after"
    outcome = max([len(COMPLETED_WITH_FAILURES), *(len(e["outcome"]) for e in entries)])
    lines = [
        f"{'run':>5}  {'outcome':<{outcome}}  {'started':<24}  {'duration':>8}  {figures:<32}  {tail}"
    ]
    for e in entries:
        c = e["counters"]
        cov = e["coverage"]
        if cov is None:  # a hash-index run
            counts = f"updated {c['updated']} skipped {c['skipped']} failed {c['failedItems']}"
            tail = f"orphans {c['orphans']}"
            if c["verified"] or c["mismatched"]:
                tail += f", verified {c['verified']} mismatched {c['mismatched']}"
        else:
            counts = f"{c['uploaded']}/{c['skippedExists']}/{c['noRemote']}/{c['failedItems']}"
            tail = f"{_pct(cov['before'])} → {_pct(cov['after'])}"
        lines.append(
            f"{e['runId']:>5}  {e['outcome']:<{outcome}}  {e['startedAt']:<24}  "
            f"{_seconds(e['durationSeconds']):>8}  {counts:<32}  {tail}"
        )
    return lines


def _history_narrow(entries: list[dict[str, Any]], width: int) -> list[str]:
    """Run, outcome, start and duration on a line; its counters, named, on the next."""
    outcome = max([len("outcome"), *(len(e["outcome"]) for e in entries)])
    lines = [f"{'run':>5}  {'outcome':<{outcome}}  {'started':<24}  {'duration':>8}"]
    for e in entries:
        c = e["counters"]
        cov = e["coverage"]
        if cov is None:  # a hash-index run
            fields = [
                f"updated {c['updated']}",
                f"skipped {c['skipped']}",
                f"failed {c['failedItems']}",
                f"orphans {c['orphans']}",
            ]
            if c["verified"] or c["mismatched"]:
                fields += [f"verified {c['verified']}", f"mismatched {c['mismatched']}"]
        else:
            fields = [
                f"uploaded {c['uploaded']}",
                f"skipped {c['skippedExists']}",
                f"noRemote {c['noRemote']}",
                f"failed {c['failedItems']}",
                f"coverage {_pct(cov['before'])} → {_pct(cov['after'])}",
            ]
        lines.append(
            f"{e['runId']:>5}  {e['outcome']:<{outcome}}  {e['startedAt']:<24}  "
            f"{_seconds(e['durationSeconds']):>8}"
        )
        lines += [" " * 7 + line for line in pack(fields, width - 7)]
    return lines
