"""`hash-index` SIGKILLed at five moments of one run, each followed by `resume`.

The contract (DESIGN.md, "Content-hash index"): index upserts land before the key watermark
passes them, so a kill re-fetches at most the objects whose upsert had not committed. Here:
3,000 objects of 1-16 KiB random bytes written straight into `rclone serve s3`'s directory,
behind a counting proxy (tui_backfill.servers.proxy) that adds latency to every request and
counts every object GET per key as it arrives. The index starts with rows of every kind: right
(skipped without a GET), stale (another ETag: hashed again), without a hash, orphans under the
prefix, and rows of another prefix. The run is killed

1. right after start, in its first listing page (a few GETs out, nothing committed yet),
2. mid-page, 500 objects into a resumed process's first page,
3. at a listing page boundary: the first GET of a resumed process's second page,
4. mid-run (70 % of the objects fetched) and
5. late (93 %),

each time followed by `resume`, in which the next kill lands. Then: the run completes; the
index holds exactly the expected rows (every object's SHA-256 of its bytes, the others as they
were); every key a checkpoint covered had its row already; an object whose row had landed at a
kill (checkpointed or not) is never fetched again, so a kill costs only the fetched objects
whose upsert had not committed; the object GETs exceed the objects to fetch by at most
100 + concurrency for each kill; the counters add up. `pytest -s` prints the figures.

(A batch lands at 100 rows less the concurrency: objects that finish while a batch is being
committed, and the GETs in flight, then stay within 100 + concurrency. With batches of 100 a
kill once cost 111 of 108.)
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import json
import logging
import random
import signal
import sqlite3
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from helpers import CLI, Running, tool_env, wait_for

from tui_backfill.servers.proxy import ProxyFaults, ReverseProxy, classify

if TYPE_CHECKING:
    from conftest import S3Target

OBJECTS = 3000
PREFIX = "photos/"
CONCURRENCY = 8
CHECKPOINT_EVERY = 100  # the pipeline's default, said explicitly: the bound depends on it
PAGE = 1000  # ListObjectsV2 keys a page
LATENCY = 0.01  # seconds the proxy holds every request: a run lasts several seconds
KILLS = 5
JOB = "hash-index"
SEED = 20261206

# The seeded index: one object in 15 has a right row, one a stale row, one a row without a hash.
RIGHT, STALE, NO_HASH = 0, 7, 11
STALE_HASH = hashlib.sha256(b"the bytes of an earlier upload").hexdigest()
SEEDED_AT = "2020-01-01T00:00:00Z"


class GetCountingProxy(ReverseProxy):
    """The counting proxy, also counting object GETs per key as they arrive (before latency)."""

    def __init__(self, upstream_url: str, faults: ProxyFaults) -> None:
        super().__init__(upstream_url, faults)
        self.gets: collections.Counter[str] = collections.Counter()
        self.last_get = ""  # the key of the latest GET to arrive

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            path = urllib.parse.unquote(request.raw_path.partition("?")[0])
            kind, object_path = classify("GET", path)
            if kind == "get_object" and object_path is not None:
                key = object_path.partition("/")[2]
                self.gets[key] += 1
                self.last_get = key
        return await super()._handle(request)

    @property
    def total_gets(self) -> int:
        return sum(self.gets.values())


@dataclass
class Dataset:
    bodies: dict[str, bytes]  # key -> bytes, in key order
    listed: dict[str, tuple[int, str]]  # key -> (size, ETag) as the server lists them
    seeded: dict[str, tuple[Any, ...]]  # the index's rows before the run
    orphans: set[str]  # rows under the prefix with no object

    @property
    def keys(self) -> list[str]:
        return list(self.bodies)

    def to_fetch(self) -> set[str]:
        """Objects whose row does not pass the skip rule: each needs one GET."""
        return {key for key in self.bodies if self._kind(key) != RIGHT}

    def _kind(self, key: str) -> int:
        return int(key.removeprefix(PREFIX + "obj-")[:5]) % 15

    def expected_rows(self) -> dict[str, tuple[Any, ...]]:
        """(content_hash, size, etag, uploader_id) of every row the index must end with."""
        rows = {key: (row[0], row[1], row[2], row[4]) for key, row in self.seeded.items()}
        for key, body in self.bodies.items():
            size, etag = self.listed[key]
            uploader = self.seeded[key][4] if key in self.seeded else "backfill"
            rows[key] = (hashlib.sha256(body).hexdigest(), size, etag, uploader)
        return rows


def write_dataset(target: S3Target, index_db: Path) -> Dataset:
    """OBJECTS random objects under PREFIX, straight into rclone's directory; the index seeded."""
    assert target.data_dir is not None
    rng = random.Random(SEED)
    folder = target.data_dir / target.bucket / PREFIX
    folder.mkdir(parents=True, exist_ok=True)
    bodies: dict[str, bytes] = {}
    for i in range(OBJECTS):
        key = f"{PREFIX}obj-{i:05d}.bin"
        bodies[key] = rng.randbytes(rng.randint(1024, 16 * 1024))
        (target.data_dir / target.bucket / key).write_bytes(bodies[key])
    listed: dict[str, tuple[int, str]] = {}
    paginator = target.client().get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=target.bucket, Prefix=PREFIX):
        for entry in page.get("Contents", []):
            listed[entry["Key"]] = (int(entry["Size"]), str(entry["ETag"]).strip('"'))
    assert list(listed) == sorted(bodies), "the server does not list the keys in key order"

    seeded: dict[
        str, tuple[Any, ...]
    ] = {}  # key -> (content_hash, size, etag, uploaded_at, uploader)
    for i, (key, body) in enumerate(bodies.items()):
        size, etag = listed[key]
        if i % 15 == RIGHT:
            seeded[key] = (hashlib.sha256(body).hexdigest(), size, etag, SEEDED_AT, "seed")
        elif i % 15 == STALE:  # the object was overwritten since: another ETag and size
            seeded[key] = (STALE_HASH, size + 1, "0" * 32, SEEDED_AT, "seed")
        elif i % 15 == NO_HASH:
            seeded[key] = (None, None, None, SEEDED_AT, "seed")
    orphans = {f"{PREFIX}obj-{i:05d}.old" for i in range(5, OBJECTS, 97)}  # one in ~97, spread
    orphans |= {f"{PREFIX}aaa-first.bin", f"{PREFIX}zzz-last.bin"}  # before and after all keys
    for key in orphans:
        seeded[key] = (STALE_HASH, 10, "f" * 32, SEEDED_AT, "seed")
    for key in ("other/outside.bin", "photos", "photot/next-prefix.bin"):  # outside the prefix
        seeded[key] = (STALE_HASH, 10, "e" * 32, SEEDED_AT, "seed")

    conn = sqlite3.connect(index_db)
    with conn:
        conn.execute(
            "CREATE TABLE files (key TEXT PRIMARY KEY, content_hash TEXT, size INTEGER, "
            "etag TEXT, uploaded_at TEXT, uploader_id TEXT)"
        )
        conn.executemany(
            "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
            [(key, *row) for key, row in seeded.items()],
        )
    conn.close()
    return Dataset(bodies, listed, seeded, orphans)


