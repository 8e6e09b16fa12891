"""`--notify-url`: when a run ends, its final status is POSTed as JSON to a webhook.

The webhook is a real aiohttp server on 127.0.0.1 started by the test (it records every POST
and answers what the test says); runs are the real CLI in subprocesses against `rclone serve
s3` and the aiohttp origin. The URL carries a token in its path and in its query: it is a
secret, so it must appear in no output, no status and nowhere in the state files, and a run
that had one needs it again to continue. Delivery never changes the exit code and is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from helpers import API_BASE, Backfill, MakeApi, closed_port, one_line, runs_in_state, wait_for

from tui_backfill.seams.notify import BUDGET, post_json

MakeJob = Callable[..., Awaitable[Backfill]]
TOKEN = "SECRET-TOKEN-7c1e"
TOKEN2 = "SECRET2-a93f"
SECRETS = (TOKEN, TOKEN2)


@dataclass
class Post:
    path: str
    query: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Receiver:
    """A webhook: records every POST; answers `answers` in turn, then `status`."""

    port: int = 0
    status: int = 200
    answers: list[int] = field(default_factory=list)
    delay: float = 0.0
    posts: list[Post] = field(default_factory=list)

    def url(self, path: str = "hook") -> str:
        return f"http://127.0.0.1:{self.port}/{path}/{TOKEN}?key={TOKEN2}"

    async def handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.posts.append(Post(request.path, request.query_string, dict(request.headers), body))
        if self.delay:
            await asyncio.sleep(self.delay)
        return web.Response(status=self.answers.pop(0) if self.answers else self.status)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hook = Receiver()
    app = web.Application()
    app.router.add_post("/{tail:.*}", hook.handle)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook.port = runner.addresses[0][1]
    try:
        yield hook
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def extra_env(job: Backfill, **extra: str) -> Iterator[None]:
    """The job's CLI processes get `extra` in their environment meanwhile."""
    original = job.env
    job.env = lambda: {**original(), **extra}  # type: ignore[method-assign]
    try:
        yield
    finally:
        job.env = original  # type: ignore[method-assign]


def state_bytes(state: Path) -> dict[str, bytes]:
    """Every file of the state: the database, -wal, -shm, the job locks."""
    return {p.name: p.read_bytes() for p in state.parent.iterdir() if p.is_file()}


def assert_no_secret(where: str, text: str | bytes, url: str) -> None:
    data = text.encode() if isinstance(text, str) else text
    for secret in (*SECRETS, url):
        assert secret.encode() not in data, f"{secret!r} in {where}"


async def test_completed_run_posts_its_final_status_once_delivered(
    make_job: MakeJob, receiver: Receiver
) -> None:
    """One delivery: the body is the final status of stdout; a 500 first is retried (same
    deliveryId); the exit code is the run's; the URL is in no output, status or state file."""
    job = await make_job(6)
    receiver.answers = [500]
    url = receiver.url()
    result = await job.run(limit=4, angles="1-2", extra=("--notify-url", url))
    assert result.rc == 0, str(result)
    final = result.json()
    assert final["state"] == "completed" and final["scannedSkus"] == 4

    assert len(receiver.posts) == 2  # the 500, then the delivery
    first, delivered = receiver.posts
    assert first.body == delivered.body
    assert (delivered.path, delivered.query) == (f"/hook/{TOKEN}", f"key={TOKEN2}")
    assert delivered.headers["Content-Type"] == "application/json"
    body = delivered.body
    assert body["event"] == "run.ended" and body["deliveryId"]
    assert (body["job"], body["runId"], body["exitCode"], body["dryRun"]) == (
        "default",
        final["runId"],
        0,
        False,
    )
    assert body["snapshot"] == final  # the very JSON stdout printed
    assert body["snapshot"]["uploaded"] + body["snapshot"]["noRemote"] == 8
    assert "notify" not in result.err  # delivered: nothing to say

    status = await job.cli("status", "--json", *job.job_flags())
    runs = await job.cli("runs", "--json", *job.job_flags())
    assert status.rc == 0 and runs.rc == 0
    assert status.json()["uploaded"] == final["uploaded"]
    outputs = {"run": result.out + result.err, "status": status.out, "runs": runs.out}
    for where, text in outputs.items():
        assert_no_secret(where, text, url)
    stored = state_bytes(job.state)
    for name, data in stored.items():
        assert_no_secret(name, data, url)
    label = f"http://127.0.0.1:{receiver.port}/***".encode()
    assert any(label in data for data in stored.values())  # looked where the settings are


