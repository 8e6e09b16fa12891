"""Faults at the origin and at S3, against real servers on loopback (no mocked clients).

The tool runs as a real CLI in a subprocess (the origin and the S3 proxy serve on this test's
event loop). Every failed attempt is counted by code, attempts are bounded (origin GETs per path
<= 3), exhausted items are recorded (exit 1) and completed by a later run once the origin is
healthy; 404 is noRemote and fetched once; S3 SlowDown is retried; conditional PUTs carry
``If-None-Match: *`` (moto answers 412) and a server that rejects the header gets plain PUTs.
"""

from __future__ import annotations

import random
import sqlite3
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from helpers import KEY, Result, bucket_bytes, check_identity, expected, tool, tool_env

from tui_backfill.servers.origin import OriginFaults, OriginServer, parse_name
from tui_backfill.servers.proxy import ProxyFaults, ReverseProxy, classify

if TYPE_CHECKING:
    from conftest import S3Target

ORIGIN_CODES = {"http_500", "http_503", "connection", "timeout", "truncated", "bad_content"}


# -- helpers --------------------------------------------------------------------------------


def key(sku: str, angle: int) -> str:
    return KEY.format(sku=sku, angle=angle)


def items(skus: Iterable[str], angles: Iterable[int]) -> list[tuple[str, int]]:
    return [(s, a) for s in skus for a in angles]


def gets(origin: OriginServer, sku: str, angle: int) -> int:
    return origin.requests[("GET", f"/{sku}_{angle}")]


def failed_rows(state: Path) -> list[tuple[str, int, str, int]]:
    conn = sqlite3.connect(f"{state.as_uri()}?mode=ro", uri=True)
    try:
        return list(
            conn.execute("SELECT sku, angle, code, attempts FROM failed_items ORDER BY 1, 2")
        )
    finally:
        conn.close()


@dataclass
class Rig:
    """The origin, an S3 server behind a counting proxy, a state file and SKU files."""

    tmp: Path
    direct: S3Target
    proxy: ReverseProxy
    origin: OriginServer
    state: Path
    env: dict[str, str] = field(default_factory=dict)

    def skus_file(self, skus: Iterable[str], name: str = "skus.txt") -> Path:
        path = self.tmp / name
        path.write_text("".join(f"{s}\n" for s in skus))
        return path

    def run_args(self, skus_file: Path, *extra: str) -> list[str]:
        return [
            "run",
            "--no-ui",
            "--state",
            str(self.state),
            "--skus-file",
            str(skus_file),
            "--origin",
            self.origin.url_template,
            "--bucket",
            self.direct.bucket,
            "--endpoint-url",
            self.proxy.endpoint_url,
            "--path-style",
            "--backoff",
            "0.01",
            "--timeout",
            "1",
            "--concurrency",
            "4",
            *extra,
        ]

    async def run(self, skus_file: Path, *extra: str, timeout: float = 60) -> Result:
        return await tool(*self.run_args(skus_file, *extra), env=self.env, timeout=timeout)

    def reset(self) -> None:
        self.origin.reset_counters()
        self.proxy.reset_counters()


async def make_rig(tmp: Path, target: S3Target, proxy: ReverseProxy, origin: OriginServer) -> Rig:
    if target.data_dir is not None:
        # rclone answers 500 when PUTs race to create the first object under a prefix directory
        # that does not exist yet (FIELD-NOTES); exact error counts need it to exist already.
        (target.data_dir / target.bucket / KEY.split("{")[0]).mkdir(parents=True, exist_ok=True)
    return Rig(tmp, target, proxy, origin, tmp / "state" / "s.sqlite3", tool_env(target))


@pytest.fixture
async def rig(tmp_path: Path, rclone_s3: S3Target, s3_proxy, origin: OriginServer) -> Rig:
    return await make_rig(tmp_path, rclone_s3, await s3_proxy(rclone_s3), origin)


