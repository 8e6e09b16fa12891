"""The publishing worker end to end on SQLite: two worker processes on one queue file, a real
RAID-like origin, `rclone serve s3` behind a counting proxy.

Every file ends published (URLs = CDN_BASE_URL/<key>) or its job failed needing attention for
exactly the files that must fail (corrupt, bomb, 404, always-503); each variant key has one
successful PUT; a file whose source answers 503 three times ends completed with retry_count 3
and attempts spaced by the backoff; duplicate jobs complete as skipped with no download; no
two overlapping attempts of one job both completed; SIGTERM ends both workers with exit 0;
no secret reaches their output or the queue file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import itertools
import json
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import S3Target
from helpers import finish, spawn, tool
from PIL import Image
from publish_helpers import (
    CDN,
    RAID_SECRET,
    insert_files_sqlite,
    publish_env,
    queue_files,
    rows_sqlite,
)

from tui_backfill.pipelines.publish.worker import (
    FIGURES_EVERY,
    FIGURES_SHARE,
    FIGURES_STALE,
    figures_gap,
)
from tui_backfill.servers.images import many_images, sample_images
from tui_backfill.servers.proxy import ReverseProxy
from tui_backfill.servers.raid import RaidFaults, RaidServer

GOOD = 40
MUST_FAIL = {
    "corrupt.jpg": "corrupt",
    "bomb.png": "too_many_pixels",
    "missing.jpg": "404",
    "down.jpg": "http_503",
    "": "http_400",  # a row with an empty source_key: the store answers 400, failed at once
}


def _ts(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_two_sqlite_workers_publish_everything_once(
    tmp_path: Path, rclone_s3: S3Target, s3_proxy: object
) -> None:
    sources = many_images(GOOD, seed=3)
    samples = sample_images()
    images = {**sources, "flaky.jpg": samples["photo.jpg"]}
    images.update({k: samples[k] for k in ("corrupt.jpg", "bomb.png", "alpha.png")})
    images["down.jpg"] = samples["small.jpg"]
    faults = RaidFaults(fail_times={"flaky.jpg": 3}, always_503={"down.jpg"})
    files = [(i + 1, 500 + i % 7, key) for i, key in enumerate(sources)]
    special = ["flaky.jpg", "corrupt.jpg", "bomb.png", "missing.jpg", "down.jpg", "alpha.png", ""]
    files += [(1000 + i, 77, key) for i, key in enumerate(special)]
    by_key = {key: fid for fid, _, key in files}

    async with RaidServer(images, token=RAID_SECRET, faults=faults) as raid:
        proxy: ReverseProxy = await s3_proxy(rclone_s3)  # type: ignore[operator]
        target = rclone_s3.via(proxy)
        db = tmp_path / "queue.sqlite3"
        env = publish_env(target, raid.endpoint, f"sqlite:///{db}", CONCURRENCY="3")
        assert (await tool("publish", "init-db", env=env)).rc == 0
        insert_files_sqlite(db, files)
        enqueued = await tool("publish", "enqueue", env=env)
        assert enqueued.rc == 0 and f'"enqueued": {len(files)}' in enqueued.out, enqueued.err
        again = await tool("publish", "enqueue", env=env)
        assert '"enqueued": 0' in again.out  # idempotent
        duplicates = [1, 2, 3, 4, 5]
        with sqlite3.connect(db) as raw:  # the seed's edge function, twice
            raw.executemany(
                "INSERT INTO publish_jobs (file_id) VALUES (?)", [(f,) for f in duplicates]
            )

        workers = [
            await spawn("publish", "worker", "--no-ui", "--worker-id", f"w{i}", env=env)
            for i in (1, 2)
        ]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            open_jobs = rows_sqlite(
                db,
                "SELECT COUNT(*) FROM publish_jobs WHERE status IN ('pending', 'processing')"
                " OR (status = 'failed' AND retry_count < max_retries)",
            )[0][0]
            if open_jobs == 0:
                break
            await asyncio.sleep(0.3)
        assert open_jobs == 0, rows_sqlite(
            db,
            "SELECT id, status, retry_count, last_error FROM publish_jobs WHERE status != 'completed'",
        )
        for proc in workers:
            proc.send_signal(signal.SIGTERM)
        results = [await finish(proc, timeout=30) for proc in workers]

    for result in results:
        assert result.rc == 0, result.err[-2000:]
        for secret in (RAID_SECRET, rclone_s3.secret_key):
            assert secret not in result.out + result.err
    assert RAID_SECRET.encode() not in db.read_bytes()
    assert rclone_s3.secret_key.encode() not in db.read_bytes()

    # Every good file published, with its CDN URLs; the ones that must fail need attention.
    rows = rows_sqlite(
        db, "SELECT id, lot_id, publish_status, thumb_url, display_url FROM auction_files"
    )
    for fid, lot, status, thumb, display in rows:
        key = next(k for k, f in by_key.items() if f == fid)
        if key in MUST_FAIL:
            assert status != "published", key
            continue
        assert status == "published", key
        assert thumb == f"{CDN}/media/{lot}/{fid}/thumb.webp"
        assert display == f"{CDN}/media/{lot}/{fid}/display.webp"
    failed = rows_sqlite(
        db,
        "SELECT file_id, retry_count, max_retries, last_error FROM publish_jobs WHERE status = 'failed'",
    )
    assert {f for f, *_ in failed} == {by_key[k] for k in MUST_FAIL}
    for file_id, retry_count, max_retries, last_error in failed:
        key = next(k for k, f in by_key.items() if f == file_id)
        assert retry_count == max_retries == 5
        assert MUST_FAIL[key] in last_error, (key, last_error)

    # Each variant key written once; nothing else written.
    published = [r for r in rows if r[2] == "published"]
    keys = {
        f"media/{lot}/{fid}/{v}.webp" for fid, lot, *_ in published for v in ("thumb", "display")
    }
    assert set(rclone_s3.keys()) == keys
    puts = Counter({k.split("/", 1)[1]: n for k, n in proxy.puts.items()})
    lost = sum(proxy.lost_puts.values()) + sum(proxy.undelivered_puts.values())
    assert set(puts) == keys
    assert sum(puts.values()) - len(keys) <= lost, [k for k, n in puts.items() if n > 1]

    # 503 three times, then 200: completed with retry_count 3, attempts spaced by the backoff.
    flaky = by_key["flaky.jpg"]
    ((status, retry_count),) = rows_sqlite(
        db, "SELECT status, retry_count FROM publish_jobs WHERE file_id = ?", flaky
    )
    assert (status, retry_count) == ("completed", 3)
    starts = [
        _ts(s)
        for (s,) in rows_sqlite(
            db,
            "SELECT a.started_at FROM publish_attempts a JOIN publish_jobs j ON j.id = a.job_id"
            " WHERE j.file_id = ? ORDER BY a.id",
            flaky,
        )
    ]
    assert len(starts) == 4
    for n, (a, b) in enumerate(itertools.pairwise(starts), start=1):
        assert (b - a).total_seconds() >= 0.2 * 2 ** (n - 1) * 0.8 - 0.05, (n, starts)
    assert raid.requests["flaky.jpg"] == 4
    assert raid.requests[""] == 1  # a 400 is not retried: one attempt, failed for good

    # Duplicate jobs: completed as skipped, no download of their own.
    dup_outcomes = rows_sqlite(
        db,
        "SELECT a.outcome FROM publish_attempts a JOIN publish_jobs j ON j.id = a.job_id"
        " WHERE j.id > ? AND a.outcome IS NOT NULL AND a.outcome != 'released'",
        len(files),
    )
    assert sorted(o for (o,) in dup_outcomes) == ["skipped"] * len(duplicates)
    for fid in duplicates:
        assert raid.requests[files[fid - 1][2]] == 1

    # No two overlapping attempts of one job by different workers that both completed.
    done = rows_sqlite(
        db,
        "SELECT job_id, worker, started_at, ended_at FROM publish_attempts"
        " WHERE outcome IN ('published', 'skipped') ORDER BY job_id",
    )
    per_job = Counter(job for job, *_ in done)
    assert max(per_job.values()) == 1

    # The variants are WebP inside their boxes, with the source's aspect ratio.
    client = rclone_s3.client()
    fid, lot = published[0][0], published[0][1]
    source = Image.open(io.BytesIO(images[files[fid - 1][2]]))
    for variant, box in (("thumb", 400), ("display", 1600)):
        body = client.get_object(Bucket=rclone_s3.bucket, Key=f"media/{lot}/{fid}/{variant}.webp")
        assert body["ContentType"] == "image/webp"
        assert body["CacheControl"] == "public, max-age=31536000, immutable"
        image = Image.open(io.BytesIO(body["Body"].read()))
        assert image.format == "WEBP"
        assert max(image.size) == min(box, max(source.size))
        assert abs(image.size[0] / image.size[1] - source.size[0] / source.size[1]) < 0.02


async def test_sigterm_finishes_in_flight_and_hands_back_the_unstarted(
    tmp_path: Path, rclone_s3: S3Target
) -> None:
    """Concurrency 1 claims one batch ahead: on SIGTERM the job in flight (its source answers
    after 1.5 s) finishes, the claimed-but-unstarted one goes back to pending with no attempt
    counted, and the worker exits 0. Then an always-503 file that failed for good re-opens when
    its max_retries is raised by plain SQL."""
    images = {
        "slow.jpg": many_images(1, seed=9)["raid/9/00000.jpg"],
        "next.jpg": sample_images()["small.jpg"],
    }
    async with RaidServer(images, token=RAID_SECRET, faults=RaidFaults(latency=1.5)) as raid:
        db = tmp_path / "queue.sqlite3"
        env = publish_env(rclone_s3, raid.endpoint, f"sqlite:///{db}", CONCURRENCY="1")
        await queue_files(db, env, [(1, 3, "slow.jpg"), (2, 3, "next.jpg")])
        worker = await spawn("publish", "worker", "--no-ui", env=env)
        deadline = time.monotonic() + 30
        while raid.gets == 0:  # the first job's download has begun
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        held = rows_sqlite(db, "SELECT id, status FROM publish_jobs ORDER BY id")
        assert held == [(1, "processing"), (2, "processing")]  # one in flight, one claimed ahead
        worker.send_signal(signal.SIGTERM)
        result = await finish(worker, timeout=30)
        assert result.rc == 0, result.err[-2000:]
        jobs = rows_sqlite(
            db, "SELECT id, status, retry_count, locked_by FROM publish_jobs ORDER BY id"
        )
        assert jobs == [(1, "completed", 0, None), (2, "pending", 0, None)]
        outcomes = rows_sqlite(db, "SELECT job_id, outcome FROM publish_attempts ORDER BY id")
        assert outcomes == [(1, "published"), (2, "released")]
        assert raid.requests["next.jpg"] == 0

        # Retries run out on an always-503 source; raising max_retries re-opens the job.
        raid.faults = RaidFaults(always_503={"next.jpg"})
        env2 = {**env, "MAX_RETRIES": "2", "TUI_BACKFILL_RETRY_BASE": "0.05"}
        with sqlite3.connect(db) as raw:
            raw.execute("UPDATE publish_jobs SET max_retries = 2 WHERE id = 2")
        burst = await tool("publish", "worker", "--no-ui", "--burst", env=env2, timeout=60)
        for _ in range(20):  # jobs waiting for their backoff do not hold a burst worker
            if rows_sqlite(db, "SELECT status FROM publish_jobs WHERE id = 2") == [("failed",)]:
                break
            burst = await tool("publish", "worker", "--no-ui", "--burst", env=env2, timeout=60)
        assert rows_sqlite(
            db, "SELECT status, retry_count, last_error FROM publish_jobs WHERE id = 2"
        )[0][:2] == ("failed", 2)
        assert burst.rc == 1  # the burst that failed it for good
        with sqlite3.connect(db) as raw:
            raw.execute("UPDATE publish_jobs SET max_retries = 3 WHERE id = 2")
        raid.faults = RaidFaults()
        again = await tool("publish", "worker", "--no-ui", "--burst", env=env2, timeout=60)
        assert again.rc == 0, again.err[-2000:]
        assert rows_sqlite(db, "SELECT status, retry_count FROM publish_jobs WHERE id = 2") == [
            ("completed", 2)
        ]


async def test_a_trickling_source_fails_its_attempt_instead_of_holding_a_slot(
    tmp_path: Path, rclone_s3: S3Target
) -> None:
    """A source sent 500 bytes every 0.1 s is never idle for the 1 s timeout, but slower than
    --min-source-rate: its attempt fails (`timeout`, naming the floor), and the file beside it
    is published."""
    images = {
        "trickle.jpg": many_images(1, seed=4)["raid/4/00000.jpg"],
        "fine.jpg": sample_images()["small.jpg"],
    }
    assert len(images["trickle.jpg"]) > 20_000  # over 4 s at the trickle's pace
    faults = RaidFaults(trickle={"trickle.jpg"}, trickle_seconds=0.1)
    async with RaidServer(images, token=RAID_SECRET, faults=faults) as raid:
        db = tmp_path / "queue.sqlite3"
        env = publish_env(
            rclone_s3, raid.endpoint, f"sqlite:///{db}", MAX_RETRIES="1",
            TUI_BACKFILL_TIMEOUT="1", TUI_BACKFILL_MIN_SOURCE_RATE="10000",
        )  # fmt: skip
        await queue_files(db, env, [(1, 4, "trickle.jpg"), (2, 4, "fine.jpg")])
        burst = await tool("publish", "worker", "--no-ui", "--burst", env=env, timeout=60)
    assert burst.rc == 1, burst.err[-2000:]  # a job failed for good
    jobs = rows_sqlite(db, "SELECT file_id, status, last_error FROM publish_jobs ORDER BY file_id")
    assert jobs[1][:2] == (2, "completed")
    assert jobs[0][:2] == (1, "failed"), jobs
    assert jobs[0][2].startswith("timeout: ") and "slower than the minimum of 10,000" in jobs[0][2]


async def test_one_instance_serves_metrics_and_status(tmp_path: Path, rclone_s3: S3Target) -> None:
    """`publish worker --serve 0`: Prometheus metrics of the queue and of this instance, its
    snapshot, and pause/resume of this instance — and no secret in any of them."""
    import aiohttp

    images = many_images(4, seed=11)
    async with RaidServer(images, token=RAID_SECRET) as raid:
        db = tmp_path / "queue.sqlite3"
        env = publish_env(rclone_s3, raid.endpoint, f"sqlite:///{db}")
        await queue_files(db, env, [(i + 1, 8, key) for i, key in enumerate(images)])
        worker = await spawn(
            "publish", "worker", "--no-ui", "--serve", "0", "--worker-id", "m1", env=env
        )
        try:
            assert worker.stderr is not None
            url = ""
            deadline = time.monotonic() + 30
            while not url and time.monotonic() < deadline:
                line = (await asyncio.wait_for(worker.stderr.readline(), 30)).decode()
                if "metrics and status on " in line:
                    url = line.rsplit(" ", 1)[1].strip()
            assert url.startswith("http://127.0.0.1:")
            async with aiohttp.ClientSession() as http:
                for _ in range(100):  # every job published, and the figures re-read (2 s)
                    async with http.get(url + "/api/publish/status") as answer:
                        status = await answer.json()
                    if status["published"] == 4 and status["queue"]["completed"] == 4:
                        break
                    await asyncio.sleep(0.2)
                assert (status["published"], status["queue"]["completed"], status["worker"]) == (
                    4,
                    4,
                    "m1",
                )
                async with http.get(url + "/metrics") as answer:
                    metrics = await answer.text()
                async with http.post(url + "/api/publish/pause") as answer:
                    assert (await answer.json())["state"] == "held"
                async with http.post(url + "/api/publish/resume") as answer:
                    assert (await answer.json())["state"] == "running"
        finally:
            worker.send_signal(signal.SIGTERM)
            result = await finish(worker, timeout=30)
    assert result.rc == 0, result.err[-2000:]
    assert 'tui_backfill_publish_queue_jobs{job="publish",status="completed"} 4.0' in metrics
    assert (
        'tui_backfill_publish_instance_jobs_total{job="publish",outcome="published",worker="m1"} 4.0'
        in metrics
    )
    assert 'tui_backfill_publish_files{job="publish",publish_status="published"} 4.0' in metrics
    for secret in (RAID_SECRET, rclone_s3.secret_key):
        assert secret not in metrics + json.dumps(status)


async def test_an_old_pause_does_not_hold_a_worker_started_later(
    tmp_path: Path, rclone_s3: S3Target
) -> None:
    """Commands address the instances live when they were sent: a job-wide `pause` left in the
    command table from an earlier session does not hold a new worker."""
    from tui_backfill.seams.queue import open_queue

    images = many_images(3, seed=12)
    slow = RaidFaults(latency=0.8)  # the worker reads commands while its jobs are in flight
    async with RaidServer(images, token=RAID_SECRET, faults=slow) as raid:
        db = tmp_path / "queue.sqlite3"
        env = publish_env(rclone_s3, raid.endpoint, f"sqlite:///{db}", CONCURRENCY="1")
        await queue_files(db, env, [(i + 1, 2, key) for i, key in enumerate(images)])
        queue = await open_queue(f"sqlite:///{db}")
        try:
            await queue.post_command("publish", "pause")
        finally:
            await queue.close()
        result = await tool("publish", "worker", "--no-ui", "--burst", env=env, timeout=30)
    assert result.rc == 0, result.err[-2000:]
    assert json.loads(result.out)["published"] == 3


async def test_a_job_cut_off_at_the_shutdown_bound_goes_back_marked(
    tmp_path: Path, rclone_s3: S3Target
) -> None:
    """SIGTERM with a job whose source takes longer than --shutdown-timeout: the job is cut off
    and handed back (pending, no attempt counted, attempt `interrupted`), exit 0; the next
    claim of it says so, and its worker asks the bucket before writing (one HEAD a variant)."""
    from tui_backfill.seams.queue import open_queue

    images = {"slow.jpg": sample_images()["small.jpg"]}
    async with RaidServer(images, token=RAID_SECRET, faults=RaidFaults(latency=8)) as raid:
        db = tmp_path / "queue.sqlite3"
        env = publish_env(
            rclone_s3, raid.endpoint, f"sqlite:///{db}", CONCURRENCY="1",
            TUI_BACKFILL_SHUTDOWN_TIMEOUT="1", TUI_BACKFILL_TIMEOUT="30",
        )  # fmt: skip
        await queue_files(db, env, [(1, 3, "slow.jpg")])
        worker = await spawn("publish", "worker", "--no-ui", env=env)
        deadline = time.monotonic() + 30
        while raid.gets == 0:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        worker.send_signal(signal.SIGTERM)
        result = await finish(worker, timeout=30)
    assert result.rc == 0, result.err[-2000:]
    assert rows_sqlite(db, "SELECT status, retry_count, locked_by FROM publish_jobs") == [
        ("pending", 0, None)
    ]
    assert rows_sqlite(db, "SELECT outcome FROM publish_attempts") == [("interrupted",)]
    queue = await open_queue(f"sqlite:///{db}")
    try:
        (job,) = await queue.claim("w2", 1, 30.0)
    finally:
        await queue.close()
    assert (job.retry_count, job.interrupted) == (0, True)


def test_a_queue_that_takes_long_to_count_is_counted_less_often() -> None:
    """Every instance counts the queue for its snapshot: every FIGURES_EVERY seconds while the
    counts are quick, and never more than FIGURES_SHARE of the time when they are slow (the
    counts scan the tables: 0.12 s at 300,000 jobs on PostgreSQL), up to once a minute."""
    assert figures_gap(0.003) == FIGURES_EVERY == 2.0
    assert figures_gap(0.12) == pytest.approx(6.0)
    assert figures_gap(0.9) == pytest.approx(45.0)
    for took in (0.001, 0.04, 0.12, 0.9):
        assert took / figures_gap(took) <= FIGURES_SHARE + 1e-12
    # never older than a minute, however slow the count
    assert figures_gap(1.5) == figures_gap(30.0) == FIGURES_STALE == 60.0


@pytest.mark.parametrize("dialect", ["sqlite", "postgres"])
async def test_a_worker_id_is_one_live_instances_at_a_time(
    dialect: str, request: pytest.FixtureRequest, tmp_path: Path, rclone_s3: S3Target
) -> None:
    """Two live instances with one id would share their leases (a frozen one, thawed, could
    complete a job its twin had taken over): a second worker with a live instance's id exits 2
    naming --worker-id before it claims anything; another id runs beside it; once the first is
    killed, its id is free at once."""
    import asyncpg

    images = many_images(2, seed=14)
    async with RaidServer(images, token=RAID_SECRET) as raid:
        if dialect == "sqlite":
            db = tmp_path / "queue.sqlite3"
            url = f"sqlite:///{db}"
        else:
            url = request.getfixturevalue("pg_url")
        env = publish_env(rclone_s3, raid.endpoint, url, WORKER_POLL_INTERVAL="200")
        assert (await tool("publish", "init-db", env=env)).rc == 0
        first = await spawn("publish", "worker", "--no-ui", "--worker-id", "w1", env=env)
        try:
            for _ in range(300):  # registered: its id is held from before that
                if dialect == "sqlite":
                    rows = rows_sqlite(db, "SELECT state FROM publish_workers WHERE id = 'w1'")
                else:
                    conn = await asyncpg.connect(url)
                    rows = await conn.fetch("SELECT state FROM publish_workers WHERE id = 'w1'")
                    await conn.close()
                if rows:
                    break
                await asyncio.sleep(0.1)
            assert rows and rows[0][0] == "running", rows
            twin = await tool(
                "publish", "worker", "--no-ui", "--burst", "--worker-id", "w1", env=env
            )
            assert twin.rc == 2, str(twin)
            (line,) = twin.err.strip().splitlines()
            assert line.startswith("tui-backfill: error: --worker-id: 'w1' is the id of a worker")
            assert "give each instance its own id" in line
            other = await tool(
                "publish", "worker", "--no-ui", "--burst", "--worker-id", "w2", env=env
            )
            assert other.rc == 0, other.err[-2000:]  # another id: free to run beside it
        finally:
            first.kill()
            await first.wait()
        again = await tool("publish", "worker", "--no-ui", "--burst", "--worker-id", "w1", env=env)
        assert again.rc == 0, again.err[-2000:]


async def test_a_worker_ids_lock_file_that_cannot_be_opened_is_one_line(
    tmp_path: Path, rclone_s3: S3Target
) -> None:
    """The SQLite queue's `<queue>-workers` file (the worker ids' locks) unusable: exit 2 with
    one line naming DATABASE_URL and the file, not a traceback."""
    async with RaidServer(many_images(1, seed=15), token=RAID_SECRET) as raid:
        db = tmp_path / "queue.sqlite3"
        env = publish_env(rclone_s3, raid.endpoint, f"sqlite:///{db}")
        assert (await tool("publish", "init-db", env=env)).rc == 0
        (tmp_path / "queue.sqlite3-workers").mkdir()
        result = await tool("publish", "worker", "--no-ui", "--burst", env=env)
    assert result.rc == 2, str(result)
    (line,) = result.err.strip().splitlines()
    assert line.startswith("tui-backfill: error: DATABASE_URL: cannot open "), line
    assert "queue.sqlite3-workers (the worker ids' locks): Is a directory" in line