def index_rows(index_db: Path) -> dict[str, tuple[Any, ...]]:
    """The index's rows. Opened read-write: a process killed inside an upsert leaves a hot
    journal, which the next connection rolls back (a read-only one cannot: SQLITE_READONLY)."""
    conn = sqlite3.connect(index_db)
    try:
        return {
            key: (content_hash, size, etag, uploader)
            for key, content_hash, size, etag, uploader in conn.execute(
                "SELECT key, content_hash, size, etag, uploader_id FROM files"
            )
        }
    finally:
        conn.close()


@dataclass
class HashJob:
    """The hash-index job driven through the CLI, against the server through the proxy."""

    tmp: Path
    target: S3Target  # through the proxy
    procs: list[Running] = field(default_factory=list)

    @property
    def state(self) -> Path:
        return self.tmp / "state" / "backfill.sqlite3"

    @property
    def index_db(self) -> Path:
        return self.tmp / "index.db"

    def job_flags(self) -> list[str]:
        return ["--job", JOB, "--state", str(self.state)]

    async def start(self, *args: str) -> Running:
        n = len(self.procs)
        out_path, err_path = self.tmp / f"hx{n}.out", self.tmp / f"hx{n}.err"
        env = tool_env(self.target, AWS_ENDPOINT_URL=self.target.endpoint_url, PYTHONUNBUFFERED="1")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *CLI, *args, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err,
                env=env, cwd=self.tmp,
            )  # fmt: skip
        running = Running(proc, out_path, err_path, time.monotonic())
        self.procs.append(running)
        return running

    async def start_run(self) -> Running:
        return await self.start(
            "hash-index", "--no-ui", *self.job_flags(),
            "--bucket", self.target.bucket, "--prefix", PREFIX, "--path-style",
            "--index-db", str(self.index_db), "--concurrency", str(CONCURRENCY),
            "--checkpoint-every", str(CHECKPOINT_EVERY),
            "--timeout", "5", "--backoff", "0.01", "--progress-interval", "0.5",
        )  # fmt: skip

    async def start_resume(self) -> Running:
        return await self.start("resume", "--no-ui", *self.job_flags())

    async def status(self) -> dict[str, Any]:
        result = await (await self.start("status", "--json", *self.job_flags())).wait(30)
        assert result.rc == 0, str(result)
        return dict(result.json())

    async def close(self) -> None:
        for running in self.procs:
            if running.alive:
                running.kill()
                await running.proc.wait()


