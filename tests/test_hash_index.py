"""`tui-backfill hash-index` end to end (the content-hash index issue's acceptance points).

One module-scoped dataset: `rclone serve s3` over a data directory written before it starts
(2,172 objects under `assets/`, a few outside the prefix) and the seed's index of 2,238 rows
without hashes (66 of them for keys with no object). The CLI runs in subprocesses, straight to
rclone or through the counting, fault-injecting proxy (which runs in this module's event loop,
so subprocesses are asyncio ones). rclone runs with `--dir-cache-time 0s` so that files changed
in its data directory are served at once (its listing would otherwise be cached for minutes);
object times are set with os.utime, so `--since` needs no sleep. Nothing is ever PUT to that
server: after a PUT, rclone with `--dir-cache-time 0s` keeps a core busy until it stops.

The tests share the dataset in file order: the bucket stays as created until
`test_since_hashes_only_new_and_changed_then_verify_and_repair`, the last one, changes it.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import os
import random
import shutil
import sqlite3
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from conftest import S3Target
from helpers import Result, one_line, runs_in_state, tool, tool_env

from tui_backfill.servers.origin import expected_body
from tui_backfill.servers.proxy import ProxyFaults, ReverseProxy
from tui_backfill.servers.rclone_s3 import RcloneS3

pytestmark = pytest.mark.asyncio(loop_scope="module")

BUCKET = "hx-bucket"
PREFIX = "assets/"
OBJECTS = 2172  # under PREFIX
ORPHANS = 66  # index rows under PREFIX whose object does not exist
ROWS = OBJECTS + ORPHANS  # 2,238
BIG_SIZES = (1, 2, 3, 5, 8)  # MiB
ODD_KEYS = ("assets/05/it's here.jpg", "assets/07/ünïcode é.jpg")  # quoting, UTF-8
OUTSIDE = ("assets-old/1.jpg", "assets-old/2.jpg", "assetsX.jpg", "other/a.jpg", "other/b/c.jpg")
SEED_SCHEMA = (
    "CREATE TABLE files (key TEXT PRIMARY KEY, content_hash TEXT, size INTEGER, etag TEXT, "
    "uploaded_at TEXT, uploader_id TEXT)"
)
COVERAGE_SQL = (
    "SELECT COUNT(*) total, COUNT(content_hash) with_hash, "
    "ROUND(COUNT(content_hash)*100.0/COUNT(*),2) coverage_percent FROM files"
)
FAST = ("--backoff", "0.01", "--timeout", "10", "--progress-interval", "5")


# -- the dataset ------------------------------------------------------------------------------


@dataclass
class Dataset:
    root: Path
    server: RcloneS3
    target: S3Target
    proxy: ReverseProxy  # counting, no faults
    original: Path  # the seed's index (2,238 rows, no hash); never written
    old: int  # epoch seconds of every object's LastModified

    @property
    def bucket_dir(self) -> Path:
        return self.server.data_dir / BUCKET

    def path(self, key: str) -> Path:
        return self.bucket_dir / key

    def sha256(self, key: str) -> str:
        return hashlib.sha256(self.path(key).read_bytes()).hexdigest()

    def keys(self) -> list[str]:
        """Every object key of the bucket (from the data directory)."""
        return sorted(
            p.relative_to(self.bucket_dir).as_posix()
            for p in self.bucket_dir.rglob("*")
            if p.is_file()
        )

    def env(self, **extra: str) -> dict[str, str]:
        return tool_env(self.target, **extra)

    def args(
        self, state: Path, index: Path, *extra: str, job: str = "hx", via: Any = None
    ) -> list[str]:
        endpoint = via.endpoint_url if via is not None else self.target.endpoint_url
        return [
            "hash-index", "--no-ui", "--state", str(state), "--job", job,
            "--bucket", BUCKET, "--prefix", PREFIX, "--path-style", "--endpoint-url", endpoint,
            "--index-db", str(index), *FAST, *extra,
        ]  # fmt: skip

    async def hash_index(
        self, state: Path, index: Path, *extra: str, job: str = "hx", via: Any = None, **env: str
    ) -> Result:
        return await tool(
            *self.args(state, index, *extra, job=job, via=via), env=self.env(**env), timeout=180
        )


def write_object(path: Path, data: bytes, mtime: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def _make_dataset(bucket_dir: Path, index: Path, old: int) -> None:
    rng = random.Random(2172)
    sizes: dict[str, int] = {}
    for n, mib in enumerate(BIG_SIZES):  # sort early: inside the faults test's --limit-objects
        sizes[f"{PREFIX}00/big-{n}.bin"] = mib << 20
    for key in ODD_KEYS:
        sizes[key] = 3000
    for i in range(OBJECTS - len(sizes)):
        # 1-64 KiB, log-uniform: ~15 KiB on average
        sizes[f"{PREFIX}{i % 40:02d}/{i:05d}.jpg"] = int(1024 * 2 ** rng.uniform(0, 6))
    assert len(sizes) == OBJECTS
    for key, size in sizes.items():
        write_object(bucket_dir / key, rng.randbytes(size), old)
    for key in OUTSIDE:
        write_object(bucket_dir / key, rng.randbytes(2000), old)
    orphans = [f"{PREFIX}{j % 40:02d}/gone-{j:03d}.jpg" for j in range(ORPHANS)]
    conn = sqlite3.connect(index)
    with conn:
        conn.execute(SEED_SCHEMA)
        conn.executemany(
            "INSERT INTO files VALUES (?, NULL, ?, NULL, '2026-01-02T03:04:05Z', 'seed')",
            [(key, size) for key, size in sizes.items()] + [(key, 1234) for key in orphans],
        )
    conn.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RcloneS3, Path, int]]:
    root = tmp_path_factory.mktemp("hx")
    data = root / "s3"
    old = int(datetime.now(UTC).timestamp()) - 1000
    original = root / "original.db"
    _make_dataset(data / BUCKET, original, old)
    original.chmod(0o444)  # a reminder: copy it, never write it (root ignores the bits)
    with RcloneS3(data, extra_args=("--dir-cache-time", "0s")) as rclone:
        yield rclone, root, old
    shutil.rmtree(data, ignore_errors=True)  # ~60 MB; pytest keeps its temp directories


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ds(server: tuple[RcloneS3, Path, int]) -> AsyncIterator[Dataset]:
    rclone, root, old = server
    target = S3Target(
        endpoint_url=rclone.endpoint_url,
        access_key=rclone.access_key,
        secret_key=rclone.secret_key,
        bucket=BUCKET,
        data_dir=rclone.data_dir,
    )
    async with ReverseProxy(rclone.endpoint_url) as proxy:
        yield Dataset(root, rclone, target, proxy, root / "original.db", old)


def rows(index: Path, table: str = "files") -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"{index.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return list(conn.execute(f"SELECT * FROM {table} ORDER BY key"))
    finally:
        conn.close()


def hashes(index: Path) -> dict[str, str | None]:
    return {row[0]: row[1] for row in rows(index)}


def copy_index(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    dst.chmod(0o644)
    return dst


def file_bytes(path: Path) -> bytes | None:
    return path.read_bytes() if path.exists() else None


def snap_of(result: Result, rc: int = 0) -> dict[str, Any]:
    """The final snapshot of a run that ended with `rc`; its counters add up (DESIGN.md)."""
    assert result.rc == rc, str(result)
    snap = dict(result.snap)
    assert snap["state"] == "completed"
    assert snap["errorsTotal"] == sum(snap["errorsByCode"].values())
    if snap["mode"] != "hash":
        done = snap["verified"] + snap["mismatched"]
    elif snap["dryRun"]:
        done = snap["wouldUpdate"]
    else:
        done = snap["updated"]
    assert snap["scannedObjects"] == done + snap["skipped"] + snap["failedItems"], snap
    return snap


def object_requests(proxy: ReverseProxy) -> int:
    return proxy.count("get_object") + proxy.count("head_object")


@dataclass
class FirstRun:
    result: Result
    index: Path
    state: Path
    emit: Path
    table: list[tuple[Any, ...]]  # the index right after the run


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def first(ds: Dataset) -> FirstRun:
    """One run over the seed's index (straight to rclone), emitting its SQL too."""
    index = copy_index(ds.original, ds.root / "index.db")
    state, emit = ds.root / "state" / "hx.sqlite3", ds.root / "index.sql"
    result = await ds.hash_index(state, index, "--emit-sql", str(emit))
    return FirstRun(result, index, state, emit, rows(index))


