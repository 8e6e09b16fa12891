"""Pure logic: angle specs, templates, checkpoint watermark maths, rates and ETA, config layers."""

from __future__ import annotations

import random

import pytest
from helpers import BRIEF_KEYS
from hypothesis import given
from hypothesis import strategies as st

from tui_backfill.core.snapshot import RateMeter, eta_seconds
from tui_backfill.core.watermark import Position, Watermark
from tui_backfill.outcomes import ConfigError
from tui_backfill.pipelines.config import resolve
from tui_backfill.pipelines.mirror.angles import parse_angles
from tui_backfill.pipelines.mirror.checkpoint import Checkpoint, WatermarkTracker
from tui_backfill.seams.templates import key_template, origin_template
from tui_backfill.seams.urls import redact_url, restore_secrets, secret_query_params, strip_password


@pytest.mark.parametrize(
    ("spec", "angles"),
    [
        ("1", (1,)),
        ("1-4", (1, 2, 3, 4)),
        ("1,2,3", (1, 2, 3)),
        ("1-2,4", (1, 2, 4)),
        ("3,1,2,2", (1, 2, 3)),
        (" 2 - 3 ", (2, 3)),
    ],
)
def test_angle_specs_are_normalised(spec: str, angles: tuple[int, ...]) -> None:
    assert parse_angles(spec) == angles