@pytest.fixture
async def hash_job(
    tmp_path: Path, rclone_s3: S3Target
) -> AsyncIterator[tuple[HashJob, GetCountingProxy]]:
    # Answers to a killed client fail to be written: aiohttp logs each with a traceback.
    server_log = logging.getLogger("aiohttp.server")
    level = server_log.level
    server_log.setLevel(logging.CRITICAL)
    proxy = GetCountingProxy(rclone_s3.endpoint_url, ProxyFaults(latency=LATENCY))
    await proxy.start()
    job = HashJob(tmp_path, rclone_s3.via(proxy))
    try:
        yield job, proxy
    finally:
        await job.close()
        await proxy.stop()
        server_log.setLevel(level)


def covered(checkpoint: dict[str, Any], keys: list[str]) -> set[str]:
    """The object keys a `{"lastKey", "doneAfter"}` checkpoint records as finished."""
    last = checkpoint["lastKey"]
    done = {key for key in keys if last is not None and key.encode() <= last.encode()}
    return done | (set(checkpoint["doneAfter"]) & set(keys))


@dataclass
class Kill:
    what: str
    due: Callable[[], bool]


async def test_sigkill_at_five_moments_then_resume_keeps_the_index_exact(
    hash_job: tuple[HashJob, GetCountingProxy], rclone_s3: S3Target
) -> None:
    job, proxy = hash_job
    began = time.monotonic()
    data = await asyncio.to_thread(write_dataset, rclone_s3, job.index_db)
    keys = data.keys
    position = {key: i for i, key in enumerate(keys)}
    to_fetch = data.to_fetch()
    expected_rows = data.expected_rows()

    def fetched() -> int:
        """Distinct objects fetched so far."""
        return len(proxy.gets)

    # Where the current process's listing started (after the checkpoint it resumed from).
    start_index = 0

    def after_gets(count: int) -> Callable[[], bool]:
        return lambda: proxy.total_gets >= count

    def process_fetched(count: int) -> Callable[[], bool]:
        """`count` objects into the current process's own listing."""
        target = start_index + count
        return lambda: bool(proxy.last_get) and position.get(proxy.last_get, -1) >= target

    def page_boundary() -> Callable[[], bool]:
        """The first GET of the current process's second listing page."""
        target = start_index + PAGE
        return lambda: bool(proxy.last_get) and position.get(proxy.last_get, -1) >= target

    def share_fetched(share: float) -> Callable[[], bool]:
        return lambda: fetched() >= share * len(to_fetch)

    plan: list[tuple[str, Callable[[], Callable[[], bool]]]] = [
        ("right after start, in the first listing page", lambda: after_gets(CONCURRENCY)),
        ("mid-page, 500 objects into a resumed listing", lambda: process_fetched(500)),
        ("at a listing page boundary (first GET of page 2)", page_boundary),
        ("mid-run, 70 % fetched", lambda: share_fetched(0.70)),
        ("late, 93 % fetched", lambda: share_fetched(0.93)),
    ]
    assert len(plan) == KILLS

    gets_at_kill: list[collections.Counter[str]] = []
    landed_gets: dict[str, int] = {}  # key whose row had landed at a kill -> its GETs then
    lost: list[set[str]] = []  # per kill: keys fetched whose row had not landed (work lost)
    figures: list[dict[str, Any]] = []

    async def kill_when(running: Running, due: Callable[[], bool], what: str) -> None:
        await wait_for(lambda: due() or not running.alive, within=60, interval=0.005, what=what)
        assert running.alive, f"the run ended before the kill {what}: {await running.wait(5)}"
        running.kill()

    running = await job.start_run()
    processes = 1
    for what, make_due in plan:
        await kill_when(running, make_due(), what)
        result = await running.wait(10)
        assert result.rc == -signal.SIGKILL, str(result)
        gets_at_kill.append(proxy.gets.copy())

        status = await job.status()
        assert status["live"] is False and status["state"] == "interrupted", status
        checkpoint = status["checkpoint"]
        done = covered(checkpoint, keys)
        # The watermark never passes an object whose row has not landed.
        rows = index_rows(job.index_db)
        behind = sorted(key for key in done if rows.get(key) != expected_rows[key])
        assert not behind, f"{what}: checkpoint {checkpoint} passes rows not written: {behind[:5]}"
        landed = {key for key in to_fetch if rows.get(key) == expected_rows[key]}
        for key in landed:
            landed_gets.setdefault(key, proxy.gets[key])
        lost.append({key for key in proxy.gets if key not in landed})
        last = checkpoint["lastKey"]
        start_index = 0 if last is None else sum(1 for k in keys if k.encode() <= last.encode())
        figures.append(
            {
                "kill": what,
                "atSeconds": round(time.monotonic() - began, 1),
                "gets": proxy.total_gets,
                "distinctFetched": fetched(),
                "lastGet": position.get(proxy.last_get),
                "checkpointAt": start_index,
                "doneAfter": len(checkpoint["doneAfter"]),
                "landedPastCheckpoint": len(landed - done),
                "fetchedNotLanded": len(lost[-1]),
            }
        )  # fmt: skip
        running = await job.start_resume()
        processes += 1

    result = await running.wait(120)
    assert result.rc == 0, str(result)
    seconds = time.monotonic() - began
    final = result.json()

    # The run, its counters.
    assert final["state"] == "completed", final
    assert (await job.status())["state"] == "completed"
    assert final["failedItems"] == 0 and final["errorsTotal"] == 0, final
    assert final["scannedObjects"] == OBJECTS, final
    assert final["scannedObjects"] == final["updated"] + final["skipped"] + final["failedItems"]
    assert final["orphans"] == len(data.orphans), final
    # rows written before a kill but not yet checkpointed are skipped by the resume
    assert final["updated"] <= len(to_fetch) <= final["updated"] + KILLS * CHECKPOINT_EVERY

    # The index: exactly the expected rows.
    rows = index_rows(job.index_db)
    missing = sorted(set(expected_rows) - set(rows))
    extra = sorted(set(rows) - set(expected_rows))
    assert not missing and not extra, f"rows missing {missing[:5]}, extra {extra[:5]}"
    wrong = {key: (rows[key], want) for key, want in expected_rows.items() if rows[key] != want}
    assert not wrong, f"{len(wrong)} wrong rows, e.g. {dict(list(wrong.items())[:3])}"
    for key, body in data.bodies.items():  # the point, said plainly
        assert rows[key][0] == hashlib.sha256(body).hexdigest(), key

    # The requests: every object that needed it fetched, no other; nothing written.
    assert set(proxy.gets) == to_fetch, (
        f"fetched but right already: {sorted(set(proxy.gets) - to_fetch)[:5]}, "
        f"never fetched: {sorted(to_fetch - set(proxy.gets))[:5]}"
    )
    writes = {k: n for k, n in proxy.requests.items() if k[0] not in ("GET", "HEAD")}
    assert not writes, f"requests that write: {writes}"
    # An object whose row had landed (checkpointed or not) is never fetched again: a kill
    # re-fetches exactly the objects fetched whose upsert had not committed.
    refetched = {k: (n, proxy.gets[k]) for k, n in landed_gets.items() if proxy.gets[k] != n}
    assert not refetched, f"fetched again after their row landed: {refetched}"
    ends = [*gets_at_kill[1:], proxy.gets]
    excess = [
        sum(ends[i][key] - before[key] for key in before)  # GETs again of keys fetched before
        for i, before in enumerate(gets_at_kill)
    ]
    # (fewer when a lost object was not reached again before the next kill)
    assert all(n <= len(k) for n, k in zip(excess, lost, strict=True)), (excess, lost)

    # The bound: each kill costs at most (upsert batch + concurrency) GETs again.
    bound = CHECKPOINT_EVERY + CONCURRENCY
    total = proxy.total_gets
    for fig, extra_gets in zip(figures, excess, strict=True):
        fig["excessAfter"] = extra_gets
    print(
        f"\nhash-index crash figures: {OBJECTS} objects, {len(to_fetch)} to fetch "
        f"(the others have right rows), concurrency {CONCURRENCY}, latency {LATENCY * 1000:.0f} ms"
    )
    for fig in figures:
        print(f"  {json.dumps(fig)}")
    print(
        f"  object GETs {total}, excess {total - len(to_fetch)} (bound {KILLS} x {bound} = "
        f"{KILLS * bound}), per kill {excess}; listings {proxy.count('list')}; "
        f"updated {final['updated']}, skipped {final['skipped']}, orphans {final['orphans']}; "
        f"{processes} processes, {seconds:.1f} s"
    )
    assert sum(excess) == total - len(to_fetch)
    assert all(len(k) <= bound for k in lost), [len(k) for k in lost]  # each kill's cost
    assert total <= len(to_fetch) + KILLS * bound
    assert total <= OBJECTS + KILLS * bound
