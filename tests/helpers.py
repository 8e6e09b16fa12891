"""Shared helpers of the end-to-end tests: drive the real CLI in subprocesses and check results.

Everything here is asynchronous on purpose: the origin and the counting S3 proxy run in the
test's own event loop, so a CLI subprocess must never be waited for with a blocking call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from tui_backfill.frontends.api import BASE as API_BASE
from tui_backfill.pipelines.mirror.angles import parse_angles
from tui_backfill.servers.catalog import ACTIVE_SKUS_QUERY, active_skus
from tui_backfill.servers.origin import OriginServer, expected_body
from tui_backfill.servers.proxy import ReverseProxy

if TYPE_CHECKING:
    from conftest import S3Target

CLI = (sys.executable, "-m", "tui_backfill")
KEY_TEMPLATE = "rsr/highres/{sku}_{angle}_HR.jpg"
BRIEF_KEYS = (
    "startedAt",
    "lastUpdateAt",
    "scannedSkus",
    "attemptedDownloads",
    "uploaded",
    "skippedExists",
    "noRemote",
    "errorsTotal",
    "errorsByCode",
    "anglesPlanned",
    "concurrency",
    "checkpoint",
    "etaSkusRemaining",
    "plannedItems",
    "failedItems",
    "state",
)
# Fast settings for loopback servers.
FAST = ("--timeout", "2", "--backoff", "0.01", "--progress-interval", "0.5", "--path-style")


def key_of(sku: str, angle: int) -> str:
    return KEY_TEMPLATE.format(sku=sku, angle=angle)


def sku_key(sku: str) -> bytes:
    """SKU order is the byte order of the strings (SQLite's BINARY collation)."""
    return sku.encode("utf-8")


@dataclass
class Result:
    rc: int
    out: str
    err: str
    seconds: float = 0.0

    def json(self) -> Any:
        return json.loads(self.out)

    @property
    def snap(self) -> dict[str, Any]:
        return dict(self.json())

    def __str__(self) -> str:
        return f"exit {self.rc} after {self.seconds:.1f}s\nstdout: {self.out[-3000:]}\nstderr: {self.err[-3000:]}"


@dataclass
class Running:
    """A CLI process started in the background; output goes to files (no pipe can fill)."""

    proc: asyncio.subprocess.Process
    out_path: Path
    err_path: Path
    started: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def wait(self, within: float = 60) -> Result:
        try:
            rc = await asyncio.wait_for(self.proc.wait(), within)
        except TimeoutError:
            self.kill()
            await self.proc.wait()
            raise AssertionError(
                f"process {self.pid} still running after {within}s; "
                f"stderr: {self.err_path.read_text()[-2000:]}"
            ) from None
        return Result(
            rc,
            self.out_path.read_text(),
            self.err_path.read_text(),
            time.monotonic() - self.started,
        )

    def signal(self, signum: int) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None


@dataclass
class Backfill:
    """One job of the image backfill against the test's servers, driven through the CLI.

    ``target`` is the S3 server as the CLI reaches it (through ``proxy``), ``direct`` the same
    server without the proxy (the test reads the bucket there, uncounted).
    """

    tmp: Path
    origin: OriginServer
    proxy: ReverseProxy
    direct: S3Target
    catalog: Path
    job: str = "default"
    checkpoint_every: int = 20
    procs: list[Running] = field(default_factory=list)
    _seq: int = 0

    @property
    def target(self) -> S3Target:
        return self.direct.via(self.proxy)

    @property
    def state(self) -> Path:
        return self.tmp / "state" / "backfill.sqlite3"

    @property
    def bucket(self) -> str:
        return self.direct.bucket

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUI_BACKFILL_")}
        env.update(self.target.env())
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def job_flags(self) -> list[str]:
        return ["--state", str(self.state), "--job", self.job]

    def run_flags(self, *, limit: int, angles: str = "1-3", extra: Sequence[str] = ()) -> list[str]:
        """Flags of `run`: source, origin, bucket, fast settings."""
        return [
            *self.job_flags(),
            "--skus-db", str(self.catalog),
            "--skus-query", ACTIVE_SKUS_QUERY,
            "--origin", self.origin.url_template,
            "--bucket", self.bucket,
            "--limit-skus", str(limit),
            "--angles", angles,
            "--checkpoint-every", str(self.checkpoint_every),
            *FAST,
            *extra,
        ]  # fmt: skip

    def coverage_flags(self, *, angles: str = "1-3") -> list[str]:
        """Flags of `coverage`: the catalog, angles and bucket (it fetches nothing)."""
        return [
            *self.job_flags(),
            "--skus-db", str(self.catalog),
            "--skus-query", ACTIVE_SKUS_QUERY,
            "--bucket", self.bucket,
            "--angles", angles,
            "--timeout", "2",
            "--path-style",
        ]  # fmt: skip

    def hash_flags(self, index_db: Path, *, extra: Sequence[str] = ()) -> list[str]:
        """Flags of a hash-index job of this state over the bucket (`serve`, `hash-index`)."""
        return [
            *self.job_flags(),
            "--pipeline", "hash-index",
            "--bucket", self.bucket,
            "--index-db", str(index_db),
            "--checkpoint-every", str(self.checkpoint_every),
            *FAST,
            *extra,
        ]  # fmt: skip

    # -- processes ----------------------------------------------------------------------

    async def start(self, *args: str) -> Running:
        if args[:1] == ("serve",) and "--progress-interval" in args:
            # the run flags' pace of progress lines: `serve` prints none, and has no such option
            at = args.index("--progress-interval")
            args = args[:at] + args[at + 2 :]
        self._seq += 1
        out_path = self.tmp / f"cli{self._seq}.out"
        err_path = self.tmp / f"cli{self._seq}.err"
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *CLI, *args, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err,
                env=self.env(), cwd=self.tmp,
            )  # fmt: skip
        running = Running(proc, out_path, err_path, time.monotonic())
        self.procs.append(running)
        return running

    async def cli(self, *args: str, within: float = 60) -> Result:
        return await (await self.start(*args)).wait(within)

    async def run(self, *, limit: int, angles: str = "1-3", extra: Sequence[str] = ()) -> Result:
        return await self.cli(
            "run", "--no-ui", *self.run_flags(limit=limit, angles=angles, extra=extra)
        )

    async def start_run(
        self, *, limit: int, angles: str = "1-3", extra: Sequence[str] = ()
    ) -> Running:
        return await self.start(
            "run", "--no-ui", *self.run_flags(limit=limit, angles=angles, extra=extra)
        )

    async def resume(self, *extra: str) -> Result:
        return await self.cli("resume", "--no-ui", *self.job_flags(), *extra)

    async def status(self) -> dict[str, Any]:
        result = await self.cli("status", "--json", *self.job_flags(), within=30)
        assert result.rc == 0, str(result)
        return dict(result.json())

    async def close(self) -> None:
        """Kill and reap every process still running (teardown)."""
        for running in self.procs:
            if running.alive:
                running.kill()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(running.proc.wait(), 10)

    # -- expectations -------------------------------------------------------------------

    def skus(self) -> list[str]:
        """The catalog's active SKUs, deduplicated, in byte order (what runs scan)."""
        return active_skus(self.catalog)

    def available(self, sku: str, angle: int) -> bool:
        return not self.origin.faults.is_missing(sku, angle)

    def expected_objects(self, skus: Iterable[str], angles: Iterable[int]) -> set[str]:
        """Keys the origin can fill for these SKUs and angles."""
        angles = tuple(angles)
        return {key_of(s, a) for s in skus for a in angles if self.available(s, a)}

    def missing_items(self, skus: Iterable[str], angles: Iterable[int]) -> set[tuple[str, int]]:
        angles = tuple(angles)
        return {(s, a) for s in skus for a in angles if not self.available(s, a)}

    async def bucket_keys(self) -> set[str]:
        keys = await asyncio.to_thread(self.direct.keys)
        return set(keys)

    async def bucket_objects(self) -> dict[str, bytes]:
        """Every object of the bucket with its bytes, read from the server (not the proxy)."""

        def read() -> dict[str, bytes]:
            client = self.direct.client()
            out: dict[str, bytes] = {}
            for key in self.direct.keys():
                if self.direct.data_dir is not None:  # rclone serves plain files
                    out[key] = (self.direct.data_dir / self.bucket / key).read_bytes()
                else:
                    out[key] = client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            return out

        return await asyncio.to_thread(read)

    async def assert_bucket_exactly(self, skus: Iterable[str], angles: Iterable[int]) -> None:
        """The bucket holds exactly the expected objects of (skus x angles), byte-identical."""
        angles = tuple(angles)
        skus = list(skus)
        objects = await self.bucket_objects()
        expected = self.expected_objects(skus, angles)
        assert set(objects) == expected, (
            f"missing {sorted(expected - set(objects))[:10]}, "
            f"unexpected {sorted(set(objects) - expected)[:10]}"
        )
        wrong = [
            key
            for sku in skus
            for angle in angles
            if (key := key_of(sku, angle)) in objects and objects[key] != expected_body(sku, angle)
        ]
        assert not wrong, f"objects with wrong bytes: {wrong[:10]}"

    def puts(self) -> dict[str, int]:
        """Successful PUTs per key, counted at the proxy (bucket prefix removed)."""
        prefix = self.bucket + "/"
        return {k.removeprefix(prefix): n for k, n in self.proxy.puts.items()}

    def assert_no_key_put_twice(self) -> None:
        twice = {k: n for k, n in self.puts().items() if n != 1}
        assert not twice, f"keys PUT more than once: {dict(list(twice.items())[:10])}"

    def gets_of(self, sku: str, angle: int) -> int:
        return self.origin.requests[("GET", f"/{sku}_{angle}")]


