"""The hash index's listing, read ahead along the index's keys (pipelines/hash_index/listing.py).

The reading logic is checked on its own with hypothesis: any bucket, any index, any changes
between them, pages handed out are the plain listing (contiguous, in order, each key once),
and an index that matches the bucket costs exactly the plain listing's requests. The pages
here come from a sorted list (a page of 5 keys), the stride keys and row counts from a
stand-in over another (itself checked against the real index table).
Then end to end: `hash-index` runs over `rclone serve s3` through the counting proxy, which
sees the pages of a re-run asked for side by side.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import math
import shutil
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from conftest import S3Target
from helpers import Result, tool, tool_env
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tui_backfill.outcomes import ConfigError
from tui_backfill.pipelines.hash_index.listing import AHEAD, SPARE_PAGES, SPARE_SHARE, ListingAhead
from tui_backfill.seams.bucket import Listed, ListedPage
from tui_backfill.seams.index_table import IndexBusy, IndexTable
from tui_backfill.servers.proxy import ProxyFaults, ReverseProxy
from tui_backfill.servers.rclone_s3 import RcloneS3

P = 5  # keys a page, in the logic's checks


class Keys:
    """A bucket as a sorted list of keys, listed P at a time; remembers what it was asked."""

    def __init__(self, keys: set[str], fail: str | None = None, page: int = P) -> None:
        self.keys = sorted(keys)
        self.page = page
        self.asked: list[str | None] = []
        self.fail = fail  # a StartAfter whose page fails

    async def fetch(self, start_after: str | None) -> ListedPage:
        self.asked.append(start_after)
        await asyncio.sleep(0)
        if start_after is not None and start_after == self.fail:
            raise RuntimeError(f"page after {start_after} failed")
        i = 0 if start_after is None else bisect.bisect_right(self.keys, start_after)
        chunk = self.keys[i : i + self.page]
        return ListedPage([Listed(k, 1, "e", None) for k in chunk], i + self.page < len(self.keys))


class Index:
    """The index's keys as a sorted list: IndexTable.stride_keys and count_rows over it
    (checked against the table below)."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = sorted(keys)

    async def stride_keys(self, after: str | None, count: int, every: int) -> list[str]:
        i = 0 if after is None else bisect.bisect_right(self.keys, after)
        found = []
        while len(found) < count and i + every < len(self.keys):
            found.append(self.keys[i + every - 1])
            i += every
        return found

    async def count_rows(self, after: str | None, upto: str) -> int:
        i = 0 if after is None else bisect.bisect_right(self.keys, after)
        return bisect.bisect_right(self.keys, upto) - i


def reader(bucket: Keys, index: list[str], ahead: int = AHEAD) -> ListingAhead:
    """A reader of `bucket` whose stride keys are a page's worth of `index` apart at first."""
    listing = Index(index)
    return ListingAhead(
        bucket.fetch, listing.stride_keys, listing.count_rows, ahead=ahead, page_size=bucket.page
    )


async def drain(reader: ListingAhead, start: str | None, cuts: list[int]) -> list[str]:
    """Page through as the engine does (the next page after the last key handed on); `cuts`
    shorten pages as the pipeline's bound on orphan rows does (the next page goes on after
    the last key kept)."""
    out: list[str] = []
    after = start
    for n in range(10_000):
        page = await reader.page(after)
        keys = [listed.key for listed in page.objects]
        if page.truncated and keys and n < len(cuts) and cuts[n] < len(keys):
            keys = keys[: max(1, cuts[n])]
            out += keys
            after = keys[-1]
            continue
        out += keys
        if not page.truncated:
            break
        after = keys[-1]
    await reader.close()
    return out


def key(n: int) -> str:
    return f"k{n:04d}"


