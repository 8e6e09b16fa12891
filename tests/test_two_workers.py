"""Two workers on one bucket (issue 6, point 5).

Two `run --no-ui` processes with their own state files and job names backfill overlapping SKUs
into the same bucket, started together, with a little origin latency so their work interleaves.
Each worker reaches the S3 server through its own counting proxy, so every PUT answer (2xx or
412) is attributed to the worker that sent it. The origin serves the same bytes for a (sku,
angle) to both, so an "overwrite" is a second 2xx PUT of a key.

- moto's server honours `If-None-Match: *`: no key is written twice; the loser of each race gets
  412 and counts the item as skippedExists.
- `rclone serve s3` ignores it: both runs complete and the bucket is exact, but keys can be
  written twice (with the same bytes). How many depends on how far apart the workers are when
  they check existence; the figures are printed (`-s`) and quoted in the README. Two of the four
  layouts are marked slow (`make test-slow`) to keep this file within its budget.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
from conftest import S3Target, moto_target
from helpers import Backfill, assert_brief_keys, assert_counters_add_up
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from tui_backfill.seams.bucket import classify
from tui_backfill.servers.catalog import active_skus
from tui_backfill.servers.origin import OriginServer

ANGLES = (1, 2, 3)
SKUS = 200
LATENCY = 0.01  # origin seconds per GET: the two workers' requests interleave


class _OneThreadMoto(ThreadedMotoServer):
    """moto's server answering one request at a time.

    Threaded, moto checks ``If-None-Match: *`` and stores the object in two steps without a
    lock (``S3Response.put_object``), so two conditional PUTs of one key arriving together could
    both succeed, where AWS S3 makes the check and the write atomic. One thread makes moto's
    atomic too: a second 2xx PUT of a key here is the client's doing, never the server's.
    """

    def _server_entry(self) -> None:
        app = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            self._ip_address, self._port, app, False, request_handler=MotoRequestHandler
        )
        self._server_ready_event.set()
        self._server.serve_forever()


@pytest.fixture
def atomic_moto() -> Iterator[S3Target]:
    """Like ``moto_s3``, with conditional writes as atomic as AWS S3's."""
    with moto_target(_OneThreadMoto) as target:
        yield target


def _catalog_of(path: Path, skus: list[str]) -> Path:
    """A catalog whose active SKUs are exactly ``skus``."""
    conn = sqlite3.connect(path)
    try:
        with conn:
            conn.execute(
                "CREATE TABLE products (sku TEXT NOT NULL, active INTEGER NOT NULL, name TEXT)"
            )
            conn.executemany("INSERT INTO products VALUES (?, 1, ?)", [(s, s) for s in skus])
    finally:
        conn.close()
    return path


@dataclass
class Worker:
    job: Backfill
    snap: dict[str, Any]

    def answers(self) -> dict[str, collections.Counter[int]]:
        """PUT answers this worker got, per key: {key: Counter(status)}."""
        prefix = self.job.bucket + "/"
        out: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
        for (path, status), n in self.job.proxy.put_answers.items():
            out[path.removeprefix(prefix)][status] += n
        return out

    def written(self) -> int:
        return sum(n for c in self.answers().values() for s, n in c.items() if 200 <= s < 300)

    def refused(self) -> int:
        return sum(c[412] for c in self.answers().values())


async def _race(
    tmp: Path,
    target: S3Target,
    s3_proxy: Any,
    origin: OriginServer,
    catalogs: tuple[Path, Path],
    extra: tuple[str, ...] = (),
) -> tuple[Worker, Worker]:
    """Start worker a and worker b at the same moment; both must complete (exit 0)."""
    origin.faults.missing_fraction = 0.05
    origin.faults.latency = LATENCY
    jobs = []
    for name, catalog in zip("ab", catalogs, strict=True):
        home = tmp / f"worker-{name}"
        home.mkdir()
        proxy = await s3_proxy(target)
        jobs.append(Backfill(home, origin, proxy, target, catalog, job=f"worker-{name}"))
    try:
        running = await asyncio.gather(*(j.start_run(limit=1000, extra=extra) for j in jobs))
        results = await asyncio.gather(*(r.wait(50) for r in running))
    finally:
        for job in jobs:
            await job.close()
    workers = []
    for job, result in zip(jobs, results, strict=True):
        assert result.rc == 0, f"{job.job}: {result}"
        snap = result.snap
        assert_brief_keys(snap)
        assert_counters_add_up(snap)
        assert snap["failedItems"] == 0
        workers.append(Worker(job, snap))
    a, b = workers
    return a, b


def _totals(a: Worker, b: Worker) -> dict[str, collections.Counter[int]]:
    total: dict[str, collections.Counter[int]] = collections.defaultdict(collections.Counter)
    for worker in (a, b):
        for key, statuses in worker.answers().items():
            total[key].update(statuses)
    return total


def _twice(a: Worker, b: Worker) -> int:
    """Keys written by two successful PUTs."""
    return sum(
        1 for c in _totals(a, b).values() if sum(n for s, n in c.items() if 200 <= s < 300) > 1
    )


