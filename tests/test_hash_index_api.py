"""`serve` of a hash-index job against real servers (rclone behind the counting proxy, SQLite
index files): the seed's batch interface `GET /api/backfill-asset-index` (looping on the
cursor gives the index a CLI `hash-index` run gives; a dry run writes and creates nothing; what
a web page could send is refused; the token), the generic job routes of a hash-index job, and
the image routes and run fields that are not a hash-index job's."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import signal
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
from helpers import Api, Backfill, MakeApi, served_url, wait_for

from tui_backfill.frontends.api import BASE

BATCH = "/api/backfill-asset-index"
JOBS = "/api/jobs"
TOKEN = "hx-token-3a91"
# Keys a cursor must carry through a URL intact: spaces, + & = % ? #, non-ASCII.
ODD_KEYS = ("assets/a b+c&d=e%f?g#h.bin", "assets/caf\u00e9/\u00fcber.bin", "assets/z~last.bin")


def body_of(i: int) -> bytes:
    size = 300 * 1024 if i == 7 else 100 + 37 * i  # one past the hash-in-a-thread threshold
    return hashlib.sha256(str(i).encode()).digest() * (size // 32 + 1)


async def fill_bucket(job: Backfill, n: int) -> dict[str, bytes]:
    """`n` objects in the test bucket (written directly, not through the counting proxy)."""
    objects = {f"assets/{i:04d}.bin": body_of(i) for i in range(n - len(ODD_KEYS))}
    objects.update({key: body_of(1000 + i) for i, key in enumerate(ODD_KEYS)})

    def put() -> None:
        client = job.direct.client()
        for key, body in objects.items():
            client.put_object(Bucket=job.bucket, Key=key, Body=body)

    await asyncio.to_thread(put)
    return objects


def index_rows(path: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)
    try:
        return conn.execute(
            "SELECT key, content_hash, size, etag FROM files ORDER BY key"
        ).fetchall()
    finally:
        conn.close()


async def batch(api: Api, cursor: str | None = None, **params: Any) -> dict[str, Any]:
    query = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in params.items()}
    if cursor is not None:
        query["cursor"] = cursor
    code, answer = await api.call("GET", BATCH, params=query)
    assert code == 200, answer
    assert set(answer) == {
        "success",
        "total",
        "updated",
        "skipped",
        "cursor",
        "hasMore",
        "errors",
        "dry_run",
    }, answer
    assert answer["success"] is True
    assert answer["total"] == answer["updated"] + answer["skipped"] + len(answer["errors"])
    return dict(answer)


async def loop_batches(api: Api, **params: Any) -> list[dict[str, Any]]:
    """The seed's backfill-complete.sh: batches until hasMore is false."""
    answers: list[dict[str, Any]] = []
    cursor = None
    while True:
        answer = await batch(api, cursor, **params)
        answers.append(answer)
        if not answer["hasMore"]:
            assert answer["cursor"] is None, answer
            return answers
        cursor = answer["cursor"]
        assert isinstance(cursor, str) and cursor, answer
        assert len(answers) < 100, "the cursor does not advance"


# -- the batch interface ------------------------------------------------------------------------


