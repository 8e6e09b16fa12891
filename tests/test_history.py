"""Run history (`tui-backfill runs`): the mapping of a stored run to its entry (outcome words,
coverage maths), the store's listing (newest first, limit, live vs. interrupted), and the real
CLI over real runs against the test's servers."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import Backfill, assert_counters_add_up, key_of, one_line

from tui_backfill.core.records import RunRecord
from tui_backfill.frontends.history import history_entry, history_text, run_history, run_outcome
from tui_backfill.pipelines.mirror.checkpoint import Checkpoint
from tui_backfill.pipelines.mirror.snapshot import Counters
from tui_backfill.servers.origin import expected_body
from tui_backfill.state.lock import JobLock
from tui_backfill.state.sqlite import StateStore

MakeJob = Callable[..., Awaitable[Backfill]]


def _record(**changes: Any) -> RunRecord:
    base = RunRecord(
        id=7,
        job="nightly",
        status="completed",
        dry_run=False,
        settings={"angles": "1-3", "limit_skus": 40},
        started_at="2026-11-26T11:40:00.000Z",
        ended_at="2026-11-26T12:10:30.500Z",
        range_after="100039",
        range_last="100079",
        planned_skus=40,
        catalog_skus=30392,
        counters=Counters(
            scanned_skus=40,
            attempted_downloads=95,
            uploaded=90,
            skipped_exists=24,
            no_remote=4,
            failed_items=2,
            errors_by_code={"timeout": 3, "http_503": 5},
            bytes_uploaded=123456,
            found_at_start=24,
            carryover_planned=3,
            carryover_done=2,
            carryover_failed=1,
        ),
        checkpoint=Checkpoint(last_sku="100079"),
        snapshot={"lastUpdateAt": "2026-11-26T12:10:30.400Z", "anglesPlanned": "1-3"},
        pid=4242,
        exit_code=1,
        message=None,
    )
    return dataclasses.replace(base, **changes)


# -- the pure mapping ------------------------------------------------------------------------


def test_entry_of_a_completed_run() -> None:
    entry = history_entry(_record())
    assert entry == {
        "runId": 7,
        "job": "nightly",
        "status": "completed",
        "outcome": "completed-with-failures",
        "live": False,
        "host": None,
        "dryRun": False,
        "exitCode": 1,
        "startedAt": "2026-11-26T11:40:00.000Z",
        "endedAt": "2026-11-26T12:10:30.500Z",
        "durationSeconds": 1830.5,
        "lastUpdateAt": "2026-11-26T12:10:30.400Z",
        "message": None,
        "anglesPlanned": "1-3",
        "range": {"after": "100039", "last": "100079"},
        "catalogSkus": 30392,
        "plannedSkus": 40,
        "plannedItems": 120,
        "lastSku": "100079",
        "counters": {
            "scannedSkus": 40,
            "uploaded": 90,
            "skippedExists": 24,
            "noRemote": 4,
            "failedItems": 2,
            "errorsTotal": 8,
            "errorsByCode": {"http_503": 5, "timeout": 3},
            "attemptedDownloads": 95,
            "bytesUploaded": 123456,
            "foundAtStart": 24,
        },
        "carryover": {"planned": 3, "done": 2, "failed": 1},
        # before: 24 / 120 found at start; after: (90 + 24) / 120 present
        "coverage": {"before": 20.0, "after": 95.0},
    }
    assert list(entry["counters"]["errorsByCode"]) == ["http_503", "timeout"]  # by count


def test_coverage_is_rounded_to_two_decimals_and_angles_come_from_the_spec() -> None:
    counters = Counters(scanned_skus=30, uploaded=50, skipped_exists=7, found_at_start=7)
    entry = history_entry(_record(settings={"angles": "1-2,4"}, planned_skus=30, counters=counters))
    assert entry["anglesPlanned"] == "1-2,4"
    assert entry["plannedItems"] == 90
    assert entry["coverage"] == {"before": 7.78, "after": 63.33}  # 7/90, 57/90


def test_nothing_planned_has_no_coverage_and_no_duration_until_it_ends() -> None:
    entry = history_entry(
        _record(status="preparing", planned_skus=0, counters=Counters(), ended_at=None,
                exit_code=None, snapshot=None)
    )  # fmt: skip
    assert entry["plannedItems"] == 0
    assert entry["coverage"] == {"before": None, "after": None}
    assert entry["durationSeconds"] is None
    assert entry["lastUpdateAt"] is None
    assert entry["outcome"] == "interrupted"  # its process is gone (not live)


@pytest.mark.parametrize(
    ("status", "exit_code", "live", "outcome"),
    [
        ("completed", 0, False, "completed"),
        ("completed", 1, False, "completed-with-failures"),
        ("paused", 75, False, "paused"),
        ("paused", 3, False, "failed"),
        ("abandoned", 75, False, "abandoned"),
        ("abandoned", None, False, "abandoned"),
        ("running", None, True, "running"),
        ("running", 75, True, "running"),  # resumed after a pause: the stored 75 is stale
        ("running", None, False, "interrupted"),
        ("running", 75, False, "interrupted"),
        ("preparing", None, True, "running"),
        ("preparing", None, False, "interrupted"),
    ],
)
def test_outcome_words(status: str, exit_code: int | None, live: bool, outcome: str) -> None:
    assert run_outcome(status, exit_code, live=live) == outcome


def test_a_running_row_whose_process_died_shows_as_interrupted() -> None:
    dead = history_entry(_record(status="running", ended_at=None, exit_code=None), live=False)
    assert (dead["status"], dead["outcome"], dead["live"]) == ("interrupted", "interrupted", False)
    assert dead["endedAt"] is None and dead["durationSeconds"] is None


def test_the_live_run_shows_its_published_counters() -> None:
    published = {
        "anglesPlanned": "1-3",
        "lastUpdateAt": "2026-11-26T12:00:00.000Z",
        "scannedSkus": 35,
        "uploaded": 99,
        "skippedExists": 3,
        "existence": {"foundAtStart": 3},
    }
    run = _record(status="running", ended_at=None, exit_code=None, snapshot=published)
    live = history_entry(run, live=True)
    assert (live["status"], live["outcome"], live["live"]) == ("running", "running", True)
    assert live["counters"]["scannedSkus"] == 35
    assert live["counters"]["uploaded"] == 99
    assert live["coverage"] == {"before": 2.5, "after": 85.0}  # 3/120, 102/120
    # Not live: the committed counters (what a resume continues from).
    assert history_entry(run, live=False)["counters"]["uploaded"] == 90


def test_text_has_a_header_and_one_line_per_run() -> None:
    entries = [
        history_entry(_record()),
        history_entry(_record(id=6, status="paused", exit_code=75, ended_at=None)),
    ]
    lines = history_text(entries, width=200).splitlines()
    assert len(lines) == 3
    assert lines[0].split()[:2] == ["run", "outcome"]
    first = lines[1].split()
    assert first[:4] == ["7", "completed-with-failures", "2026-11-26T11:40:00.000Z", "0:30:30"]
    assert first[4] == "90/24/4/2"
    assert lines[1].endswith("20.00% → 95.00%")
    second = lines[2].split()
    assert second[:2] == ["6", "paused"] and second[3] == "-"


def test_text_within_80_columns_has_two_lines_a_run() -> None:
    entries = [
        history_entry(_record()),
        history_entry(_record(id=6, status="paused", exit_code=75, ended_at=None)),
    ]
    lines = history_text(entries, width=80).splitlines()
    assert len(lines) == 5 and max(len(line) for line in lines) <= 80
    assert lines[0].split() == ["run", "outcome", "started", "duration"]
    assert lines[1].split() == [
        "7",
        "completed-with-failures",
        "2026-11-26T11:40:00.000Z",
        "0:30:30",
    ]
    assert lines[2].split() == (
        "uploaded 90 skipped 24 noRemote 4 failed 2 coverage 20.00% → 95.00%".split()
    )
    assert lines[3].split()[:2] == ["6", "paused"] and lines[3].split()[3] == "-"


# -- the store: newest first, limit, live vs. interrupted ----------------------------------


async def _stored_run(store: StateStore, job: str, skus: list[str], *, status: str) -> int:
    run_id = await store.create_run(job, {"angles": "1-2"}, dry_run=False, range_after=None)

    async def batches() -> Any:
        yield skus

    await store.snapshot_skus(run_id, batches(), None, len(skus))
    counters = Counters(scanned_skus=len(skus), uploaded=2 * len(skus) - 1, no_remote=1)
    await store.commit_checkpoint(
        run_id, counters, Checkpoint(last_sku=skus[-1]), job=job,
        status=None if status == "running" else status,
        exit_code=0 if status == "completed" else None,
    )  # fmt: skip
    return run_id


async def test_run_history_newest_first_limited_and_live(tmp_path: Path) -> None:
    state = str(tmp_path / "state.sqlite3")
    store = await StateStore.open(state)
    try:
        first = await _stored_run(store, "job", ["a", "b"], status="completed")
        second = await _stored_run(store, "job", ["c", "d", "e"], status="completed")
        third = await _stored_run(store, "job", ["f"], status="running")
        await _stored_run(store, "other", ["x"], status="completed")

        entries = await run_history(store, "job")
        assert [e["runId"] for e in entries] == [third, second, first]
        assert [e["outcome"] for e in entries] == ["interrupted", "completed", "completed"]
        assert entries[0]["status"] == "interrupted"  # no process holds the job
        assert [e["plannedItems"] for e in entries] == [2, 6, 4]
        assert entries[1]["counters"]["uploaded"] == 5
        assert entries[1]["coverage"] == {"before": 0.0, "after": 83.33}  # 5 / 6
        assert entries[1]["range"] == {"after": None, "last": "e"}

        limited = await run_history(store, "job", limit=2, state_path=state)
        assert [e["runId"] for e in limited] == [third, second]
        assert await run_history(store, "job", limit=0) == []
        assert await run_history(store, "nobody") == []

        lock = JobLock(state, "job")
        lock.acquire("job")  # this process now holds the job: its running run is live
        try:
            live = await run_history(store, "job", limit=1)
        finally:
            lock.release()
        assert (live[0]["outcome"], live[0]["status"], live[0]["live"]) == (
            "running", "running", True,
        )  # fmt: skip
    finally:
        await store.close()


# -- the real CLI over real runs -------------------------------------------------------------


async def _seed(job: Backfill, keys: set[str]) -> None:
    def put_all() -> None:
        client = job.direct.client()
        for key in sorted(keys):
            sku, angle = key.removeprefix("rsr/highres/").removesuffix("_HR.jpg").rsplit("_", 1)
            client.put_object(Bucket=job.bucket, Key=key, Body=expected_body(sku, int(angle)))

    await asyncio.to_thread(put_all)


def _assert_matches_final_status(entry: dict[str, Any], snap: dict[str, Any]) -> None:
    counters = entry["counters"]
    for key in (
        "scannedSkus", "uploaded", "skippedExists", "noRemote", "failedItems", "errorsTotal",
        "errorsByCode", "attemptedDownloads", "bytesUploaded",
    ):  # fmt: skip
        assert counters[key] == snap[key], (key, counters[key], snap[key])
    assert counters["foundAtStart"] == snap["existence"]["foundAtStart"]
    assert entry["carryover"] == snap["carryover"]
    for key in ("runId", "startedAt", "anglesPlanned", "plannedSkus", "plannedItems"):
        assert entry[key] == snap[key], (key, entry[key], snap[key])


async def test_runs_lists_real_runs_newest_first(make_job: MakeJob) -> None:
    job = await make_job(100)
    skus = job.skus()
    first_slice = skus[:30]
    seeded = {key_of(s, 1) for s in first_slice[:6]}  # present before the first run
    await _seed(job, seeded)

    first = await job.run(limit=30)
    assert first.rc == 0, str(first)
    snap1 = first.json()
    assert_counters_add_up(snap1)
    assert snap1["existence"]["foundAtStart"] == 6
    second = await job.run(limit=30)
    assert second.rc == 0, str(second)
    snap2 = second.json()
    assert_counters_add_up(snap2)

    # A third run, paused from another shell while the origin is slow.
    job.origin.faults.latency = 0.2
    running = await job.start_run(limit=30)
    deadline = time.monotonic() + 20
    while True:
        assert running.alive, f"the run ended early: {await running.wait()}"
        assert time.monotonic() < deadline, "the third run never showed progress"
        status = await job.cli("status", "--json", *job.job_flags(), within=30)
        if status.rc == 0 and status.json().get("live") and status.json()["scannedSkus"] > 0:
            break
        await asyncio.sleep(0.1)
    paused = await job.cli("pause", *job.job_flags(), within=30)
    assert paused.rc == 0, str(paused)
    third = await running.wait(30)
    assert third.rc == 75, str(third)
    snap3 = await job.status()
    assert snap3["state"] == "paused"

    result = await job.cli("runs", "--json", *job.job_flags(), within=30)
    assert result.rc == 0, str(result)
    listing = result.json()
    assert listing["job"] == job.job
    entries = listing["runs"]
    assert [e["runId"] for e in entries] == [snap3["runId"], snap2["runId"], snap1["runId"]]
    assert snap3["runId"] > snap2["runId"] > snap1["runId"]
    assert [e["outcome"] for e in entries] == ["paused", "completed", "completed"]
    assert [e["exitCode"] for e in entries] == [75, 0, 0]
    assert [e["status"] for e in entries] == ["paused", "completed", "completed"]
    assert not any(e["live"] for e in entries)

    e3, e2, e1 = entries
    _assert_matches_final_status(e1, snap1)
    _assert_matches_final_status(e2, snap2)
    assert e1["range"] == {"after": None, "last": skus[29]}
    assert e2["range"] == {"after": skus[29], "last": skus[59]}
    assert e3["range"] == {"after": skus[59], "last": skus[89]}
    for entry, snap in ((e1, snap1), (e2, snap2)):
        assert entry["endedAt"] is not None and entry["endedAt"] >= snap["startedAt"]
        assert entry["durationSeconds"] is not None and 0 < entry["durationSeconds"] < 60
    # The paused run: the counters its checkpoint committed (what a resume continues from).
    assert e3["endedAt"] is None and e3["durationSeconds"] is None
    assert e3["runId"] == snap3["runId"] and e3["startedAt"] == snap3["startedAt"]
    for key in ("uploaded", "skippedExists", "noRemote", "failedItems", "attemptedDownloads"):
        assert e3["counters"][key] == snap3[key], key
    assert 0 < e3["counters"]["scannedSkus"] <= snap3["scannedSkus"] < 30

    # Coverage of each run's own slice, from its counters.
    assert e1["coverage"]["before"] == round(6 / 90 * 100, 2) == 6.67
    present1 = snap1["uploaded"] + snap1["skippedExists"]
    assert present1 == 90 - snap1["noRemote"] - snap1["failedItems"]
    assert e1["coverage"]["after"] == round(present1 / 90 * 100, 2)
    assert e1["coverage"]["after"] > e1["coverage"]["before"]
    assert e2["coverage"]["before"] == 0.0
    assert e2["coverage"]["after"] == round(
        (snap2["uploaded"] + snap2["skippedExists"]) / 90 * 100, 2
    )

    text = await job.cli("runs", *job.job_flags(), within=30)
    assert text.rc == 0, str(text)
    lines = text.out.splitlines()  # 80 columns: a run's counters on the line below it
    assert len(lines) == 1 + 3 * 2, text.out  # a header, two lines per run
    assert [line.split()[:2] for line in lines[1::2]] == [
        [str(snap3["runId"]), "paused"],
        [str(snap2["runId"]), "completed"],
        [str(snap1["runId"]), "completed"],
    ]
    assert lines[6].endswith(f"6.67% → {e1['coverage']['after']:.2f}%")

    limited = await job.cli("runs", "--json", "--limit", "1", *job.job_flags(), within=30)
    assert [e["runId"] for e in limited.json()["runs"]] == [snap3["runId"]]

    unknown = await job.cli("runs", "--state", str(job.state), "--job", "nope", within=30)
    assert unknown.rc == 2, str(unknown)
    line = one_line(unknown.err)
    assert "--job" in line and "'nope'" in line and "no runs" in line
    assert unknown.out == ""


async def test_a_late_live_publish_never_replaces_the_final_snapshot(tmp_path: Path) -> None:
    """A heartbeat's publish queued behind the final commit must not overwrite what it wrote."""
    store = await StateStore.open(str(tmp_path / "state.sqlite3"))
    try:
        run_id = await _stored_run(store, "job", ["a"], status="running")
        await store.set_run_status(run_id, "running")
        await store.publish_snapshot(run_id, {"state": "running", "n": 1})
        assert (await store.run(run_id)).snapshot == {"state": "running", "n": 1}  # type: ignore[union-attr]
        await store.commit_checkpoint(
            run_id, Counters(scanned_skus=1), Checkpoint(last_sku="a"), job="job",
            status="completed", exit_code=0, snapshot={"state": "completed"},
        )  # fmt: skip
        await store.publish_snapshot(run_id, {"state": "running", "n": 2})
        assert (await store.run(run_id)).snapshot == {"state": "completed"}  # type: ignore[union-attr]
    finally:
        await store.close()
