"""The breakers: tell a server that is gone from one that is failing.

One a slot (core/engine.py): the origin's, and the destination's (existence checks and
uploads). A refused connection or an unresolvable host is the server's absence, not a fault of
it (a reset, a timeout or a 5xx is). Enough of them in a row, with no answer between, and the
run stops (exit 3) with its checkpoint kept, instead of failing every item it meets. Items
whose attempts all met the absence wait here ("parked") for the verdict: if the breaker trips
they stay unfinished (a resume redoes them); if the server answers, the run ends or
`park_seconds` pass, they are failed items after all. Pure bookkeeping: the engine does the
recording.
"""

from __future__ import annotations

from tui_backfill.core.pipeline import Item, Result
from tui_backfill.outcomes import BackfillError, FatalError

UNREACHABLE_IN_A_ROW = 20
PARK_SECONDS = 5.0  # well beyond the second or so the breaker needs to trip in an outage


class Breaker:
    def __init__(
        self,
        server: str = "origin",
        limit: int = UNREACHABLE_IN_A_ROW,
        park_seconds: float = PARK_SECONDS,
    ) -> None:
        self.server = server  # what the run stops for: "origin", "destination"
        self._limit = limit
        self._park_seconds = park_seconds
        self.in_a_row = 0
        self.parked: list[tuple[Item, Result]] = []
        self._parked_since = 0.0
        self.tripped = False

    def answered(self) -> None:
        """The server answered (a 404 too): it is there."""
        self.in_a_row = 0

    def unreachable(self, exc: BackfillError) -> FatalError | None:
        """One more unreachable attempt; the error that stops the run when the breaker trips
        (the parked items are then dropped: unfinished)."""
        self.in_a_row += 1
        if self.in_a_row < self._limit or self.tripped:
            return None
        self.tripped = True
        self.parked.clear()
        return FatalError(
            f"{self.server} unreachable: {self.in_a_row} connection failures in a row "
            f"({exc.message}); the checkpoint is kept, resume once it is back",
            code=f"{self.server}_unreachable",
        )

    def park(self, item: Item, result: Result, now: float) -> None:
        if not self.parked:
            self._parked_since = now
        self.parked.append((item, result))

    def overdue(self, now: float) -> bool:
        """Parked items have waited long enough: the watermark must not wait on them longer."""
        return bool(self.parked) and now - self._parked_since >= self._park_seconds

    def release(self) -> list[tuple[Item, Result]]:
        """The parked items, to be recorded as the failed items they are."""
        parked, self.parked = self.parked, []
        return parked