# -- origin faults --------------------------------------------------------------------------
async def test_fail_first_n_every_item_succeeds_on_attempt_3(rig: Rig) -> None:
    skus = ["100000", "100001", "100002"]
    planned = items(skus, (1, 2))
    rig.origin.faults.fail_first_n = 2
    result = await rig.run(rig.skus_file(skus), "--angles", "1-2")
    assert result.rc == 0, result.err
    snap = result.snap
    check_identity(snap, 2)
    assert snap["uploaded"] == 6 and snap["failedItems"] == 0
    assert snap["attemptedDownloads"] == 6
    assert snap["errorsByCode"] == {"http_503": 2 * 6}
    assert snap["errorsTotal"] == 12
    assert {p: gets(rig.origin, *p) for p in planned} == {p: 3 for p in planned}
    assert rig.origin.injected["fail_first_n"] == 12
    assert dict(rig.proxy.puts) == {f"{rig.direct.bucket}/{k}": 1 for k in expected(planned)}
    assert bucket_bytes(rig.direct) == expected(planned)
    assert failed_rows(rig.state) == []


class PerSkuOrigin(OriginServer):
    """The real origin with one fault setting per SKU (``by_sku``); other SKUs are healthy."""

    def __init__(self) -> None:
        super().__init__()
        self.by_sku: dict[str, OriginFaults] = {}
        self.healthy = OriginFaults()

    async def _handle_image(self, request: web.Request) -> web.StreamResponse:
        parsed = parse_name(request.path.rsplit("/", 1)[-1])
        # read synchronously by the handler before its first await
        self.faults = self.by_sku.get(parsed[0], self.healthy) if parsed else self.healthy
        return await super()._handle_image(request)


# one SKU per fault kind: (settings, the codes its failed attempts are counted under)
FAULT_KINDS: dict[str, tuple[OriginFaults, set[str]]] = {
    "100000": (OriginFaults(error_rate=1.0), {"http_500", "http_503"}),
    "100001": (OriginFaults(reset_rate=1.0), {"connection"}),
    "100002": (OriginFaults(stall_rate=1.0, stall_seconds=10.0), {"timeout"}),
    "100003": (OriginFaults(truncate_rate=1.0), {"truncated"}),
    "100004": (OriginFaults(html_rate=1.0), {"bad_content"}),
}


@pytest.fixture
async def per_sku_origin() -> AsyncIterator[PerSkuOrigin]:
    async with PerSkuOrigin() as server:
        yield server


async def test_each_fault_exhausts_3_attempts_then_later_run_completes(
    tmp_path: Path, rclone_s3: S3Target, s3_proxy, per_sku_origin: PerSkuOrigin
) -> None:
    """500/503, resets, stalls past the timeout, truncated bodies, HTML with 200: each is
    retried to exactly 3 attempts, counted by code, recorded as failed (exit 1), and a later
    run with a healthy origin retries the carryover first and completes the bucket."""
    origin = per_sku_origin
    rig = await make_rig(tmp_path, rclone_s3, await s3_proxy(rclone_s3), origin)
    skus = list(FAULT_KINDS)
    planned = items(skus, (1, 2))
    skus_file = rig.skus_file(skus)
    origin.by_sku = {sku: faults for sku, (faults, _) in FAULT_KINDS.items()}

    first = await rig.run(skus_file, "--angles", "1-2", "--concurrency", "6")
    assert first.rc == 1, first.err  # completed with failed items
    snap = first.snap
    check_identity(snap, 2)
    assert snap["failedItems"] == 10 and snap["uploaded"] == 0
    assert snap["attemptedDownloads"] == 10
    errors = snap["errorsByCode"]
    assert set(errors) <= ORIGIN_CODES
    for _, codes in FAULT_KINDS.values():
        assert sum(errors.get(code, 0) for code in codes) == 2 * 3, errors
    assert snap["errorsTotal"] == 10 * 3
    # attempts bounded: exactly 3 origin GETs per path, no hidden client retry
    assert {p: gets(origin, *p) for p in planned} == {p: 3 for p in planned}
    assert dict(origin.injected) == {"error": 6, "reset": 6, "stall": 6, "truncate": 6, "html": 6}
    assert rig.proxy.puts == {} and rig.direct.keys() == []
    rows = failed_rows(rig.state)
    assert [(s, a) for s, a, _, _ in rows] == planned
    for sku, _, code, attempts in rows:
        assert code in FAULT_KINDS[sku][1] and attempts == 3

    origin.by_sku = {}  # healthy again
    rig.reset()
    second = await rig.run(skus_file, "--angles", "1-2")
    assert second.rc == 0, second.err
    snap = second.snap
    check_identity(snap, 2)
    assert snap["carryover"] == {"planned": 10, "done": 10, "failed": 0}
    assert snap["failedItems"] == 0 and snap["errorsTotal"] == 0
    assert {p: gets(origin, *p) for p in planned} == {p: 1 for p in planned}
    assert dict(rig.proxy.puts) == {f"{rig.direct.bucket}/{k}": 1 for k in expected(planned)}
    assert bucket_bytes(rig.direct) == expected(planned)
    assert failed_rows(rig.state) == []