async def test_looping_on_the_cursor_gives_the_index_of_a_cli_run(
    make_api: MakeApi, tmp_path: Path
) -> None:
    served_db, cli_db = tmp_path / "served.sqlite3", tmp_path / "cli.sqlite3"
    job, api = await make_api(1, index_db=served_db)
    objects = await fill_bucket(job, 130)

    answers = await loop_batches(api, limit=50)
    assert [a["total"] for a in answers] == [50, 50, 30], answers
    assert [a["hasMore"] for a in answers] == [True, True, False]
    assert sum(a["updated"] for a in answers) == 130 and not any(a["errors"] for a in answers)
    keys = sorted(objects, key=lambda k: k.encode())
    assert [a["cursor"] for a in answers[:2]] == [keys[49], keys[99]]

    cli = dataclasses.replace(job, job="cli", procs=[])  # the same bucket, another job
    result = await cli.cli("hash-index", "--no-ui", *cli.hash_flags(cli_db))
    assert result.rc == 0, str(result)
    assert result.json()["updated"] == 130

    rows = index_rows(served_db)
    assert rows == index_rows(cli_db)
    assert [(key, digest, size) for key, digest, size, _ in rows] == [
        (key, hashlib.sha256(objects[key]).hexdigest(), len(objects[key])) for key in keys
    ]

    # Again over the unchanged bucket: the skip rule, no object GET at all.
    gets = job.proxy.count("get_object")
    again = await loop_batches(api, limit=1000)
    assert [(a["total"], a["updated"], a["skipped"]) for a in again] == [(130, 0, 130)]
    assert job.proxy.count("get_object") == gets
    assert index_rows(served_db) == rows

    # A changed object is hashed again (its size and ETag differ from its row's).
    changed = keys[60]
    await asyncio.to_thread(
        job.direct.client().put_object, Bucket=job.bucket, Key=changed, Body=b"new bytes"
    )
    answers = await loop_batches(api, limit=50)
    assert sum(a["updated"] for a in answers) == 1, answers
    row = next(r for r in index_rows(served_db) if r[0] == changed)
    assert row[1:3] == (hashlib.sha256(b"new bytes").hexdigest(), 9)


async def test_a_dry_run_writes_and_creates_nothing(make_job: Any, tmp_path: Path) -> None:
    """Also: `serve` takes a hash-index job from a TOML file (`pipeline = "hash-index"`)."""
    job = await make_job(1)
    job.job = "assets"
    index_db = tmp_path / "index.sqlite3"
    config = tmp_path / "jobs.toml"
    config.write_text(
        f'[jobs.assets]\npipeline = "hash-index"\nbucket = "{job.bucket}"\n'
        f'index_db = "{index_db}"\npath_style = true\ntimeout = 2\nbackoff = 0.01\n'
    )
    proc = await job.start("serve", "--config", str(config), *job.job_flags(), "--port", "0")
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:
        api = Api(await served_url(proc), proc, session)
        objects = await fill_bucket(job, 60)

        answers = await loop_batches(api, limit=25, dry_run=True)
        assert [a["total"] for a in answers] == [25, 25, 10]
        assert all(a["dry_run"] is True for a in answers)
        assert sum(a["updated"] for a in answers) == 60  # hashed: these rows would change
        assert not index_db.exists(), "a dry run creates no index"

        first = await batch(api, limit=10)  # a real batch: the file and 10 rows
        assert (first["updated"], first["dry_run"]) == (10, False)
        before = index_db.read_bytes()
        answers = await loop_batches(api, limit=1000, dry_run="1")
        assert [(a["total"], a["updated"], a["skipped"]) for a in answers] == [(60, 50, 10)]
        assert index_db.read_bytes() == before, "a dry run writes nothing"
        assert len(index_rows(index_db)) == 10 < len(objects)

        code, body = await api.call("GET", BATCH, params={"limit": "0"})
        assert code == 400 and body["field"] == "limit" and body["success"] is False, body
        code, body = await api.call("GET", BATCH, params={"dry_run": "maybe"})
        assert code == 400 and body["field"] == "dry_run", body
        code, body = await api.call("GET", BATCH, params={"limit": "1001"})
        assert code == 400 and body["field"] == "limit", body
        code, body = await api.call("GET", BATCH, params={"offset": "5"})
        assert code == 400 and body["field"] == "offset", body
    proc.signal(signal.SIGTERM)
    assert (await proc.wait(30)).rc == 0


