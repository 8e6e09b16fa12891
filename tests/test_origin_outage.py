"""An origin that goes away: before a run (preflight, exit 2: tests/test_bad_input.py) and in
the middle of one. Refused connections with no answer between stop the run (exit 3) with the
checkpoint kept and the items that met the outage unfinished, not failed; the next run, with the
origin back, finishes with nothing lost and nothing failed. Headless output says why."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from helpers import Backfill

ANGLES = (1, 2, 3)
MakeJob = Callable[..., Awaitable[Backfill]]


async def test_an_origin_that_dies_mid_run_stops_it_and_the_next_run_finishes(
    make_job: MakeJob,
) -> None:
    job = await make_job(200)
    skus = job.skus()[:200]
    job.origin.faults.latency = 0.02
    running = await job.start_run(limit=200)
    for _ in range(3000):  # bounded: 30 s
        if job.origin.gets >= 60 or not running.alive:
            break
        await asyncio.sleep(0.01)
    assert running.alive, "the run ended before the outage"
    died = time.monotonic()
    await job.origin.stop()  # the port is closed: every new connection is refused
    first = await running.wait(30)
    assert first.rc == 3, str(first)
    assert time.monotonic() - died < 10
    assert "origin unreachable" in first.err
    assert "first connection error:" in first.err  # the cause, logged once when it appeared
    snap = first.snap
    assert snap["state"] == "failed" and snap["failedItems"] == 0
    assert "origin unreachable" in snap["message"]
    status = await job.status()
    assert status["runStatus"] == "paused" and status["failedItems"] == 0

    await job.origin.start()  # back, on the same port
    second = await job.run(limit=200)
    assert second.rc == 0, str(second)
    done = second.snap
    assert done["state"] == "completed" and done["failedItems"] == 0
    assert done["carryover"]["planned"] == 0  # nothing was left failed
    assert done["scannedSkus"] == 200
    await job.assert_bucket_exactly(skus, ANGLES)
    job.assert_no_key_put_twice()


async def test_headless_output_says_why_items_fail(
    make_job: MakeJob, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # a terminal of 80: records continue on indented lines
    job = await make_job(30)
    job.origin.faults.error_rate = 1.0  # every GET answers 500 or 503: every item fails
    result = await job.run(limit=10)
    assert result.rc == 1, str(result)
    lines = result.err.replace("\n  ", " ").splitlines()  # records continued past 80 columns
    assert max(len(line) for line in result.err.splitlines()) <= 80
    firsts = [line for line in lines if " error: HTTP 50" in line and "first http_50" in line]
    assert firsts, result.err  # the first error of each code, with its message
    failed = [line for line in lines if line.startswith("tui-backfill: failed item ")]
    snap = result.snap
    assert snap["failedItems"] > 20 and snap["failedItems"] + snap["noRemote"] == 30
    assert len(failed) == 20  # logged one by one up to 20 a window, then summed up
    assert all("attempt(s): http_50" in line for line in failed)
    more = f"tui-backfill: {snap['failedItems'] - 20} more failed items not logged one by one"
    assert any(line.startswith(more) for line in lines), result.err


async def test_a_destination_that_dies_mid_run_stops_it_and_the_next_run_finishes(
    make_job: MakeJob,
) -> None:
    """The bucket's server goes away mid-run (its port closed: every new connection refused):
    the run stops (exit 3, `destination unreachable`) instead of fetching item after item from
    the origin only to fail its upload; the items that met it are unfinished, not failed, and
    the next run, with the bucket back, finishes with nothing lost."""
    job = await make_job(200)
    skus = job.skus()[:200]
    job.origin.faults.latency = 0.02
    running = await job.start_run(limit=200)
    for _ in range(3000):  # bounded: 30 s
        if sum(job.puts().values()) >= 60 or not running.alive:
            break
        await asyncio.sleep(0.01)
    assert running.alive, "the run ended before the outage"
    await job.proxy.stop()  # the bucket's port is closed
    died = time.monotonic()
    first = await running.wait(30)
    gets_then = job.origin.gets
    assert first.rc == 3, str(first)
    assert time.monotonic() - died < 15
    assert "destination unreachable" in first.err
    snap = first.snap
    assert snap["state"] == "failed" and snap["failedItems"] == 0, snap
    assert "destination unreachable" in snap["message"]
    assert gets_then < 600  # it stopped fetching: not every item fetched to fail its upload

    await job.proxy.start()  # back, on the same port
    second = await job.run(limit=200)
    assert second.rc == 0, str(second)
    done = second.snap
    assert done["state"] == "completed" and done["failedItems"] == 0
    assert done["scannedSkus"] == 200
    await job.assert_bucket_exactly(skus, ANGLES)
    job.assert_no_key_put_twice()