async def test_random_faults_counted_bounded_and_carried_over(rig: Rig) -> None:
    """Random 500/503, resets, stalls, truncation and HTML pages at once; then a healthy run
    over other SKUs retries the carryover first and the bucket ends complete."""
    skus = [str(100000 + i) for i in range(6)]
    planned = items(skus, (1, 2, 3))
    rig.origin.faults = OriginFaults(
        error_rate=0.2,
        reset_rate=0.1,
        truncate_rate=0.1,
        html_rate=0.1,
        stall_rate=0.03,
        stall_seconds=10.0,
    )
    first = await rig.run(rig.skus_file(skus), "--concurrency", "6", "--max-concurrency", "6")
    snap = first.snap
    check_identity(snap, 3)
    assert first.rc == (1 if snap["failedItems"] else 0), first.err
    assert snap["errorsTotal"] > 0 and set(snap["errorsByCode"]) <= ORIGIN_CODES
    per_path = {p: gets(rig.origin, *p) for p in planned}
    assert all(1 <= n <= 3 for n in per_path.values()), per_path
    # every GET is one attempt: it either uploaded the item or was counted as an error
    assert rig.origin.gets == snap["uploaded"] + snap["errorsTotal"]
    assert sum(rig.origin.injected.values()) == snap["errorsTotal"]
    failed = [(s, a) for s, a, _, _ in failed_rows(rig.state)]
    assert len(failed) == snap["failedItems"]
    assert all(per_path[p] == 3 for p in failed)
    assert sorted(rig.direct.keys()) == sorted(key(*p) for p in planned if p not in failed)
    assert all(n == 1 for n in rig.proxy.puts.values())

    rig.origin.faults = OriginFaults()
    rig.reset()
    others = ["200000", "200001"]
    second = await rig.run(rig.skus_file(others, "others.txt"))
    assert second.rc == 0, second.err
    snap = second.snap
    check_identity(snap, 3)
    assert snap["carryover"] == {"planned": len(failed), "done": len(failed), "failed": 0}
    assert snap["uploaded"] == 6 and snap["errorsTotal"] == 0
    assert all(gets(rig.origin, *p) == 1 for p in failed)
    assert bucket_bytes(rig.direct) == expected(planned + items(others, (1, 2, 3)))
    assert failed_rows(rig.state) == []
    assert all(n == 1 for n in rig.proxy.puts.values())


async def test_404_is_no_remote_and_fetched_once(rig: Rig) -> None:
    skus = ["100000", "100001", "100002"]
    planned = items(skus, (1, 2))
    missing = {("100000", 2), ("100002", 1)}
    rig.origin.faults = OriginFaults(missing=set(missing), fail_first_n=1)
    result = await rig.run(rig.skus_file(skus), "--angles", "1-2")
    assert result.rc == 0, result.err
    snap = result.snap
    check_identity(snap, 2)
    assert snap["noRemote"] == 2 and snap["uploaded"] == 4 and snap["failedItems"] == 0
    assert snap["attemptedDownloads"] == 6
    assert snap["errorsByCode"] == {"http_503": 4}  # only the present items were retried
    assert {p: gets(rig.origin, *p) for p in planned} == {
        p: 1 if p in missing else 2 for p in planned
    }
    assert bucket_bytes(rig.direct) == expected(p for p in planned if p not in missing)
    assert failed_rows(rig.state) == []