# -- 1. the seed's figures --------------------------------------------------------------------


async def test_one_run_gives_the_seeds_figures(ds: Dataset, first: FirstRun) -> None:
    result = first.result
    snap = snap_of(result)
    assert snap["state"] == "completed"
    assert snap["scannedObjects"] == OBJECTS
    assert snap["updated"] == OBJECTS and snap["skipped"] == 0 and snap["failedItems"] == 0
    assert snap["orphans"] == ORPHANS
    assert snap["errorsTotal"] == 0 and snap["errorsByCode"] == {}
    object_keys = [k for k in ds.keys() if k.startswith(PREFIX)]
    assert len(object_keys) == OBJECTS
    assert snap["bytesHashed"] == sum(ds.path(k).stat().st_size for k in object_keys)
    # the watermark passed every key under the prefix, objects and orphan rows alike
    last = max(object_keys + [r[0] for r in rows(ds.original)])
    assert snap["checkpoint"] == {"lastKey": last, "doneAfter": []}

    conn = sqlite3.connect(f"{first.index.as_uri()}?mode=ro", uri=True)
    try:
        total, with_hash, percent = conn.execute(COVERAGE_SQL).fetchone()
    finally:
        conn.close()
    assert (total, with_hash, percent) == (ROWS, OBJECTS, 97.05) == (2238, 2172, 97.05)

    stored = hashes(first.index)
    assert set(stored) == {r[0] for r in rows(ds.original)}  # no row added, none removed
    assert not [k for k in stored if not k.startswith(PREFIX)]  # nothing outside the prefix
    wrong = [k for k in object_keys if stored[k] != ds.sha256(k)]
    assert not wrong, f"wrong hashes: {wrong[:5]}"
    assert all(stored[k] is None for k in set(stored) - set(object_keys))  # orphans untouched
    # size and ETag (rclone's: the MD5) recorded; uploaded_at / uploader_id are insert-only
    by_key = {row[0]: row for row in first.table}
    for key in (*ODD_KEYS, f"{PREFIX}00/big-4.bin"):
        data = ds.path(key).read_bytes()
        assert by_key[key][2:] == (
            len(data),
            hashlib.md5(data).hexdigest(),
            "2026-01-02T03:04:05Z",
            "seed",
        )