async def test_what_a_web_page_could_send_is_refused_and_the_token_required(
    make_api: MakeApi, tmp_path: Path
) -> None:
    index_db = tmp_path / "index.sqlite3"
    job, api = await make_api(1, index_db=index_db, token=TOKEN)
    await fill_bucket(job, 20)
    port = api.url.rsplit(":", 1)[1]
    for headers in (
        {"Host": f"evil.example:{port}"},
        {"Host": "evil.example"},
        {"Origin": "http://evil.example"},
        {"Origin": "null"},
        {"Origin": f"http://evil.example:{port}", "Host": f"127.0.0.1:{port}"},
    ):
        code, body = await api.call("GET", BATCH, headers=headers)
        assert code == 403, (headers, code, body)
    async with aiohttp.ClientSession() as session:  # no token
        code, body = await Api(api.url, api.proc, session).call("GET", BATCH)
        assert code == 401, body
        wrong = {"Authorization": "Bearer nope"}
        code, body = await Api(api.url, api.proc, session).call("GET", BATCH, headers=wrong)
        assert code == 401, body
    # HEAD of the batch route (aiohttp adds HEAD to a GET route unless told not to) runs no
    # batch either: it is not a method of this route
    async with api.session.head(api.url + BATCH) as answer:
        assert answer.status == 405, answer.status
    assert not index_db.exists(), "nothing written by a refused request"
    assert job.proxy.count("list") == 0 and job.proxy.count("get_object") == 0

    # The server's own origin, and a loopback name, with the token: answered.
    answer = await batch(api, limit=5)
    assert answer["updated"] == 5
    params = {"limit": "5", "cursor": answer["cursor"]}
    code, body = await api.call("GET", BATCH, params=params, headers={"Host": f"localhost:{port}"})
    assert code == 200 and body["updated"] == 5, body
    params["cursor"] = body["cursor"]
    code, body = await api.call("GET", BATCH, params=params, headers={"Origin": api.url})
    assert code == 200 and body["updated"] == 5, body
    assert len(index_rows(index_db)) == 15


async def test_objects_that_keep_failing_are_reported_and_left_out(
    make_api: MakeApi, tmp_path: Path
) -> None:
    index_db = tmp_path / "index.sqlite3"
    job, api = await make_api(1, index_db=index_db)
    objects = await fill_bucket(job, 12)
    job.proxy.faults.kinds = {"get_object"}
    job.proxy.faults.error_rate = 1.0  # every GET answers 500 or 503
    answer = await batch(api, limit=10)
    assert (answer["total"], answer["updated"], answer["skipped"]) == (10, 0, 0), answer
    keys = sorted(objects, key=lambda k: k.encode())
    assert [e["key"] for e in answer["errors"]] == keys[:10]
    for error in answer["errors"]:
        assert error["code"] and error["message"], error
    assert job.proxy.count("get_object") == 10 * 3  # --max-attempts 3 each
    assert answer["hasMore"] and answer["cursor"] == keys[9]  # the cursor passes them
    assert index_rows(index_db) == []

    job.proxy.faults.error_rate = 0.0
    answers = await loop_batches(api, limit=1000)
    assert [(a["total"], a["updated"], a["errors"]) for a in answers] == [(12, 12, [])]
    assert len(index_rows(index_db)) == 12


# -- the generic routes of a hash-index job -------------------------------------------------------


