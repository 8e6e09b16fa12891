"""The hash index's checkpoint: a key watermark over the bucket listing, and what the run
found so far that must outlive a crash (the mismatches of a verify run).

`{"lastKey": K, "doneAfter": [...]}`: every key up to K in listing order is finished, and the
keys in `doneAfter` (after K) are finished too; a resume lists again with `StartAfter` K.
`listingDone`: the listing reached its end (a run bounded by --limit-objects did not: the
job's next run starts after its lastKey). Stored in the same transaction as the counters.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tui_backfill.core.watermark import Position

MEMBER = 0  # one item per listed key: its only member
MAX_MISMATCHES_KEPT = 10_000  # in the checkpoint and the snapshot; the counter counts them all


@dataclass(frozen=True, slots=True)
class Mismatch:
    """A verify run's finding: the stored hash is not the hash of the object's bytes."""

    key: str
    stored: str
    actual: str

    def to_json(self) -> dict[str, str]:
        return {"key": self.key, "stored": self.stored, "actual": self.actual}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Mismatch:
        return cls(str(data["key"]), str(data["stored"]), str(data["actual"]))


@dataclass(frozen=True, slots=True)
class KeyCheckpoint:
    last_key: str | None = None
    done_after: tuple[str, ...] = ()
    listing_done: bool = False
    mismatches: tuple[Mismatch, ...] = field(default=())

    @property
    def position(self) -> Position:
        return Position(self.last_key, {key: (MEMBER,) for key in self.done_after})

    @classmethod
    def at(
        cls, position: Position, *, listing_done: bool, mismatches: tuple[Mismatch, ...] = ()
    ) -> KeyCheckpoint:
        return cls(position.last, tuple(position.partial), listing_done, mismatches)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"lastKey": self.last_key, "doneAfter": list(self.done_after)}
        if self.listing_done:
            data["listingDone"] = True
        if self.mismatches:
            data["mismatches"] = [m.to_json() for m in self.mismatches]
        return data

    def shown(self) -> dict[str, Any]:
        """The snapshot's `checkpoint` key: the watermark alone."""
        return {"lastKey": self.last_key, "doneAfter": list(self.done_after)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> KeyCheckpoint:
        return cls(
            data.get("lastKey"),
            tuple(str(key) for key in data.get("doneAfter") or ()),
            bool(data.get("listingDone")),
            tuple(Mismatch.from_json(m) for m in data.get("mismatches") or ()),
        )
