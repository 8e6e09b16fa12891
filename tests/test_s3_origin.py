"""`s3://` origins: an image backfill from one bucket into another, through the real CLI.

Two `rclone serve s3` servers on loopback with different credentials: the origin's
(ORIGIN_AWS_* or a profile) and the destination's (AWS_*). The copy is byte-identical, a
missing object is noRemote and asked for once, neither set of credentials appears in any
output or in the state's bytes; truncated and stalled bodies (the fault proxy in front of the
origin) are retried and never written short; bad input is one line naming the field, exit 2,
nothing written and no run created.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import S3Target
from helpers import (
    Result,
    bucket_bytes,
    check_identity,
    closed_port,
    expected,
    finish,
    run_args,
    runs_in_state,
    spawn,
    tool,
)
from helpers import tool_env as base_env

from tui_backfill.servers.origin import expected_body
from tui_backfill.servers.proxy import ProxyFaults, ReverseProxy
from tui_backfill.servers.rclone_s3 import RcloneS3

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

ORIGIN_BUCKET = "origin-bucket"
LAYOUT = "photos/{sku}_{angle}.jpg"
URL = f"s3://{ORIGIN_BUCKET}/{LAYOUT}"
SKUS = ["100000", "100001", "A_1"]
PAIRS = [(s, a) for s in SKUS for a in (1, 2)]
MISSING = ("100001", 2)


@pytest.fixture
def origin_s3(tmp_path: Path) -> Iterator[S3Target]:
    """A second S3 server, with credentials of its own, holding the origin's objects."""
    with RcloneS3(
        tmp_path / "origin-s3",
        access_key="origin-access-6b1f",
        secret_key="origin-secret-e93d7a",
        buckets=[ORIGIN_BUCKET],
    ) as server:
        target = S3Target(
            endpoint_url=server.endpoint_url,
            access_key=server.access_key,
            secret_key=server.secret_key,
            bucket=ORIGIN_BUCKET,
            data_dir=server.data_dir,
            server=server,
        )
        for sku, angle in PAIRS:
            if (sku, angle) != MISSING:
                path = server.object_path(ORIGIN_BUCKET, LAYOUT.format(sku=sku, angle=angle))
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(expected_body(sku, angle))
        yield target


def origin_env(dest: S3Target, origin: S3Target, **extra: str) -> dict[str, str]:
    keys = {
        "ORIGIN_AWS_ACCESS_KEY_ID": origin.access_key,
        "ORIGIN_AWS_SECRET_ACCESS_KEY": origin.secret_key,
    }
    return base_env(dest, **{**keys, **extra})


def origin_flags(endpoint: str, *extra: str) -> tuple[str, ...]:
    return ("--origin-endpoint-url", endpoint, "--origin-path-style", "--angles", "1-2", *extra)


def skus_file(tmp: Path, skus: list[str] = SKUS) -> Path:
    path = tmp / "skus.txt"
    path.write_text("\n".join(skus) + "\n")
    return path


def state_bytes(state: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in state.parent.iterdir() if p.is_file()}


