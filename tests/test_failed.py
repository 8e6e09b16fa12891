"""`tui-backfill failed`: list a job's failed items, forget one or all of them (a `bad_sku` is
retried first by every later run otherwise, and never succeeds). Through the real CLI against
a real run that leaves `bad_sku` failed items; the store's methods on their own."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING

from helpers import CLI, KEY, one_line, run_args, tool, tool_env

from tui_backfill.core.records import FailedItem
from tui_backfill.frontends.service import JobService
from tui_backfill.pipelines.config import resolve
from tui_backfill.pipelines.mirror.checkpoint import Checkpoint
from tui_backfill.pipelines.mirror.snapshot import Counters
from tui_backfill.servers.origin import OriginServer
from tui_backfill.state.lock import JobLock
from tui_backfill.state.sqlite import StateStore

if TYPE_CHECKING:
    from conftest import S3Target

BAD = "../etc"  # a bad_sku: sorts before the good ones, so only the first run's slice has it
GOOD = ["A1", "B2", "C3", "D4"]
API_FIELDS = {"sku", "angle", "key", "code", "message", "attempts", "run_id"}


async def test_failed_lists_and_forgets_and_the_next_run_no_longer_retries(
    tmp_path: Path, origin: OriginServer, rclone_s3: S3Target
) -> None:
    skus_file = tmp_path / "skus.txt"
    skus_file.write_text("\n".join([BAD, *GOOD]) + "\n", encoding="utf-8")
    state = tmp_path / "state" / "s.sqlite3"
    env = tool_env(rclone_s3)
    args = run_args(state, skus_file, origin.url_template, rclone_s3, "--angles", "1-2")
    flags = ("--state", str(state))

    first = await tool(*args, "--limit-skus", "3", env=env)
    assert first.rc == 1, first  # completed, with failed items
    run_id = first.snap["runId"]
    keys = [KEY.format(sku=BAD, angle=a) for a in (1, 2)]

    # the list: as JSON, what GET .../failed answers; as text, one line per item
    listed = await tool("failed", "--json", *flags, env=env)
    assert listed.rc == 0, listed
    body = listed.json()
    assert body["job"] == "default"
    assert [(i["key"], i["code"], i["attempts"], i["run_id"]) for i in body["items"]] == [
        (key, "bad_sku", 0, run_id) for key in keys
    ]
    assert all(set(item) == API_FIELDS for item in body["items"])
    service = JobService(resolve({"state": str(state)}, env={}))
    assert body["items"] == await service.failed_items()
    text = await tool("failed", *flags, env=env)
    assert text.rc == 0, text
    lines = text.out.splitlines()
    assert lines[0].split() == ["key", "code", "attempts", "run"]
    items = [line.split() for line in lines[1:] if not line.startswith(" ")]
    assert items == [[key, "bad_sku", "0", str(run_id)] for key in keys]
    messages = [line.strip() for line in lines[1:] if line.startswith("    ")]
    assert [m for m in messages if m.startswith("SKU")] == [i["message"] for i in body["items"]]

    # forgetting while another process runs the job is refused, naming it
    lock = JobLock(str(state), "default")
    lock.acquire("default")
    try:
        busy = await tool("failed", "--forget-all", *flags, env=env)
    finally:
        lock.release()
    assert busy.rc == 2, busy
    assert "--job" in one_line(busy.err) and str(os.getpid()) in busy.err

    # one by its key; an unknown key is exit 2 naming --forget
    one = await tool("failed", "--forget", keys[0], *flags, env=env)
    assert one.rc == 0, one
    assert "forgot 1 " in one.out
    again = await tool("failed", "--forget", keys[0], *flags, env=env)
    assert again.rc == 2, again
    assert one_line(again.err).startswith("tui-backfill: error: --forget: ")
    assert again.out == ""
    rest = await tool("failed", "--json", *flags, env=env)
    assert [i["key"] for i in rest.json()["items"]] == keys[1:]

    # all of them, saying how many
    every = await tool("failed", "--forget-all", *flags, env=env)
    assert every.rc == 0, every
    assert "forgot 1 " in every.out
    assert (await tool("failed", "--json", *flags, env=env)).json()["items"] == []

    # the next run (the rest of the catalog) has nothing to carry over
    second = await tool(*args, "--limit-skus", "3", env=env)
    assert second.rc == 0, second
    assert second.snap["carryover"]["planned"] == 0
    assert second.snap["failedItems"] == 0 and second.snap["scannedSkus"] == 2


async def test_both_forget_options_at_once_are_refused(tmp_path: Path) -> None:
    state = tmp_path / "s.sqlite3"
    both = await tool(
        "failed", "--forget", "k", "--forget-all", "--state", str(state), env=dict(os.environ)
    )
    assert both.rc == 2 and "--forget" in one_line(both.err), both


async def test_the_store_forgets_one_job_s_items_only(tmp_path: Path) -> None:
    store = await StateStore.open(str(tmp_path / "state.sqlite3"))
    try:
        for job in ("a", "b"):
            run_id = await store.create_run(job, {}, dry_run=False, range_after=None)
            items = [FailedItem(s, 1, f"k/{s}", "bad_sku", "no", 0, run_id) for s in ("x", "y")]
            await store.commit_checkpoint(run_id, Counters(), Checkpoint(), job=job, failed=items)
        assert await store.forget_failed("a", "k/nothing") == 0
        assert await store.forget_failed("a", "k/x") == 1
        assert [f.key for f in await store.failed_items("a")] == ["k/y"]
        assert await store.forget_all_failed("a") == 1
        assert await store.failed_items("a") == []
        assert [f.key for f in await store.failed_items("b")] == ["k/x", "k/y"]
    finally:
        await store.close()


async def test_failed_piped_into_head_ends_quietly(tmp_path: Path) -> None:
    """`failed | head`: the reader stops early (a broken pipe); no traceback, exit 0."""
    state = tmp_path / "state.sqlite3"
    store = await StateStore.open(str(state))
    try:
        run_id = await store.create_run("default", {}, dry_run=False, range_after=None)
        items = [
            FailedItem(
                f"{i:06d}", 1, f"rsr/highres/{i:06d}_1_HR.jpg", "timeout", "x" * 80, 3, run_id
            )
            for i in range(3000)  # some 400 KB of text: far more than a pipe holds
        ]
        await store.commit_checkpoint(run_id, Counters(), Checkpoint(), job="default", failed=items)
    finally:
        await store.close()
    for extra in ([], ["--json"]):
        proc = await asyncio.create_subprocess_exec(
            *CLI, "failed", "--state", str(state), *extra,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=dict(os.environ),
        )  # fmt: skip
        assert proc.stdout is not None and proc.stderr is not None
        first = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert first.strip()
        proc.stdout.feed_eof()  # read no more, and close our end: the writer meets a broken pipe
        proc._transport.get_pipe_transport(1).close()  # type: ignore[attr-defined]
        err = await asyncio.wait_for(proc.stderr.read(), 30)
        assert await asyncio.wait_for(proc.wait(), 30) == 0, err.decode()
        assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