async def new_backfill(
    tmp: Path,
    *,
    origin: OriginServer,
    proxy: ReverseProxy,
    direct: S3Target,
    catalog: Path,
    missing_fraction: float = 0.05,
    checkpoint_every: int = 20,
) -> Backfill:
    """A job over ``catalog``; the origin answers 404 for a deterministic ``missing_fraction``."""
    origin.faults.missing_fraction = missing_fraction
    return Backfill(tmp, origin, proxy, direct, catalog, checkpoint_every=checkpoint_every)


# -- snapshot checks ----------------------------------------------------------------------


def assert_brief_keys(snapshot: dict[str, Any]) -> None:
    missing = [key for key in BRIEF_KEYS if key not in snapshot]
    assert not missing, f"snapshot lacks {missing}: {sorted(snapshot)}"
    assert set(snapshot["checkpoint"]) >= {"lastSku", "completedAngles"}
    assert isinstance(snapshot["errorsByCode"], dict)
    assert snapshot["errorsTotal"] == sum(snapshot["errorsByCode"].values())
    for key in ("startedAt", "lastUpdateAt"):
        assert snapshot[key].endswith(("Z", "+00:00")), f"{key} {snapshot[key]!r} is not UTC"


def assert_valid_checkpoint(
    snapshot: dict[str, Any], skus: Sequence[str], angles: Iterable[int]
) -> None:
    """The brief's validity: lastSku is a SKU of the source; completedAngles keys are SKUs
    after it whose lists are non-empty subsets of the planned angles."""
    checkpoint = snapshot["checkpoint"]
    last = checkpoint["lastSku"]
    planned = set(angles)
    known = set(skus)
    if last is not None:
        assert last in known, f"lastSku {last!r} is not a SKU of the run"
    for sku, done in checkpoint["completedAngles"].items():
        assert sku in known, f"completedAngles key {sku!r} is not a SKU of the run"
        if last is not None:
            assert sku_key(sku) > sku_key(last), f"{sku!r} is not after lastSku {last!r}"
        assert done, f"completedAngles[{sku!r}] is empty"
        assert set(done) <= planned, f"completedAngles[{sku!r}] = {done} not within {planned}"
        assert len(set(done)) == len(done), f"completedAngles[{sku!r}] = {done} has duplicates"


