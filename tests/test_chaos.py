"""Chaos: a long run through fault-injecting proxies on both sides, killed at random moments.

The job runs through the real CLI. `rclone serve s3` sits behind a proxy (tui_backfill.servers
.proxy) that answers 503 SlowDown and 500/503, drops requests, stalls them past the client's
timeout, resets connections after S3 answered (a PUT written but its answer lost), truncates
bodies and adds latency; the origin sits behind another such proxy (``s3=False``), and serves
its own HTML error pages and a fraction of 404s. The run is SIGKILLed at seeded random moments
(a number of objects into it, or a number of seconds after a process started: during import,
preflight, the first fetches) and SIGTERMed at a few, and continued each time by `resume` or
`run`, until it completes. Then:

- the bucket holds exactly the expected objects, byte-identical (SHA-256 of each);
- no key was PUT twice: the 2xx PUTs S3 accepted per key, minus those whose answer the proxy
  itself destroyed (the brief's one exception; rclone ignores If-None-Match), are at most 1;
- every item the origin lacks is noRemote, the counters add up, and items whose attempts ran
  out are retried first by the job's next run, which ends with nothing failed.

`make test` runs a short variant (500 SKUs, 5 kills); `make chaos` the full one (3,334 SKUs x 3
angles = 10,002 items, 20 kills, 3 SIGTERMs) and prints its figures (README, Reliability).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import random
import signal
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from helpers import (
    Backfill,
    Result,
    Running,
    assert_counters_add_up,
    assert_valid_checkpoint,
    finished_items,
    key_of,
    wait_for,
)

from tui_backfill.servers.origin import OriginFaults, OriginServer, expected_body
from tui_backfill.servers.proxy import ProxyFaults, ReverseProxy

if TYPE_CHECKING:
    from conftest import S3Target

ANGLES = (1, 2, 3)
TIMEOUT = 2.0  # the CLI's --timeout; stalls outlast it
MISSING_FRACTION = 0.05


def s3_faults() -> ProxyFaults:
    """About 4 % of S3 requests fail one way or another; 5 % of the answers with a body
    (listings: PUT and HEAD answers have none) are truncated."""
    return ProxyFaults(
        slowdown_rate=0.01,
        error_rate=0.01,
        drop_rate=0.005,
        stall_rate=0.002,
        stall_seconds=TIMEOUT + 0.5,
        reset_rate=0.008,
        truncate_rate=0.05,
        latency=0.001,
    )


def origin_proxy_faults() -> ProxyFaults:
    """About 4 % of origin GETs fail at the proxy (the origin adds its own HTML pages)."""
    return ProxyFaults(
        slowdown_rate=0.005,
        error_rate=0.01,
        drop_rate=0.005,
        stall_rate=0.002,
        stall_seconds=TIMEOUT + 0.5,
        reset_rate=0.005,
        truncate_rate=0.01,
        latency=0.001,
    )


@dataclass(frozen=True)
class Plan:
    skus: int
    kills: int  # SIGKILLs
    terms: int  # SIGTERMs
    seed: int
    within: float  # seconds the whole job may take


SEED = int(os.environ.get("CHAOS_SEED", "6"))  # another seed: other moments and faults
SHORT = Plan(skus=500, kills=5, terms=1, seed=SEED, within=120)
FULL = Plan(skus=3334, kills=20, terms=3, seed=SEED, within=1500)


@dataclass
class ChaosJob(Backfill):
    """A Backfill whose CLI reaches the origin through ``origin_proxy``."""

    origin_proxy: ReverseProxy | None = None

    def run_flags(self, *, limit: int, angles: str = "1-3", extra: Sequence[str] = ()) -> list[str]:
        flags = super().run_flags(limit=limit, angles=angles, extra=extra)
        assert self.origin_proxy is not None
        flags[flags.index("--origin") + 1] = self.origin_proxy.endpoint_url + "/{sku}_{angle}"
        return flags


@dataclass(frozen=True)
class Moment:
    signum: int
    position: int  # interrupt once this many distinct objects are in the bucket ...
    seconds: float | None  # ... or this long after the process started, whichever comes first

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        after = f" or {self.seconds:.2f} s" if self.seconds is not None else ""
        return f"{name} at {self.position} objects{after}"


def moments(plan: Plan, expected: int) -> list[Moment]:
    """Seeded random moments spread over the first 90 % of the objects; some kills are timed
    from the process's start instead (they land in start-up, preflight or the first fetches).
    SIGTERMs come mid-run, when the process has installed its handlers."""
    rng = random.Random(plan.seed)
    signals = [signal.SIGKILL] * plan.kills + [signal.SIGTERM] * plan.terms
    rng.shuffle(signals)
    positions = sorted(rng.sample(range(1, int(expected * 0.9)), len(signals)))
    out = []
    for i, (signum, position) in enumerate(zip(signals, positions, strict=True)):
        timed = i > 0 and signum == signal.SIGKILL and rng.random() < 0.35
        out.append(Moment(signum, position, rng.uniform(0.1, 2.5) if timed else None))
    return out


@dataclass
class Rig:
    job: ChaosJob
    s3_proxy: ReverseProxy
    origin_proxy: ReverseProxy
    origin: OriginServer


MakeRig = Callable[[Plan], Awaitable[Rig]]


@pytest.fixture
async def rig(
    tmp_path: Path, rclone_s3: S3Target, catalog_db: Callable[..., Path]
) -> AsyncIterator[MakeRig]:
    stack = contextlib.AsyncExitStack()
    jobs: list[ChaosJob] = []

    async def make(plan: Plan) -> Rig:
        origin = await stack.enter_async_context(
            OriginServer(
                OriginFaults(missing_fraction=MISSING_FRACTION, html_rate=0.003), seed=plan.seed
            )
        )
        origin_proxy = await stack.enter_async_context(
            ReverseProxy(origin.base_url, origin_proxy_faults(), s3=False, seed=plan.seed + 1)
        )
        s3_proxy = await stack.enter_async_context(
            ReverseProxy(rclone_s3.endpoint_url, s3_faults(), seed=plan.seed + 2)
        )
        job = ChaosJob(
            tmp_path,
            origin,
            s3_proxy,
            rclone_s3,
            catalog_db(plan.skus),
            checkpoint_every=40,
            origin_proxy=origin_proxy,
        )
        jobs.append(job)
        return Rig(job, s3_proxy, origin_proxy, origin)

    try:
        yield make
    finally:
        for job in jobs:
            await job.close()
        await stack.aclose()


def failed_rows(state: Path) -> set[tuple[str, int]]:
    conn = sqlite3.connect(f"{state.as_uri()}?mode=ro", uri=True)
    try:
        return {(s, a) for s, a in conn.execute("SELECT sku, angle FROM failed_items")}
    finally:
        conn.close()


async def interrupted_status(job: Backfill, skus: list[str], signum: int) -> dict[str, Any]:
    """The interrupted run: not live, resumable, a valid checkpoint whose finished items are
    all in the bucket, bar those recorded as failed (with the checkpoint, in one transaction).
    A crash is not a pause: a run killed while it ran is interrupted; one killed before its
    process took it (in the preflight of a resume) is as it was, paused after a SIGTERM."""
    status = await job.status()
    if signum == signal.SIGTERM:
        assert status["runStatus"] == "paused", status
    state = "interrupted" if status["runStatus"] == "running" else "paused"
    assert status["live"] is False and status["state"] == state, status
    assert_valid_checkpoint(status, skus, ANGLES)
    keys = await job.bucket_keys()
    failed = failed_rows(job.state)
    claimed = {
        key_of(s, a)
        for s, a in finished_items(status, skus, ANGLES) - failed
        if job.available(s, a)
    }
    assert claimed <= keys, (
        f"checkpoint claims items not in the bucket: {sorted(claimed - keys)[:5]}"
    )
    return status


def duplicates(proxy: ReverseProxy) -> dict[str, tuple[int, int]]:
    """Keys written more than once by PUTs whose answer the client got (or lost on its own)."""
    return {
        key: (n, proxy.lost_puts[key])
        for key, n in proxy.puts.items()
        if n - proxy.lost_puts[key] > 1
    }


async def until_due(moment: Moment, running: Running, written: Callable[[], int]) -> None:
    """Wait for the moment: ``position`` objects written (at least one more than now), or
    ``seconds`` since now, or the process's end."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    target = max(moment.position, written() + 1)

    def due() -> bool:
        timed_out = moment.seconds is not None and loop.time() - began >= moment.seconds
        return written() >= target or timed_out or not running.alive

    await wait_for(due, within=120, interval=0.01, what=str(moment))


