"""What the CLI prints fits 80 columns (a terminal of 80, or none: a pipe, a log), with nothing
cut; a wider terminal gets longer lines. Real commands over a state with real runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import Backfill, Result

WIDTH = 80


def _fits(result: Result, width: int = WIDTH) -> list[str]:
    assert result.rc in (0, 1), str(result)
    lines = (result.out + result.err).splitlines()
    assert lines, str(result)
    too_wide = [line for line in lines if len(line) > width]
    assert not too_wide, "\n".join(too_wide)
    return lines


def _words(lines: list[str]) -> str:
    return " ".join(" ".join(lines).split())


async def test_status_runs_failed_coverage_and_progress_fit_80_columns(
    make_job: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    job: Backfill = await make_job(40)
    job.origin.faults.reset_rate = 0.15  # connection errors: failed items with long messages
    job.origin.faults.error_rate = 0.1
    few = ("--max-attempts", "1")
    first = await job.run(limit=20, extra=few)
    second = await job.run(limit=20, extra=few)
    for result in (first, second):  # progress lines on stderr, the JSON on stdout
        lines = _fits(Result(result.rc, "", result.err))
        assert any(line.startswith(f"[{job.job}] ") for line in lines), result.err
        assert "checkpoint" in _words(lines)
    final = second.json()
    assert final["failedItems"] + json.loads(first.out)["failedItems"] > 0, "no failed item"
    flags = job.job_flags()

    status = _words(_fits(await job.cli("status", *flags)))
    for label, key in [
        ("uploaded", "uploaded"),
        ("skippedExists", "skippedExists"),
        ("noRemote", "noRemote"),
        ("failed", "failedItems"),
        ("attempted", "attemptedDownloads"),
    ]:
        assert f"{label} {final[key]:,}" in status, (label, status)
    assert f"origin {job.origin.url_template}" in status
    assert f"checkpoint lastSku {final['checkpoint']['lastSku']}" in status

    runs = _fits(await job.cli("runs", *flags))
    history = (await job.cli("runs", "--json", *flags)).json()["runs"]
    assert len(history) == 2
    for entry in history:  # every run, its outcome, start, counters and coverage
        c, cov = entry["counters"], entry["coverage"]
        at = next(i for i, line in enumerate(runs) if line.split()[:1] == [str(entry["runId"])])
        assert entry["outcome"] in runs[at] and entry["startedAt"] in runs[at]
        below = [line for line in runs[at + 1 :][:3] if line.startswith(" " * 7)]
        assert (
            f"uploaded {c['uploaded']} skipped {c['skippedExists']} noRemote {c['noRemote']}"
            f" failed {c['failedItems']} coverage {cov['before']:.2f}% → {cov['after']:.2f}%"
        ) in _words(below)
    monkeypatch.setenv("COLUMNS", "200")
    wide = await job.cli("runs", *flags)
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    assert len(wide.out.splitlines()) == len(history) + 1  # one line a run when there is room
    assert max(len(line) for line in wide.out.splitlines()) > WIDTH

    failed = _fits(await job.cli("failed", *flags))
    items = (await job.cli("failed", "--json", *flags)).json()["items"]
    assert items
    text = _words(failed)
    for item in items:  # every key, code and whole message
        assert f"{item['key']} {item['code']} {item['attempts']} {item['run_id']}" in text
        assert " ".join(item["message"].split()) in text

    coverage = _words(_fits(await job.cli("coverage", *flags)))
    report = (await job.cli("coverage", "--json", *flags)).json()
    assert f"{report['present']:,} of {report['expected']:,} expected objects present" in coverage
    assert f"{report['missing']:,} missing" in coverage
    assert f"{report['listRequests']} listing requests" in coverage


async def test_a_hash_index_job_fits_80_columns_too(
    make_job: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", str(WIDTH))
    job: Backfill = await make_job(10)
    assert (await job.run(limit=10)).rc == 0
    job.job = "hash-index-of-the-image-bucket"  # a long name: the lines still fit
    index = tmp_path / "a-rather-long-directory-name-for-the-index" / "index.sqlite3"
    index.parent.mkdir()
    flags = [f for f in job.hash_flags(index) if f not in ("--pipeline", "hash-index")]
    hashed = await job.cli("hash-index", "--no-ui", *flags)
    assert hashed.rc == 0, str(hashed)
    final = hashed.json()
    assert final["updated"] > 0
    _fits(Result(hashed.rc, "", hashed.err))
    assert "checkpoint" in _words(hashed.err.splitlines())

    status = _words(_fits(await job.cli("status", *job.job_flags())))
    assert f"objects {final['scannedObjects']:,} updated {final['updated']:,}" in status
    assert f"index{index}:files" in "".join(status.split())  # a path longer than a line: cut
    runs = _words(_fits(await job.cli("runs", *job.job_flags())))
    assert f"updated {final['updated']} skipped {final['skipped']} failed 0" in runs
    coverage = _words(_fits(await job.cli("coverage", *job.job_flags())))
    assert f"index{index}:files" in "".join(coverage.split()) and "coverage_percent" in coverage


async def test_progress_and_log_lines_stay_one_line_without_a_terminal(
    make_job: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under systemd or cron (stderr a pipe, no COLUMNS) a progress line or a log record is one
    line, whatever its length: journald keeps a record as one entry, a grep finds it whole."""
    monkeypatch.delenv("COLUMNS", raising=False)
    job: Backfill = await make_job(12)
    job.origin.faults.reset_rate = 0.3  # failed items: long log records
    result = await job.run(limit=12, extra=("--max-attempts", "1"))
    assert result.rc in (0, 1), str(result)
    progress = [line for line in result.err.splitlines() if line.startswith(f"[{job.job}] ")]
    assert progress, result.err
    assert all("| checkpoint " in line for line in progress), result.err
    assert max(len(line) for line in progress) > WIDTH  # long, and still one line
    assert not [line for line in result.err.splitlines() if line.startswith("  ")], result.err