def finished_items(
    snapshot: dict[str, Any], skus: Sequence[str], angles: Iterable[int]
) -> set[tuple[str, int]]:
    """The (sku, angle) items the snapshot's checkpoint records as finished."""
    checkpoint = snapshot["checkpoint"]
    last = checkpoint["lastSku"]
    angles = tuple(angles)
    done: set[tuple[str, int]] = set()
    if last is not None:
        done.update((s, a) for s in skus if sku_key(s) <= sku_key(last) for a in angles)
    for sku, finished in checkpoint["completedAngles"].items():
        done.update((sku, int(a)) for a in finished)
    return done


def assert_counters_add_up(snapshot: dict[str, Any], *, state: str = "completed") -> None:
    """End of a run: its state, and scannedSkus x angles = uploaded + skippedExists + noRemote
    + failedItems; the existence split agrees with the counters."""
    assert snapshot["state"] == state, f"state {snapshot['state']!r}, expected {state!r}"
    angles = len(parse_angles(snapshot["anglesPlanned"]))
    items = snapshot["scannedSkus"] * angles
    accounted = (
        snapshot["uploaded"]
        + snapshot["skippedExists"]
        + snapshot["noRemote"]
        + snapshot["failedItems"]
    )
    assert items == accounted, (
        f"scannedSkus {snapshot['scannedSkus']} x {angles} = {items} but uploaded "
        f"{snapshot['uploaded']} + skippedExists {snapshot['skippedExists']} + noRemote "
        f"{snapshot['noRemote']} + failedItems {snapshot['failedItems']} = {accounted}"
    )
    if state == "completed":
        assert snapshot["etaSkusRemaining"] == 0
        assert snapshot["scannedSkus"] * angles == snapshot["plannedItems"]
    existence = snapshot["existence"]
    assert existence["written"] == snapshot["uploaded"]
    assert existence["foundAtStart"] <= snapshot["skippedExists"]
    assert existence["stillMissing"] == (
        snapshot["plannedItems"] - snapshot["uploaded"] - snapshot["skippedExists"]
    )