@pytest.mark.parametrize("credentials", ["env", "profile"])
async def test_bucket_to_bucket_byte_identical_no_remote_secrets_kept_out(
    tmp_path: Path,
    rclone_s3: S3Target,
    origin_s3: S3Target,
    s3_proxy: Callable[..., Awaitable[ReverseProxy]],
    credentials: str,
) -> None:
    proxy = await s3_proxy(origin_s3)  # counts the origin's GETs
    state = tmp_path / "state" / "s.sqlite3"
    flags: tuple[str, ...] = ()
    if credentials == "env":
        env = origin_env(rclone_s3, origin_s3)
    else:  # a profile wins over the destination's AWS_* keys, which stay in the environment
        shared = tmp_path / "aws-credentials"
        shared.write_text(
            f"[source]\naws_access_key_id = {origin_s3.access_key}\n"
            f"aws_secret_access_key = {origin_s3.secret_key}\n"
        )
        env = base_env(rclone_s3, AWS_SHARED_CREDENTIALS_FILE=str(shared))
        flags = ("--origin-profile", "source")
    args = run_args(
        state, skus_file(tmp_path), URL, rclone_s3, *origin_flags(proxy.endpoint_url, *flags)
    )
    run = await tool(*args, env=env)
    assert run.rc == 0, run.err
    snap = run.snap
    check_identity(snap, 2)
    assert snap["uploaded"] == 5 and snap["noRemote"] == 1 and snap["errorsTotal"] == 0
    present = [p for p in PAIRS if p != MISSING]
    assert bucket_bytes(rclone_s3) == expected(present)
    assert proxy.count("get_object") == len(PAIRS)  # the 404 asked once, never retried
    assert proxy.count("head_bucket") == 1  # the preflight
    assert proxy.count("put_object") == 0  # nothing is written to the origin

    again = await tool(*args, env=env)  # a second run: everything there is skippedExists
    assert again.rc == 0, again.err
    assert again.snap["skippedExists"] == 5 and again.snap["uploaded"] == 0

    outputs = {"run": run.out + run.err, "again": again.out + again.err}
    for command in (("status", "--json"), ("status",), ("coverage", "--json")):
        result = await tool(*command, "--state", str(state), env=env)
        assert result.rc == 0, result.err
        outputs[" ".join(command)] = result.out + result.err
    secrets = [origin_s3.secret_key, rclone_s3.secret_key, origin_s3.access_key]
    for where, text in outputs.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} in {where}"
    stored = b""
    for name, data in state_bytes(state).items():
        stored += data
        for secret in secrets:
            assert secret.encode() not in data, f"{secret!r} in {name}"
    assert URL.encode() in stored  # the grep looks where the run's settings are


async def test_truncated_and_stalled_bodies_are_retried_never_written_short(
    tmp_path: Path,
    rclone_s3: S3Target,
    origin_s3: S3Target,
    s3_proxy: Callable[..., Awaitable[ReverseProxy]],
) -> None:
    faults = ProxyFaults(kinds={"get_object"}, truncate_rate=0.4, stall_rate=0.3, stall_seconds=30)
    proxy = await s3_proxy(origin_s3, faults)
    present = [p for p in PAIRS if p != MISSING]
    args = run_args(
        tmp_path / "state" / "s.sqlite3",
        skus_file(tmp_path),
        URL,
        rclone_s3,
        *origin_flags(proxy.endpoint_url, "--max-attempts", "8", "--concurrency", "4"),
        timeout="1",
    )
    run = await tool(*args, env=origin_env(rclone_s3, origin_s3), timeout=120)
    assert run.rc == 0, run.err
    snap = run.snap
    check_identity(snap, 2)
    assert snap["uploaded"] == 5 and snap["noRemote"] == 1 and snap["failedItems"] == 0
    assert proxy.injected["truncate"] >= 1 and proxy.injected["stall"] >= 1, proxy.injected
    # a truncated 404 answer is an error body cut short: also `truncated`, then noRemote
    assert snap["errorsByCode"] == {
        "truncated": proxy.injected["truncate"],
        "timeout": proxy.injected["stall"],
    }
    assert bucket_bytes(rclone_s3) == expected(present)  # every object whole, none short


BAD = [
    pytest.param({"origin": "s3://"}, {}, "--origin", id="no-bucket"),
    pytest.param({"origin": "s3:///photos/{sku}_{angle}.jpg"}, {}, "--origin", id="empty-bucket"),
    pytest.param({"origin": "s3://{sku}/x.jpg"}, {}, "--origin", id="field-in-bucket"),
    pytest.param(
        {"origin": f"s3://no-such-origin-bucket/{LAYOUT}"}, {}, "--origin", id="missing-bucket"
    ),
    pytest.param(
        {}, {"ORIGIN_AWS_SECRET_ACCESS_KEY": "wrong-secret"}, "ORIGIN_AWS_ACCESS_KEY_ID", id="wrong"
    ),
    pytest.param(
        {},
        {"ORIGIN_AWS_ACCESS_KEY_ID": "", "ORIGIN_AWS_SECRET_ACCESS_KEY": ""},
        "ORIGIN_AWS_ACCESS_KEY_ID",
        id="anonymous-refused",
    ),
    pytest.param(
        {}, {"ORIGIN_AWS_SECRET_ACCESS_KEY": ""}, "ORIGIN_AWS_SECRET_ACCESS_KEY", id="half-pair"
    ),
    pytest.param({"endpoint": "closed"}, {}, "--origin-endpoint-url", id="endpoint-unreachable"),
    pytest.param({"extra": ("--origin-profile", "nope")}, {}, "--origin-profile", id="both"),
    pytest.param(
        {"origin": "http://127.0.0.1:9/{sku}_{angle}", "plain": ("--origin-region", "eu")},
        {},
        "--origin-region",
        id="s3-option-for-http-origin",
    ),
]