@pytest.mark.parametrize("spec", ["0", "3-1", "a", "1,,2", "", "  ", "-1", "1-", "1-2-3", "1000"])
def test_bad_angle_specs_name_the_field(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_angles(spec)
    assert str(info.value).startswith("--angles: ")
    assert "\n" not in str(info.value)


@given(st.lists(st.tuples(st.integers(1, 60), st.integers(0, 5)), min_size=1, max_size=8))
def test_angle_spec_round_trip(ranges: list[tuple[int, int]]) -> None:
    spec = ",".join(f"{low}-{low + width}" if width else str(low) for low, width in ranges)
    expected = sorted({a for low, width in ranges for a in range(low, low + width + 1)})
    assert parse_angles(spec) == tuple(expected)


def test_templates() -> None:
    template = key_template("rsr/highres/{sku}_{angle}_HR.jpg")
    assert template.render("100421", 2) == "rsr/highres/100421_2_HR.jpg"
    assert template.literal_prefix == "rsr/highres/"
    assert template.sku_first
    assert not key_template("{angle}/{sku}.jpg").sku_first
    assert origin_template("http://h/img").text == "http://h/img/{sku}_{angle}"
    for bad, field in [("x/{foo}.jpg", "--key-template"), ("x/{sku}.jpg", "--key-template")]:
        with pytest.raises(ConfigError, match=field):
            key_template(bad)
    with pytest.raises(ConfigError, match="--origin: unknown field"):
        origin_template("http://h/{bar}")


def test_watermark_advances_only_over_finished_skus() -> None:
    tracker = WatermarkTracker((1, 2))
    for sku in ("a", "b", "c"):
        tracker.dispatch(sku)
    tracker.finish("b", 1)
    tracker.finish("b", 2)
    tracker.finish("c", 2)
    assert tracker.checkpoint() == Checkpoint(None, {"b": (1, 2), "c": (2,)})
    tracker.finish("a", 2)
    assert tracker.finish("a", 1)  # the watermark moved
    assert tracker.checkpoint() == Checkpoint("b", {"c": (2,)})
    assert tracker.scanned(committed=True) == 3


def test_resume_from_checkpoint_skips_completed_angles() -> None:
    start = Checkpoint("b", {"d": (1,)})
    tracker = WatermarkTracker((1, 2), start)
    assert tracker.done_angles("d") == frozenset({1})
    assert tracker.checkpoint() == start  # nothing lost before re-dispatch
    tracker.dispatch("c")
    tracker.dispatch("d")
    tracker.finish("d", 2)
    assert tracker.checkpoint() == Checkpoint("b", {"d": (1, 2)})
    tracker.finish("c", 1)
    tracker.finish("c", 2)
    assert tracker.checkpoint() == Checkpoint("d", {})
    with pytest.raises(ValueError):
        tracker.dispatch("a")


@given(st.integers(1, 30), st.sampled_from([(1,), (1, 2), (1, 2, 3)]), st.randoms())
def test_watermark_is_always_a_valid_checkpoint(
    count: int, angles: tuple[int, ...], rnd: random.Random
) -> None:
    skus = [f"{i:04d}" for i in range(count)]
    tracker = WatermarkTracker(angles)
    for sku in skus:
        tracker.dispatch(sku)
    items = [(s, a) for s in skus for a in angles]
    rnd.shuffle(items)
    finished: set[tuple[str, int]] = set()
    for sku, angle in items:
        tracker.finish(sku, angle)
        finished.add((sku, angle))
        cp = tracker.checkpoint()
        # Every SKU up to lastSku is finished; completedAngles are exactly the finished ones after it.
        for s in skus:
            if cp.last_sku is not None and s <= cp.last_sku:
                assert all((s, a) in finished for a in angles)
        for s, done in cp.completed_angles.items():
            assert cp.last_sku is None or s > cp.last_sku
            assert set(done) == {a for a in angles if (s, a) in finished}
    assert tracker.checkpoint() == Checkpoint(skus[-1], {})
    assert tracker.finished_skus == count


@given(
    st.lists(st.booleans(), min_size=1, max_size=40),
    st.sampled_from([(0,), (1, 2)]),
    st.sets(st.integers(0, 39), max_size=5),
    st.randoms(),
)
def test_a_group_passed_finished_moves_the_watermark_as_dispatch_and_finish_do(
    finished_by_source: list[bool], members: tuple[int, ...], resumed: set[int], rnd: random.Random
) -> None:
    """The engine's short path for a group its source finished (Engine._settled): where
    `pass_finished` takes the group, the position and counts equal those of dispatching and
    finishing it; where it refuses (a group open before it, a member recorded by the resumed
    position, members missing), nothing changed."""
    groups = [f"k{i:03d}" for i in range(len(finished_by_source))]
    start = Position("k", {groups[i]: members[:1] for i in resumed if i < len(groups)})
    quick, plain = Watermark(members, start), Watermark(members, start)
    open_items: list[tuple[str, int]] = []  # items in flight, finished in a random order
    passed = 0
    for group, by_source in zip(groups, finished_by_source, strict=True):
        todo = [m for m in members if m not in plain.done_members(group)]
        if by_source and quick.pass_finished(group, set(members)):
            passed += 1
            assert not open_items and group not in start.partial
            plain.dispatch(group)
            for member in todo:
                plain.finish(group, member)
        else:
            assert quick.position() == plain.position()  # a refusal changed nothing
            for tracker in (quick, plain):
                tracker.dispatch(group)
            if by_source:
                for member in todo:
                    quick.finish(group, member)
                    plain.finish(group, member)
            else:
                open_items += [(group, member) for member in todo]
        while open_items and rnd.random() < 0.5:  # some in-flight items finish meanwhile
            done = open_items.pop(rnd.randrange(len(open_items)))
            assert quick.finish(*done) == plain.finish(*done)
        assert quick.position() == plain.position()
        assert quick.finished_groups == plain.finished_groups


def test_pass_finished_takes_the_groups_of_an_unchanged_listing_and_refuses_the_rest() -> None:
    tracker = Watermark((0,))
    for i in range(100):
        assert tracker.pass_finished(f"k{i:03d}", {0})
    assert tracker.position() == Position("k099", {})
    assert tracker.finished_groups == 100
    tracker.dispatch("k100")  # in flight: what follows waits behind it
    assert not tracker.pass_finished("k101", {0})
    assert tracker.position() == Position("k099", {})
    with pytest.raises(ValueError):
        Watermark((0,), Position("k5")).pass_finished("k4", {0})
    resumed = Watermark((1, 2), Position("a", {"c": (1,)}))
    assert not resumed.pass_finished("c", {1, 2})  # its member 1 is the position's
    assert not resumed.pass_finished("b", {1})  # member 2 not finished
    assert resumed.pass_finished("b", {1, 2})
    assert resumed.position() == Position("b", {"c": (1,)})


def test_rate_meter_and_eta() -> None:
    meter = RateMeter(window=10)
    assert meter.rates() == (0.0, 0.0, 0.0)
    for t in range(0, 31):
        meter.add(float(t), items=3.0 * t, skus=1.0 * t, nbytes=1000.0 * t)
    items, skus, nbytes = meter.rates()
    assert items == pytest.approx(3.0)
    assert skus == pytest.approx(1.0)
    assert nbytes == pytest.approx(1000.0)
    assert eta_seconds(120, 2.0) == 60.0
    assert eta_seconds(0, 0.0) == 0.0
    assert eta_seconds(5, 0.0) is None


def test_config_layers_flags_env_toml(tmp_path) -> None:
    toml = tmp_path / "backfill.toml"
    toml.write_text(
        'concurrency = 2\nangles = "1-2"\n[jobs.nightly]\nangles = "1-4"\nlimit_skus = 50\n'
    )
    flags: dict[str, object] = {"job": "nightly"}
    resolved = resolve(flags, env={}, config=str(toml))
    assert (
        resolved.settings.angles,
        resolved.settings.limit_skus,
        resolved.settings.concurrency,
    ) == ("1-4", 50, 2)
    resolved = resolve(
        flags,
        env={"TUI_BACKFILL_CONCURRENCY": "4", "TUI_BACKFILL_LIMIT_SKUS": "7"},
        config=str(toml),
    )
    assert (resolved.settings.concurrency, resolved.settings.limit_skus) == (4, 7)
    resolved = resolve(
        {"job": "nightly", "concurrency": "5"},
        env={"TUI_BACKFILL_CONCURRENCY": "4"},
        config=str(toml),
    )
    assert resolved.settings.concurrency == 5
    assert resolved.explicit["concurrency"] == "--concurrency"
    with pytest.raises(ConfigError, match="TUI_BACKFILL_CONCURRENCY: 'x' is not a whole number"):
        resolve({}, env={"TUI_BACKFILL_CONCURRENCY": "x"})
    with pytest.raises(ConfigError, match="above the politeness cap of 6"):
        resolve({"concurrency": "7"}, env={})
    assert resolve({"concurrency": "7", "max_concurrency": "8"}, env={}).settings.concurrency == 7
    # the hash index reads one's own bucket: 64 is its limit, no politeness cap
    with pytest.raises(ConfigError, match=r"100 is above --max-concurrency \(64\)"):
        resolve({"pipeline": "hash-index", "concurrency": "100"}, env={})


def test_passwords_are_stripped_and_redacted() -> None:
    url = "ftp://user:p%40ss@127.0.0.1:2121/img/{sku}_{angle}"
    assert strip_password(url) == "ftp://user@127.0.0.1:2121/img/{sku}_{angle}"
    assert "p%40ss" not in redact_url(url) and "***" in redact_url(url)


def test_snapshot_json_round_trip() -> None:
    from tui_backfill.pipelines.mirror.snapshot import Counters, StatusSnapshot, snapshot_from_json

    counters = Counters(
        scanned_skus=7,
        attempted_downloads=20,
        uploaded=15,
        skipped_exists=3,
        no_remote=2,
        failed_items=1,
        errors_by_code={"timeout": 4, "http_503": 2},
        bytes_uploaded=1234,
        found_at_start=3,
        carryover_planned=2,
        carryover_done=1,
        carryover_failed=1,
    )
    snap = StatusSnapshot(
        job="j",
        run_id=3,
        state="running",
        dry_run=False,
        started_at="2026-01-01T00:00:00.000Z",
        last_update_at="2026-01-01T00:01:00.000Z",
        angles_planned="1-3",
        angles_per_sku=3,
        concurrency=3,
        planned_skus=10,
        counters=counters,
        checkpoint=Checkpoint("0005", {"0007": (1, 3)}),
        eta_seconds=12.5,
        last_errors={"timeout": "no answer"},
        bucket="b",
        endpoint="http://e",
        origin="http://o",
    )
    data = snap.to_json()
    for key in BRIEF_KEYS:
        assert key in data
    assert data["errorsTotal"] == 6 and data["plannedItems"] == 30 and data["etaSkusRemaining"] == 3
    assert data["checkpoint"] == {"lastSku": "0005", "completedAngles": {"0007": [1, 3]}}
    assert snapshot_from_json(data).to_json() == data


async def test_slots_serve_waiters_in_order_and_follow_the_limit() -> None:
    import asyncio

    from tui_backfill.core.slots import Slots

    slots = Slots(1)
    order: list[int] = []

    async def worker(n: int) -> None:
        async with slots.hold():
            order.append(n)
            await asyncio.sleep(0.01)

    await slots.acquire()
    tasks = [asyncio.create_task(worker(n)) for n in range(4)]
    await asyncio.sleep(0)
    tasks[1].cancel()  # a waiter that leaves the queue must not take or lose a slot
    slots.release()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert order == [0, 2, 3] and slots.used == 0

    # woken, then cancelled before running: the slot goes to the next waiter
    await slots.acquire()
    first = asyncio.create_task(slots.acquire())
    second = asyncio.create_task(slots.acquire())
    await asyncio.sleep(0)
    slots.release()  # wakes `first`
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1)
    assert slots.used == 1
    slots.release()

    slots.set_limit(3)  # a larger limit lets more in at once
    await asyncio.gather(*(slots.acquire() for _ in range(3)))
    assert slots.used == 3


