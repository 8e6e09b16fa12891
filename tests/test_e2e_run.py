"""The image backfill end to end through the real CLI (issue #2 acceptance).

Every test drives `python -m tui_backfill` in subprocesses against real servers on loopback:
`rclone serve s3` behind a counting proxy (PUTs per key are counted where they land), the
aiohttp origin (GETs per path are counted at the origin) and a SQLite catalog. The origin and
the proxy run in the test's event loop, so subprocesses are asyncio ones, never blocking calls.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
from helpers import (
    Backfill,
    assert_brief_keys,
    assert_counters_add_up,
    assert_valid_checkpoint,
    finished_items,
    key_of,
    one_line,
    wait_for,
)

from tui_backfill.servers.origin import expected_body

if TYPE_CHECKING:
    pass

ANGLES = (1, 2, 3)
MakeJob = Callable[..., Awaitable[Backfill]]


async def _seed(job: Backfill, keys: set[str]) -> None:
    """Write objects straight to the server (not through the counting proxy)."""

    def put_all() -> None:
        client = job.direct.client()
        for key in sorted(keys):
            sku, angle = key.removeprefix("rsr/highres/").removesuffix("_HR.jpg").rsplit("_", 1)
            client.put_object(
                Bucket=job.bucket, Key=key, Body=expected_body(sku, int(angle)),
                ContentType="image/jpeg",
            )  # fmt: skip

    await asyncio.to_thread(put_all)


async def _live_status(job: Backfill, running: Any, *, after: int = 0) -> dict[str, Any]:
    """Poll `status --json` from another process until the live run has scanned > after."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert running.alive, f"the run ended early: {await running.wait()}"
        result = await job.cli("status", "--json", *job.job_flags(), within=30)
        if result.rc == 0:
            snapshot = result.json()
            if snapshot.get("live") and snapshot.get("scannedSkus", 0) > after:
                return dict(snapshot)
        await asyncio.sleep(0.1)
    raise AssertionError("status never showed the live run progressing")


# -- dry run ---------------------------------------------------------------------------------