@pytest.mark.parametrize(("given", "env_changes", "field"), BAD)
async def test_bad_input_one_line_exit_2_nothing_written(
    tmp_path: Path,
    rclone_s3: S3Target,
    origin_s3: S3Target,
    s3_proxy: Callable[..., Awaitable[ReverseProxy]],
    given: dict[str, Any],
    env_changes: dict[str, str],
    field: str,
) -> None:
    proxy = await s3_proxy(origin_s3)
    endpoint = f"http://127.0.0.1:{closed_port()}" if given.get("endpoint") else proxy.endpoint_url
    state = tmp_path / "state" / "s.sqlite3"
    args = run_args(
        state,
        skus_file(tmp_path),
        given.get("origin", URL),
        rclone_s3,
        *(given["plain"] if "plain" in given else origin_flags(endpoint, *given.get("extra", ()))),
    )
    env = {k: v for k, v in origin_env(rclone_s3, origin_s3, **env_changes).items() if v != ""}
    result = await tool(*args, env=env)
    assert result.rc == 2, str(result)
    lines = result.err.splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, lines
    assert lines[0].startswith(f"tui-backfill: error: {field}: "), lines
    assert not re.search(r"\b(\d{3}) \1\b", lines[0]), lines  # `(403 403)`: once is enough
    assert result.out == ""
    for secret in (origin_s3.secret_key, rclone_s3.secret_key, "wrong-secret"):
        assert secret not in result.err
    assert proxy.count("get_object") == 0 and proxy.count("put_object") == 0
    assert runs_in_state(state) == 0 and rclone_s3.keys() == []


async def test_resume_needs_the_origin_keys_again(
    tmp_path: Path,
    rclone_s3: S3Target,
    origin_s3: S3Target,
    s3_proxy: Callable[..., Awaitable[ReverseProxy]],
) -> None:
    """The keys are never stored: a paused run does not go on without them (nor anonymously)."""
    skus = [str(100000 + i) for i in range(6)]
    for sku in skus:
        for angle in (1, 2):
            path = origin_s3.data_dir / ORIGIN_BUCKET / LAYOUT.format(sku=sku, angle=angle)  # type: ignore[operator]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(expected_body(sku, angle))
    proxy = await s3_proxy(origin_s3)
    state = tmp_path / "state" / "s.sqlite3"
    env = origin_env(rclone_s3, origin_s3)
    args = run_args(
        state,
        skus_file(tmp_path, skus),
        URL,
        rclone_s3,
        *origin_flags(proxy.endpoint_url, "--max-bandwidth", "3K", "--concurrency", "1"),
    )
    proc = await spawn(*args, env=env)
    deadline = time.monotonic() + 20
    while not rclone_s3.keys() and time.monotonic() < deadline and proc.returncode is None:
        await asyncio.sleep(0.05)
    paused = await tool("pause", "--state", str(state), env=env)
    run: Result = await finish(proc)
    assert run.rc == 75 and paused.rc == 0, (paused.err, run.err)
    written = set(rclone_s3.keys())

    bare = {k: v for k, v in env.items() if not k.startswith("ORIGIN_")}
    missing = await tool("resume", "--no-ui", "--state", str(state), env=bare)
    assert missing.rc == 2, str(missing)
    assert len(missing.err.splitlines()) == 1 and "ORIGIN_AWS_ACCESS_KEY_ID" in missing.err
    assert set(rclone_s3.keys()) == written

    resumed = await tool(
        "resume", "--no-ui", "--state", str(state), "--max-bandwidth", "100M", env=env
    )
    assert resumed.rc == 0, resumed.err
    snap = json.loads(resumed.out)
    assert snap["uploaded"] == 12 and snap["failedItems"] == 0
    assert bucket_bytes(rclone_s3) == expected([(s, a) for s in skus for a in (1, 2)])
