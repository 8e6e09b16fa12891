"""The generic routes `/api/jobs/{job}/...` of a real `tui-backfill serve` process: for the
served job they answer what the seed's routes answer; another job of the same state file is read
through the state (status, runs, failed) and driven through its command channel while a process
runs it, but never started here (409); an unknown job is 404, a name that is no job name 400."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import aiohttp
from helpers import Api, Backfill, MakeApi, assert_brief_keys, wait_for

from tui_backfill.frontends.api import BASE

JOBS = "/api/jobs"


def other_job(job: Backfill, name: str = "other") -> Backfill:
    """Another job of the same state file, against the same servers (runs through the CLI)."""
    return dataclasses.replace(job, job=name, procs=[])


async def cli_json(job: Backfill, *args: str) -> Any:
    result = await job.cli(*args, "--json", *job.job_flags(), within=30)
    assert result.rc == 0, str(result)
    return json.loads(result.out)


async def test_the_generic_routes_of_the_served_job_answer_as_the_seeds(make_api: MakeApi) -> None:
    _, api = await make_api(40)
    code, body = await api.call("GET", f"{JOBS}/default/status")
    assert code == 404 and "'default'" in body["error"], body  # no runs yet, as the seed's says

    code, started = await api.call("POST", f"{JOBS}/default/run", body={"limitSkus": 20})
    assert code == 202, started
    await api.until(lambda s: s["state"] == "completed")

    for path in ("status", "runs", "failed", "runs?limit=1"):
        seed = await api.call("GET", f"{BASE}/{path}")
        generic = await api.call("GET", f"{JOBS}/default/{path}")
        assert seed[0] == 200 and generic == seed, (path, seed, generic)
    for path in ("pause", "hold", "resume"):  # nothing running: the seed's 409, the same words
        seed = await api.call("POST", f"{BASE}/{path}")
        generic = await api.call("POST", f"{JOBS}/default/{path}")
        assert seed[0] in (202, 409) and generic[0] == seed[0], (path, seed, generic)
    code, body = await api.call("POST", f"{JOBS}/default/pause", params={"x": "1"})
    assert code == 400 and body["field"] == "x", body  # the seed's checks apply

    code, document = await api.call("GET", "/api/openapi.json")
    assert code == 200
    for route in ("run", "status", "pause", "resume", "hold", "concurrency", "failed", "runs"):
        item = document["paths"][f"{JOBS}/{{job}}/{route}"]
        for operation in item.values():
            assert operation["parameters"][0]["name"] == "job", (route, operation)


async def test_another_job_of_the_state_is_read_and_driven_not_started(
    make_api: MakeApi,
) -> None:
    job, api = await make_api(60)
    other = other_job(job)
    job.origin.faults.fail_first_n = 5  # every item of the other job's first run fails
    done = await other.run(limit=2)
    assert done.rc == 1, str(done)
    job.origin.faults.fail_first_n = 0

    code, status = await api.call("GET", f"{JOBS}/other/status")
    assert code == 200, status
    assert_brief_keys(status)
    assert status == await other.status()  # what `status --json --job other` prints
    assert (status["job"], status["state"]) == ("other", "completed")
    assert status["failedItems"] >= 4, status  # 2 SKUs x 3 angles, but those the origin lacks

    code, runs = await api.call("GET", f"{JOBS}/other/runs")
    assert code == 200 and runs == await cli_json(other, "runs"), runs
    code, failed = await api.call("GET", f"{JOBS}/other/failed")
    assert code == 200 and len(failed["items"]) == status["failedItems"], failed
    assert failed["items"] == (await cli_json(other, "failed"))["items"]

    code, body = await api.call("POST", f"{JOBS}/other/run", body={"limitSkus": 5})
    assert code == 409, body
    assert "'default'" in body["error"] and "serve --job other" in body["error"], body
    for command in ("pause", "hold", "resume"):
        code, body = await api.call("POST", f"{JOBS}/other/{command}")
        assert code == 409 and "not running" in body["error"], (command, body)
    # the served job is untouched: still no run of its own
    code, body = await api.call("GET", f"{BASE}/status")
    assert code == 404, body

    # While a process runs the other job, the commands reach it through the state.
    job.origin.faults.latency = 0.05
    running = await other.start_run(limit=50)
    await wait_for(lambda: len(job.proxy.puts) >= 10, within=30, what="10 objects written")
    code, body = await api.call("POST", f"{JOBS}/other/hold")
    assert code == 202 and str(running.pid) in body["message"], body

    async def other_state() -> dict[str, Any]:
        code, snap = await api.call("GET", f"{JOBS}/other/status")
        assert code == 200, snap
        return dict(snap)

    async def until(predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        for _ in range(300):
            snap = await other_state()
            if predicate(snap):
                return snap
            await asyncio.sleep(0.1)
        raise AssertionError(f"timed out; last status {snap}")

    held = await until(lambda s: s["state"] == "paused" and s["live"])
    assert held["runStatus"] == "running" and held["host"], held
    code, body = await api.call("POST", f"{JOBS}/other/concurrency", body={"concurrency": 2})
    assert code == 202, body
    await until(lambda s: s["concurrency"] == 2)
    code, body = await api.call("POST", f"{JOBS}/other/concurrency", body={"concurrency": 99})
    assert code == 400 and body["field"] == "concurrency", body
    code, body = await api.call("POST", f"{JOBS}/other/resume")
    assert code == 202, body
    await until(lambda s: s["state"] == "running")
    code, paused = await api.call("POST", f"{JOBS}/other/pause")
    assert code == 200 and paused["state"] == "paused" and paused["live"] is False, paused
    result = await running.wait(30)
    assert result.rc == 75, str(result)
    assert paused["checkpoint"] == result.json()["checkpoint"]


async def test_unknown_job_is_404_and_a_bad_name_400(make_api: MakeApi) -> None:
    token = "jobs-token-51f0"
    _, api = await make_api(10, token=token)
    for method, path in (
        ("GET", "status"),
        ("GET", "runs"),
        ("GET", "failed"),
        ("POST", "pause"),
        ("POST", "resume"),
        ("POST", "hold"),
    ):
        code, body = await api.call(method, f"{JOBS}/nosuch/{path}")
        assert code == 404 and "'nosuch'" in body["error"], (path, body)
    code, body = await api.call("POST", f"{JOBS}/nosuch/concurrency", body={"concurrency": 2})
    assert code == 404 and "'nosuch'" in body["error"], body
    code, body = await api.call("POST", f"{JOBS}/nosuch/run")
    assert code == 409 and "serve --job nosuch" in body["error"], body

    for bad in ("-dash", "a%20b", "x" * 65, "caf%C3%A9", "a%0A"):
        code, body = await api.call("GET", f"{JOBS}/{bad}/status")
        assert code == 400 and body["field"] == "job", (bad, body)
    code, body = await api.call("POST", f"{JOBS}/-dash/run")
    assert code == 400 and body["field"] == "job", body

    async with aiohttp.ClientSession() as session:  # no token: refused like any route
        bare = Api(api.url, api.proc, session)
        for path in ("default/status", "nosuch/status", "-dash/status"):
            code, body = await bare.call("GET", f"{JOBS}/{path}")
            assert code == 401, (path, body)


async def test_what_a_web_page_could_send_is_refused(make_api: MakeApi) -> None:
    """A cross-site Origin (a form POST needs no preflight) and, on loopback, a foreign Host
    (DNS rebinding) are 403 on every route; the served job is not touched."""
    job, api = await make_api(20, limit=20)
    port = api.url.rsplit(":", 1)[1]
    for method, path in [
        ("POST", f"{BASE}/pause"),
        ("POST", f"{JOBS}/{job.job}/hold"),
        ("GET", f"{BASE}/status"),
        ("GET", "/api/rsr-image-gap"),
    ]:
        code, body = await api.call(method, path, headers={"Origin": "http://evil.example"})
        assert code == 403 and "cross-site" in body["error"], (path, code, body)
        code, body = await api.call(method, path, headers={"Origin": "null"})
        assert code == 403, (path, code, body)
        code, body = await api.call(method, path, headers={"Host": f"evil.example:{port}"})
        assert code == 403 and "Host" in body["error"], (path, code, body)
    # the server's own origin, and localhost, are fine
    code, _ = await api.call(
        "GET", f"{BASE}/status", headers={"Origin": api.url, "Host": api.url.split("//")[1]}
    )
    assert code in (200, 404)
    code, _ = await api.call("GET", f"{BASE}/status", headers={"Host": f"localhost:{port}"})
    assert code in (200, 404)