async def test_moto_never_overwrites(
    tmp_path: Path, atomic_moto: S3Target, s3_proxy: Any, origin: OriginServer, catalog_db: Any
) -> None:
    """Same SKUs, started together: both list an empty bucket, so nearly every key is raced for; the
    conditional PUT lets exactly one win, the other gets 412 and counts skippedExists."""
    catalog = catalog_db(SKUS)
    skus = active_skus(catalog)
    a, b = await _race(tmp_path, atomic_moto, s3_proxy, origin, (catalog, catalog))

    expected = a.job.expected_objects(skus, ANGLES)
    totals = _totals(a, b)
    assert set(totals) == expected, "PUTs of keys the origin does not have, or keys never PUT"
    answers = {worker.job.job: worker.answers() for worker in (a, b)}
    for key, statuses in totals.items():
        who = {job: dict(by_key.get(key, {})) for job, by_key in answers.items()}
        assert set(statuses) <= {200, 412}, f"{key}: PUT answers {who}"
        assert statuses[200] == 1 and statuses[412] <= 1, f"{key}: PUT answers {who}"

    for worker in (a, b):
        snap = worker.snap
        assert snap["errorsTotal"] == 0, snap["errorsByCode"]
        assert snap["scannedSkus"] == len(skus)
        assert snap["uploaded"] == worker.written()
        # found by the listing, or refused by the server: both are skippedExists
        assert snap["skippedExists"] == snap["existence"]["foundAtStart"] + worker.refused()
        assert snap["failedItems"] == 0
    assert a.snap["uploaded"] + b.snap["uploaded"] == len(expected)
    contested = sum(1 for c in totals.values() if c[412])
    print(
        f"\nmoto: {len(expected)} keys, {contested} raced for; worker-a uploaded "
        f"{a.snap['uploaded']} skippedExists {a.snap['skippedExists']}, worker-b uploaded "
        f"{b.snap['uploaded']} skippedExists {b.snap['skippedExists']}; no key written twice"
    )
    assert contested >= len(expected) // 4, f"only {contested} keys raced for: no real race"
    await a.job.assert_bucket_exactly(skus, ANGLES)


@pytest.mark.parametrize(
    ("layout", "exists_check"),
    [
        ("same", "list"),
        pytest.param("same", "head", marks=pytest.mark.slow),
        pytest.param("overlap", "list", marks=pytest.mark.slow),
        ("overlap", "head"),
    ],
)
async def test_rclone_window(
    tmp_path: Path,
    rclone_s3: S3Target,
    s3_proxy: Any,
    origin: OriginServer,
    catalog_db: Any,
    layout: str,
    exists_check: str,
) -> None:
    """No conditional writes: both complete, the bucket is exact and byte-identical, and some
    keys may be written twice (same bytes). ``same``: both workers scan the same SKUs;
    ``overlap``: worker b scans the upper half of worker a's SKUs, so it is ahead of a there."""
    catalog = catalog_db(SKUS)
    skus = active_skus(catalog)
    shared = skus if layout == "same" else skus[len(skus) // 2 :]
    catalog_b = catalog if layout == "same" else _catalog_of(tmp_path / "b.sqlite3", shared)
    a, b = await _race(
        tmp_path,
        rclone_s3,
        s3_proxy,
        origin,
        (catalog, catalog_b),
        ("--exists-check", exists_check),
    )

    expected = a.job.expected_objects(skus, ANGLES)
    shared_keys = a.job.expected_objects(shared, ANGLES)
    assert set(_totals(a, b)) == expected
    for worker in (a, b):
        # rclone can answer 500 when PUTs race to create a key's directory (FIELD-NOTES): retried
        assert set(worker.snap["errorsByCode"]) <= {"s3_InternalError"}, worker.snap["errorsByCode"]
        assert worker.refused() == 0, "rclone refused a conditional PUT"
        assert worker.snap["uploaded"] == worker.written()
        assert worker.snap["skippedExists"] == worker.snap["existence"]["foundAtStart"]
    twice = _twice(a, b)
    print(
        f"\nrclone, {layout} SKUs, --exists-check {exists_check}: {twice} of {len(shared_keys)} "
        f"shared keys written twice ({len(expected)} keys in all); worker-a uploaded "
        f"{a.snap['uploaded']} skippedExists {a.snap['skippedExists']}, worker-b uploaded "
        f"{b.snap['uploaded']} skippedExists {b.snap['skippedExists']}"
    )
    assert twice <= len(shared_keys)
    if exists_check == "head" and layout == "overlap":
        # b is ahead of a on the shared SKUs: a's HEAD, taken just before its fetch, finds b's
        # objects; only keys both reach within about one fetch of each other are written twice
        assert twice <= len(shared_keys) // 4, f"{twice} of {len(shared_keys)} written twice"
    await a.job.assert_bucket_exactly(skus, ANGLES)


def test_conditional_conflict_is_retried() -> None:
    """AWS S3 answers 409 ConditionalRequestConflict when two conditional PUTs of one key are
    under way at once (moto and rclone never do): retried, so the next attempt gets 412 and the
    item counts skippedExists instead of failing."""
    error = botocore.exceptions.ClientError(
        {
            "Error": {"Code": "ConditionalRequestConflict", "Message": "conflict"},
            "ResponseMetadata": {"HTTPStatusCode": 409},
        },
        "PutObject",
    )
    classified = classify(error)
    assert classified.retryable and not classified.fatal
    assert classified.code == "s3_ConditionalRequestConflict"
