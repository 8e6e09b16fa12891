"""Snapshot arithmetic every pipeline shares: timestamps, rates over a window, the ETA, and
how a byte count reads.

Each pipeline's status snapshot (its keys, its JSON) is the pipeline's own; the engine
builds it from a `Progress` a few times per second.
"""

from __future__ import annotations

import datetime as dt
from collections import deque


def utc_now_iso(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.UTC)
    return now.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RateMeter:
    """Rates over a sliding window, so the rate and ETA settle and do not jump around.

    The window covers moving time only: a run that stops moving (held, paused, stopped)
    calls `reset`, so it reads 0 at once rather than an average of the time before, and a
    resumed run is measured afresh rather than averaged with its pause."""

    def __init__(self, window: float = 20.0) -> None:
        self._window = window
        self._samples: deque[tuple[float, float, float, float]] = deque()

    def add(self, now: float, items: float, skus: float, nbytes: float) -> None:
        """Record cumulative totals at time `now` (monotonic seconds); `skus`: groups scanned
        (the keyword keeps the name the image job gave it)."""
        self._samples.append((now, items, skus, nbytes))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
            self._samples.popleft()

    def reset(self) -> None:
        """Forget every sample: the rates read 0 until two new samples exist."""
        self._samples.clear()

    def rates(self) -> tuple[float, float, float]:
        """Items/s, groups/s (SKUs/s for the image job) and bytes/s over the window (zeros until two samples exist)."""
        if len(self._samples) < 2:
            return 0.0, 0.0, 0.0
        t0, i0, s0, b0 = self._samples[0]
        t1, i1, s1, b1 = self._samples[-1]
        span = t1 - t0
        if span <= 0:
            return 0.0, 0.0, 0.0
        return (i1 - i0) / span, (s1 - s0) / span, (b1 - b0) / span


def eta_seconds(remaining_groups: int, groups_per_second: float) -> float | None:
    """Seconds left at the current rate; None while the rate is unknown."""
    if remaining_groups <= 0:
        return 0.0
    if groups_per_second <= 0:
        return None
    return remaining_groups / groups_per_second


def fmt_bytes(amount: float) -> str:
    """A byte count (or rate) as people read it, in decimal units: `560.0 KB`, `9.9 GB`."""
    for unit in ("B", "KB", "MB", "GB"):
        if amount < 1000 or unit == "GB":
            return f"{amount:.1f} {unit}"
        amount /= 1000
    return f"{amount:.1f} GB"