# -- S3 faults ------------------------------------------------------------------------------
async def test_s3_slowdown_on_put_is_retried(rig: Rig) -> None:
    skus = ["100000", "100001", "100002"]
    planned = items(skus, (1, 2))
    rig.proxy.faults = ProxyFaults(fail_first_n_puts=2)
    result = await rig.run(rig.skus_file(skus), "--angles", "1-2")
    assert result.rc == 0, result.err
    snap = result.snap
    check_identity(snap, 2)
    assert snap["uploaded"] == 6 and snap["failedItems"] == 0
    assert snap["errorsByCode"] == {"s3_SlowDown": 12}
    assert rig.proxy.requests[("PUT", "put_object")] == 18
    assert dict(rig.proxy.puts) == {f"{rig.direct.bucket}/{k}": 1 for k in expected(planned)}
    # the PUT is retried, not the fetch
    assert {p: gets(rig.origin, *p) for p in planned} == {p: 1 for p in planned}
    assert bucket_bytes(rig.direct) == expected(planned)


async def test_s3_random_slowdown_counted_exactly(rig: Rig) -> None:
    skus = [str(100000 + i) for i in range(6)]
    planned = items(skus, (1, 2))
    rig.proxy.faults = ProxyFaults(slowdown_rate=0.4, kinds={"put_object"})
    result = await rig.run(rig.skus_file(skus), "--angles", "1-2")
    snap = result.snap
    check_identity(snap, 2)
    assert result.rc == (1 if snap["failedItems"] else 0), result.err
    injected = rig.proxy.injected["slowdown"]
    assert injected > 0
    assert snap["errorsByCode"] == {"s3_SlowDown": injected}
    assert all(n == 1 for n in rig.proxy.puts.values())
    failed = {(s, a) for s, a, _, _ in failed_rows(rig.state)}
    assert len(failed) == snap["failedItems"]
    assert bucket_bytes(rig.direct) == expected(p for p in planned if p not in failed)


def _seed_fail_once(rate: float) -> int:
    """A seed whose first draw is below ``rate`` and the next few are not."""
    for seed in range(10_000):
        rng = random.Random(seed)
        draws = [rng.random() for _ in range(4)]
        if draws[0] < rate and all(d >= rate for d in draws[1:]):
            return seed
    raise AssertionError("no seed")


async def test_s3_slowdown_on_listing_is_retried(rig: Rig) -> None:
    skus = ["100000", "100001"]
    planned = items(skus, (1, 2))
    rig.proxy.faults = ProxyFaults(slowdown_rate=0.5, kinds={"list"})
    rig.proxy.rng = random.Random(_seed_fail_once(0.5))
    result = await rig.run(rig.skus_file(skus), "--angles", "1-2")
    assert result.rc == 0, result.err
    snap = result.snap
    check_identity(snap, 2)
    assert rig.proxy.injected["slowdown"] == 1
    assert snap["errorsByCode"] == {"s3_SlowDown": 1}
    assert snap["uploaded"] == 4
    assert bucket_bytes(rig.direct) == expected(planned)


async def test_s3_listing_throttled_throughout_falls_back_to_head(rig: Rig) -> None:
    """A listing that stays throttled is retried, counted, and the page's items are checked
    one HEAD each instead: the run completes, nothing is written twice."""
    skus = ["100000", "100001"]
    planned = items(skus, (1, 2))
    rig.direct.client().put_object(
        Bucket=rig.direct.bucket, Key=key("100000", 1), Body=b"already here"
    )
    rig.proxy.faults = ProxyFaults(slowdown_rate=1.0, kinds={"list"})
    result = await rig.run(rig.skus_file(skus), "--angles", "1-2")
    assert result.rc == 0, result.err
    snap = result.snap
    check_identity(snap, 2)
    assert snap["errorsByCode"] == {"s3_SlowDown": 3}
    assert snap["uploaded"] == 3 and snap["skippedExists"] == 1
    assert rig.proxy.count("head_object") == 4
    assert gets(rig.origin, "100000", 1) == 0
    body = expected(planned)
    body[key("100000", 1)] = b"already here"
    assert bucket_bytes(rig.direct) == body