async def wait_for(
    predicate: Any, *, within: float, interval: float = 0.02, what: str = ""
) -> None:
    """Poll ``predicate()`` (sync) on the running loop until it is true."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what or predicate}")
        await asyncio.sleep(interval)


def one_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line error, got {lines}"
    return lines[0]


# -- the HTTP control API of a `serve` process -------------------------------------------------


@dataclass
class Api:
    """A client of the API a `serve` (or `run --serve`) process listens on."""

    url: str
    proc: Running
    session: aiohttp.ClientSession

    async def call(
        self, method: str, path: str, *, body: Any = None, data: bytes | None = None, **kw: Any
    ) -> tuple[int, Any]:
        async with self.session.request(
            method, self.url + path, json=body, data=data, **kw
        ) as answer:
            text = await answer.text()
            assert answer.content_type in ("application/json", "text/plain"), answer.content_type
            return answer.status, (
                json.loads(text) if answer.content_type == "application/json" else text
            )

    async def status(self) -> dict[str, Any]:
        code, body = await self.call("GET", f"{API_BASE}/status")
        assert code == 200, body
        return dict(body)

    async def until(
        self, predicate: Callable[[dict[str, Any]], bool], within: float = 60
    ) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            snap = await self.status()
            if predicate(snap):
                return snap
            assert loop.time() < deadline, f"timed out; last status {snap}"
            await asyncio.sleep(0.1)


MakeApi = Callable[..., Awaitable[tuple[Backfill, Api]]]


async def served_url(proc: Running, pattern: str = r"(http://127\.0\.0\.1:\d+)") -> str:
    """The URL a `serve` / `run --serve` process prints on stderr once it listens."""
    found: list[str] = []

    def ready() -> bool:
        match = re.search(pattern, proc.err_path.read_text(errors="replace"))
        if match:
            found.append(match.group(1))
        return bool(found) or not proc.alive

    await wait_for(ready, within=30, what="the API to listen")
    assert found, f"no API URL; stderr: {proc.err_path.read_text()}"
    return found[0]


# -- the CLI in a subprocess with a clean environment ----------------------------------------

REPO = Path(__file__).resolve().parents[1]
KEY = KEY_TEMPLATE


def tool_env(target: S3Target, **extra: str) -> dict[str, str]:
    """The environment for the CLI: this machine's, minus any AWS_/TUI_BACKFILL_/ORIGIN_ setting,
    plus the target's credentials (no profile or config file can leak in)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("AWS_", "TUI_BACKFILL_", "ORIGIN_"))
    }
    env.update(
        PYTHONPATH=str(REPO),
        AWS_ACCESS_KEY_ID=target.access_key,
        AWS_SECRET_ACCESS_KEY=target.secret_key,
        AWS_DEFAULT_REGION=target.region,
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
    )
    env.update(extra)
    return env


