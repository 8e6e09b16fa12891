"""Headless output: the progress line on stderr and the human form of `status`.

Both render a typed status (the engine's snapshot, a job's `JobStatus`); neither knows
anything of the engine. Both fit the terminal's width (80 columns without one): what does not
fit a line goes on to an indented one, nothing is cut.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from tui_backfill.core.snapshot import fmt_bytes
from tui_backfill.core.textfit import pack, terminal_columns
from tui_backfill.frontends.status import JobStatus
from tui_backfill.pipelines.hash_index.snapshot import HashSnapshot
from tui_backfill.pipelines.snapshots import AnySnapshot
from tui_backfill.seams.keys import visible


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _errors(errors: dict[str, int]) -> str:
    if not errors:
        return "0"
    total = sum(errors.values())
    parts = ", ".join(
        f"{code} {count}" for code, count in sorted(errors.items(), key=lambda kv: -kv[1])[:4]
    )
    return f"{total} ({parts})"


def progress_line(snapshot: AnySnapshot | dict[str, Any], width: int | None = None) -> str:
    """One progress report: a line on a wide terminal, continued on indented lines to fit
    `width` (the terminal's; 80 without one)."""
    s = snapshot if isinstance(snapshot, dict) else snapshot.to_json()
    if s.get("pipeline") == HashSnapshot.pipeline:
        fields = _hash_progress_fields(s)
    else:
        ckpt = visible((s.get("checkpoint") or {}).get("lastSku") or "-")
        fields = [
            f"[{s.get('job')}] {s.get('state')} "
            f"{s.get('scannedSkus', 0):,}/{s.get('plannedSkus', 0):,} SKUs",
            f"up {s.get('uploaded', 0):,} skip {s.get('skippedExists', 0):,}"
            f" 404 {s.get('noRemote', 0):,} failed {s.get('failedItems', 0):,}",
            f"err {_errors(s.get('errorsByCode') or {})}",
            _rate(s, _image_items(s))
            + (f" ETA {_duration(s.get('etaSeconds'))}" if _moving(s) else ""),
            f"checkpoint {ckpt}",
        ]
    return "\n".join(pack(fields, width or terminal_columns(), sep=" | "))


def _hash_progress_fields(s: dict[str, Any]) -> list[str]:
    ckpt = visible((s.get("checkpoint") or {}).get("lastKey") or "-")
    if s.get("mode", "hash") != "hash":
        done = f"verified {s.get('verified', 0):,} mismatched {s.get('mismatched', 0):,}"
        if s.get("mode") == "repair":
            done += f" repaired {s.get('updated', 0):,}"
    elif s.get("dryRun"):
        done = f"would update {s.get('wouldUpdate', 0):,}"
    else:
        done = f"updated {s.get('updated', 0):,}"
    return [
        f"[{s.get('job')}] {s.get('state')} {s.get('scannedObjects', 0):,} objects",
        f"{done} skipped {s.get('skipped', 0):,} orphans {s.get('orphans', 0):,}"
        f" failed {s.get('failedItems', 0):,}",
        f"err {_errors(s.get('errorsByCode') or {})}",
        _rate(s, s.get("scannedObjects", 0), s.get("bytesHashed", 0)),
        f"checkpoint {ckpt}",
    ]


def _image_items(s: dict[str, Any]) -> int:
    keys = ("uploaded", "skippedExists", "noRemote", "failedItems", "wouldFetch")
    return sum(int(s.get(key) or 0) for key in keys)


def _moving(s: dict[str, Any]) -> bool:
    return s.get("state") in ("running", "pausing")


def _rate(s: dict[str, Any], items: int, nbytes: int | None = None) -> str:
    """The live rate while the run moves. Once it has stopped moving (paused, interrupted,
    ended), its live rate reads 0 (the snapshot's rates are over moving time): the run's
    average is shown instead, its items over its start to its last update, the time between
    its processes (a pause, a crash) included: a run resumed after a while reads lower."""
    if _moving(s):
        rate = f"{s.get('itemsPerSecond', 0):.1f} obj/s"
        return rate if nbytes is None else f"{rate} {fmt_bytes(s.get('bytesPerSecond') or 0)}/s"
    try:
        started = dt.datetime.fromisoformat(str(s["startedAt"]).replace("Z", "+00:00"))
        updated = dt.datetime.fromisoformat(str(s["lastUpdateAt"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return "avg - obj/s"
    seconds = (updated - started).total_seconds()
    if seconds <= 0:
        return "avg - obj/s"
    rate = f"avg {items / seconds:.1f} obj/s"
    return rate if nbytes is None else f"{rate} {fmt_bytes(nbytes / seconds)}/s"


Fields = list[str]  # one line of `status`: fields two spaces apart, continued when too wide


def _run_lines(status: JobStatus) -> list[Fields]:
    """The first lines of `status`, whatever the pipeline: the run, its state, its times."""
    s = status.snapshot
    return [
        [
            f"job {s.job}",
            f"run {s.run_id}",
            f"state {s.state}{' (live)' if s.live else ''}",
            "dry run" if s.dry_run else "",
            f"on {status.host}" if status.host else "",
        ],
        [f"started {s.started_at}", f"updated {s.last_update_at}"],
    ]


def _text(lines: list[Fields], message: str, width: int | None) -> str:
    if message:
        lines.append([f"message {message}"])
    width = width or terminal_columns()
    return "\n".join(out for fields in lines for out in pack(fields, width))


def _hash_status_text(status: JobStatus, s: HashSnapshot, width: int | None) -> str:
    c = s.counters
    mode = s.mode + (f" since {s.since}" if s.since else "")
    lines = [
        *_run_lines(status),
        [f"bucket {s.bucket} at {s.endpoint or 'AWS'}", f"prefix {s.prefix or '(all)'}"],
        [f"index {s.index}", f"mode {mode}", f"concurrency {s.concurrency}"],
        [
            f"objects {c.scanned_objects:,}",
            f"updated {c.updated:,}",
            f"skipped {c.skipped:,}",
            f"orphans {c.orphans:,}",
            f"failed {c.failed_items:,}",
        ],
    ]
    if s.verify:
        lines.append([f"verified {c.verified:,}", f"mismatched {c.mismatched:,}"])
    if s.dry_run:
        lines.append([f"would update {c.would_update:,}"])
    lines += [
        [f"hashed {c.bytes_hashed:,} bytes", f"errors {_errors(c.errors_by_code)}"],
        [
            f"checkpoint lastKey {visible(str(s.checkpoint.last_key))}",
            f"done after it {len(s.checkpoint.done_after)}",
        ],
    ]
    return _text(lines, s.message, width)


def status_text(status: JobStatus, width: int | None = None) -> str:
    """The human form of `status`: the same object `status --json` prints, within `width`
    (the terminal's; 80 without one)."""
    s = status.snapshot
    if isinstance(s, HashSnapshot):
        return _hash_status_text(status, s, width)
    c = s.counters
    eta = None if s.eta_seconds is None else round(s.eta_seconds, 1)  # as the JSON has it
    lines = [
        *_run_lines(status),
        [f"bucket {s.bucket} at {s.endpoint or 'AWS'}", f"origin {s.origin}"],
        [f"angles {s.angles_planned}", f"concurrency {s.concurrency}"],
        [
            f"SKUs {c.scanned_skus:,}/{s.planned_skus:,}",
            f"remaining {s.eta_skus_remaining:,}",
            f"ETA {_duration(eta)}",
        ],
        [f"items planned {s.planned_items:,}", f"attempted {c.attempted_downloads:,}"],
        [
            f"uploaded {c.uploaded:,}",
            f"skippedExists {c.skipped_exists:,}",
            f"noRemote {c.no_remote:,}",
            f"failed {c.failed_items:,}",
        ],
        [f"errors {_errors(c.errors_by_code)}"],
        [
            f"checkpoint lastSku {visible(str(s.checkpoint.last_sku))}",
            f"in progress {len(s.checkpoint.completed_angles)} SKUs",
        ],
    ]
    return _text(lines, s.message, width)