@pytest.mark.parametrize("fault", ["drop_rate", "reset_rate"])
async def test_s3_connection_lost_is_one_counted_attempt(rig: Rig, fault: str) -> None:
    """A dropped connection, before or after S3 wrote the object, is one attempt the engine
    counts: the S3 client never re-sends the PUT on its own (aiohttp would, once, on a
    reused connection), so 2 items x 3 attempts are 6 PUTs, each written at most once."""
    skus = ["100000", "100001"]
    rig.proxy.faults = ProxyFaults(**{fault: 1.0}, kinds={"put_object"})
    result = await rig.run(rig.skus_file(skus), "--angles", "1")
    assert result.rc == 1, result.err
    snap = result.snap
    check_identity(snap, 1)
    assert snap["errorsByCode"] == {"s3_connection": 6} and snap["failedItems"] == 2
    assert rig.proxy.requests[("PUT", "put_object")] == 6
    written = 3 if fault == "reset_rate" else 0
    assert all(n == written for n in rig.proxy.puts.values()), rig.proxy.puts
    assert rig.proxy.lost_puts == rig.proxy.puts


async def test_carryover_found_in_place_stays_out_of_the_existence_split(rig: Rig) -> None:
    """Every PUT of an item written but its answer lost: the item fails (exit 1) with its
    object in place. The next run's carryover finds it (HEAD), without a new PUT, and the run's
    own existence split leaves it out (carryover is not part of the counters)."""
    first_key = f"{rig.direct.bucket}/{key('100000', 1)}"
    rig.proxy.faults = ProxyFaults(reset_rate=1.0, kinds={"put_object"})
    first = await rig.run(rig.skus_file(["100000"]), "--angles", "1")
    assert first.rc == 1, first.err
    assert rig.proxy.puts == {first_key: 3} and rig.proxy.lost_puts == {first_key: 3}

    rig.proxy.faults = ProxyFaults()
    rig.reset()
    second = await rig.run(rig.skus_file(["200000"], "others.txt"), "--angles", "1")
    assert second.rc == 0, second.err
    snap = second.snap
    check_identity(snap, 1)
    assert snap["carryover"] == {"planned": 1, "done": 1, "failed": 0}
    assert snap["uploaded"] == 1 and snap["skippedExists"] == 0
    assert snap["existence"] == {"foundAtStart": 0, "written": 1, "stillMissing": 0}
    assert rig.proxy.puts == {f"{rig.direct.bucket}/{key('200000', 1)}": 1}
    assert failed_rows(rig.state) == []


async def test_preflight_retries_a_transient_s3_failure(rig: Rig) -> None:
    """A 503 SlowDown or a stall past the timeout on the preflight's HeadBucket is retried,
    not exit 2; a server that keeps failing is exit 2 after the policy's attempts, naming the
    bucket."""
    skus = ["100000"]
    for faults in (
        ProxyFaults(slowdown_rate=0.5, kinds={"head_bucket"}),
        ProxyFaults(stall_rate=0.5, stall_seconds=1.5, kinds={"head_bucket"}),
    ):
        rig.reset()
        rig.proxy.faults = faults
        rig.proxy.rng = random.Random(_seed_fail_once(0.5))
        result = await rig.run(rig.skus_file(skus), "--angles", "1")
        assert result.rc == 0, result.err
        assert rig.proxy.count("head_bucket") == 2 and sum(rig.proxy.injected.values()) == 1
    assert bucket_bytes(rig.direct) == expected(items(skus, (1,)))

    rig.reset()
    rig.proxy.faults = ProxyFaults(error_rate=1.0, kinds={"head_bucket"})
    result = await rig.run(rig.skus_file(["100001"]), "--angles", "1")
    assert result.rc == 2, result.err
    assert len(result.err.splitlines()) == 1 and "--bucket" in result.err, result.err
    assert rig.proxy.count("head_bucket") == 3 and rig.origin.gets == 0