async def test_dry_run_plans_without_fetching_or_writing(make_job: MakeJob) -> None:
    job = await make_job(505)
    catalog = job.skus()
    skus = catalog[:500]
    assert any(not s.isdigit() for s in skus), "the slice should hold alphanumeric SKUs too"
    # Pre-seed a non-trivial split: angle 2 of every 7th SKU, angle 1 of every alphanumeric SKU
    # of the slice, and objects outside the plan (a SKU past the slice, an angle not planned).
    seeded = {key_of(s, 2) for s in skus[::7]} | {key_of(s, 1) for s in skus if not s.isdigit()}
    outside = {key_of(catalog[-1], 1), key_of(skus[0], 4)}
    await _seed(job, seeded | outside)
    job.origin.reset_counters()
    job.proxy.reset_counters()

    # --plan-file: what the run would do, one line per item; an origin password given on the
    # command line (a dry run never contacts the origin) and the S3 secret stay out of it.
    plan_file = job.tmp / "plan.txt"
    secret_origin = job.origin.url_template.replace("http://", "http://operator:plan-pw-5Q@")
    result = await job.run(
        limit=500,
        angles="1-3",
        extra=["--dry-run", "--plan-file", str(plan_file), "--origin", secret_origin],
    )
    assert result.rc == 0, str(result)
    plan = result.json()
    assert "plan-pw-5Q" not in result.out + result.err
    text = plan_file.read_text(encoding="utf-8")
    assert "plan-pw-5Q" not in text and job.direct.secret_key not in text
    header = [line for line in text.splitlines() if line.startswith("#")]
    assert header == [
        f"# tui-backfill dry run of job default (bucket {job.bucket}): what a run would do",
        "# one line per SKU x angle: VERB KEY, KEY being the destination key",
        "# fetch KEY: missing from the bucket: a run fetches it from the origin and writes it",
        "# skip KEY: already in the bucket: a run skips it (skippedExists)",
        "# fail KEY: a run would record it as a failed item (its reason is in the dry run's "
        "errors)",
        "# items that failed in earlier runs are retried first by a real run and are not listed "
        "here",
    ]
    every = [key_of(s, a) for s in skus for a in (1, 2, 3)]
    assert text.splitlines()[len(header) :] == [  # in SKU order, then angles
        f"skip {key}" if key in seeded else f"fetch {key}" for key in every
    ]
    assert f"plan written to {plan_file}" in result.err
    assert not [name for name in os.listdir(job.tmp) if name.endswith(".partial")]
    assert "planFile" not in plan  # stdout's JSON is the dry run's, with or without the file
    assert_brief_keys(plan)
    assert plan["dryRun"] is True
    assert plan["state"] == "completed"
    assert plan["scannedSkus"] == 500
    assert plan["plannedItems"] == 1500
    assert plan["anglesPlanned"] == "1-3"
    assert plan["existence"]["foundAtStart"] == len(seeded)
    assert plan["skippedExists"] == len(seeded)
    assert plan["wouldFetch"] == 1500 - len(seeded)
    assert plan["plan"] == {
        "skus": 500, "items": 1500, "existing": len(seeded), "missing": 1500 - len(seeded),
    }  # fmt: skip
    assert plan["uploaded"] == plan["noRemote"] == plan["attemptedDownloads"] == 0
    assert plan["checkpoint"]["lastSku"] == skus[-1]
    # No download, no upload: the origin saw nothing at all, the bucket only listings.
    assert job.origin.requests == {}, job.origin.requests
    assert job.origin.gets == 0
    assert job.proxy.puts == {}
    assert job.proxy.count("put_object") == 0
    assert job.proxy.count("get_object") == 0
    assert job.proxy.count("list") >= 1
    assert await job.bucket_keys() == seeded | outside

    # A dry run leaves no run behind: status knows of none ...
    status = await job.cli("status", "--json", *job.job_flags())
    assert status.rc == 2, str(status)
    assert "no runs" in one_line(status.err)
    # ... and a real run with other settings starts afresh from the first SKU (an unfinished
    # run left by the dry run would refuse the new settings with exit 2, or be continued).
    real = await job.run(limit=40, angles="1-2")
    assert real.rc == 0, str(real)
    snapshot = real.json()
    assert_counters_add_up(snapshot)
    assert snapshot["dryRun"] is False
    assert snapshot["scannedSkus"] == 40
    assert snapshot["checkpoint"] == {"lastSku": skus[39], "completedAngles": {}}
    assert snapshot["startedAt"] > plan["startedAt"]
    in_slice = {key_of(s, a) for s in skus[:40] for a in (1, 2)} & seeded
    assert snapshot["skippedExists"] == snapshot["existence"]["foundAtStart"] == len(in_slice)
    assert await job.bucket_keys() == seeded | outside | job.expected_objects(skus[:40], (1, 2))
    job.assert_no_key_put_twice()