async def test_coverage_command_reports_the_seeds_query(ds: Dataset, first: FirstRun) -> None:
    """`coverage --job` of a hash-index job: the seed's query over the table (DESIGN.md)."""
    assert first.result.rc == 0, str(first.result)
    cov = await tool("coverage", "--json", "--state", str(first.state), "--job", "hx", env=ds.env())
    try:
        report = json.loads(cov.out)
    except ValueError:
        report = None
    if not isinstance(report, dict) or "coverage_percent" not in json.dumps(report):
        pytest.skip(f"`coverage` does not report hash-index jobs on this branch (exit {cov.rc})")
    assert cov.rc == 0, str(cov)
    flat = report.get("coverage", report)
    assert (flat["total"], flat["with_hash"], flat["coverage_percent"]) == (2238, 2172, 97.05)
    assert flat.get("orphans", ORPHANS) == ORPHANS


# -- 6. --emit-sql ----------------------------------------------------------------------------


async def test_emitted_sql_applied_to_a_copy_gives_the_same_table(
    ds: Dataset, first: FirstRun
) -> None:
    sqlite_cli = shutil.which("sqlite3") or "/usr/bin/sqlite3"
    if not os.access(sqlite_cli, os.X_OK):
        pytest.skip("no sqlite3 command line")
    assert first.result.rc == 0, str(first.result)
    statements = first.emit.read_text(encoding="utf-8").splitlines()
    assert len(statements) == OBJECTS  # one upsert a row written, the table existed
    replay = copy_index(ds.original, ds.root / "replay.db")
    # the file as emitted, after two pragmas that spare 2,172 fsyncs (they change no result)
    script = b"PRAGMA journal_mode=MEMORY;\nPRAGMA synchronous=OFF;\n" + first.emit.read_bytes()
    proc = await asyncio.create_subprocess_exec(
        sqlite_cli, "-bail", str(replay),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate(script)
    assert proc.returncode == 0, err.decode()
    assert rows(replay) == first.table


# -- 2. idempotent ----------------------------------------------------------------------------


async def test_second_run_lists_only_and_skips_everything(ds: Dataset, first: FirstRun) -> None:
    assert first.result.rc == 0, str(first.result)
    ds.proxy.reset_counters()
    result = await ds.hash_index(first.state, first.index, via=ds.proxy)
    snap = snap_of(result)
    assert (snap["scannedObjects"], snap["skipped"], snap["updated"]) == (OBJECTS, OBJECTS, 0)
    assert snap["orphans"] == ORPHANS and snap["bytesHashed"] == 0
    assert dict(ds.proxy.requests) == {("GET", "list"): 3, ("HEAD", "head_bucket"): 1}
    assert rows(first.index) == first.table


# -- 4. dry run -------------------------------------------------------------------------------


async def test_dry_run_creates_and_writes_nothing_and_says_what_it_would_update(
    ds: Dataset, first: FirstRun
) -> None:
    assert first.result.rc == 0, str(first.result)
    work = ds.root / "dry"
    work.mkdir()
    fresh, emit = work / "fresh.db", work / "fresh.sql"
    state = ds.root / "state-dry" / "s.sqlite3"

    ds.proxy.reset_counters()
    result = await ds.hash_index(state, fresh, "--dry-run", via=ds.proxy, job="dry")
    snap = snap_of(result)
    assert snap["dryRun"] is True and snap["state"] == "completed"
    assert snap["wouldUpdate"] == OBJECTS and snap["plan"]["wouldUpdate"] == OBJECTS
    assert snap["updated"] == 0 and snap["bytesHashed"] == 0
    assert dict(ds.proxy.requests) == {("GET", "list"): 3, ("HEAD", "head_bucket"): 1}
    assert sorted(os.listdir(work)) == []  # no index file, no journal

    # With --emit-sql: refused before any work (a dry run writes nothing), nothing created
    result = await ds.hash_index(state, fresh, "--dry-run", "--emit-sql", str(emit), job="dry")
    assert result.rc == 2, str(result)
    assert "--emit-sql" in one_line(result.err)
    assert sorted(os.listdir(work)) == []

    # An existing index: rows lacking a matching hash are those it would update
    existing = copy_index(first.index, work / "existing.db")
    conn = sqlite3.connect(existing)
    with conn:
        keys = [k for (k,) in conn.execute("SELECT key FROM files WHERE content_hash IS NOT NULL")]
        picked = random.Random(4).sample(keys, 14)
        conn.executemany(
            "UPDATE files SET content_hash = NULL WHERE key = ?", [(k,) for k in picked[:7]]
        )
        conn.executemany("DELETE FROM files WHERE key = ?", [(k,) for k in picked[7:11]])
        conn.executemany(
            "UPDATE files SET size = size + 1 WHERE key = ?", [(k,) for k in picked[11:]]
        )
    conn.close()
    before = existing.read_bytes()
    ds.proxy.reset_counters()
    plan_file = ds.root / "plan.txt"  # --plan-file: one line per object (and orphan row)
    result = await ds.hash_index(
        state, existing, "--dry-run", "--plan-file", str(plan_file), via=ds.proxy, job="dry"
    )
    snap = snap_of(result)
    assert snap["wouldUpdate"] == 14 and snap["plan"]["wouldUpdate"] == 14
    assert snap["skipped"] == OBJECTS - 14 and snap["orphans"] == ORPHANS
    assert dict(ds.proxy.requests) == {("GET", "list"): 3, ("HEAD", "head_bucket"): 1}
    assert existing.read_bytes() == before
    assert sorted(os.listdir(work)) == ["existing.db"]
    lines = plan_file.read_text(encoding="utf-8").splitlines()
    assert lines[:7] == [
        "# tui-backfill dry run of hash-index job dry (bucket hx-bucket): what a run would do",
        "# one line per object of the listing or orphan row of the index: VERB KEY, KEY being "
        "the object's key",
        "# hash KEY: a run downloads the object and writes its content_hash",
        "# skip KEY: its index row is up to date (or it is older than --since): no download",
        "# orphan KEY: an index row with no object: reported, never deleted",
        "# fail KEY: a run would record it as a failed item (its reason is in the dry run's "
        "errors)",
        "# items that failed in earlier runs are retried first by a real run and are not listed "
        "here",
    ]
    objects = [key for key in ds.keys() if key.startswith(PREFIX)]
    conn = sqlite3.connect(existing)
    indexed = {key for (key,) in conn.execute("SELECT key FROM files")}
    conn.close()
    orphans = sorted(indexed - set(objects))
    assert len(orphans) == ORPHANS and set(ODD_KEYS) <= set(objects)
    assert lines[7:] == sorted(
        [f"hash {key}" for key in picked]
        + [f"skip {key}" for key in objects if key not in picked]
        + [f"orphan {key}" for key in orphans],
        key=lambda line: line.split(" ", 1)[1].encode(),
    )  # in key order: a listing's items are planned as it goes
    # the index table is an input of the run: a plan never replaces it
    refused = await ds.hash_index(
        state, existing, "--dry-run", "--plan-file", str(existing), via=ds.proxy, job="dry"
    )
    assert refused.rc == 2 and refused.err.splitlines() == [
        f"tui-backfill: error: --plan-file: {existing} is the run's --index-db file; give a file "
        "that is none of the run's inputs"
    ], str(refused)
    assert existing.read_bytes() == before and sorted(os.listdir(work)) == ["existing.db"]


# -- 5. bad input -----------------------------------------------------------------------------


async def _mirror_job(ds: Dataset, state: Path, bucket: S3Target) -> None:
    """A real (tiny) image job named `mirror` in `state`: one SKU from a file origin into
    `bucket`, on another rclone than the dataset's (see the module's docstring)."""
    origin = ds.root / "origin"
    origin.mkdir(exist_ok=True)
    (origin / "100000_1").write_bytes(expected_body("100000", 1))  # a real JPEG
    skus = ds.root / "skus.txt"
    skus.write_text("100000\n")
    result = await tool(
        "run", "--no-ui", "--state", str(state), "--job", "mirror",
        "--skus-file", str(skus), "--origin", f"file://{origin}/{{sku}}_{{angle}}",
        "--angles", "1", "--bucket", bucket.bucket, "--path-style",
        "--endpoint-url", bucket.endpoint_url, *FAST,
        env=tool_env(bucket),
    )  # fmt: skip
    assert result.rc == 0 and result.snap["uploaded"] == 1, str(result)


def _table(path: Path, schema: str) -> Path:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(schema)
        conn.execute("INSERT INTO files VALUES ('assets/00/00000.jpg', NULL)")
    conn.close()
    return path


BAD_INPUTS = {
    # case: what its one error line names
    "unwritable-index-db": "--index-db",
    "table-without-key": "--index-table",
    "table-without-content_hash": "--index-table",
    "index-table-not-an-identifier": "--index-table",
    "since-yesterday": "--since",
    "missing-bucket": "--bucket",
    "wrong-credentials": "AWS_",
    "job-of-another-pipeline": "--job",
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
async def test_bad_input_one_line_exit_2_nothing_read_or_written(
    ds: Dataset, tmp_path: Path, case: str, request: pytest.FixtureRequest
) -> None:
    state = tmp_path / "state" / "s.sqlite3"
    index = tmp_path / "index.db"
    extra: list[str] = []
    env: dict[str, str] = {}
    job = "hx"
    if case == "unwritable-index-db":
        (tmp_path / "blocker").write_text("a regular file")
        index = tmp_path / "blocker" / "index.db"
    elif case == "table-without-key":
        _table(index, "CREATE TABLE files (id TEXT PRIMARY KEY, content_hash TEXT)")
    elif case == "table-without-content_hash":
        _table(index, "CREATE TABLE files (key TEXT PRIMARY KEY, sha256 TEXT)")
    elif case == "index-table-not-an-identifier":
        extra = ["--index-table", "files; drop table x"]
    elif case == "since-yesterday":
        copy_index(ds.original, index)
        extra = ["--since", "yesterday"]
    elif case == "missing-bucket":
        copy_index(ds.original, index)
    elif case == "wrong-credentials":
        env = {"AWS_SECRET_ACCESS_KEY": "not-the-secret"}
    elif case == "job-of-another-pipeline":
        await _mirror_job(ds, state, request.getfixturevalue("rclone_s3"))
        job = "mirror"
    args = ds.args(state, index, *extra, job=job, via=ds.proxy)
    if case == "missing-bucket":
        args[args.index(BUCKET)] = "no-such-bucket"
    before = file_bytes(index)

    ds.proxy.reset_counters()
    result = await tool(*args, env=ds.env(**env), timeout=60)
    assert result.rc == 2, str(result)
    line = one_line(result.err)
    assert BAD_INPUTS[case] in line, line
    assert "not-the-secret" not in result.err + result.out
    assert file_bytes(index) == before  # not created, or not changed
    assert not list(tmp_path.glob("index.db?*"))  # no journal or WAL left either
    assert runs_in_state(state) == (1 if case == "job-of-another-pipeline" else 0)
    assert object_requests(ds.proxy) == 0 and ds.proxy.count("list") == 0
    assert set(ds.proxy.requests) <= {("HEAD", "head_bucket")}


# -- 7. faults --------------------------------------------------------------------------------


async def test_faults_on_object_gets_are_retried_and_never_give_a_wrong_hash(
    ds: Dataset, tmp_path: Path
) -> None:
    limit = 250  # includes the big objects (assets/00/big-*)
    faults = ProxyFaults(
        kinds={"get_object"},
        error_rate=0.08,  # 500 InternalError or 503 ServiceUnavailable
        slowdown_rate=0.03,  # 503 SlowDown
        drop_rate=0.03,  # the connection closed, no answer
        reset_rate=0.05,  # the answer dropped after the server gave it
        truncate_rate=0.05,  # half the body, then the connection closed
    )
    async with ReverseProxy(ds.target.endpoint_url, faults, seed=7) as proxy:
        index = tmp_path / "index.db"
        result = await ds.hash_index(
            tmp_path / "s.sqlite3", index, "--limit-objects", str(limit), "--max-attempts", "12",
            via=proxy,
        )  # fmt: skip
    snap = snap_of(result)
    assert snap["failedItems"] == 0 and snap["updated"] == limit == snap["scannedObjects"]
    injected = proxy.injected
    assert all(injected[k] for k in ("error", "slowdown", "drop", "reset", "truncate")), injected
    codes = snap["errorsByCode"]
    # 5xx answers are all injected (rclone gives none): each status is seen under its S3 code
    unavailable = proxy.statuses[("get_object", 503)] - injected["slowdown"]
    for injected_here, code in (
        (proxy.statuses[("get_object", 500)], "s3_InternalError"),
        (unavailable, "s3_ServiceUnavailable"),
        (injected["slowdown"], "s3_SlowDown"),
    ):
        assert codes.get(code, 0) == injected_here, codes
    assert codes.get("s3_connection") and codes.get("truncated") == injected["truncate"], codes
    assert set(codes) <= {
        "s3_InternalError", "s3_ServiceUnavailable", "s3_SlowDown", "s3_connection", "truncated"
    }, codes  # fmt: skip
    assert snap["errorsTotal"] == sum(codes.values())
    # every injected fault was seen by the client (aiohttp may retry a dropped connection once)
    assert snap["errorsTotal"] <= sum(injected.values())
    stored = hashes(index)
    assert len(stored) == limit
    assert {f"{PREFIX}00/big-{n}.bin" for n in range(len(BIG_SIZES))} <= set(stored)
    wrong = [k for k, h in stored.items() if h != ds.sha256(k)]
    assert not wrong, f"wrong hashes: {wrong[:5]}"
    assert set(proxy.forwarded) <= {"get_object", "list", "head_bucket"}  # nothing written


# -- 3. incremental, then verify and repair (changes the bucket: last) ------------------------

NARROW = f"{PREFIX}1"  # assets/10/ .. assets/19/: about 540 objects, for repair and re-verify


async def test_since_hashes_only_new_and_changed_then_verify_and_repair(
    ds: Dataset, first: FirstRun
) -> None:
    assert first.result.rc == 0, str(first.result)
    index, state = first.index, first.state
    rng = random.Random(15)
    now = int(datetime.now(UTC).timestamp())
    since = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    small = [k for k in ds.keys() if k.startswith(PREFIX) and "big-" not in k]
    inside = [k for k in small if k.startswith(NARROW)]
    changed = rng.sample(inside, 4) + rng.sample([k for k in small if k not in inside], 6)
    for n, key in enumerate(changed):  # other bytes (and size), LastModified at or after T
        write_object(ds.path(key), rng.randbytes(5000), now if n == 0 else now + 5)
    added = [f"{NARROW}{n}/new-{n}.jpg" for n in range(5)]
    for key in added:
        write_object(ds.path(key), rng.randbytes(3000), now + 5)
    write_object(ds.path("other/new.jpg"), b"outside the prefix", now + 5)
    before = {r[0]: r for r in rows(index)}

    result = await ds.hash_index(state, index, "--since", since)
    snap = snap_of(result)
    assert snap["updated"] == 15 and snap["failedItems"] == 0, snap
    assert snap["scannedObjects"] == OBJECTS + 5
    assert snap["skippedOlder"] == OBJECTS - 10 == snap["skipped"]
    after = {r[0]: r for r in rows(index)}
    assert set(after) == set(before) | set(added)
    assert {k for k in after if after[k] != before.get(k)} == set(changed) | set(added)
    assert all(after[k][1] == ds.sha256(k) for k in (*changed, *added))
    assert all(after[k][5] == "backfill" for k in added)  # inserted by the tool
    assert all(after[k][5] == "seed" for k in changed)  # insert-only column kept

    # tamper: same size, other bytes, LastModified as it was; the index is not told
    tampered = rng.sample([k for k in inside if k not in changed], 3)
    for key in tampered:
        path = ds.path(key)
        write_object(path, rng.randbytes(path.stat().st_size), ds.old)
    table = rows(index)
    index_bytes = index.read_bytes()
    mismatch_file = ds.root / "mismatches.csv"

    # verify the whole prefix: exactly the 3, exit 1, the index untouched
    result = await ds.hash_index(state, index, "--verify", "--mismatch-file", str(mismatch_file))
    snap = snap_of(result, 1)
    assert snap["mismatched"] == 3 and snap["failedItems"] == 0
    assert snap["verified"] == OBJECTS + 5 - 3 == snap["scannedObjects"] - 3
    expected = sorted((k, after[k][1], ds.sha256(k)) for k in tampered)
    shown = sorted((m["key"], m["stored"], m["actual"]) for m in snap["mismatches"])
    assert shown == expected
    with mismatch_file.open(newline="", encoding="utf-8") as fh:
        listed = list(csv.reader(fh))
    assert listed[0] == ["key", "stored", "actual"]
    assert sorted(tuple(r) for r in listed[1:]) == expected
    assert rows(index) == table and index.read_bytes() == index_bytes

    # repair (a narrower prefix that holds the 3, to stay fast): only those rows change
    narrow = sum(1 for k in ds.keys() if k.startswith(NARROW))
    result = await ds.hash_index(state, index, "--verify", "--repair", "--prefix", NARROW)
    snap = snap_of(result, 1)  # it found them (and fixed them)
    assert (snap["mismatched"], snap["verified"]) == (3, narrow - 3)
    stored = {r[0]: r[1] for r in table}
    repaired = hashes(index)
    assert {k for k, h in repaired.items() if h != stored[k]} == set(tampered)
    assert all(repaired[k] == ds.sha256(k) for k in tampered)

    result = await ds.hash_index(
        state, index, "--verify", "--prefix", NARROW, "--mismatch-file", str(mismatch_file)
    )
    snap = snap_of(result)
    assert (snap["mismatched"], snap["verified"], snap["failedItems"]) == (0, narrow, 0)
    assert snap.get("mismatches") == []
    assert mismatch_file.read_text(encoding="utf-8").splitlines() == ["key,stored,actual"]
    # the job's history says what each exit 1 was: mismatches, not failed items
    runs = await tool(
        "runs", "--json", "--state", str(state), "--job", "hx", env=ds.env(), timeout=60
    )
    outcomes = [(r["exitCode"], r["outcome"]) for r in json.loads(runs.out)["runs"][:4]]
    assert outcomes == [
        (0, "completed"),
        (1, "completed-with-mismatches"),
        (1, "completed-with-mismatches"),
        (0, "completed"),
    ], runs.out
    wide = await tool(
        "runs", "--state", str(state), "--job", "hx", env={**ds.env(), "COLUMNS": "200"}
    )
    header, *table = wide.out.splitlines()
    started = header.index("started")
    shown = [line for line in table if "completed-with-mismatches" in line]
    assert len(shown) == 2 and all(line[started : started + 2] == "20" for line in shown), wide.out
