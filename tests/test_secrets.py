"""Secrets: the S3 secret key and the origin (FTP) password appear in no log line, no status
output and nowhere in the state file (nor its -wal/-shm files, nor the job lock).

The run goes to a real aioftp server (password in the URL) and a real rclone S3 server; the
state files are read byte for byte while the run is live and after it. A paused FTP run whose
password came from the URL needs ORIGIN_PASSWORD to be resumed (exit 2 naming it otherwise).
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from helpers import KEY, Result, bucket_bytes, finish, run_args, spawn, tool, tool_env

from tui_backfill.servers.origin import HTML_ERROR_PAGE, expected_body

if TYPE_CHECKING:
    from conftest import FtpOrigin, S3Target


def state_bytes(state: Path) -> dict[str, bytes]:
    """Every file the state consists of: the database, -wal, -shm, journals, the job locks."""
    return {p.name: p.read_bytes() for p in state.parent.iterdir() if p.is_file()}


def ftp_files(skus: list[str], angles: tuple[int, ...]) -> dict[str, bytes]:
    return {f"{s}_{a}": expected_body(s, a) for s in skus for a in angles}


async def test_secrets_absent_from_output_status_and_state(
    tmp_path: Path, ftp_server, rclone_s3: S3Target
) -> None:
    skus = ["100000", "100001", "100002", "100003"]
    files = ftp_files(skus, (1, 2))
    del files["100001_2"]  # FTP 550: noRemote
    files["100002_1"] = HTML_ERROR_PAGE  # bad_content: an error message goes into the state
    ftp: FtpOrigin = await ftp_server(files)
    secrets = [ftp.password, rclone_s3.secret_key]
    assert ftp.password in ftp.url_template
    skus_file = tmp_path / "skus.txt"
    skus_file.write_text("\n".join(skus) + "\n")
    state = tmp_path / "state" / "s.sqlite3"
    env = tool_env(rclone_s3)

    # Slow enough (bandwidth cap) to read the live state and status while it runs.
    proc = await spawn(
        *run_args(
            state,
            skus_file,
            ftp.url_template,
            rclone_s3,
            "--angles",
            "1-2",
            "--max-bandwidth",
            "3K",
            "--concurrency",
            "2",
            "--progress-interval",
            "0.1",
        ),
        env=env,
    )
    live_reads: list[dict[str, bytes]] = []
    live_status: list[Result] = []
    deadline = time.monotonic() + 30
    while proc.returncode is None and time.monotonic() < deadline:
        if state.exists():
            live_reads.append(state_bytes(state))
            got_live = any(s.rc == 0 and json.loads(s.out)["live"] for s in live_status)
            if not got_live and rclone_s3.keys():  # the run is under way
                live_status.append(await tool("status", "--json", "--state", str(state), env=env))
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()), 0.15)
        except TimeoutError:
            pass
    run = await finish(proc)
    assert run.rc == 1, run.err  # completed; the HTML page exhausted its attempts
    snap = json.loads(run.out)
    assert snap["uploaded"] == 6 and snap["noRemote"] == 1 and snap["failedItems"] == 1
    assert snap["errorsByCode"] == {"bad_content": 3}
    assert "***" in snap["origin"] and ftp.user in snap["origin"]  # shown redacted
    assert any(any(name.endswith("-wal") for name in r) for r in live_reads)
    assert any(s.rc == 0 and json.loads(s.out).get("live") for s in live_status), live_status
    assert len(run.err.splitlines()) >= 2  # progress lines were printed

    outputs: dict[str, str] = {"run stdout": run.out, "run stderr": run.err}
    for i, live in enumerate(live_status):
        outputs[f"live status {i}"] = live.out + live.err
    commands = [("status", "--json"), ("status",), ("coverage", "--json")]
    results = await asyncio.gather(
        *(tool(*args, "--state", str(state), env=env) for args in commands)
    )
    for args, result in zip(commands, results, strict=True):
        assert result.rc == 0, result.err
        outputs[" ".join(args)] = result.out + result.err
    assert json.loads(outputs["coverage --json"])["present"] == 6

    for where, text in outputs.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} in {where}"
    final = state_bytes(state)
    everything = [*live_reads, final]
    for files_read in everything:
        for name, data in files_read.items():
            for secret in secrets:
                assert secret.encode() not in data, f"{secret!r} in {name}"
    # the grep looks where the run's settings and errors really are
    stored = b"".join(b"".join(r.values()) for r in everything)
    assert f"ftp://{ftp.user}@{ftp.host}:{ftp.port}/".encode() in stored
    assert b"body is an HTML page" in stored


async def test_resume_of_ftp_run_needs_origin_password(
    tmp_path: Path, ftp_server, rclone_s3: S3Target, s3_proxy
) -> None:
    skus = [str(100000 + i) for i in range(6)]
    ftp: FtpOrigin = await ftp_server(ftp_files(skus, (1, 2)))
    proxy = await s3_proxy(rclone_s3)
    target = rclone_s3.via(proxy)
    skus_file = tmp_path / "skus.txt"
    skus_file.write_text("\n".join(skus) + "\n")
    state = tmp_path / "state" / "s.sqlite3"
    env = tool_env(rclone_s3)

    proc = await spawn(
        *run_args(
            state,
            skus_file,
            ftp.url_template,
            target,
            "--angles",
            "1-2",
            "--max-bandwidth",
            "3K",
            "--concurrency",
            "1",
        ),
        env=env,
    )
    deadline = time.monotonic() + 20
    while not rclone_s3.keys() and time.monotonic() < deadline and proc.returncode is None:
        await asyncio.sleep(0.05)
    paused = await tool("pause", "--state", str(state), env=env)
    run = await finish(proc)
    assert run.rc == 75, (paused.err, run.err)
    assert paused.rc == 0, paused.err
    written = set(rclone_s3.keys())
    assert 1 <= len(written) < 12

    # resume reads secrets again from the environment: the password was never stored
    missing = await tool("resume", "--no-ui", "--state", str(state), env=env)
    assert missing.rc == 2, missing.err
    assert len(missing.err.splitlines()) == 1 and "ORIGIN_PASSWORD" in missing.err
    assert ftp.password not in missing.err
    assert set(rclone_s3.keys()) == written

    resumed = await tool(
        "resume",
        "--no-ui",
        "--state",
        str(state),
        "--max-bandwidth",
        "100M",
        env={**env, "ORIGIN_PASSWORD": ftp.password},
    )
    assert resumed.rc == 0, resumed.err
    snap: dict[str, Any] = json.loads(resumed.out)
    assert snap["state"] == "completed" and snap["uploaded"] == 12
    assert snap["scannedSkus"] == 6 and snap["failedItems"] == 0
    assert bucket_bytes(rclone_s3) == {
        KEY.format(sku=s, angle=a): expected_body(s, a) for s in skus for a in (1, 2)
    }
    assert all(n == 1 for n in proxy.puts.values()) and len(proxy.puts) == 12
    for where, text in {"resume": resumed.out + resumed.err, "pause": paused.err}.items():
        assert ftp.password not in text, where
    for name, data in state_bytes(state).items():
        assert ftp.password.encode() not in data, name
        assert rclone_s3.secret_key.encode() not in data, name
