"""What the console says a run is doing, in the operator's words (pure).

The snapshot's `state` is the contract's word; the console tells apart what the contract's
`paused` covers: a run *held* in place (the console's `p`: `r` releases it in its process)
and a run *stopped* (`tui-backfill pause`, the API's pause, `q`: its process let go and
exits 75; `resume` continues it in a new one). An attached console also says when it has
lost its connection, rather than show the last snapshot as if it were live.
"""

from __future__ import annotations

from enum import StrEnum

from tui_backfill.pipelines.snapshots import AnySnapshot


class Phase(StrEnum):
    UNKNOWN = "unknown"  # before the first snapshot
    RUNNING = "running"
    HOLDING = "holding"  # a hold: in-flight items finish, then it waits for `r`
    HELD = "held"
    STOPPING = "stopping"  # a stop: in-flight items finish, then its process exits
    STOPPED = "stopped"
    INTERRUPTED = "interrupted"
    COMPLETED = "completed"
    FAILED = "failed"
    LOST = "connection lost"


ENDED = (Phase.STOPPED, Phase.INTERRUPTED, Phase.COMPLETED, Phase.FAILED)
RESUMABLE = (Phase.STOPPED, Phase.INTERRUPTED, Phase.FAILED)

STYLE = {
    Phase.RUNNING: "bold green",
    Phase.HOLDING: "bold yellow",
    Phase.HELD: "bold yellow",
    Phase.STOPPING: "bold magenta",
    Phase.STOPPED: "bold magenta",
    Phase.INTERRUPTED: "bold magenta",
    Phase.COMPLETED: "bold cyan",
    Phase.FAILED: "bold red",
    Phase.LOST: "bold red",
}


def phase_of(snap: AnySnapshot, *, live: bool, lost: bool, before: Phase) -> Phase:
    """The phase a snapshot shows. `live`: a process works on the run; `lost`: the latest
    poll of a served run failed (`snap` is then the last one seen); `before`: the phase shown
    until now."""
    if lost:
        if before in ENDED:
            return before  # nothing more to come from that run in that process
        if before is Phase.STOPPING:
            return Phase.STOPPED  # a stopped run's process exits: that is the silence
        return Phase.LOST
    if snap.state == "running":
        return Phase.RUNNING if live else Phase.INTERRUPTED
    if snap.state == "pausing":
        return Phase.HOLDING if snap.held else Phase.STOPPING
    if snap.state == "paused":
        # held in place while its process lives; else stopped (the process let go)
        return Phase.HELD if live else Phase.STOPPED
    try:
        return Phase(snap.state)
    except ValueError:
        return Phase.UNKNOWN


def header_word(phase: Phase) -> str:
    return "" if phase is Phase.UNKNOWN else phase.value.upper()


def status_text(phase: Phase, *, lost_for: float | None, resume_with: str) -> str:
    """What the progress line says instead of rates and an ETA when the run does not move."""
    if phase is Phase.LOST:
        since = "" if lost_for is None else f" {lost_for:.0f} s ago"
        return f"connection lost{since} · retrying every second"
    if phase is Phase.HOLDING:
        return "holding: in-flight items finish, then r resumes"
    if phase is Phase.HELD:
        return "held in place · r resumes"
    if phase is Phase.STOPPING:
        return "stopping: in-flight items finish, then its process exits"
    if phase is Phase.STOPPED:
        return f"stopped · continue: {resume_with}"
    if phase is Phase.INTERRUPTED:
        return f"interrupted · continue: {resume_with}"
    if phase is Phase.FAILED:
        return f"failed · once fixed: {resume_with}"
    return phase.value


def phase_events(before: Phase, now: Phase, *, ways: list[str], where: str) -> list[str]:
    """The log's lines when the phase changes. `ways`: how to continue a stopped run, first
    the usual one; `where`: what the console is attached to (for a lost connection)."""
    if now is before or now is Phase.UNKNOWN:
        return []
    if before is Phase.LOST:
        lines = [f"connection to {where} back"]
        if now is not Phase.RUNNING:
            lines.append(f"the run is {now.value}")
    elif now is Phase.LOST:
        return [f"connection to {where} lost; retrying every second"]
    elif before is Phase.UNKNOWN:
        lines = [] if now is Phase.RUNNING else [f"the run is {now.value}"]
    else:
        lines = [f"{before.value} -> {now.value}"]
    if now is Phase.HELD:
        lines.append("held in place: r resumes it here")
    elif now is Phase.STOPPED:
        lines.append("stopped: the checkpoint is saved and its process let go of the run")
    elif now is Phase.INTERRUPTED:
        lines.append("interrupted: its process died; the last checkpoint stands")
    if now in RESUMABLE and ways:
        lines.append(f"continue: {ways[0]}")
        lines.extend(f"      or: {way}" for way in ways[1:])
    return lines