# -- real run --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n", [300, pytest.param(2000, marks=pytest.mark.slow, id="2000-skus")], ids=str
)
async def test_run_writes_every_object_and_status_is_live(make_job: MakeJob, n: int) -> None:
    job = await make_job(n + 20)
    skus = job.skus()[:n]
    missing = job.missing_items(skus, ANGLES)
    expected = job.expected_objects(skus, ANGLES)
    assert missing and expected
    job.origin.faults.latency = 0.03  # a slow enough origin to watch the run going

    running = await job.start_run(limit=n, angles="1-3")
    first = await _live_status(job, running)
    # every SKU the checkpoint says is finished has its objects in the bucket already
    keys_now = await job.bucket_keys()
    claimed = {key_of(s, a) for s, a in finished_items(first, skus, ANGLES)} & expected
    assert claimed <= keys_now, sorted(claimed - keys_now)[:10]
    await asyncio.sleep(1.3)  # snapshots are published about once a second
    second = await _live_status(job, running, after=first["scannedSkus"])
    job.origin.faults.latency = 0
    result = await running.wait(120)
    assert result.rc == 0, str(result)

    for snapshot in (first, second):
        assert_brief_keys(snapshot)
        assert snapshot["state"] == "running"
        assert snapshot["live"] is True
        assert snapshot["anglesPlanned"] == "1-3"
        assert snapshot["concurrency"] == 3
        assert snapshot["plannedItems"] == 3 * n
        assert snapshot["etaSkusRemaining"] == n - snapshot["scannedSkus"]
        assert_valid_checkpoint(snapshot, skus, ANGLES)
    for key in ("scannedSkus", "attemptedDownloads", "uploaded"):
        assert second[key] > first[key], f"{key} did not increase: {first[key]} -> {second[key]}"
    assert second["lastUpdateAt"] > first["lastUpdateAt"]
    assert second["startedAt"] == first["startedAt"]
    assert first["checkpoint"]["lastSku"] is not None
    assert finished_items(first, skus, ANGLES) <= finished_items(second, skus, ANGLES)

    final = result.json()
    assert_brief_keys(final)
    assert_counters_add_up(final)
    assert final["scannedSkus"] == n
    assert final["uploaded"] == len(expected)
    assert final["noRemote"] == len(missing)
    assert final["skippedExists"] == final["failedItems"] == final["errorsTotal"] == 0
    assert final["attemptedDownloads"] == 3 * n
    assert final["checkpoint"] == {"lastSku": skus[-1], "completedAngles": {}}
    assert final["existence"] == {
        "foundAtStart": 0, "written": len(expected), "stillMissing": len(missing),
    }  # fmt: skip
    await job.assert_bucket_exactly(skus, ANGLES)
    job.assert_no_key_put_twice()
    assert set(job.puts()) == expected
    # every item was fetched once; 404s were not retried
    assert job.origin.gets == 3 * n
    assert all(job.gets_of(s, a) == 1 for s in skus for a in ANGLES)

    after = await job.status()
    assert after["state"] == "completed" and after["live"] is False
    assert after["runStatus"] == "completed" and after["exitCode"] == 0
    assert after["uploaded"] == final["uploaded"]
    assert after["checkpoint"] == final["checkpoint"]
    # one final snapshot: the headless output and the state agree, and name the last save
    assert final["live"] is False and final["etaSeconds"] is None
    assert after["lastUpdateAt"] == final["lastUpdateAt"]
    assert after["checkpointSavedSku"] == final["checkpointSavedSku"] == skus[-1]
    assert after["checkpointSavedAt"] == final["checkpointSavedAt"] != ""


async def test_the_final_snapshot_names_the_final_save(make_job: MakeJob) -> None:
    """With no checkpoint before the end, the stored final snapshot still says when and where
    the run's last commit saved it (it used to name the save before, here none)."""
    job = await make_job(30, checkpoint_every=1000)
    skus = job.skus()[:30]
    result = await job.run(limit=30)
    assert result.rc == 0, str(result)
    final, stored = result.json(), await job.status()
    assert stored["checkpointSavedSku"] == final["checkpointSavedSku"] == skus[-1]
    assert stored["checkpointSavedAt"] == final["checkpointSavedAt"] != ""


RUN_KEYS = ("runStatus", "exitCode", "maxConcurrency", "host")


def _assert_same_view(final: dict[str, Any], stored: dict[str, Any]) -> None:
    """The headless final JSON and `status --json` right after it: one snapshot, the same keys,
    and the same run-level values."""
    assert set(final) == set(stored), (
        sorted(set(stored) - set(final)),
        sorted(set(final) - set(stored)),
    )
    for key in RUN_KEYS:
        assert final[key] == stored[key], (key, final[key], stored[key])
    assert final["live"] is False and stored["live"] is False


async def test_the_headless_output_has_the_keys_status_has(make_job: MakeJob) -> None:
    """A completed run and a paused one: the final JSON carries what `status --json` adds."""
    job = await make_job(80)
    done = await job.run(limit=20, extra=("--max-concurrency", "5"))
    assert done.rc == 0, str(done)
    final = done.json()
    _assert_same_view(final, await job.status())
    assert (final["runStatus"], final["exitCode"], final["maxConcurrency"]) == ("completed", 0, 5)
    assert final["host"]

    job.origin.faults.latency = 0.1  # the pause comes long before the end
    base = len(job.proxy.puts)
    running = await job.start_run(limit=50)
    await wait_for(lambda: len(job.proxy.puts) >= base + 10, within=30, what="10 more objects")
    assert (await job.cli("pause", *job.job_flags(), within=30)).rc == 0
    paused = await running.wait(30)
    assert paused.rc == 75, str(paused)
    stopped = paused.json()
    _assert_same_view(stopped, await job.status())
    assert (stopped["state"], stopped["runStatus"], stopped["exitCode"]) == ("paused", "paused", 75)


