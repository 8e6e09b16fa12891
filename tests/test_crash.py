"""Crashes (SIGKILL at many moments of one run) and SIGTERM, each followed by `resume`.

The job runs through the real CLI against `rclone serve s3` behind a counting proxy (every
successful PUT is counted per key where it lands; rclone ignores `If-None-Match`, so a key PUT
twice by the engine would show) and the aiohttp origin (GETs counted per path).
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from helpers import (
    CLI,
    Backfill,
    Running,
    assert_counters_add_up,
    assert_valid_checkpoint,
    finished_items,
    key_of,
    served_url,
    signalled_without_stderr,
    wait_for,
)
from prometheus_client.parser import text_string_to_metric_families

from tui_backfill.frontends.api import BASE

if TYPE_CHECKING:
    pass

ANGLES = (1, 2, 3)
MakeJob = Callable[..., Awaitable[Backfill]]


async def _interrupted_status(
    job: Backfill, skus: list[str], *, state: str = "interrupted"
) -> dict[str, Any]:
    """`status --json` of the stopped run (`interrupted` after a kill, `paused` after a graceful
    stop): not live, resumable, a valid checkpoint whose finished items are all in the bucket."""
    status = await job.status()
    assert status["live"] is False
    assert status["state"] == state, status["state"]
    assert status["runStatus"] in ("running", "paused")
    assert_valid_checkpoint(status, skus, ANGLES)
    keys = await job.bucket_keys()
    claimed = {key_of(s, a) for s, a in finished_items(status, skus, ANGLES) if job.available(s, a)}
    assert claimed <= keys, (
        f"checkpoint claims items not in the bucket: {sorted(claimed - keys)[:5]}"
    )
    return status


async def test_sigkill_at_many_moments_then_resume(make_job: MakeJob) -> None:
    n = 150
    job = await make_job(n + 10, checkpoint_every=40, missing_fraction=0.15)
    skus = job.skus()[:n]
    expected = job.expected_objects(skus, ANGLES)
    missing = job.missing_items(skus, ANGLES)
    job.origin.faults.latency = 0.01

    def written() -> int:
        return len(job.proxy.puts)

    async def after_objects(count: int) -> Callable[[Running], Awaitable[None]]:
        async def trigger(running: Running) -> None:
            target = written() + count
            await wait_for(lambda: written() >= target or not running.alive, within=30,
                           what=f"{count} more objects")  # fmt: skip

        return trigger

    async def after_seconds(seconds: float) -> Callable[[Running], Awaitable[None]]:
        async def trigger(running: Running) -> None:
            await asyncio.sleep(seconds)

        return trigger

    async def while_pausing(running: Running) -> None:
        await wait_for(lambda: written() >= base + 20, within=30, what="20 more objects")
        job.origin.faults.latency = 1.5  # in-flight fetches now outlast the command's pickup
        pause = await job.cli("pause", "--no-wait", *job.job_flags())
        assert pause.rc == 0, str(pause)
        await asyncio.sleep(0.8)  # the run has taken the command and is finishing in-flight items
        job.origin.faults.latency = 0.01

    # The moments: first objects, mid-run, right after a resume starts (before or during its
    # preflight), a few objects into a resume, during a graceful stop, and late in the run.
    moments: list[tuple[str, Callable[[Running], Awaitable[None]]]] = [
        ("after the first object", await after_objects(1)),
        ("mid-run", await after_objects(90)),
        ("0.7 s into a resume", await after_seconds(0.7)),
        ("one object into a resume", await after_objects(1)),
        ("while pausing", while_pausing),
        ("late in the run", await after_objects(120)),
    ]
    recorded: dict[tuple[str, int], int] = {}  # finished per a checkpoint -> GETs at that time
    kills = 0
    running = await job.start_run(limit=n)
    for what, trigger in moments:
        base = written()
        await trigger(running)
        assert running.alive, f"the run ended before the kill {what}: {await running.wait()}"
        running.kill()
        result = await running.wait(10)
        assert result.rc == -signal.SIGKILL, str(result)
        kills += 1
        if kills == 1:
            assert written() < len(expected), "the first kill should come early"
        status = await _interrupted_status(job, skus)
        for item in finished_items(status, skus, ANGLES):
            recorded.setdefault(item, job.gets_of(*item))
        running = await job.start("resume", "--no-ui", *job.job_flags())

    assert kills >= 5
    job.origin.faults.latency = 0
    result = await running.wait(60)
    assert result.rc == 0, str(result)
    final = result.json()
    assert_counters_add_up(final)
    assert final["scannedSkus"] == n
    assert final["failedItems"] == 0
    assert final["noRemote"] == len(missing)
    # an object written before a crash but not yet checkpointed counts as skippedExists
    assert final["uploaded"] + final["skippedExists"] == len(expected)
    assert final["checkpoint"] == {"lastSku": skus[-1], "completedAngles": {}}

    await job.assert_bucket_exactly(skus, ANGLES)
    job.assert_no_key_put_twice()
    assert set(job.puts()) == expected
    assert final["uploaded"] <= len(expected)
    # angles recorded as completed by a checkpoint were never fetched again afterwards
    refetched = {item: (n0, job.gets_of(*item)) for item, n0 in recorded.items()
                 if job.gets_of(*item) != n0}  # fmt: skip
    assert not refetched, f"refetched after being checkpointed: {dict(list(refetched.items())[:5])}"
    assert {item for item in recorded if item in missing}, "no 404 item was ever checkpointed"
    status = await job.status()
    assert status["state"] == "completed" and status["runId"] == final["runId"]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
async def test_a_signal_stops_a_run_whose_terminal_is_gone(
    make_job: MakeJob, signum: signal.Signals
) -> None:
    """The stop comes before the line that says so: with stderr gone (a lost SSH session, a
    closed pipe), SIGTERM or SIGHUP still pauses the run (exit 75), its checkpoint saved."""
    n = 120
    job = await make_job(n + 10, checkpoint_every=50)
    job.origin.faults.latency = 0.03
    proc = await asyncio.create_subprocess_exec(
        *CLI, "run", "--no-ui", *job.run_flags(limit=n), stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env=job.env(),
        cwd=job.tmp,
    )  # fmt: skip
    try:
        await wait_for(lambda: len(job.proxy.puts) >= 30, within=30, what="30 objects written")
        assert await signalled_without_stderr(proc, signum) == 75
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    status = await job.status()
    assert status["runStatus"] == "paused" and status["exitCode"] == 75
    assert 0 < status["scannedSkus"] < n


async def test_sigterm_exits_75_with_the_checkpoint_persisted(make_job: MakeJob) -> None:
    n = 120
    job = await make_job(n + 10, checkpoint_every=50)
    skus = job.skus()[:n]
    job.origin.faults.latency = 0.03
    running = await job.start_run(limit=n)
    await wait_for(lambda: len(job.proxy.puts) >= 70, within=30, what="70 objects written")
    running.signal(signal.SIGTERM)
    result = await running.wait(10)
    assert result.rc == 75, str(result)
    assert "SIGTERM" in result.err
    stopped = result.json()
    assert stopped["state"] == "paused"
    assert 0 < stopped["scannedSkus"] < n
    assert_valid_checkpoint(stopped, skus, ANGLES)

    status = await _interrupted_status(job, skus, state="paused")
    assert status["runStatus"] == "paused" and status["exitCode"] == 75
    # persisted on the way out, not only every 50 SKUs: the same position and counters
    assert status["checkpoint"] == stopped["checkpoint"]
    for key in ("scannedSkus", "uploaded", "noRemote", "attemptedDownloads"):
        assert status[key] == stopped[key], key
    done = finished_items(status, skus, ANGLES)
    gets_at_stop = {item: job.gets_of(*item) for item in done}

    job.origin.faults.latency = 0
    resumed = await job.resume()
    assert resumed.rc == 0, str(resumed)
    final = resumed.json()
    assert_counters_add_up(final)
    assert final["runId"] == stopped["runId"]
    assert final["scannedSkus"] == n
    assert final["uploaded"] == len(job.expected_objects(skus, ANGLES))
    assert final["skippedExists"] == 0
    await job.assert_bucket_exactly(skus, ANGLES)
    job.assert_no_key_put_twice()
    assert all(job.gets_of(*item) == gets_at_stop[item] for item in done)


async def _served_views(job: Backfill) -> tuple[dict[str, Any], dict[str, float]]:
    """GET .../status and the run-state gauge of /metrics from a `serve` process of the job."""
    serve = await job.start("serve", *job.run_flags(limit=1), "--port", "0")
    try:
        url = await served_url(serve)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{url}{BASE}/status") as answer:
                assert answer.status == 200, await answer.text()
                served = await answer.json()
            async with session.get(f"{url}/metrics") as answer:
                text = await answer.text()
    finally:
        serve.signal(signal.SIGTERM)
        await serve.wait(30)
    gauge = {
        sample.labels["state"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "tui_backfill_run_state"
    }
    return served, gauge


async def test_after_a_kill_every_front_end_says_interrupted(make_job: MakeJob) -> None:
    """kill -9 is a crash, not a pause: `status` (JSON and text), `runs`, the API's status and
    /metrics all say `interrupted`; `resume` then finishes the run."""
    n = 60
    job = await make_job(n + 5, checkpoint_every=10)
    job.origin.faults.latency = 0.05
    running = await job.start_run(limit=n)
    await wait_for(lambda: len(job.proxy.puts) >= 20, within=30, what="20 objects written")
    running.kill()
    assert (await running.wait(10)).rc == -signal.SIGKILL

    status = await _interrupted_status(job, job.skus()[:n])
    assert status["runStatus"] == "running"
    text = await job.cli("status", *job.job_flags(), within=30)
    assert text.rc == 0 and "state interrupted" in text.out.splitlines()[0], str(text)
    runs = await job.cli("runs", "--json", *job.job_flags(), within=30)
    assert runs.rc == 0, str(runs)
    entry = runs.json()["runs"][0]
    assert (entry["status"], entry["outcome"], entry["live"]) == (
        "interrupted",
        "interrupted",
        False,
    )

    served, gauge = await _served_views(job)
    assert served["state"] == "interrupted" and served["live"] is False
    assert gauge["interrupted"] == 1 and gauge["paused"] == 0 and gauge["running"] == 0

    job.origin.faults.latency = 0
    resumed = await job.resume()
    assert resumed.rc == 0, str(resumed)
    final = resumed.json()
    assert final["runId"] == status["runId"] and final["scannedSkus"] == n
    assert (await job.status())["state"] == "completed"