async def test_the_generic_routes_run_a_hash_index_job(make_api: MakeApi, tmp_path: Path) -> None:
    index_db = tmp_path / "index.sqlite3"
    job, api = await make_api(1, index_db=index_db)
    objects = await fill_bucket(job, 40)
    status_path = f"{JOBS}/hash-index/status"
    code, body = await api.call("GET", status_path)
    assert code == 404 and "no runs" in body["error"], body

    # The image job's fields are refused, naming them; the hash index's accepted.
    for field, value in (("limitSkus", 5), ("angles", "1-3"), ("onlyMissing", True)):
        code, body = await api.call("POST", f"{JOBS}/hash-index/run", body={field: value})
        assert code == 400 and body["field"] == field, body
        assert "mirror job" in body["error"] and "limitObjects" in body["error"], body
    code, plan = await api.call(
        "POST", f"{JOBS}/hash-index/run", body={"dryRun": True, "concurrency": 4}
    )
    assert code == 200, plan
    assert plan["plan"] == {"objects": 40, "wouldUpdate": 40, "skipped": 0, "orphans": 0}
    assert plan["concurrency"] == 4
    assert not index_db.exists(), "a dry run creates no index"
    code, body = await api.call("GET", status_path)
    assert code == 404, body  # a dry run leaves no run behind

    # The seed's image routes are not this job's.
    for method, path in (
        ("GET", f"{BASE}/status"),
        ("POST", f"{BASE}/run"),
        ("POST", f"{BASE}/pause"),
        ("GET", "/api/rsr-image-stats"),
        ("GET", "/api/rsr-image-gap"),
    ):
        code, body = await api.call(method, path)
        assert code == 409, (path, body)
        assert "hash-index job" in body["error"] and "/api/jobs/hash-index" in body["error"], body

    # A run on the generic route, to completion; meanwhile the batch interface waits (409).
    job.proxy.faults.latency = 0.05
    code, started = await api.call(
        "POST", f"{JOBS}/hash-index/run", params={"concurrency": "2"}, body={"limitObjects": 30}
    )
    assert code == 202, started
    assert started["pipeline"] == "hash-index" and started["concurrency"] == 2
    code, body = await api.call("GET", BATCH)
    assert code == 409 and "running in this process" in body["error"], body
    job.proxy.faults.latency = 0.0

    final: dict[str, Any] = {}

    async def completed() -> bool:
        code, snap = await api.call("GET", status_path)
        assert code == 200, snap
        final.update(snap)
        return bool(snap["state"] == "completed")

    for _ in range(300):
        if await completed():
            break
        await asyncio.sleep(0.1)
    assert final["state"] == "completed", final
    for key in ("scannedObjects", "updated", "skipped", "bytesHashed", "orphans", "failedItems"):
        assert key in final, key
    assert final["scannedObjects"] == 30 == final["updated"] + final["skipped"]
    assert final["failedItems"] == 0 and final["runId"] == started["runId"]
    assert len(index_rows(index_db)) == 30

    code, metrics = await api.call("GET", "/metrics")
    assert code == 200 and 'job="hash-index"' in metrics, metrics
    code, runs = await api.call("GET", f"{JOBS}/hash-index/runs")
    assert code == 200 and runs["runs"][0]["runId"] == started["runId"], runs

    # The batch interface goes on from there: the 30 rows are skipped, 10 written.
    answers = await loop_batches(api, limit=1000)
    assert [(a["total"], a["updated"], a["skipped"]) for a in answers] == [(40, 10, 30)]
    assert len(index_rows(index_db)) == len(objects)

    code, document = await api.call("GET", "/api/openapi.json")
    assert code == 200
    assert BATCH in document["paths"] and f"{BASE}/run" not in document["paths"]
    run_fields = document["paths"][f"{JOBS}/{{job}}/run"]["post"]["requestBody"]["content"][
        "application/json"
    ]["schema"]["properties"]
    assert "limitObjects" in run_fields and "limitSkus" not in run_fields, run_fields


async def test_a_batch_waits_for_a_run_of_the_job_in_another_process(
    make_api: MakeApi, tmp_path: Path
) -> None:
    index_db = tmp_path / "index.sqlite3"
    job, api = await make_api(1, index_db=index_db)
    await fill_bucket(job, 40)
    job.proxy.faults.latency = 0.1
    running = await job.start(
        "hash-index", "--no-ui", *job.hash_flags(index_db, extra=("--concurrency", "1"))
    )
    await wait_for(
        lambda: job.proxy.count("get_object") >= 2, within=30, what="the CLI run hashing"
    )
    for dry in ("false", "true"):
        code, body = await api.call("GET", BATCH, params={"dry_run": dry})
        assert code == 409 and str(running.pid) in body["error"], body
    assert running.alive
    job.proxy.faults.latency = 0.0
    result = await running.wait(60)
    assert result.rc == 0, str(result)
    answers = await loop_batches(api, limit=1000)
    assert [(a["total"], a["updated"], a["skipped"]) for a in answers] == [(40, 0, 40)]


async def test_an_image_job_has_no_batch_interface(make_api: MakeApi) -> None:
    _, api = await make_api(10, limit=10)
    code, body = await api.call("GET", BATCH, params={"limit": "5"})
    assert code == 409 and body["success"] is False, body
    assert "mirror job" in body["error"] and "hash-index" in body["error"], body
    code, body = await api.call("POST", f"{BASE}/run", body={"limitObjects": 5})
    assert code == 400 and body["field"] == "limitObjects", body
    code, document = await api.call("GET", "/api/openapi.json")
    assert code == 200 and BATCH not in document["paths"] and f"{BASE}/run" in document["paths"]