# -- pause and resume --------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["resume", "run"])
async def test_pause_stops_the_run_and_it_continues(make_job: MakeJob, how: str) -> None:
    n = 150
    job = await make_job(n + 10)
    skus = job.skus()[:n]
    job.origin.faults.latency = 0.05  # the run would take 7 s or more: the pause comes first
    running = await job.start_run(limit=n)
    await wait_for(lambda: len(job.proxy.puts) >= 60, within=30, what="60 objects written")

    started = time.monotonic()
    pause = await job.cli("pause", *job.job_flags())
    paused_result = await running.wait(30)
    took = time.monotonic() - started
    assert pause.rc == 0, str(pause)
    assert str(running.pid) in pause.err
    assert paused_result.rc == 75, str(paused_result)
    assert took < 5, f"pause took {took:.1f}s"
    paused = paused_result.json()
    assert paused["state"] == "paused"
    assert paused["etaSeconds"] is None  # nothing moves: no ETA to drift
    assert 0 < paused["scannedSkus"] < n, "the run should have been stopped part way"
    assert_valid_checkpoint(paused, skus, ANGLES)

    status = await job.status()  # the persisted state, read by another process
    assert status["state"] == "paused" and status["live"] is False
    assert status["runStatus"] == "paused" and status["exitCode"] == 75
    assert status["checkpoint"] == paused["checkpoint"]
    assert status["uploaded"] == paused["uploaded"]
    assert_valid_checkpoint(status, skus, ANGLES)
    done = finished_items(status, skus, ANGLES)
    assert done, "the checkpoint should record finished items"
    keys = await job.bucket_keys()
    assert {key_of(s, a) for s, a in done if job.available(s, a)} <= keys
    assert len(keys) == paused["uploaded"]

    job.origin.faults.latency = 0
    if how == "resume":
        result = await job.resume()
    else:
        result = await job.run(limit=n)
    assert result.rc == 0, str(result)
    final = result.json()
    assert_counters_add_up(final)
    assert final["runId"] == paused["runId"]
    assert final["startedAt"] == paused["startedAt"]
    assert final["scannedSkus"] == n
    assert final["uploaded"] == len(job.expected_objects(skus, ANGLES))
    assert final["noRemote"] == len(job.missing_items(skus, ANGLES))
    assert final["skippedExists"] == 0  # pause let in-flight items finish: nothing redone
    await job.assert_bucket_exactly(skus, ANGLES)
    job.assert_no_key_put_twice()
    # items the checkpoint recorded as finished were not fetched again (none was, in fact)
    assert all(job.gets_of(s, a) == 1 for s, a in done)
    assert all(job.gets_of(s, a) == 1 for s in skus for a in ANGLES)


# -- counters across runs ----------------------------------------------------------------------


