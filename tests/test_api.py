"""The HTTP control API, driven over loopback against a real `tui-backfill serve` process (and
`run --serve`), with rclone behind the counting proxy, the origin and a catalog: the seed's
acceptance through the API, bad requests, the token, metrics, run history."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
from typing import Any

import aiohttp
import pytest
from helpers import (
    Api,
    Backfill,
    MakeApi,
    assert_brief_keys,
    assert_counters_add_up,
    assert_valid_checkpoint,
    key_of,
    one_line,
    served_url,
    wait_for,
)

from tui_backfill.frontends.api import BASE

ANGLES = (1, 2, 3)
TOKEN = "api-token-7c1e9f"


def skus_of(job: Backfill, n: int) -> list[str]:
    return job.skus()[:n]


# -- the seed's acceptance through the API --------------------------------------------------


async def test_dry_run_answers_the_plan_and_touches_nothing(make_api: MakeApi) -> None:
    job, api = await make_api(520)
    code, plan = await api.call("POST", f"{BASE}/run", body={"dryRun": True, "limitSkus": 500})
    assert code == 200, plan
    assert_brief_keys(plan)
    assert plan["scannedSkus"] == 500 and plan["plannedItems"] == 1500
    assert plan["plan"] == {"skus": 500, "items": 1500, "existing": 0, "missing": 1500}
    assert plan["uploaded"] == 0 and plan["attemptedDownloads"] == 0
    assert job.origin.gets == 0, "a dry run downloads nothing"
    assert job.proxy.puts == {}
    code, body = await api.call("GET", f"{BASE}/status")
    assert code == 404 and "no runs" in body["error"], body  # a dry run leaves no run behind


@pytest.mark.parametrize("n", [300, pytest.param(2000, marks=pytest.mark.slow, id="2000-skus")])
async def test_run_through_the_api_fills_the_bucket_and_coverage_improves(
    make_api: MakeApi, n: int
) -> None:
    job, api = await make_api(n + 20)
    skus = skus_of(job, n)
    code, before = await api.call("GET", "/api/rsr-image-stats")
    assert code == 200, before
    assert before["present"] == 0 and before["expected"] == (n + 20) * 3
    assert before["fillable"] == before["missing"]  # nothing attempted: nothing known absent

    job.origin.faults.latency = 0.01
    code, started = await api.call("POST", f"{BASE}/run", body={"limitSkus": n})
    assert code == 202, started
    run_id = started["runId"]
    seen: list[int] = []

    def progress(snap: dict[str, Any]) -> bool:
        assert_brief_keys(snap)
        assert_valid_checkpoint(snap, skus, ANGLES)
        seen.append(snap["uploaded"])
        return snap["state"] == "completed"

    final = await api.until(progress, within=120 if n > 500 else 60)
    assert len({v for v in seen if v}) >= 2, f"counters should be seen increasing: {seen}"
    assert seen == sorted(seen)
    assert final["runId"] == run_id
    assert_counters_add_up(final)
    assert final["uploaded"] == len(job.expected_objects(skus, ANGLES))
    await job.assert_bucket_exactly(skus, ANGLES)
    job.assert_no_key_put_twice()

    code, after = await api.call("GET", "/api/rsr-image-stats")
    assert code == 200 and after["present"] == before["present"] + final["uploaded"], after
    assert after["coveragePercent"] > before["coveragePercent"]
    keys: list[str] = []
    after_key = None
    while True:
        query = {"limit": "25", **({"after": after_key} if after_key else {})}
        code, page = await api.call("GET", "/api/rsr-image-gap", params=query)
        assert code == 200, page
        keys += page["keys"]
        after_key = page["nextAfter"]
        if after_key is None:
            break
    all_skus = job.skus()
    expected_gap = {key_of(s, a) for s in all_skus for a in ANGLES} - await job.bucket_keys()
    assert len(keys) == len(set(keys)) == page["missing"] == len(expected_gap)
    assert set(keys) == expected_gap
    # fillable: the gap without the keys the origin answered 404 for in the run
    absent = {key_of(s, a) for s, a in job.missing_items(skus, ANGLES)}
    assert absent and final["noRemote"] == len(absent)
    assert after["fillable"] == page["fillable"] == len(expected_gap - absent)


async def test_pause_then_run_again_continues_the_same_run(make_api: MakeApi) -> None:
    n = 150
    job, api = await make_api(n + 10)
    skus = skus_of(job, n)
    job.origin.faults.latency = 0.05
    code, started = await api.call("POST", f"{BASE}/run", body={"limitSkus": n})
    assert code == 202, started
    code, again = await api.call("POST", f"{BASE}/run", body={"limitSkus": n})
    assert code == 409 and "already running" in again["error"], again
    await wait_for(lambda: len(job.proxy.puts) >= 60, within=30, what="60 objects written")

    code, paused = await api.call("POST", f"{BASE}/pause")
    assert code == 200, paused
    assert paused["state"] == "paused" and 0 < paused["scannedSkus"] < n
    assert_valid_checkpoint(paused, skus, ANGLES)
    status = await api.status()
    assert status["state"] == "paused" and status["live"] is False
    assert status["checkpoint"] == paused["checkpoint"]
    assert len(await job.bucket_keys()) == paused["uploaded"]
    code, body = await api.call("POST", f"{BASE}/pause")
    assert code == 409, body

    job.origin.faults.latency = 0
    code, continued = await api.call("POST", f"{BASE}/run", body={"limitSkus": n})
    assert code == 202 and continued["continued"] is True, continued
    assert continued["runId"] == paused["runId"]
    final = await api.until(lambda s: s["state"] == "completed")
    assert_counters_add_up(final)
    assert final["runId"] == paused["runId"] and final["startedAt"] == paused["startedAt"]
    assert final["skippedExists"] == 0
    await job.assert_bucket_exactly(skus, ANGLES)
    job.assert_no_key_put_twice()


async def test_sigterm_pauses_a_served_run_and_resume_continues_it(make_api: MakeApi) -> None:
    n = 120
    job, api = await make_api(n)
    skus = skus_of(job, n)
    job.origin.faults.latency = 0.05
    code, _ = await api.call("POST", f"{BASE}/run", body={"limitSkus": n})
    assert code == 202
    await wait_for(lambda: len(job.proxy.puts) >= 30, within=30, what="30 objects written")
    api.proc.signal(signal.SIGTERM)
    result = await api.proc.wait(30)
    assert result.rc == 0, str(result)
    assert "pauses at its checkpoint" in result.err
    status = await job.status()
    assert status["state"] == "paused" and status["runStatus"] == "paused"

    job.origin.faults.latency = 0
    proc = await job.start("serve", *job.run_flags(limit=n), "--port", "0")
    url = await served_url(proc)
    async with aiohttp.ClientSession() as session:
        again = Api(url, proc, session)
        code, resumed = await again.call("POST", f"{BASE}/resume")
        assert code == 202 and resumed["runId"] == status["runId"], resumed
        final = await again.until(lambda s: s["state"] == "completed")
    proc.signal(signal.SIGTERM)
    assert (await proc.wait(30)).rc == 0
    assert_counters_add_up(final)
    await job.assert_bucket_exactly(skus, ANGLES)
    job.assert_no_key_put_twice()


# -- bad requests ---------------------------------------------------------------------------

BAD_RUNS: list[tuple[str, dict[str, Any], int, str | None]] = [
    ("limit as text", {"body": {"limitSkus": "ten"}}, 400, "limitSkus"),
    ("limit zero", {"body": {"limitSkus": 0}}, 400, "limitSkus"),
    ("limit as float", {"body": {"limitSkus": 2.5}}, 400, "limitSkus"),
    ("limit as bool", {"body": {"limitSkus": True}}, 400, "limitSkus"),
    ("angles bad spec", {"body": {"angles": "3-1"}}, 400, "angles"),
    ("angles as list", {"body": {"angles": [1, 2]}}, 400, "angles"),
    ("concurrency above cap", {"body": {"concurrency": 7}}, 400, "concurrency"),
    ("concurrency negative", {"body": {"concurrency": -1}}, 400, "concurrency"),
    ("onlyMissing as text", {"body": {"onlyMissing": "yes"}}, 400, "onlyMissing"),
    ("unknown field", {"body": {"bucket": "other"}}, 400, "bucket"),
    ("query not a number", {"params": {"limitSkus": "1e3"}}, 400, "limitSkus"),
    # str.isdigit() takes these and int() refuses them: were 500s
    ("query superscript digit", {"params": {"limitSkus": "²"}}, 400, "limitSkus"),
    ("query double minus", {"params": {"concurrency": "--5"}}, 400, "concurrency"),
    ("query unknown", {"params": {"verbose": "1"}}, 400, "verbose"),
    ("query and body", {"params": {"angles": "1"}, "body": {"angles": "2"}}, 400, "angles"),
    ("body an array", {"body": [1, 2]}, 400, None),
    (
        "malformed JSON",
        {"data": b'{"limitSkus": ', "headers": {"Content-Type": "application/json"}},
        400,
        None,
    ),
    (
        "JSON nested too deeply",  # a RecursionError in json.loads: was a 500
        {"data": b"[" * 50_000, "headers": {"Content-Type": "application/json"}},
        400,
        None,
    ),
    (
        "huge body",
        {"data": b"{" + b" " * (70 * 1024) + b"}", "headers": {"Content-Type": "application/json"}},
        413,
        None,
    ),
]


async def test_bad_requests_get_a_json_error_and_start_nothing(make_api: MakeApi) -> None:
    job, api = await make_api(30)
    for what, kwargs, status, field in BAD_RUNS:
        code, body = await api.call("POST", f"{BASE}/run", **kwargs)
        assert code == status, (what, code, body)
        assert isinstance(body, dict) and body["error"], (what, body)
        assert body.get("field") == field, (what, body)
    for method, path, kwargs, status in [
        ("GET", f"{BASE}/nothing", {}, 404),
        ("GET", f"{BASE}/run", {}, 405),
        ("POST", f"{BASE}/status", {}, 405),
        ("POST", f"{BASE}/concurrency", {"body": {"concurrency": 0}}, 400),
        ("POST", f"{BASE}/concurrency", {"body": {}}, 400),
        ("POST", f"{BASE}/pause", {"body": {"now": True}}, 400),
        ("GET", "/api/rsr-image-gap", {"params": {"limit": "0"}}, 400),
        ("GET", f"{BASE}/runs", {"params": {"limit": "x"}}, 400),
        ("GET", f"{BASE}/runs", {"params": {"limit": "²"}}, 400),
        ("GET", "/api/rsr-image-gap", {"params": {"limit": "³"}}, 400),
        ("POST", f"{BASE}/pause", {}, 409),
        ("POST", f"{BASE}/resume", {}, 409),
    ]:
        code, body = await api.call(method, path, **kwargs)
        assert code == status, (method, path, code, body)
        assert isinstance(body, dict) and body["error"], (method, path, body)
    assert job.origin.gets == 0 and job.proxy.puts == {}
    code, body = await api.call("GET", f"{BASE}/status")
    assert code == 404, body  # nothing was started
    assert api.proc.alive


# -- the token -------------------------------------------------------------------------------


async def test_non_loopback_bind_without_a_token_refuses_to_start(make_job: Any) -> None:
    job = await make_job(10)
    result = await job.cli("serve", *job.run_flags(limit=10), "--host", "0.0.0.0", "--port", "0")
    assert result.rc == 2, str(result)
    line = one_line(result.err)
    assert "--host" in line and "TUI_BACKFILL_API_TOKEN" in line


async def test_with_a_token_every_request_needs_it(make_api: MakeApi) -> None:
    job, api = await make_api(20, limit=20, token=TOKEN)
    async with aiohttp.ClientSession() as bare:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            for method, path in [
                ("GET", f"{BASE}/status"),
                ("POST", f"{BASE}/run"),
                ("GET", "/metrics"),
                ("GET", "/api/openapi.json"),
            ]:
                async with bare.request(method, api.url + path, headers=headers) as answer:
                    assert answer.status == 401, (headers, path, answer.status)
                    text = await answer.text()
                    assert TOKEN not in text
    assert job.origin.gets == 0
    code, started = await api.call("POST", f"{BASE}/run", body={"limitSkus": 20})
    assert code == 202, started
    final = await api.until(lambda s: s["state"] == "completed")
    assert_counters_add_up(final)
    for path in (f"{BASE}/status", f"{BASE}/runs", "/metrics", "/api/openapi.json"):
        code, body = await api.call("GET", path)
        assert code == 200 and TOKEN not in json.dumps(body), path
    api.proc.signal(signal.SIGTERM)
    result = await api.proc.wait(30)
    assert TOKEN not in result.out + result.err
    assert TOKEN.encode() not in job.state.read_bytes()


# -- run --serve and attach --url ------------------------------------------------------------


async def test_run_serve_exposes_the_running_job(make_job: Any) -> None:
    n = 120
    job = await make_job(n)
    skus = skus_of(job, n)
    job.origin.faults.latency = 0.05
    running = await job.start_run(limit=n, extra=("--serve", "0"))
    url = await served_url(running)
    async with aiohttp.ClientSession() as session:
        api = Api(url, running, session)
        snap = await api.until(lambda s: s["uploaded"] > 10)
        assert snap["live"] is True and snap["state"] == "running"
        code, body = await api.call("POST", f"{BASE}/run", body={})
        assert code == 409, body
        code, held = await api.call("POST", f"{BASE}/hold")
        assert code == 200, held
        await api.until(lambda s: s["state"] == "paused" and s["inFlight"] == 0)
        gets = job.origin.gets
        await asyncio.sleep(0.5)
        assert job.origin.gets == gets, "a held run fetches nothing"
        code, body = await api.call("POST", f"{BASE}/concurrency", body={"concurrency": 5})
        assert code == 200 and body["concurrency"] == 5, body
        code, body = await api.call("POST", f"{BASE}/resume")
        assert code == 200 and body["state"] == "running", body
        code, paused = await api.call("POST", f"{BASE}/pause")
        assert code == 200 and paused["state"] == "paused", paused
    result = await running.wait(30)
    assert result.rc == 75, str(result)
    assert_valid_checkpoint(result.json(), skus, ANGLES)
    job.origin.faults.latency = 0
    final = (await job.resume()).json()
    assert_counters_add_up(final)
    await job.assert_bucket_exactly(skus, ANGLES)
    job.assert_no_key_put_twice()


# -- metrics and run history -------------------------------------------------------------------


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_metrics_match_status_and_runs_list_the_history(make_api: MakeApi) -> None:
    job, api = await make_api(80)
    job.origin.faults.error_rate = 0.05  # retried failures, counted by code
    for limit in (30, 30):
        code, started = await api.call("POST", f"{BASE}/run", body={"limitSkus": limit})
        assert code == 202, started
        final = await api.until(lambda s: s["state"] == "completed")
    code, text = await api.call("GET", "/metrics")
    assert code == 200
    samples = _samples(text)
    status = await api.status()
    assert status["uploaded"] == final["uploaded"] and status["runId"] == final["runId"]
    jl = (("job", "default"),)
    for outcome, key in [
        ("uploaded", "uploaded"),
        ("skipped_exists", "skippedExists"),
        ("no_remote", "noRemote"),
        ("failed", "failedItems"),
    ]:
        assert samples[("tui_backfill_items_total", (*jl, ("outcome", outcome)))] == status[key], (
            outcome
        )
    assert status["errorsTotal"] > 0, "the injected 5xx should show"
    for code_name, count in status["errorsByCode"].items():
        assert samples[("tui_backfill_errors_total", (("code", code_name), *jl))] == count
    assert samples[("tui_backfill_scanned_skus_total", jl)] == status["scannedSkus"]
    assert samples[("tui_backfill_bytes_uploaded_total", jl)] == status["bytesUploaded"]
    assert samples[("tui_backfill_concurrency", jl)] == status["concurrency"]
    assert samples[("tui_backfill_run_state", (*jl, ("state", "completed")))] == 1
    assert samples[("tui_backfill_run_state", (*jl, ("state", "running")))] == 0
    last = status["checkpoint"]["lastSku"]
    assert samples[("tui_backfill_checkpoint_info", (*jl, ("last_sku", last)))] == 1

    code, history = await api.call("GET", f"{BASE}/runs")
    assert code == 200, history
    runs = history["runs"]
    assert [r["runId"] for r in runs] == [final["runId"], final["runId"] - 1]
    assert (
        runs[0]["outcome"] == "completed" and runs[0]["counters"]["uploaded"] == final["uploaded"]
    )
    cli = await job.cli("runs", "--json", *job.job_flags())
    assert cli.rc == 0 and json.loads(cli.out)["runs"] == runs


# -- races and edges (found in review) ----------------------------------------------------------


async def test_two_simultaneous_starts_give_one_run_and_a_409(make_api: MakeApi) -> None:
    job, api = await make_api(60)
    job.origin.faults.latency = 0.02
    first, second = await asyncio.gather(
        api.call("POST", f"{BASE}/run", body={"limitSkus": 60}),
        api.call("POST", f"{BASE}/run", body={"limitSkus": 60}),
    )
    codes = sorted([first[0], second[0]])
    assert codes == [202, 409], (first, second)
    code, body = await api.call("POST", f"{BASE}/pause")  # right away: start has finished
    assert code == 200 and body["state"] == "paused", body
    code, runs = await api.call("GET", f"{BASE}/runs")
    assert code == 200 and len(runs["runs"]) == 1, runs


async def test_metrics_in_flight_fetches_never_exceed_the_concurrency(make_api: MakeApi) -> None:
    job, api = await make_api(150)
    job.origin.faults.latency = 0.03
    code, _ = await api.call("POST", f"{BASE}/run", body={"limitSkus": 150, "concurrency": 2})
    assert code == 202
    seen = []
    for _ in range(15):
        code, text = await api.call("GET", "/metrics")
        samples = _samples(text)
        fetches = samples[("tui_backfill_in_flight_fetches", (("job", "default"),))]
        seen.append(fetches)
        assert fetches <= 2, fetches
        assert samples[("tui_backfill_concurrency", (("job", "default"),))] == 2
        await asyncio.sleep(0.05)
    assert max(seen) >= 1, "some fetches should have been seen in flight"
    code, body = await api.call("POST", f"{BASE}/pause")
    assert code == 200, body


async def test_gap_pages_cover_the_gap_exactly_in_key_order(make_job: Any, tmp_path: Any) -> None:
    """Key order is not SKU order (`A1_1_HR.jpg` < `A_1_HR.jpg`): paging must not lose keys."""
    job = await make_job(5)
    skus = ["A", "A1", "A_2", "B", "B1", "b", "Z9", "Z10"]
    skus_file = tmp_path / "skus.txt"
    skus_file.write_text("\n".join(skus) + "\n")
    flags = [
        *job.job_flags(), "--skus-file", str(skus_file), "--origin", job.origin.url_template,
        "--bucket", job.bucket, "--angles", "1-3,10", "--timeout", "2", "--path-style",
    ]  # fmt: skip
    proc = await job.start("serve", *flags, "--port", "0")
    try:
        url = await served_url(proc)
        async with aiohttp.ClientSession() as session:
            api = Api(url, proc, session)
            keys: list[str] = []
            after = None
            while True:
                query = {"limit": "3", **({"after": after} if after else {})}
                code, page = await api.call("GET", "/api/rsr-image-gap", params=query)
                assert code == 200, page
                keys += page["keys"]
                after = page["nextAfter"]
                if after is None:
                    break
    finally:
        proc.signal(signal.SIGTERM)
        await proc.wait(30)
    expected = sorted(key_of(s, a) for s in skus for a in (1, 2, 3, 10))
    assert keys == expected  # every key once, in key order


async def test_run_serve_on_a_busy_port_exits_2_and_leaves_no_run(make_job: Any) -> None:
    job = await make_job(20)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = await job.cli("run", "--no-ui", "--serve", str(port), *job.run_flags(limit=20))
    assert result.rc == 2, str(result)
    assert one_line(result.err).startswith("tui-backfill: error: --serve:")
    assert not job.state.exists() or (await job.cli("status", *job.job_flags())).rc == 2
    assert job.origin.gets == 0


async def test_concurrent_first_gap_pages_share_one_listing_and_leave_no_files(
    make_job: Any, tmp_path: Any
) -> None:
    """Concurrent first pages each listed the bucket into their own temporary directory, and
    each removed the one before it, under page reads still using it (or leaked it)."""
    job = await make_job(60)
    temp = tmp_path / "serve-tmp"  # where the server's temporary directories go
    temp.mkdir()
    original = job.env
    job.env = lambda: {**original(), "TMPDIR": str(temp)}  # type: ignore[method-assign]
    proc = await job.start("serve", *job.run_flags(limit=60), "--port", "0")
    try:
        url = await served_url(proc)
        async with aiohttp.ClientSession() as session:
            api = Api(url, proc, session)
            code, alone = await api.call("GET", "/api/rsr-image-gap", params={"limit": "7"})
            assert code == 200 and alone["nextAfter"], alone
            one_pass = job.proxy.count("list")  # what one computation lists
            assert one_pass >= 1
            job.proxy.reset_counters()
            first = {"limit": "7"}
            further = {"limit": "7", "after": alone["nextAfter"]}  # read the cache meanwhile
            answers = await asyncio.gather(
                *(api.call("GET", "/api/rsr-image-gap", params=first) for _ in range(6)),
                *(api.call("GET", "/api/rsr-image-gap", params=further) for _ in range(4)),
            )
            for code, page in answers:
                assert code == 200, page
                assert set(page) == set(alone) and page["missing"] == alone["missing"], page
            assert all(page == answers[0][1] for _, page in answers[:6]), answers
            assert all(page == answers[6][1] for _, page in answers[6:]), answers
            assert answers[0][1]["keys"] == alone["keys"]
            assert answers[6][1]["keys"][0] > alone["nextAfter"]
            assert job.proxy.count("list") == one_pass, "one listing pass for the first pages"
    finally:
        proc.signal(signal.SIGTERM)
        result = await proc.wait(30)
    assert result.rc == 0, str(result)
    assert "Traceback" not in result.err, result.err
    assert not list(temp.glob("tui-backfill-gap-*")), list(temp.iterdir())


async def test_an_idle_serve_exits_at_once_on_sigterm(make_job: Any) -> None:
    """`serve` with no run going, a client (an attached console) still holding its keep-alive
    connection after reading the status: SIGTERM ends it within a fraction of a second, exit 0."""
    job: Backfill = await make_job(10)
    proc = await job.start("serve", *job.run_flags(limit=10), "--port", "0")
    url = await served_url(proc)
    async with aiohttp.ClientSession() as session:
        for _ in range(3):  # a console polling the status of a job with no run yet
            async with session.get(f"{url}{BASE}/status") as answer:
                assert answer.status == 404  # no run yet: said, not an error page
                await answer.read()
        await asyncio.sleep(0.3)  # idle, the connection kept alive
        sent = asyncio.get_running_loop().time()
        proc.signal(signal.SIGTERM)
        result = await proc.wait(10)
        took = asyncio.get_running_loop().time() - sent
    assert result.rc == 0, str(result)
    assert took < 1.0, f"serve took {took:.2f} s to exit on SIGTERM"
