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

from tui_backfill.servers.origin import HTML_ERROR_PAGE, OriginServer, expected_body

if TYPE_CHECKING:
    from conftest import FtpOrigin, S3Target

TOKEN = "tok-9f3e2d1c7b"
SIGNATURE = "sig-5a4b3c2d1e"


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


# -- secrets in the origin URL's query string ------------------------------------------------


def token_origin(origin: OriginServer, token: str = TOKEN, signature: str = SIGNATURE) -> str:
    """An origin template whose query carries two secrets and two template fields (`key` looks
    secret by its name, but a value holding a field is the item's name, and stays)."""
    return (
        f"{origin.base_url}/{{sku}}_{{angle}}?token={token}&X-Amz-Signature={signature}"
        "&key={sku}_{angle}&size=hr"
    )


def shown_origin(origin: OriginServer) -> str:
    return f"{origin.base_url}/{{sku}}_{{angle}}?token=***&X-Amz-Signature=***&key={{sku}}_{{angle}}&size=hr"


async def paused_token_run(
    tmp_path: Path, origin: OriginServer, target: S3Target, env: dict[str, str]
) -> tuple[Path, Result, Result, list[Result]]:
    """A headless run from an origin whose URL holds a token, paused part way (state, its
    output, the pause's, live `status` outputs)."""
    skus = [str(100000 + i) for i in range(6)]
    skus_file = tmp_path / "skus.txt"
    skus_file.write_text("\n".join(skus) + "\n")
    state = tmp_path / "state" / "s.sqlite3"
    args = run_args(state, skus_file, token_origin(origin), target, "--angles", "1-2")
    slow = ("--max-bandwidth", "3K", "--concurrency", "1", "--progress-interval", "0.1")
    proc = await spawn(*args, *slow, env=env)
    live: list[Result] = []
    deadline = time.monotonic() + 20
    while not live and time.monotonic() < deadline and proc.returncode is None:
        if origin.gets:
            live.append(await tool("status", "--json", "--state", str(state), env=env))
        await asyncio.sleep(0.05)
    paused = await tool("pause", "--state", str(state), env=env)
    run = await finish(proc)
    assert run.rc == 75, (paused.err, run.err)
    assert paused.rc == 0, paused.err
    return state, run, paused, live


async def test_origin_query_secrets_absent_from_output_status_and_state(
    tmp_path: Path, origin: OriginServer, rclone_s3: S3Target, s3_proxy
) -> None:
    """A token in the origin URL's query was shown by status, the console, the API and the
    headless output, and stored with the run's settings in the state file."""
    proxy = await s3_proxy(rclone_s3)
    env = tool_env(rclone_s3)
    state, run, paused, live = await paused_token_run(tmp_path, origin, rclone_s3.via(proxy), env)
    assert json.loads(run.out)["origin"] == shown_origin(origin)
    assert live and all(r.rc == 0 for r in live), live
    assert json.loads(live[0].out)["origin"] == shown_origin(origin)
    # the origin ignores the query for serving; it got the secrets and the fields filled in
    fetched = {q for q in origin.query_strings}
    assert fetched and all(
        q.startswith(f"token={TOKEN}&X-Amz-Signature={SIGNATURE}&key=1000") for q in fetched
    ), fetched

    outputs = {"run": run.out + run.err, "pause": paused.out + paused.err}
    outputs |= {f"live status {i}": r.out + r.err for i, r in enumerate(live)}
    for args in (("status", "--json"), ("status",), ("runs", "--json")):
        result = await tool(*args, "--state", str(state), env=env)
        assert result.rc == 0, result.err
        outputs[" ".join(args)] = result.out + result.err
    assert json.loads(outputs["status --json"])["origin"] == shown_origin(origin)
    stored = state_bytes(state)
    assert any(shown_origin(origin).encode() in data for data in stored.values())  # looked there

    # the secrets come back from the full URL given again (here the environment), never `***`
    origin.query_strings.clear()
    resumed = await tool(
        "resume",
        "--no-ui",
        "--state",
        str(state),
        env={**env, "TUI_BACKFILL_ORIGIN": token_origin(origin)},
    )
    assert resumed.rc == 0, resumed.err
    snap = json.loads(resumed.out)
    assert snap["state"] == "completed" and snap["uploaded"] == 12 and snap["failedItems"] == 0
    assert snap["origin"] == shown_origin(origin)
    assert origin.query_strings and all(f"token={TOKEN}&" in q for q in origin.query_strings)
    outputs["resume"] = resumed.out + resumed.err
    for where, text in outputs.items():
        for secret in (TOKEN, SIGNATURE):
            assert secret not in text, f"{secret!r} in {where}"
    for name, data in {**stored, **state_bytes(state)}.items():
        for secret in (TOKEN, SIGNATURE):
            assert secret.encode() not in data, f"{secret!r} in {name}"


async def test_resume_without_the_origin_query_secret_exit_2(
    tmp_path: Path, origin: OriginServer, rclone_s3: S3Target
) -> None:
    """The stored origin holds `token=***`: a resume with nothing to put the token back must
    not fetch with `***` (a 401 at a real origin, or a run that only seems to work)."""
    env = tool_env(rclone_s3)
    state, _, _, _ = await paused_token_run(tmp_path, origin, rclone_s3, env)
    gets = origin.gets
    missing = await tool("resume", "--no-ui", "--state", str(state), env=env)
    assert missing.rc == 2, missing.err
    assert len(missing.err.splitlines()) == 1 and "TUI_BACKFILL_ORIGIN" in missing.err
    assert "token" in missing.err and TOKEN not in missing.err
    assert origin.gets == gets
