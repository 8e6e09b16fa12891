"""Watermark maths: which groups of an ordered source are finished, given items that finish
out of order.

Groups (the image job's SKUs, a listing's keys) are dispatched in ascending order; each has a
fixed set of members (angles; one member for a group of one item), and its items finish in any
order. `Position.last` is the highest group such that it and every group dispatched before it
are finished; `Position.partial` lists the finished members of the groups after it. Pure: no
I/O, no clock. Pipelines spell a position in their own checkpoint JSON.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

_NONE: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True)
class Position:
    """A persisted position: every group up to `last` is finished."""

    last: str | None = None
    partial: dict[str, tuple[int, ...]] = field(default_factory=dict)


class Watermark:
    """Tracks dispatched groups and advances the position as their members finish."""

    def __init__(self, members: tuple[int, ...], start: Position | None = None) -> None:
        self._members = frozenset(members)
        start = start or Position()
        self.last: str | None = start.last
        self._open: OrderedDict[str, set[int]] = OrderedDict()
        self._resumed = {group: set(done) for group, done in start.partial.items()}
        self.finished_groups = 0  # groups that moved behind the watermark in this process

    def done_members(self, group: str) -> frozenset[int]:
        """Members of `group` already finished according to the position we resumed from."""
        done = self._resumed.get(group)
        return frozenset(done) if done else _NONE

    def dispatch(self, group: str) -> None:
        """Register `group` (in ascending order) before any of its items is started."""
        self._check_after(group)
        if self._open and group <= next(reversed(self._open)):
            raise ValueError(f"{group!r} dispatched out of order")
        self._open[group] = self._resumed.pop(group, set())
        self._advance()

    def pass_finished(self, group: str, members: set[int]) -> bool:
        """Dispatch `group` and finish `members` of it at once, when no group is open before
        it, the position we resumed from records none of its members, and `members` are all
        of them: the watermark moves to it. False, with nothing changed, otherwise."""
        if self._open or group in self._resumed or not self._members <= members:
            return False
        self._check_after(group)
        self.last = group
        self.finished_groups += 1
        return True

    def _check_after(self, group: str) -> None:
        if self.last is not None and group <= self.last:
            raise ValueError(f"{group!r} is not after the watermark {self.last!r}")

    def finish(self, group: str, member: int) -> bool:
        """Mark one item finished; return True when the watermark moved."""
        self._open[group].add(member)
        return self._advance()

    def _advance(self) -> bool:
        moved = False
        while self._open:
            group, done = next(iter(self._open.items()))
            if not self._members <= done:
                break
            self._open.popitem(last=False)
            self.last = group
            self.finished_groups += 1
            moved = True
        return moved

    @property
    def in_flight(self) -> int:
        return len(self._open)

    def scanned(self, *, committed: bool) -> int:
        """Groups started in this process or carried in partly done by the position.

        The committed figure counts only groups that the position records (finished, or with
        a finished member), so a resume never counts a group twice.
        """
        open_groups = (
            sum(1 for done in self._open.values() if done) if committed else len(self._open)
        )
        return self.finished_groups + open_groups + sum(1 for d in self._resumed.values() if d)

    def position(self) -> Position:
        partial = {group: tuple(sorted(done)) for group, done in self._open.items() if done}
        # Members recorded by the position we resumed from and not yet re-dispatched.
        for group, done in self._resumed.items():
            if done:
                partial[group] = tuple(sorted(done))
        return Position(self.last, dict(sorted(partial.items())))