async def test_failed_delivery_keeps_the_exit_code_and_is_bounded(
    make_job: MakeJob, receiver: Receiver
) -> None:
    """A webhook answering 500, or nothing listening: the run's exit code all the same, one
    line on stderr without the URL, and the process ends within the delivery's budget."""
    job = await make_job(6)
    receiver.status = 500
    url = receiver.url()
    failing = await job.run(limit=3, angles="1", extra=("--notify-url", url))
    assert failing.rc == 0, str(failing)
    assert failing.json()["state"] == "completed"
    assert len(receiver.posts) == 3  # every attempt
    line = one_line("\n".join(x for x in failing.err.splitlines() if "notify" in x))
    assert line == "tui-backfill: notify: delivery failed after 3 attempts: http_500"
    assert failing.seconds < 30 + BUDGET

    refused = f"http://127.0.0.1:{closed_port()}/hook/{TOKEN}?key={TOKEN2}"
    started = time.monotonic()
    closed = await job.run(limit=3, angles="1", extra=("--notify-url", refused))
    assert closed.rc == 0, str(closed)
    assert closed.json()["state"] == "completed"
    assert time.monotonic() - started < 30 + BUDGET
    line = one_line("\n".join(x for x in closed.err.splitlines() if "notify" in x))
    assert line == "tui-backfill: notify: delivery failed after 3 attempts: connection"
    for where, text, hook in (("500", failing, url), ("closed", closed, refused)):
        assert_no_secret(where, text.out + text.err, hook)


async def test_delivery_gives_up_within_its_budget(receiver: Receiver) -> None:
    """A webhook that never answers in time: the sender stops at its budget, however many
    attempts and whatever each attempt's timeout would allow."""
    receiver.delay = 5.0
    started = time.monotonic()
    delivery = await post_json(
        receiver.url(), {"event": "run.ended"}, attempts=5, timeout=0.4, backoff=0.05, budget=1.0
    )
    took = time.monotonic() - started
    assert not delivery.delivered and delivery.error == "timeout"
    assert 2 <= delivery.attempts <= 3
    assert took < 1.5, f"took {took:.2f}s"
    assert delivery.describe().startswith("delivery failed after")

    receiver.delay, receiver.status = 0.0, 404  # a refusal is final: no retry
    receiver.posts.clear()
    refused = await post_json(receiver.url(), {"x": 1}, backoff=0.01)
    assert (refused.delivered, refused.attempts, refused.error) == (False, 1, "http_404")
    assert len(receiver.posts) == 1


@pytest.mark.parametrize(
    ("given", "accepted"),
    [
        ("ftp://hooks.example.com/SECRET-TOKEN-7c1e", "scheme 'ftp' is not accepted"),
        ("hooks.example.com/SECRET-TOKEN-7c1e", "scheme"),
        ("https:///SECRET-TOKEN-7c1e", "no host"),
        ("https://hooks.example.com:99999/SECRET-TOKEN-7c1e", "not a valid URL"),
        ("https://hooks.example.com/a b/SECRET-TOKEN-7c1e", "spaces"),
    ],
)
async def test_bad_notify_url_is_exit_2_before_any_work(
    make_job: MakeJob, given: str, accepted: str
) -> None:
    job = await make_job(6)
    for how in ("flag", "env"):
        if how == "flag":
            result = await job.run(limit=3, extra=("--notify-url", given))
            named = "--notify-url"
        else:
            with extra_env(job, TUI_BACKFILL_NOTIFY_URL=given):
                result = await job.run(limit=3)
            named = "TUI_BACKFILL_NOTIFY_URL"
        assert result.rc == 2, str(result)
        line = one_line(result.err)
        assert line.startswith(f"tui-backfill: error: {named}: "), line
        assert accepted in line
        assert TOKEN not in line and "hooks.example.com" not in line  # never quoted
        assert result.out == ""
    assert runs_in_state(job.state) == 0
    assert job.origin.gets == 0 and not job.proxy.puts


async def test_resume_needs_the_notify_url_again(make_job: MakeJob, receiver: Receiver) -> None:
    """A paused run notifies (exit 75, state paused); it is never stored, so continuing
    without it is exit 2 naming TUI_BACKFILL_NOTIFY_URL; another URL is accepted (no
    --fresh) and gets the completed run."""
    job = await make_job(40)
    url = receiver.url("first")
    job.origin.faults.latency = 0.3  # 20 s of fetches: the pause comes long before the end
    running = await job.start_run(limit=30, angles="1-2", extra=("--notify-url", url))
    await wait_for(lambda: len(job.proxy.puts) >= 4, within=30, what="4 objects written")
    assert (await job.cli("pause", *job.job_flags(), within=30)).rc == 0
    paused = await running.wait(30 + BUDGET)
    assert paused.rc == 75, str(paused)
    assert [p.path for p in receiver.posts] == [f"/first/{TOKEN}"]
    notice = receiver.posts[0].body
    assert notice["exitCode"] == 75 and notice["snapshot"] == paused.json()
    assert notice["snapshot"]["state"] == "paused"

    job.origin.faults.latency = 0
    missing = await job.resume()
    assert missing.rc == 2, str(missing)
    line = one_line(missing.err)
    assert "TUI_BACKFILL_NOTIFY_URL" in line and "required to continue" in line
    assert f"http://127.0.0.1:{receiver.port}/***" in line
    assert (await job.status())["state"] == "paused"  # nothing started
    run_again = await job.run(limit=30, angles="1-2")  # `run` continues it: the same rule
    assert run_again.rc == 2 and "TUI_BACKFILL_NOTIFY_URL" in run_again.err, str(run_again)

    second = receiver.url("second")
    with extra_env(job, TUI_BACKFILL_NOTIFY_URL=second):
        resumed = await job.resume()
    assert resumed.rc == 0, str(resumed)
    final = resumed.json()
    assert final["state"] == "completed" and final["runId"] == notice["runId"]
    assert [p.path for p in receiver.posts] == [f"/first/{TOKEN}", f"/second/{TOKEN}"]
    done = receiver.posts[1].body
    assert done["exitCode"] == 0 and done["snapshot"] == final

    for where, text in {
        "paused": paused.out + paused.err,
        "missing": missing.out + missing.err,
        "resumed": resumed.out + resumed.err,
    }.items():
        for hook in (url, second):
            assert_no_secret(where, text, hook)
    for name, data in state_bytes(job.state).items():
        for hook in (url, second):
            assert_no_secret(name, data, hook)


