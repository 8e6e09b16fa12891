"""Many workers on one PostgreSQL queue, nothing twice.

1,000 `auction_files` over 300 distinct source images, one job each, plus 100 duplicate jobs
inserted by plain SQL for files already queued; three worker processes; one is SIGKILLed, one
SIGTERMed and one SIGSTOPped past its lease (then SIGCONTed) mid-way, and a fresh one joins.
Every file ends published, or its job failed needing attention for exactly the files that must
fail; each variant key has one successful PUT (apart from a PUT whose answer was lost),
counted at a proxy; no two overlapping attempts of one job by different workers both
completed; the duplicates complete as skipped with no download; the seed's monitoring SQL
gives the expected figures. The bucket is moto's, which honours `If-None-Match: *`: a worker
frozen between its lease check and its PUT's first byte, thawed after another worker wrote the
variant, gets 412 there (on a server that ignores the header, such as `rclone serve s3` or B2,
that one PUT writes the same bytes a second time). Also: a job inserted by plain SQL wakes a worker polling every 60 s
within a second (LISTEN/NOTIFY).
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import signal
import time
import urllib.parse
from pathlib import Path
from typing import Any

import asyncpg
from conftest import S3Target
from helpers import finish, spawn, tool
from publish_helpers import RAID_SECRET, publish_env

from tui_backfill.servers.images import photo_jpeg, sample_images
from tui_backfill.servers.proxy import ReverseProxy
from tui_backfill.servers.raid import RaidFaults, RaidServer

SOURCES = 300
FILES = 1000
MUST_FAIL = {
    "corrupt.jpg": "corrupt",
    "bomb.png": "too_many_pixels",
    "missing.jpg": "404",
    "down.jpg": "http_503",
}
LEASE = 4.0


def _images() -> dict[str, bytes]:
    images = {
        f"src/{i:03d}.jpg": photo_jpeg(
            160 + (i % 5) * 40, 120 + (i % 3) * 40, seed=i, quality=70, grain=0
        )
        for i in range(SOURCES)
    }
    samples = sample_images()
    images.update(
        {
            "corrupt.jpg": samples["corrupt.jpg"],
            "bomb.png": samples["bomb.png"],
            "down.jpg": samples["small.jpg"],
        }
    )
    return images


async def _count(conn: Any, where: str) -> int:
    return int(await conn.fetchval(f"SELECT COUNT(*) FROM publish_jobs WHERE {where}"))


async def _wait_for(conn: Any, where: str, at_least: int, within: float) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await _count(conn, where) >= at_least:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"never {at_least} jobs with {where}")


async def test_many_workers_on_postgres_nothing_twice(
    pg_url: str, moto_s3: S3Target, s3_proxy: Any, tmp_path: Path
) -> None:
    images = _images()
    keys = [f"src/{i % SOURCES:03d}.jpg" for i in range(FILES - len(MUST_FAIL))] + list(MUST_FAIL)
    files = [(i + 1, 900 + i % 13, key) for i, key in enumerate(keys)]
    must_fail_ids = {fid for fid, _, key in files if key in MUST_FAIL}
    faults = RaidFaults(always_503={"down.jpg"})
    conn = await asyncpg.connect(pg_url)
    procs: list[Any] = []
    try:
        async with RaidServer(images, token=RAID_SECRET, faults=faults) as raid:
            proxy: ReverseProxy = await s3_proxy(moto_s3)
            target = moto_s3.via(proxy)
            env = publish_env(
                target,
                raid.endpoint,
                pg_url,
                CONCURRENCY="2",
                TUI_BACKFILL_LEASE=str(LEASE),
                # the always-503 file's 5 attempts end within a second, not 3 s after the rest
                TUI_BACKFILL_RETRY_BASE="0.05",
            )
            init = await tool("publish", "init-db", env=env)
            assert init.rc == 0, init.err
            await conn.executemany(
                "INSERT INTO auction_files (id, lot_id, source_key, publish_status) VALUES ($1, $2, $3, 'pending')",
                files,
            )
            enqueued = await tool("publish", "enqueue", env=env)
            assert f'"enqueued": {FILES}' in enqueued.out, enqueued.err
            good = [fid for fid, _, _ in files if fid not in must_fail_ids]
            duplicates = good[::9][:100]
            assert len(duplicates) == 100
            await conn.executemany(
                "INSERT INTO publish_jobs (file_id) VALUES ($1)", [(f,) for f in duplicates]
            )

            def start(name: str) -> Any:
                return spawn("publish", "worker", "--no-ui", "--worker-id", name, env=env)

            w1, w2, w3 = [await start(f"w{i}") for i in (1, 2, 3)]
            procs += [w1, w2, w3]
            done = "status = 'completed'"
            await _wait_for(conn, done, 150, 60)
            w1.kill()  # SIGKILL: its leases run out, any worker reclaims them
            await _wait_for(conn, done, 300, 60)
            w2.send_signal(signal.SIGTERM)
            term = await finish(w2, timeout=30)
            assert term.rc == 0, term.err[-2000:]
            await _wait_for(conn, done, 450, 60)
            w3.send_signal(signal.SIGSTOP)  # frozen past its lease, then thawed
            w4 = await start("w4")
            procs.append(w4)
            await asyncio.sleep(LEASE + 2)
            w3.send_signal(signal.SIGCONT)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                open_jobs = await _count(
                    conn,
                    "status IN ('pending', 'processing') OR (status = 'failed' AND retry_count < max_retries)",
                )
                if open_jobs == 0:
                    break
                await asyncio.sleep(0.3)
            assert open_jobs == 0
            for proc in (w3, w4):
                proc.send_signal(signal.SIGTERM)
            results = [await finish(p, timeout=60) for p in (w3, w4)]
            await w1.wait()
            procs.clear()
            for result in [term, *results]:
                assert result.rc == 0, result.err[-2000:]
                assert RAID_SECRET not in result.out + result.err
                password = urllib.parse.urlsplit(pg_url).password
                assert password and password not in result.out + result.err
            requests = dict(raid.requests)

        # Every file published, or failed needing attention for exactly the files that must.
        rows = await conn.fetch("SELECT id, lot_id, publish_status FROM auction_files ORDER BY id")
        assert {r["id"] for r in rows if r["publish_status"] != "published"} == must_fail_ids
        failed = await conn.fetch(
            "SELECT file_id, retry_count, max_retries, last_error FROM publish_jobs WHERE status = 'failed'"
        )
        assert {r["file_id"] for r in failed} == must_fail_ids
        key_of = {fid: key for fid, _, key in files}
        for row in failed:
            assert row["retry_count"] == row["max_retries"]
            assert MUST_FAIL[key_of[row["file_id"]]] in row["last_error"], row

        # Each variant key: one successful PUT, apart from answers lost in transit.
        expected = {
            f"media/{r['lot_id']}/{r['id']}/{v}.webp"
            for r in rows
            if r["publish_status"] == "published"
            for v in ("thumb", "display")
        }
        assert set(moto_s3.keys()) == expected
        puts = collections.Counter({k.split("/", 1)[1]: n for k, n in proxy.puts.items()})
        assert set(puts) == expected
        twice = {k: n for k, n in puts.items() if n > 1}
        lost = {k.split("/", 1)[1] for k in (*proxy.lost_puts, *proxy.undelivered_puts)}
        assert set(twice) <= lost, (twice, lost)

        # The audit: no two overlapping attempts of one job by different workers both completed.
        attempts = await conn.fetch(
            "SELECT job_id, worker, started_at, ended_at, outcome FROM publish_attempts ORDER BY job_id, started_at"
        )
        by_job: dict[int, list[Any]] = collections.defaultdict(list)
        for a in attempts:
            by_job[a["job_id"]].append(a)
        completed_outcomes = ("published", "skipped")
        for job_attempts in by_job.values():
            winners = [a for a in job_attempts if a["outcome"] in completed_outcomes]
            assert len(winners) <= 1
        outcomes = collections.Counter(a["outcome"] for a in attempts)
        assert outcomes["lease_expired"] >= 1, outcomes  # the SIGKILLed or SIGSTOPped worker's
        # The duplicates: completed as skipped, no download of their own.
        dup_jobs = await conn.fetch("SELECT id, status FROM publish_jobs WHERE id > $1", FILES)
        assert {r["status"] for r in dup_jobs} == {"completed"}
        dup_outcomes = {
            a["outcome"]
            for r in dup_jobs
            for a in by_job[r["id"]]
            if a["outcome"] not in ("released", "lease_expired")
        }
        assert dup_outcomes == {"skipped"}
        # Downloads: at most one per file plus the retries of attempts that did not complete.
        unfinished = sum(
            1
            for a in attempts
            if a["outcome"] not in completed_outcomes and a["outcome"] != "released"
        )
        good_downloads = sum(n for k, n in requests.items() if k not in MUST_FAIL)
        assert FILES - len(MUST_FAIL) <= good_downloads <= FILES - len(MUST_FAIL) + unfinished

        # The seed's monitoring SQL, as written.
        sql = (Path(__file__).parents[1] / "tui_backfill/seams/queue/monitoring.sql").read_text()
        statements = [
            s
            for s in sql.split(";")
            if s.strip() and not all(line.startswith("--") for line in s.strip().splitlines())
        ]
        pending, attention, avg, summary = [await conn.fetch(s) for s in statements]
        assert pending[0]["pending_jobs"] == 0
        assert {r["file_id"] for r in attention} == must_fail_ids
        assert 0 < float(avg[0]["avg_processing_seconds"]) < 30
        assert {r["publish_status"]: r["files"] for r in summary}["published"] == FILES - len(
            MUST_FAIL
        )
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGCONT)
                proc.kill()
                await proc.wait()
        await conn.close()


async def test_a_plain_sql_insert_wakes_a_worker_polling_every_minute(
    pg_url: str, rclone_s3: S3Target
) -> None:
    images = {"one.jpg": photo_jpeg(200, 150, seed=1, grain=0)}
    conn = await asyncpg.connect(pg_url)
    async with RaidServer(images, token=RAID_SECRET) as raid:
        env = publish_env(rclone_s3, raid.endpoint, pg_url, WORKER_POLL_INTERVAL="60000")
        assert (await tool("publish", "init-db", env=env)).rc == 0
        worker = await spawn("publish", "worker", "--no-ui", env=env)
        try:
            deadline = time.monotonic() + 30
            while not await conn.fetchval(
                "SELECT COUNT(*) FROM publish_workers WHERE state = 'running'"
            ):
                assert time.monotonic() < deadline, "the worker never registered"
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # past its first (empty) claim: now it waits on LISTEN
            await conn.execute(
                "INSERT INTO auction_files (id, lot_id, source_key, publish_status) VALUES (1, 5, 'one.jpg', 'pending')"
            )
            inserted = dt.datetime.now(dt.UTC)
            job_id = await conn.fetchval(
                "INSERT INTO publish_jobs (file_id) VALUES (1) RETURNING id"
            )
            started = None
            while started is None and (dt.datetime.now(dt.UTC) - inserted).total_seconds() < 5:
                started = await conn.fetchval(
                    "SELECT started_at FROM publish_jobs WHERE id = $1", job_id
                )
                await asyncio.sleep(0.02)
            assert started is not None
            assert (started - inserted).total_seconds() < 1.0
        finally:
            worker.send_signal(signal.SIGTERM)
            result = await finish(worker, timeout=30)
            await conn.close()
        assert result.rc == 0, result.err[-2000:]


async def test_the_seed_env_file_works_as_is(
    pg_url: str, rclone_s3: S3Target, tmp_path: Path
) -> None:
    """The seed's example `.env` with only its hosts and secrets pointed at the test servers
    (the bare-host B2_ENDPOINT becomes the test server's http:// URL): a burst worker publishes
    into the bucket `IBA-Lot-Media` (capitals: a B2 name)."""
    assert rclone_s3.data_dir is not None
    (rclone_s3.data_dir / "IBA-Lot-Media").mkdir()
    seed = (Path(__file__).parent / "data" / "seed.env").read_text()
    images = {"lots/7/a.jpg": photo_jpeg(300, 200, seed=2, grain=0)}
    async with RaidServer(images, token="a-new-raid-secret") as raid:
        parts = urllib.parse.urlsplit(pg_url)
        replace = {
            "postgresql://postgres:your-db-password@db.example.supabase.co:5432/postgres": pg_url,
            "your-raid-publisher-secret": "a-new-raid-secret",
            "https://raid.example.com/api/pub": raid.endpoint,
            "your-b2-key-id": rclone_s3.access_key,
            "your-b2-application-key": rclone_s3.secret_key,
            "s3.us-west-004.backblazeb2.com": rclone_s3.endpoint_url,
        }
        for old, new in replace.items():
            assert old in seed
            seed = seed.replace(old, new)
        env_file = tmp_path / ".env"
        env_file.write_text(seed)
        env = {
            k: v
            for k, v in publish_env(rclone_s3, "", "").items()
            if not k.startswith(
                (
                    "B2_",
                    "RAID_",
                    "DATABASE_",
                    "CDN_",
                    "WORKER_",
                    "MAX_",
                    "CONCURRENCY",
                    "LOG_",
                    "TUI_BACKFILL_",
                )
            )
        }
        env["TUI_BACKFILL_PATH_STYLE"] = "true"  # rclone on 127.0.0.1 (B2 takes either)
        assert (
            parts.password
            and (await tool("publish", "init-db", "--env-file", str(env_file), env=env)).rc == 0
        )
        conn = await asyncpg.connect(pg_url)
        try:
            await conn.execute(
                "INSERT INTO auction_files (id, lot_id, source_key, publish_status) VALUES (1, 7, 'lots/7/a.jpg', 'pending')"
            )
            await conn.execute("INSERT INTO publish_jobs (file_id) VALUES (1)")
            result = await tool(
                "publish",
                "worker",
                "--no-ui",
                "--burst",
                "--env-file",
                str(env_file),
                env=env,
                timeout=60,
            )
            assert result.rc == 0, result.err[-2000:]
            row = await conn.fetchrow(
                "SELECT publish_status, thumb_url FROM auction_files WHERE id = 1"
            )
        finally:
            await conn.close()
    assert tuple(row) == ("published", "https://media.example.com/media/7/1/thumb.webp")
    for secret in ("a-new-raid-secret", rclone_s3.secret_key, parts.password):
        assert secret not in result.out + result.err
    client = rclone_s3.client()
    listed = client.list_objects_v2(Bucket="IBA-Lot-Media")["Contents"]
    assert sorted(o["Key"] for o in listed) == ["media/7/1/display.webp", "media/7/1/thumb.webp"]


async def test_a_seed_database_without_the_workers_columns(
    pg_url: str, rclone_s3: S3Target
) -> None:
    """A worker on the seed's database before `init-db`: exit 2 naming the missing columns and
    `init-db`, nothing changed; `publish init-db` adds them and the worker then publishes."""
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(
            "CREATE TABLE auction_files (id BIGINT PRIMARY KEY, lot_id BIGINT, source_key TEXT NOT NULL,"
            " publish_status TEXT DEFAULT 'pending');"
            "CREATE TABLE publish_jobs (id BIGSERIAL PRIMARY KEY, file_id BIGINT NOT NULL REFERENCES auction_files(id),"
            " status TEXT NOT NULL DEFAULT 'pending', retry_count INT NOT NULL DEFAULT 0,"
            " max_retries INT NOT NULL DEFAULT 5, last_error TEXT, created_at TIMESTAMPTZ DEFAULT now(),"
            " started_at TIMESTAMPTZ, completed_at TIMESTAMPTZ);"
            "INSERT INTO auction_files VALUES (1, 4, 'one.jpg', 'pending');"
            "INSERT INTO publish_jobs (file_id) VALUES (1);"
        )
        images = {"one.jpg": photo_jpeg(200, 100, seed=4, grain=0)}
        async with RaidServer(images, token=RAID_SECRET) as raid:
            env = publish_env(rclone_s3, raid.endpoint, pg_url)
            refused = await tool("publish", "worker", "--no-ui", "--burst", env=env)
            assert refused.rc == 2, refused.err
            line = refused.err.strip()
            assert "\n" not in line and line.startswith("tui-backfill: error: DATABASE_URL:")
            for name in ("locked_by", "locked_until", "next_attempt_at", "thumb_url", "init-db"):
                assert name in line
            assert await conn.fetchval("SELECT status FROM publish_jobs") == "pending"
            assert (await tool("publish", "init-db", env=env)).rc == 0
            worker = await tool("publish", "worker", "--no-ui", "--burst", env=env)
            assert worker.rc == 0, worker.err[-2000:]
        assert (
            await conn.fetchval("SELECT publish_status FROM auction_files WHERE id = 1")
            == "published"
        )
    finally:
        await conn.close()


async def test_a_database_from_an_older_init_db_warns_of_the_missing_index(
    pg_url: str, rclone_s3: S3Target
) -> None:
    """A queue made before the open-jobs index existed: the worker names the index and
    `init-db` in one warning and publishes all the same; after `init-db` the warning is gone."""
    images = {"one.jpg": photo_jpeg(200, 100, seed=5, grain=0)}
    conn = await asyncpg.connect(pg_url)
    try:
        async with RaidServer(images, token=RAID_SECRET) as raid:
            env = publish_env(rclone_s3, raid.endpoint, pg_url)
            assert (await tool("publish", "init-db", env=env)).rc == 0
            await conn.execute("DROP INDEX publish_jobs_open")
            await conn.execute(
                "INSERT INTO auction_files (id, lot_id, source_key, publish_status)"
                " VALUES (1, 4, 'one.jpg', 'pending')"
            )
            await conn.execute("INSERT INTO publish_jobs (file_id) VALUES (1)")
            warned = await tool("publish", "worker", "--no-ui", "--burst", env=env)
            assert warned.rc == 0, warned.err[-2000:]
            said = " ".join(warned.err.split())  # log lines wrap at the terminal's width
            assert said.count("publish_jobs_open") == 1, warned.err[-2000:]
            assert "lacks the index publish_jobs_open: claims slow down" in said
            assert "`tui-backfill publish init-db` adds it" in said
            assert (
                await conn.fetchval("SELECT publish_status FROM auction_files WHERE id = 1")
                == "published"
            )
            assert (await tool("publish", "init-db", env=env)).rc == 0
            quiet = await tool("publish", "worker", "--no-ui", "--burst", env=env)
            assert quiet.rc == 0, quiet.err[-2000:]
            assert "publish_jobs_open" not in quiet.err
    finally:
        await conn.close()


async def test_a_worker_takes_its_id_again_when_its_session_is_ended(
    pg_url: str, rclone_s3: S3Target
) -> None:
    """The session that holds a worker's id, ended from psql as docs/publish.md says (found by
    its application_name): the worker takes its id again at its next heartbeat and runs on."""
    images = {"one.jpg": photo_jpeg(200, 100, seed=6, grain=0)}
    conn = await asyncpg.connect(pg_url)
    async with RaidServer(images, token=RAID_SECRET) as raid:
        env = publish_env(rclone_s3, raid.endpoint, pg_url, TUI_BACKFILL_LEASE="3")
        assert (await tool("publish", "init-db", env=env)).rc == 0
        worker = await spawn("publish", "worker", "--no-ui", "--worker-id", "w7", env=env)
        holder = (
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'tui-backfill worker w7'"
        )
        try:
            first = None
            for _ in range(300):
                first = await conn.fetchval(holder)
                if first is not None:
                    break
                await asyncio.sleep(0.1)
            assert first is not None, "no session named after the worker"
            assert await conn.fetchval("SELECT pg_terminate_backend($1)", first)
            again = None
            for _ in range(100):  # heartbeats every lease/3 = 1 s
                again = await conn.fetchval(holder)
                if again is not None and again != first:
                    break
                await asyncio.sleep(0.1)
            assert again is not None and again != first, "the id was not taken again"
            locks = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = $1", again
            )
            assert locks == 1
            await conn.execute(
                "INSERT INTO auction_files (id, lot_id, source_key, publish_status)"
                " VALUES (1, 4, 'one.jpg', 'pending')"
            )
            await conn.execute("INSERT INTO publish_jobs (file_id) VALUES (1)")
            for _ in range(300):  # and it still works
                if await conn.fetchval("SELECT status FROM publish_jobs") == "completed":
                    break
                await asyncio.sleep(0.1)
            assert await conn.fetchval("SELECT status FROM publish_jobs") == "completed"
        finally:
            worker.send_signal(signal.SIGTERM)
            result = await finish(worker, timeout=30)
            await conn.close()
    assert result.rc == 0, result.err[-2000:]
