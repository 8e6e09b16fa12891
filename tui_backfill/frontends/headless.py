"""Headless output: the progress line on stderr and the human form of `status`.

Both render a status snapshot (object or JSON); neither knows anything of the engine.
"""

from __future__ import annotations

from typing import Any

from tui_backfill.pipelines.mirror.snapshot import StatusSnapshot
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


def progress_line(snapshot: StatusSnapshot | dict[str, Any]) -> str:
    s = snapshot.to_json() if isinstance(snapshot, StatusSnapshot) else snapshot
    ckpt = visible((s.get("checkpoint") or {}).get("lastSku") or "-")
    return (
        f"[{s.get('job')}] {s.get('state')} {s.get('scannedSkus', 0):,}/{s.get('plannedSkus', 0):,} SKUs"
        f" | up {s.get('uploaded', 0):,} skip {s.get('skippedExists', 0):,} 404 {s.get('noRemote', 0):,}"
        f" failed {s.get('failedItems', 0):,} | err {_errors(s.get('errorsByCode') or {})}"
        f" | {s.get('itemsPerSecond', 0):.1f} obj/s ETA {_duration(s.get('etaSeconds'))}"
        f" | checkpoint {ckpt}"
    )


def status_text(s: dict[str, Any]) -> str:
    ckpt = s.get("checkpoint") or {}
    lines = [
        f"job {s.get('job')}  run {s.get('runId')}  state {s.get('state')}{' (live)' if s.get('live') else ''}"
        + ("  dry run" if s.get("dryRun") else "")
        + (f"  on {s['host']}" if s.get("host") else ""),
        f"started {s.get('startedAt')}  updated {s.get('lastUpdateAt')}",
        f"bucket {s.get('bucket')} at {s.get('endpoint') or 'AWS'}  origin {s.get('origin')}",
        f"angles {s.get('anglesPlanned')}  concurrency {s.get('concurrency')}",
        f"SKUs {s.get('scannedSkus', 0):,}/{s.get('plannedSkus', 0):,}  remaining {s.get('etaSkusRemaining', 0):,}"
        f"  ETA {_duration(s.get('etaSeconds'))}",
        f"items planned {s.get('plannedItems', 0):,}  attempted {s.get('attemptedDownloads', 0):,}"
        f"  uploaded {s.get('uploaded', 0):,}  skippedExists {s.get('skippedExists', 0):,}"
        f"  noRemote {s.get('noRemote', 0):,}  failed {s.get('failedItems', 0):,}",
        f"errors {_errors(s.get('errorsByCode') or {})}",
        f"checkpoint lastSku {visible(str(ckpt.get('lastSku')))}  in progress {len(ckpt.get('completedAngles') or {})} SKUs",
    ]
    if s.get("message"):
        lines.append(f"message {s['message']}")
    return "\n".join(lines)