@st.composite
def buckets(draw: st.DrawFn) -> tuple[set[str], set[str], str | None, list[int]]:
    """A bucket, the index of it (a run ago, then changed both ways), a start, page cuts."""
    size = draw(st.integers(0, 120))
    bucket = {key(n) for n in range(size) if draw(st.booleans()) or n % 3}
    some = st.sets(st.sampled_from(sorted(bucket)), max_size=20) if bucket else st.just(set())
    gone = draw(some)
    added = {key(n) + "x" for n in draw(st.sets(st.integers(0, 130), max_size=20))}
    index = (bucket - draw(some)) | gone
    if draw(st.booleans()):
        index = set(bucket)  # unchanged
    else:
        bucket = (bucket - gone) | added
    start = draw(st.one_of(st.none(), st.builds(key, st.integers(0, 130))))
    cuts = draw(st.lists(st.integers(0, P), max_size=6)) if draw(st.booleans()) else []
    return bucket, index, start, cuts


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=buckets(), ahead=st.sampled_from([1, 2, AHEAD, 7]))
def test_the_pages_handed_out_are_the_listing(
    case: tuple[set[str], set[str], str | None, list[int]], ahead: int
) -> None:
    bucket_keys, index_keys, start, cuts = case
    bucket = Keys(bucket_keys)
    index = sorted(index_keys)
    out = asyncio.run(drain(reader(bucket, index, ahead), start, cuts))
    listing = [k for k in bucket.keys if start is None or k > start]
    assert out == listing
    plain = max(1, math.ceil(len(listing) / P))
    if not cuts and (ahead == 1 or index_keys == bucket_keys):
        assert len(bucket.asked) == plain, bucket.asked
    elif not cuts:
        # reading ahead costs more only within its spare (SPARE_PAGES x ahead, and
        # SPARE_SHARE of the pages) and the pages in flight when it gives up
        spare = SPARE_PAGES * ahead + math.ceil(SPARE_SHARE * plain) + ahead
        assert len(bucket.asked) <= plain + spare, bucket.asked


def test_pages_are_asked_for_ahead_and_a_page_that_fails_fails_when_it_is_due() -> None:
    keys = {key(n) for n in range(40)}
    index = sorted(keys)

    async def run(fail: str | None) -> tuple[Keys, list[str] | BaseException]:
        bucket = Keys(keys, fail=fail)
        listing = reader(bucket, index)
        try:
            return bucket, await drain(listing, None, [])
        except RuntimeError as exc:
            await listing.close()
            return bucket, exc

    bucket, out = asyncio.run(run(None))
    assert out == sorted(keys)
    # the first page and the three after it were asked for before the first was handed out
    assert bucket.asked[:4] == [None, key(4), key(9), key(14)]
    assert len(bucket.asked) == 8

    bucket, failed = asyncio.run(run(key(19)))
    assert isinstance(failed, RuntimeError) and str(failed) == f"page after {key(19)} failed"
    assert bucket.asked.count(key(19)) == 1


def test_a_stride_key_whose_object_is_gone_still_begins_a_page() -> None:
    # k0004 begins the second page by the index, but is gone: the first page runs past it
    # and is cut there, and the page asked for after k0004 follows with no request between
    keys = {key(n) for n in range(40)}
    bucket = Keys(keys - {key(4)})
    out = asyncio.run(drain(reader(bucket, sorted(keys)), None, []))
    assert out == sorted(keys - {key(4)})
    assert bucket.asked[0] is None
    assert sorted(bucket.asked[1:]) == [key(n) for n in range(4, 35, 5)]  # 8 pages, as plain


def test_a_page_asked_ahead_that_is_never_due_never_fails_the_listing() -> None:
    # the index holds keys the bucket no longer has: pages are asked for after some of them
    # (k0009, k0014), and the listing ends before they are due
    bucket_keys = {key(n) for n in range(10)}
    index = sorted(key(n) for n in range(30))
    reported: list[dict[str, object]] = []

    async def run() -> tuple[Keys, list[str]]:
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: reported.append(context)
        )
        bucket = Keys(bucket_keys, fail=key(9))
        out = await drain(reader(bucket, index, ahead=3), None, [])
        return bucket, out

    bucket, out = asyncio.run(run())
    assert out == sorted(bucket_keys)
    assert key(9) in bucket.asked  # asked for ahead, failed, never due
    assert reported == []  # and no "exception was never retrieved"


def _requests(
    bucket_keys: set[str], index_keys: list[str], ahead: int = AHEAD, page: int = P
) -> int:
    bucket = Keys(bucket_keys, page=page)
    out = asyncio.run(drain(reader(bucket, index_keys, ahead), None, []))
    assert out == sorted(bucket_keys)
    return len(bucket.asked)


