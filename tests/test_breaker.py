"""The origin breaker and the failed-items log: pure bookkeeping, tested as such."""

from __future__ import annotations

import logging

import pytest

from tui_backfill.core.breaker import Breaker
from tui_backfill.core.failure_log import FailureLog
from tui_backfill.core.pipeline import Item, Result
from tui_backfill.outcomes import OriginUnreachable

REFUSED = OriginUnreachable("connect: refused")


def test_the_breaker_trips_only_on_a_run_of_unreachable_errors_with_no_answer_between() -> None:
    breaker = Breaker(limit=3)
    assert breaker.unreachable(REFUSED) is None
    assert breaker.unreachable(REFUSED) is None
    breaker.answered()  # a 200 or a 404: the origin is there
    assert breaker.unreachable(REFUSED) is None
    assert breaker.unreachable(REFUSED) is None
    fatal = breaker.unreachable(REFUSED)
    assert fatal is not None and fatal.code == "origin_unreachable"
    assert "3 connection failures in a row" in fatal.message and "refused" in fatal.message
    assert breaker.unreachable(REFUSED) is None  # tripped once


def test_a_breaker_names_the_server_the_run_stops_for() -> None:
    breaker = Breaker("destination", limit=1)
    fatal = breaker.unreachable(REFUSED)
    assert fatal is not None and fatal.code == "destination_unreachable"
    assert fatal.message.startswith("destination unreachable: 1 connection failures in a row")


def test_parked_items_are_dropped_when_it_trips_and_released_when_overdue() -> None:
    failed = Result("failed", error=REFUSED)
    breaker = Breaker(limit=2, park_seconds=5.0)
    breaker.park(Item("a", 0, "a"), failed, now=100.0)
    breaker.park(Item("b", 0, "b"), failed, now=103.0)
    assert not breaker.overdue(104.9) and breaker.overdue(105.0)  # from the first park
    assert [item.key for item, _ in breaker.release()] == ["a", "b"]
    assert not breaker.overdue(1000.0)
    breaker.park(Item("c", 0, "c"), failed, now=200.0)
    breaker.unreachable(REFUSED)
    assert breaker.unreachable(REFUSED) is not None
    assert breaker.release() == []  # unfinished: a resume redoes them


def test_failed_items_are_logged_in_bursts_then_counted(caplog: pytest.LogCaptureFixture) -> None:
    log = logging.getLogger("test.failures")
    failures = FailureLog(log, burst=2, window=10.0)
    with caplog.at_level(logging.WARNING, logger="test.failures"):
        for i, now in enumerate([0.0, 1.0, 2.0, 3.0, 11.0]):
            failures.failed(f"k{i}", 3, "http_503", "HTTP 503", now)
        failures.flush()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "failed item 'k0' after 3 attempt(s): http_503: HTTP 503",
        "failed item 'k1' after 3 attempt(s): http_503: HTTP 503",
        "2 more failed items not logged one by one (`tui-backfill failed` lists them)",
        "failed item 'k4' after 3 attempt(s): http_503: HTTP 503",
    ]


def test_a_message_that_starts_with_its_code_says_it_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = FailureLog(logging.getLogger("test.once"))
    with caplog.at_level(logging.WARNING, logger="test.once"):
        failures.failed("k", 3, "connection", "connection: ServerDisconnectedError", 0.0)
    assert [r.getMessage() for r in caplog.records] == [
        "failed item 'k' after 3 attempt(s): connection: ServerDisconnectedError"
    ]