# -- conditional writes ---------------------------------------------------------------------
@pytest.mark.parametrize("exists_check", ["list", "head"])
async def test_conditional_puts_against_moto(
    tmp_path: Path, moto_s3: S3Target, s3_proxy, origin: OriginServer, exists_check: str
) -> None:
    """Objects present before the run are never fetched nor PUT; objects that appear after the
    existence check (created by a racer while the origin serves the item) meet a conditional
    PUT: moto answers 412, the item counts as skippedExists and the racer's object survives."""
    rig = await make_rig(tmp_path, moto_s3, await s3_proxy(moto_s3), origin)
    skus = ["100000", "100001", "100002", "100003"]
    planned = items(skus, (1, 2))
    present = {("100000", 1), ("100001", 2)}
    racers = {("100002", 1), ("100003", 2)}
    client = moto_s3.client()
    for sku, angle in present:
        client.put_object(Bucket=moto_s3.bucket, Key=key(sku, angle), Body=b"present")
    raced: set[tuple[str, int]] = set()

    def race(sku: str, angle: int) -> bool:
        if (sku, angle) in racers and (sku, angle) not in raced:
            raced.add((sku, angle))
            client.put_object(Bucket=moto_s3.bucket, Key=key(sku, angle), Body=b"racer")
        return False  # never missing: the hook only races the tool's PUT

    origin.faults.not_found = race
    # The racer's PUT to moto runs inside the origin's answer: no 1 s timeout here (on a loaded
    # machine it cut the fetch short, counting errors this test is not about).
    result = await rig.run(
        rig.skus_file(skus), "--angles", "1-2", "--exists-check", exists_check, "--timeout", "20"
    )
    assert result.rc == 0, result.err
    snap = result.snap
    check_identity(snap, 2)
    assert raced == racers
    assert snap["skippedExists"] == 4 and snap["uploaded"] == 4
    assert snap["existence"]["foundAtStart"] == 2
    assert snap["errorsTotal"] == 0
    written = [p for p in planned if p not in present | racers]
    assert dict(rig.proxy.puts) == {f"{moto_s3.bucket}/{key(*p)}": 1 for p in written}
    assert rig.proxy.statuses[("put_object", 412)] == 2  # the PUTs carried If-None-Match: *
    assert all(gets(origin, *p) == 0 for p in present)
    assert all(gets(origin, *p) == 1 for p in racers)
    body = expected(written)
    body.update({key(*p): b"present" for p in present})
    body.update({key(*p): b"racer" for p in racers})
    assert bucket_bytes(moto_s3) == body


NOT_IMPLEMENTED_XML = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NotImplemented</Code>'
    b"<Message>A header you provided implies functionality that is not implemented"
    b"</Message><Header>If-None-Match</Header></Error>"
)


class RejectsConditional(ReverseProxy):
    """A proxy whose server answers 501 NotImplemented to any PUT with If-None-Match."""

    conditional_puts = 0
    plain_puts = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind, _ = classify(request.method, request.path)
        if kind == "put_object":
            if "If-None-Match" in request.headers:
                self.conditional_puts += 1
                await request.read()
                return web.Response(
                    status=501, body=NOT_IMPLEMENTED_XML, content_type="application/xml"
                )
            self.plain_puts += 1
        return await super()._handle(request)


@pytest.fixture
async def rejecting_proxy(rclone_s3: S3Target) -> AsyncIterator[RejectsConditional]:
    proxy = RejectsConditional(rclone_s3.endpoint_url)
    await proxy.start()
    yield proxy
    await proxy.stop()


async def test_server_rejecting_conditional_writes_is_remembered(
    tmp_path: Path, rclone_s3: S3Target, rejecting_proxy: RejectsConditional, origin: OriginServer
) -> None:
    rig = await make_rig(tmp_path, rclone_s3, rejecting_proxy, origin)
    skus = ["100000", "100001", "100002"]
    planned = items(skus, (1, 2))
    result = await rig.run(rig.skus_file(skus), "--angles", "1-2", "--upload-concurrency", "1")
    assert result.rc == 0, result.err
    snap = result.snap
    check_identity(snap, 2)
    assert snap["uploaded"] == 6 and snap["errorsTotal"] == 0
    assert rejecting_proxy.conditional_puts == 1  # asked once, then remembered
    assert rejecting_proxy.plain_puts == 6
    assert dict(rejecting_proxy.puts) == {f"{rclone_s3.bucket}/{k}": 1 for k in expected(planned)}
    assert bucket_bytes(rclone_s3) == expected(planned)