def test_new_objects_all_over_the_bucket_cost_a_few_pages_not_twice_as_many() -> None:
    # 1 key in 100 is new (the index lacks it): pages of 100 asked for after every 100th
    # index key would each stop short of the next one and need one more page; the spacing
    # is measured on the first pages and the stride keys closed up
    keys = {key(n) for n in range(10_000)}
    index = [k for n, k in enumerate(sorted(keys)) if n % 100 != 50]
    plain = _requests(keys, index, ahead=1, page=100)
    assert plain == 100
    assert _requests(keys, index, page=100) <= plain * 1.02 + 2 * AHEAD


def test_long_runs_of_rows_with_no_object_cost_no_pages_ahead() -> None:
    # a folder deleted from the bucket whose rows remain: after the listing's end, and within it
    tail = {key(n) for n in range(50)}
    index = sorted(key(n) for n in range(5000))
    assert _requests(tail, index) <= _requests(tail, index, ahead=1) + AHEAD - 1
    middle = tail | {key(n) for n in range(4000, 4050)}
    index = sorted(key(n) for n in range(4050))
    assert _requests(middle, index) <= _requests(middle, index, ahead=1) + 2 * (AHEAD - 1)


def test_an_index_with_nothing_of_the_bucket_costs_at_most_the_spare() -> None:
    # every object is new and the index's rows lie between them, 1 to 10 to an object:
    # no spacing fits, and reading ahead is given up once it has cost its spare
    keys = {key(n) + "b" for n in range(400)}
    index = sorted(key(n) + suffix for n in range(400) for suffix in "acdefghijk"[: 1 + n % 10])
    plain = _requests(keys, index, ahead=1)
    assert plain == 80
    spare = SPARE_PAGES * AHEAD + math.ceil(SPARE_SHARE * plain)
    assert plain < _requests(keys, index) <= plain + spare + AHEAD


def test_a_page_cut_short_by_the_caller_is_not_asked_for_again() -> None:
    # the pipeline cuts a page after its 2nd key (a long run of rows with no object): the
    # rest of the page is what follows, without a request
    keys = {key(n) for n in range(12)}
    bucket = Keys(keys)
    out = asyncio.run(drain(reader(bucket, [], ahead=1), None, [2, 2, 2]))
    assert out == sorted(keys)
    assert bucket.asked == [None, key(4), key(9)]  # pages of 5: as if never cut


def test_a_page_stopped_while_it_waits_leaves_no_request_running() -> None:
    keys = sorted(key(n) for n in range(40))

    async def run(slow: str) -> list[str]:
        bucket = Keys(set(keys))
        index = Index(keys)
        running: list[asyncio.Task[ListedPage]] = []
        fetch, stride_keys = bucket.fetch, index.stride_keys

        async def slow_fetch(start_after: str | None) -> ListedPage:
            running.append(asyncio.current_task())  # type: ignore[arg-type]
            # (a page's request takes 0.5 s, or 5 s when that is where the engine stops)
            await asyncio.sleep(0 if start_after is None else 5 if slow == "fetch" else 0.5)
            return await fetch(start_after)

        async def slow_stride_keys(after: str | None, count: int, every: int) -> list[str]:
            await asyncio.sleep(5 if slow == "index" and after is not None else 0)
            return await stride_keys(after, count, every)

        listing = ListingAhead(slow_fetch, slow_stride_keys, index.count_rows, page_size=P)
        first = await listing.page(None)  # asks for the pages after k0004, k0009, k0014
        waiting = asyncio.ensure_future(listing.page(first.objects[-1].key))
        await asyncio.sleep(0.05)
        waiting.cancel()  # the engine stops (its next page is cancelled)
        await asyncio.gather(waiting, return_exceptions=True)
        await listing.close()
        await asyncio.sleep(0.01)  # a task cancelled ends at its next turn
        return [str(task.get_name()) for task in running[1:] if not task.cancelled()]

    # stopped while waiting for its page, or for the index's next stride key
    assert asyncio.run(run("fetch")) == []
    assert asyncio.run(run("index")) == []