async def run_chaos(rig: Rig, plan: Plan) -> dict[str, Any]:
    job = rig.job
    started = time.monotonic()
    skus = job.skus()
    assert len(skus) == plan.skus
    expected = job.expected_objects(skus, ANGLES)
    missing = job.missing_items(skus, ANGLES)
    assert len(expected) + len(missing) == plan.skus * len(ANGLES)
    bucket_dir = job.direct.data_dir
    assert bucket_dir is not None

    def written() -> int:
        return len(rig.s3_proxy.puts)

    schedule = moments(plan, len(expected))
    running: Running = await job.start_run(limit=plan.skus)
    processes = 1
    for moment in schedule:
        await until_due(moment, running, written)
        assert running.alive, f"the run ended before the {moment}: {await running.wait(5)}"
        running.signal(moment.signum)
        result = await running.wait(30)
        if moment.signum == signal.SIGKILL:
            assert result.rc == -signal.SIGKILL, str(result)
        else:
            assert result.rc == 75, str(result)
            assert "SIGTERM" in result.err and result.json()["state"] == "paused"
        await interrupted_status(job, skus, moment.signum)
        if random.Random(plan.seed + processes).random() < 0.5:
            running = await job.start("resume", "--no-ui", *job.job_flags())
        else:
            running = await job.start_run(limit=plan.skus)
        processes += 1

    result: Result = await running.wait(plan.within)
    assert result.rc in (0, 1), str(result)
    final = result.json()
    assert_counters_add_up(final)
    failed = failed_rows(job.state)
    assert final["failedItems"] == len(failed)
    assert result.rc == (1 if failed else 0)
    assert final["scannedSkus"] == plan.skus
    assert final["noRemote"] == len(missing - failed), "an item the origin lacks is not noRemote"
    assert final["uploaded"] + final["skippedExists"] == len(expected) - len(failed - missing)
    assert final["checkpoint"] == {"lastSku": skus[-1], "completedAngles": {}}
    run_seconds = time.monotonic() - started

    # The job's next run (healthy servers now) retries the failed items first, then finds
    # everything in place: nothing uploaded, nothing failed, the 404s noRemote again.
    injected = {
        "s3Proxy": dict(rig.s3_proxy.injected),
        "originProxy": dict(rig.origin_proxy.injected),
        "origin": dict(rig.origin.injected),
    }
    lost_puts = sum(rig.s3_proxy.lost_puts.values())
    rig.s3_proxy.faults = ProxyFaults()
    rig.origin_proxy.faults = ProxyFaults()
    rig.origin.faults = OriginFaults(missing_fraction=MISSING_FRACTION)
    again = await job.run(limit=plan.skus, extra=("--from-start",))
    assert again.rc == 0, str(again)
    snap = again.json()
    assert_counters_add_up(snap)
    assert snap["carryover"] == {"planned": len(failed), "done": len(failed), "failed": 0}
    assert snap["uploaded"] == 0 and snap["failedItems"] == 0
    assert snap["skippedExists"] == len(expected) and snap["noRemote"] == len(missing)
    assert failed_rows(job.state) == set()

    # The bucket: exactly the expected keys, each byte-identical (by hash).
    keys = await job.bucket_keys()
    assert keys == expected, (
        f"lost {sorted(expected - keys)[:5]}, unexpected {sorted(keys - expected)[:5]}"
    )
    wrong = [
        key_of(s, a)
        for s in skus
        for a in ANGLES
        if key_of(s, a) in expected
        and hashlib.sha256((bucket_dir / job.bucket / key_of(s, a)).read_bytes()).digest()
        != hashlib.sha256(expected_body(s, a)).digest()
    ]
    assert not wrong, f"objects with wrong bytes: {wrong[:5]}"
    # No key PUT twice, bar a retry after an answer the proxy destroyed.
    twice = duplicates(rig.s3_proxy)
    assert not twice, f"keys PUT twice (2xx PUTs, lost answers): {dict(list(twice.items())[:5])}"
    assert {k.removeprefix(job.bucket + "/") for k in rig.s3_proxy.puts} == expected
    # Every item the origin lacks was asked for, and is not in the bucket.
    assert all(job.gets_of(*item) >= 1 for item in missing)

    figures = {
        "items": plan.skus * len(ANGLES),
        "objectsChecked": len(expected),
        "noRemote": len(missing),
        "sigkills": plan.kills,
        "sigterms": plan.terms,
        "timedKills": sum(m.seconds is not None for m in schedule),
        "processes": processes,
        "injected": injected,
        "errorsByCode": final["errorsByCode"],
        "failedThenRetried": len(failed),
        "lostPutAnswers": lost_puts,
        "puts": sum(rig.s3_proxy.puts.values()),
        "undeliveredPutAnswers": sum(rig.s3_proxy.undelivered_puts.values()),
        "duplicates": len(twice),
        "lost": len(expected - keys),
        "wallSeconds": round(run_seconds, 1),
    }
    print(f"\nchaos figures ({plan.skus} SKUs, seed {plan.seed}): {figures}")
    return figures


async def test_chaos_short(rig: MakeRig) -> None:
    """1,500 items, 5 SIGKILLs and a SIGTERM, faults on both sides."""
    await run_chaos(await rig(SHORT), SHORT)


@pytest.mark.chaos
@pytest.mark.timeout(2400)
async def test_chaos_full(rig: MakeRig) -> None:
    """10,002 items, 20 SIGKILLs and 3 SIGTERMs, faults on both sides (`make chaos`)."""
    await run_chaos(await rig(FULL), FULL)
