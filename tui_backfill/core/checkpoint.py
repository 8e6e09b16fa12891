"""Checkpoint watermark maths: which SKUs are finished, given items finishing out of order.

SKUs are dispatched in ascending order; items finish in any order. `lastSku` is the highest SKU
such that it and every SKU dispatched before it are finished; `completedAngles` lists the
finished angles of the SKUs after it. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A persisted position: every SKU up to `last_sku` is finished."""

    last_sku: str | None = None
    completed_angles: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "lastSku": self.last_sku,
            "completedAngles": {sku: list(a) for sku, a in self.completed_angles.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Checkpoint:
        return cls(
            last_sku=data.get("lastSku"),
            completed_angles={
                str(sku): tuple(int(a) for a in angles)
                for sku, angles in (data.get("completedAngles") or {}).items()
            },
        )


class WatermarkTracker:
    """Tracks dispatched SKUs and advances the watermark as their angles finish."""

    def __init__(self, angles: tuple[int, ...], start: Checkpoint | None = None) -> None:
        self._angles = frozenset(angles)
        start = start or Checkpoint()
        self.last_sku: str | None = start.last_sku
        self._open: OrderedDict[str, set[int]] = OrderedDict()
        self._resumed = {sku: set(a) for sku, a in start.completed_angles.items()}
        self.finished_skus = 0  # SKUs that moved behind the watermark in this process

    def done_angles(self, sku: str) -> frozenset[int]:
        """Angles of `sku` already finished according to the checkpoint we resumed from."""
        return frozenset(self._resumed.get(sku, ()))

    def dispatch(self, sku: str) -> None:
        """Register `sku` (in ascending order) before any of its items is started."""
        if self.last_sku is not None and sku <= self.last_sku:
            raise ValueError(f"SKU {sku!r} is not after the watermark {self.last_sku!r}")
        if self._open and sku <= next(reversed(self._open)):
            raise ValueError(f"SKU {sku!r} dispatched out of order")
        self._open[sku] = self._resumed.pop(sku, set())
        self._advance()

    def finish(self, sku: str, angle: int) -> bool:
        """Mark one item finished; return True when the watermark moved."""
        self._open[sku].add(angle)
        return self._advance()

    def _advance(self) -> bool:
        moved = False
        while self._open:
            sku, done = next(iter(self._open.items()))
            if not self._angles <= done:
                break
            self._open.popitem(last=False)
            self.last_sku = sku
            self.finished_skus += 1
            moved = True
        return moved

    @property
    def in_flight(self) -> int:
        return len(self._open)

    def scanned(self, *, committed: bool) -> int:
        """SKUs started in this process or carried in partly done by the checkpoint.

        The committed figure counts only SKUs that the checkpoint records (finished, or with a
        finished angle), so a resume never counts a SKU twice.
        """
        open_skus = sum(1 for done in self._open.values() if done) if committed else len(self._open)
        return self.finished_skus + open_skus + sum(1 for done in self._resumed.values() if done)

    def checkpoint(self) -> Checkpoint:
        completed = {sku: tuple(sorted(done)) for sku, done in self._open.items() if done}
        # Angles recorded by the checkpoint we resumed from and not yet re-dispatched.
        for sku, done in self._resumed.items():
            if done:
                completed[sku] = tuple(sorted(done))
        return Checkpoint(self.last_sku, dict(sorted(completed.items())))