async def test_runs_advance_through_the_catalog_and_from_start_rescans(make_job: MakeJob) -> None:
    job = await make_job(150)
    skus = job.skus()
    n = 50

    first_result = await job.run(limit=n)
    assert first_result.rc == 0, str(first_result)
    first = first_result.json()
    second_result = await job.run(limit=n)
    assert second_result.rc == 0, str(second_result)
    second = second_result.json()
    for snapshot, part in ((first, skus[:n]), (second, skus[n : 2 * n])):
        assert_counters_add_up(snapshot)
        assert snapshot["scannedSkus"] == n
        assert snapshot["checkpoint"] == {"lastSku": part[-1], "completedAngles": {}}
        assert snapshot["uploaded"] == len(job.expected_objects(part, ANGLES))
        assert snapshot["noRemote"] == len(job.missing_items(part, ANGLES))
        assert snapshot["existence"] == {
            "foundAtStart": 0,
            "written": snapshot["uploaded"],
            "stillMissing": snapshot["noRemote"],
        }
    assert second["runId"] != first["runId"]
    # the two runs covered 2N distinct SKUs, every object of them is there
    await job.assert_bucket_exactly(skus[: 2 * n], ANGLES)
    job.assert_no_key_put_twice()

    puts_before = dict(job.proxy.puts)
    job.origin.reset_counters()
    third_result = await job.run(limit=n, extra=["--from-start"])
    assert third_result.rc == 0, str(third_result)
    third = third_result.json()
    assert_counters_add_up(third)
    head = skus[:n]
    assert third["scannedSkus"] == n
    assert third["checkpoint"] == {"lastSku": head[-1], "completedAngles": {}}
    assert third["uploaded"] == 0
    assert third["skippedExists"] == len(job.expected_objects(head, ANGLES))
    assert third["noRemote"] == len(job.missing_items(head, ANGLES))
    assert third["existence"] == {
        "foundAtStart": third["skippedExists"], "written": 0, "stillMissing": third["noRemote"],
    }  # fmt: skip
    assert dict(job.proxy.puts) == puts_before, "a --from-start run wrote objects"
    # only the items the bucket lacks were asked of the origin again
    assert job.origin.gets == third["noRemote"]
    assert {p for (_, p) in job.origin.requests} == {
        f"/{s}_{a}" for s, a in job.missing_items(head, ANGLES)
    }
    await job.assert_bucket_exactly(skus[: 2 * n], ANGLES)


# -- one run per job; settings of an unfinished run; --fresh -----------------------------------


async def test_concurrent_run_other_settings_and_fresh(make_job: MakeJob) -> None:
    n = 300
    job = await make_job(n + 10)
    skus = job.skus()[:n]
    job.origin.faults.latency = 0.05  # the run would take 15 s or more: it is paused long before
    first = await job.start_run(limit=n)
    await wait_for(lambda: len(job.proxy.puts) >= 10, within=30, what="10 objects written")

    # a second run of the same job while the first is live: exit 2 naming the first's pid
    second = await job.run(limit=n)
    assert second.rc == 2, str(second)
    line = one_line(second.err)
    assert str(first.pid) in line and "already running" in line, line
    assert first.alive

    pause = await job.cli("pause", *job.job_flags())
    assert pause.rc == 0, str(pause)
    paused_result = await first.wait(30)
    assert paused_result.rc == 75, str(paused_result)
    paused = paused_result.json()

    # continuing the unfinished run with other settings is refused before any work
    job.origin.reset_counters()
    puts_before = dict(job.proxy.puts)
    other = await job.run(limit=n, angles="1-2")
    assert other.rc == 2, str(other)
    line = one_line(other.err)
    assert "--angles" in line and "--fresh" in line, line
    assert job.origin.requests == {}
    assert dict(job.proxy.puts) == puts_before
    status = await job.status()
    assert status["runId"] == paused["runId"] and status["state"] == "paused"

    # --fresh abandons it and starts a new run from the first SKU with the new settings
    job.origin.faults.latency = 0
    present = await job.bucket_keys()
    m = paused["scannedSkus"] + 20  # part done by the paused run, part not
    assert m < n
    fresh_result = await job.run(limit=m, angles="1-2", extra=["--fresh"])
    assert fresh_result.rc == 0, str(fresh_result)
    fresh = fresh_result.json()
    assert_counters_add_up(fresh)
    assert fresh["runId"] != paused["runId"]
    assert fresh["startedAt"] > paused["startedAt"]
    assert fresh["anglesPlanned"] == "1-2"
    assert fresh["scannedSkus"] == m and fresh["plannedItems"] == 2 * m
    assert fresh["checkpoint"] == {"lastSku": skus[m - 1], "completedAngles": {}}
    wanted = job.expected_objects(skus[:m], (1, 2))
    assert wanted & present and wanted - present, "the paused run should have done part of it"
    assert fresh["skippedExists"] == len(wanted & present)
    assert fresh["uploaded"] == len(wanted - present)
    assert fresh["noRemote"] == len(job.missing_items(skus[:m], (1, 2)))
    assert await job.bucket_keys() == present | wanted
    job.assert_no_key_put_twice()

    # the abandoned run is not resumable
    resume = await job.resume()
    assert resume.rc == 2, str(resume)
    assert "nothing to resume" in one_line(resume.err)