def run_args(
    state: Path, skus_file: Path, origin: str, target: S3Target, *extra: str, timeout: str = "2"
) -> list[str]:
    """`run --no-ui` over a SKU file with the fast settings of the CLI tests."""
    return [
        "run", "--no-ui", "--state", str(state), "--skus-file", str(skus_file), "--origin", origin,
        "--bucket", target.bucket, "--endpoint-url", target.endpoint_url, "--path-style",
        "--backoff", "0.01", "--timeout", timeout, *extra,
    ]  # fmt: skip


async def spawn(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *CLI, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        cwd=cwd,
    )  # fmt: skip


async def finish(proc: asyncio.subprocess.Process, timeout: float = 60) -> Result:
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Result(proc.returncode, out.decode(), err.decode())


async def tool(
    *args: str, env: dict[str, str], timeout: float = 60, cwd: Path | None = None
) -> Result:
    """``python -m tui_backfill ARGS`` in a subprocess (this loop keeps serving meanwhile)."""
    return await finish(await spawn(*args, env=env, cwd=cwd), timeout)


def bucket_bytes(target: S3Target) -> dict[str, bytes]:
    client = target.client()
    return {k: client.get_object(Bucket=target.bucket, Key=k)["Body"].read() for k in target.keys()}


def expected(pairs: Iterable[tuple[str, int]]) -> dict[str, bytes]:
    return {key_of(s, a): expected_body(s, a) for s, a in pairs}


def check_identity(snap: dict[str, Any], angles: int) -> None:
    assert snap["state"] == "completed"
    assert snap["scannedSkus"] * angles == (
        snap["uploaded"] + snap["skippedExists"] + snap["noRemote"] + snap["failedItems"]
    )
    assert snap["errorsTotal"] == sum(snap["errorsByCode"].values())


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, noted, closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def runs_in_state(state: Path) -> int:
    """How many runs a state file holds (0 without a file or a `runs` table), read-only."""
    if not state.exists():
        return 0
    conn = sqlite3.connect(f"{state.as_uri()}?mode=ro", uri=True)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'runs'").fetchone():
            return 0
        return int(conn.execute("SELECT count(*) FROM runs").fetchone()[0])
    finally:
        conn.close()


async def signalled_without_stderr(
    proc: asyncio.subprocess.Process, signum: int, *, after: float = 0.0, within: float = 30
) -> int:
    """`signum` sent to `proc` `after` seconds from the moment nobody reads its stderr any more
    (a terminal gone, a closed pipe): its exit code, within `within` seconds (killed
    otherwise)."""
    try:
        transport = proc._transport  # type: ignore[attr-defined]
        transport.get_pipe_transport(2).close()  # nobody reads its stderr any more
        await asyncio.sleep(after)
        proc.send_signal(signum)
        return await asyncio.wait_for(proc.wait(), within)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