@pytest.mark.parametrize(
    ("given", "shown"),
    [
        ("https://h/{sku}_{angle}?token=T1", "https://h/{sku}_{angle}?token=***"),
        ("https://h/{sku}?X-Amz-Signature=a&X-Amz-Credential=b", "https://h/{sku}?X-Amz-Signature=***&X-Amz-Credential=***"),
        ("https://h/{sku}?apiKey=k&Auth_Token=t&client-secret=s", "https://h/{sku}?apiKey=***&Auth_Token=***&client-secret=***"),
        ("https://h/{sku}?sig=s&pass=p&width=40", "https://h/{sku}?sig=***&pass=***&width=40"),
        ("https://h/get?key={sku}_{angle}&size=hr", "https://h/get?key={sku}_{angle}&size=hr"),
        ("https://h/{sku}?token=&a", "https://h/{sku}?token=&a"),
        ("ftp://u:pw@h/{sku}?password=x", "ftp://u:***@h/{sku}?password=***"),
    ],
)  # fmt: skip
def test_secret_query_values_are_redacted_and_never_stored(given: str, shown: str) -> None:
    """A token in the origin's query showed in status, the API and the stored settings."""
    assert redact_url(given) == shown
    stored = strip_password(given)
    assert stored == shown.replace("u:***@", "u@")
    assert strip_password(stored) == stored  # a URL given again compares equal once stripped
    assert restore_secrets(stored, given) == given
    if secret_query_params(stored):
        with pytest.raises(ConfigError, match=r"^TUI_BACKFILL_ORIGIN: .*never stored"):
            restore_secrets(stored, None)
        with pytest.raises(ConfigError):
            restore_secrets(stored, given.replace("=", "=other", 1) + "&x=1")
    else:
        assert restore_secrets(stored, None) == stored


