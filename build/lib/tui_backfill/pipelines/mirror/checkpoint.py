"""The image job's checkpoint: the watermark spelled in SKUs and angles.

`lastSku`: every SKU up to it (in byte order) is finished; `completedAngles`: the finished
angles of SKUs after it. The maths is the core's `Watermark`; this module gives it the
brief's names and JSON keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tui_backfill.core.watermark import Position, Watermark


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

    @property
    def position(self) -> Position:
        return Position(self.last_sku, dict(self.completed_angles))

    @classmethod
    def at(cls, position: Position) -> Checkpoint:
        return cls(position.last, dict(position.partial))


class WatermarkTracker(Watermark):
    """The core's watermark over SKUs (groups) and angles (members)."""

    def __init__(self, angles: tuple[int, ...], start: Checkpoint | None = None) -> None:
        super().__init__(angles, start.position if start else None)

    @property
    def last_sku(self) -> str | None:
        return self.last

    @property
    def finished_skus(self) -> int:
        return self.finished_groups

    def done_angles(self, sku: str) -> frozenset[int]:
        return self.done_members(sku)

    def checkpoint(self) -> Checkpoint:
        return Checkpoint.at(self.position())