async def test_resume_with_an_empty_notify_url_turns_it_off(
    make_job: MakeJob, receiver: Receiver
) -> None:
    job = await make_job(40)
    job.origin.faults.latency = 0.3  # 20 s of fetches: the pause comes long before the end
    running = await job.start_run(limit=30, angles="1-2", extra=("--notify-url", receiver.url()))
    await wait_for(lambda: len(job.proxy.puts) >= 2, within=30, what="2 objects written")
    assert (await job.cli("pause", *job.job_flags(), within=30)).rc == 0
    assert (await running.wait(30 + BUDGET)).rc == 75
    assert len(receiver.posts) == 1
    job.origin.faults.latency = 0
    resumed = await job.resume("--notify-url", "")
    assert resumed.rc == 0, str(resumed)
    assert resumed.json()["state"] == "completed"
    assert len(receiver.posts) == 1  # off


async def test_dry_run_notifies_with_its_plan(make_job: MakeJob, receiver: Receiver) -> None:
    job = await make_job(6)
    result = await job.cli(
        "run",
        "--no-ui",
        "--dry-run",
        *job.run_flags(limit=4, angles="1-2", extra=("--notify-url", receiver.url())),
    )
    assert result.rc == 0, str(result)
    assert len(receiver.posts) == 1
    body = receiver.posts[0].body
    assert body["dryRun"] is True and body["snapshot"] == result.json()
    assert body["snapshot"]["plan"]["items"] == 8
    assert runs_in_state(job.state) == 0  # a dry run leaves no run behind, notice or not


async def test_serve_notifies_for_the_runs_it_starts(make_api: MakeApi, receiver: Receiver) -> None:
    url = receiver.url()
    _, api = await make_api(6, limit=4, extra=("--notify-url", url))
    code, started = await api.call("POST", f"{API_BASE}/run", body={"angles": "1-2"})
    assert code == 202, started
    final = await api.until(lambda s: s["state"] == "completed" and not s["live"])
    await wait_for(lambda: bool(receiver.posts), within=10 + BUDGET, what="the notice")
    body = receiver.posts[0].body
    assert body["exitCode"] == 0 and body["runId"] == started["runId"]
    assert body["snapshot"]["state"] == "completed"
    assert body["snapshot"]["uploaded"] == final["uploaded"]
    assert_no_secret("status", json.dumps(final), url)
    assert_no_secret("serve stderr", api.proc.err_path.read_text(), url)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
async def test_console_run_notifies_when_it_ends(
    rclone_s3: Any, origin: Any, catalog_db: Any, tmp_path: Path, receiver: Receiver
) -> None:
    """The console (in a real terminal: tmux) notifies too, once the run has completed and
    the operator leaves it; the exit code is the run's."""
    from test_terminal import Tmux, run_argv

    state = tmp_path / "state" / "state.sqlite3"  # with its console log beside it
    argv = [*run_argv(state, catalog_db(10), origin, rclone_s3, 4), "--angles", "1"]
    tmux = Tmux(tmp_path)
    await tmux.start([*argv, "--notify-url", receiver.url()], rclone_s3.env())
    try:
        await tmux.wait_screen("COMPLETED")
        assert not receiver.posts  # still on screen: the process has not ended
        await tmux.keys("q")
        assert await tmux.exit_line(timeout=10 + BUDGET) == "EXIT=0"
        screen = await tmux.screen()
    finally:
        await tmux.kill()
    assert len(receiver.posts) == 1
    body = receiver.posts[0].body
    assert body["exitCode"] == 0 and body["dryRun"] is False
    assert body["snapshot"]["state"] == "completed" and body["snapshot"]["scannedSkus"] == 4
    assert body["snapshot"]["runStatus"] == "completed" and body["snapshot"]["exitCode"] == 0
    assert_no_secret("console screen", screen, receiver.url())
    stored = state_bytes(state)
    assert "state.log" in stored
    for name, data in stored.items():
        assert_no_secret(name, data, receiver.url())