async def _ask_table(
    path: Path, rows: list[tuple[str, str | None]]
) -> tuple[list[list[str]], list[int]]:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE files (key TEXT PRIMARY KEY, content_hash TEXT)")
        conn.executemany("INSERT INTO files VALUES (?, ?)", rows)
    conn.close()
    index = await IndexTable.open(str(path), create=False)
    try:
        strides = [await index.stride_keys(a, "p/", every=P, count=n) for a, n in STRIDES]
        counts = [await index.count_rows(a, upto, "p/") for a, upto in COUNTS]
        return strides, counts
    finally:
        await index.close()


STRIDES = ((None, 10), ("p/03", 10), (None, 1))
COUNTS = (("p/03", "p/08"), (None, "pz"), ("p/11", "pz"))


def test_stride_keys_and_row_counts_of_the_index_table(tmp_path: Path) -> None:
    rows = [(f"p/{n:02d}", None if n % 4 else "h") for n in range(12)]
    rows += [("o/1", "h"), ("pz", "h"), ("q/1", "h")]  # outside the prefix p/
    strides, counts = asyncio.run(_ask_table(tmp_path / "i.db", rows))
    # rows hashed or not; each stride key has a row after it
    assert strides == [["p/04", "p/09"], ["p/08"], ["p/04"]]
    assert counts == [5, 12, 0]  # rows under p/ only (pz and q/1 are not)
    # the stand-in the logic's checks use agrees
    index = Index([f"p/{n:02d}" for n in range(12)])
    assert [asyncio.run(index.stride_keys(a, n, P)) for a, n in STRIDES] == strides
    assert [asyncio.run(index.count_rows(a, upto)) for a, upto in COUNTS] == counts


# -- end to end ------------------------------------------------------------------------------

BUCKET = "hl-bucket"
PREFIX = "pics/"
OBJECTS = 5400


def _object_key(n: int) -> str:
    # 100 objects a directory: `rclone serve s3 --dir-cache-time 0s` reads a directory whole
    # for every request in it
    return f"{PREFIX}{n // 100:02d}/{n:05d}.jpg"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RcloneS3]:
    data = tmp_path_factory.mktemp("hl") / "s3"
    for n in range(OBJECTS):
        path = data / BUCKET / _object_key(n)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"object {n}".encode())
    (data / BUCKET / "other.jpg").write_bytes(b"outside the prefix")
    with RcloneS3(data, extra_args=("--dir-cache-time", "0s")) as rclone:
        yield rclone
    shutil.rmtree(data, ignore_errors=True)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def proxy(server: RcloneS3) -> AsyncIterator[ReverseProxy]:
    async with ReverseProxy(server.endpoint_url) as proxy:
        yield proxy


async def _run(server: RcloneS3, proxy: ReverseProxy, tmp: Path, latency: float = 0) -> Result:
    target = S3Target(server.endpoint_url, server.access_key, server.secret_key, bucket=BUCKET)
    proxy.reset_counters()
    proxy.faults = ProxyFaults(latency=latency)
    result = await tool(
        "hash-index", "--no-ui", "--state", str(tmp / "state.sqlite3"), "--job", "hl",
        "--bucket", BUCKET, "--prefix", PREFIX, "--path-style",
        "--endpoint-url", proxy.endpoint_url, "--index-db", str(tmp / "index.db"),
        env=tool_env(target), timeout=120,
    )  # fmt: skip
    assert result.rc == 0, str(result)
    return result