def test_origin_without_fields_gets_the_seed_naming_before_its_query() -> None:
    template = origin_template("https://h/img/?token=abc")
    assert template.render_url("A B", 2) == "https://h/img/A%20B_2?token=abc"
    assert origin_template("https://h/get?key={sku}_{angle}").render_url("x", 1) == (
        "https://h/get?key=x_1"
    )


def test_the_angle_spec_is_parsed_once_with_the_settings() -> None:
    settings = resolve({"angles": "4,1-2"}, env={}).settings
    assert settings.angles == "4,1-2" and settings.angle_list == (1, 2, 4)
    assert settings.replace(angles="3").angle_list == (3,)
    with pytest.raises(ConfigError, match="TUI_BACKFILL_ANGLES"):  # named where it came from
        resolve({}, env={"TUI_BACKFILL_ANGLES": "3-1"})


def test_a_job_name_with_a_trailing_line_break_is_refused() -> None:
    with pytest.raises(ConfigError, match="--job"):
        resolve({"job": "nightly\n"}, env={})


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_number_of_seconds_must_be_finite(value: str) -> None:
    with pytest.raises(ConfigError, match=r"--backoff.*finite"):
        resolve({"backoff": value}, env={})


def test_a_stopped_runs_progress_line_gives_its_average_rate_not_zero() -> None:
    from tui_backfill.frontends.headless import progress_line

    times = {"startedAt": "2026-12-07T05:00:00.000Z", "lastUpdateAt": "2026-12-07T05:00:20.000Z"}
    image = {"job": "j", "uploaded": 300, "skippedExists": 90, "noRemote": 8, "failedItems": 2}
    live = progress_line({**image, **times, "state": "running", "itemsPerSecond": 17.25}, 200)
    assert "17.2 obj/s" in live and "avg" not in live
    done = progress_line({**image, **times, "state": "completed", "itemsPerSecond": 0.0}, 200)
    assert "avg 20.0 obj/s" in done and "| 0.0 obj/s" not in done  # 400 items over 20 s
    assert "ETA" not in done and "ETA --:--" in live  # nothing left to estimate once stopped
    repaired = {"pipeline": "hash-index", "mode": "repair", "verified": 5, "mismatched": 2}
    assert "repaired 2" in progress_line({**repaired, "updated": 2, "state": "completed"}, 200)
    hashed = {"pipeline": "hash-index", "job": "h", "scannedObjects": 1000, "bytesHashed": 4e6}
    done = progress_line({**hashed, **times, "state": "paused", "itemsPerSecond": 0.0}, 200)
    assert "avg 50.0 obj/s 200.0 KB/s" in done
    assert "avg - obj/s" in progress_line({**hashed, "state": "completed"}, 200)