def _index(tmp: Path) -> dict[str, str | None]:
    conn = sqlite3.connect(tmp / "index.db")
    try:
        return dict(conn.execute("SELECT key, content_hash FROM files"))
    finally:
        conn.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_a_rerun_asks_for_its_pages_side_by_side_and_a_changed_bucket_is_listed_whole(
    server: RcloneS3, proxy: ReverseProxy, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("hl-run")
    bucket_dir = server.data_dir / BUCKET

    # A first run: no index yet, the plain listing, one page after another
    snap = (await _run(server, proxy, tmp)).snap
    assert snap["updated"] == OBJECTS
    assert proxy.requests[("GET", "list")] == math.ceil(OBJECTS / 1000)
    assert proxy.peak_in_flight["list"] == 1

    # A re-run over the unchanged bucket: as many pages, asked for side by side (each
    # request held 50 ms by the proxy, so they overlap when they are), no GET
    snap = (await _run(server, proxy, tmp, latency=0.05)).snap
    assert snap["skipped"] == OBJECTS and snap["updated"] == 0
    assert proxy.requests[("GET", "list")] == math.ceil(OBJECTS / 1000)
    assert proxy.peak_in_flight["list"] >= 2
    assert proxy.count("get_object") == 0

    # The bucket changes. The stride keys (where the index says pages begin) are 00999,
    # 01999, ...: gone are a whole page (01000-01999) and more (to 02199), a stride key
    # (00999), two more here and there; new are objects the index does not know, in two pages
    gone = [_object_key(n) for n in [*range(1000, 2200), 999, 3500, 4321]]
    added = [_object_key(n).replace(".jpg", "+.jpg") for n in (5, 6, 7, 2500, 2501)]
    for key_ in gone:
        (bucket_dir / key_).unlink()
    for key_ in added:
        (bucket_dir / key_).write_bytes(f"new {key_}".encode())
    now = OBJECTS - len(gone) + len(added)
    snap = (await _run(server, proxy, tmp)).snap
    assert snap["scannedObjects"] == now
    assert snap["updated"] == len(added) and snap["skipped"] == now - len(added)
    assert snap["orphans"] == len(gone)
    index = _index(tmp)
    for key_ in added:
        assert index[key_] == hashlib.sha256(f"new {key_}".encode()).hexdigest()
    assert all(key_ in index for key_ in gone)  # orphans are reported, never deleted
    assert proxy.count("get_object") == len(added)
    # three pages more than the plain listing's five: the first page holds 3 new objects, so
    # it stops short of 00999 and one more page fills the gap; the page asked for ahead after
    # 01999 is never due (the page after 00999 runs past it: the objects between are gone);
    # and that page spans 2,198 index rows, so the next stride key is placed that far on,
    # past what the pages after 02999 reach: the page asked for after it is not used either
    assert proxy.requests[("GET", "list")] == math.ceil(now / 1000) + 3


async def _open(path: Path, *, create: bool) -> None:
    index = await IndexTable.open(str(path), create=create)
    await index.close()


@pytest.mark.parametrize("create", [True, False], ids=["run", "dry-run"])
def test_an_index_whose_keys_ignore_case_is_refused(tmp_path: Path, create: bool) -> None:
    # rows in another order than the listing's skip objects; "A" and "a" would share a row
    path = tmp_path / "nocase.db"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE files (key TEXT COLLATE NOCASE PRIMARY KEY, content_hash TEXT)")
        conn.execute("INSERT INTO files VALUES ('a', NULL)")
    conn.close()
    before = path.read_bytes()
    with pytest.raises(ConfigError) as refused:
        asyncio.run(_open(path, create=create))
    assert refused.value.field == "--index-table"
    assert "column key compares with NOCASE" in str(refused.value)
    assert path.read_bytes() == before
    # the same table with the default collation opens
    binary = tmp_path / "binary.db"
    conn = sqlite3.connect(binary)
    with conn:
        conn.execute("CREATE TABLE files (key TEXT PRIMARY KEY, content_hash TEXT)")
    conn.close()
    asyncio.run(_open(binary, create=create))


@pytest.mark.parametrize("failing", ["stride_keys", "count_rows"])
def test_an_index_busy_for_the_stride_keys_leaves_the_plain_listing(failing: str) -> None:
    # stride keys are hints: an index busy past its timeout (IndexBusy) while they are
    # asked for leaves the rest of the run listing one page after another
    keys = {key(n) for n in range(60)}
    bucket = Keys(keys)
    index = Index(sorted(keys - {key(2)}))  # the first page stops short: count_rows is asked
    calls = {"stride_keys": 0, "count_rows": 0}

    def busy(method):  # type: ignore[no-untyped-def]
        async def call(*args):  # type: ignore[no-untyped-def]
            calls[method.__name__] += 1
            if method.__name__ == failing and calls[failing] == 2 - (failing == "count_rows"):
                raise IndexBusy("index.db: database is locked", code="index_busy")
            return await method(*args)

        return call

    listing = ListingAhead(
        bucket.fetch, busy(index.stride_keys), busy(index.count_rows), page_size=P
    )
    assert asyncio.run(drain(listing, None, [])) == sorted(keys)
    assert calls[failing] == 2 - (failing == "count_rows")  # never asked again
