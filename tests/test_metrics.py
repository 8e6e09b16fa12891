"""`/metrics`: the Prometheus text parses and every value matches the `/status` snapshot."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tui_backfill.frontends.metrics import CONTENT_TYPE
from tui_backfill.frontends.metrics import render as render_status
from tui_backfill.frontends.status import JobStatus
from tui_backfill.pipelines.mirror.checkpoint import Checkpoint
from tui_backfill.pipelines.mirror.snapshot import Counters, StatusSnapshot

STATES = ["running", "pausing", "paused", "completed", "failed"]


def make_snapshot(
    *,
    errors: dict[str, int] | None = None,
    last_sku: str | None = "100421",
    state: str = "running",
    counts: tuple[int, ...] = (10, 25, 20, 5, 3, 2, 123_456),
) -> dict[str, Any]:
    scanned, attempted, uploaded, skipped, no_remote, failed, nbytes = counts
    counters = Counters(
        scanned_skus=scanned,
        attempted_downloads=attempted,
        uploaded=uploaded,
        skipped_exists=skipped,
        no_remote=no_remote,
        failed_items=failed,
        errors_by_code={"timeout": 4, "http_503": 1} if errors is None else errors,
        bytes_uploaded=nbytes,
    )
    snap = StatusSnapshot(
        job="demo",
        run_id=7,
        state=state,
        dry_run=False,
        started_at="2025-01-01T00:00:00.000Z",
        last_update_at="2025-01-01T00:01:00.000Z",
        angles_planned="1-3",
        angles_per_sku=3,
        concurrency=8,
        planned_skus=100,
        counters=counters,
        checkpoint=Checkpoint(last_sku, {"100423": (1, 3), "100424": (2,)}),
        in_flight=4,
        fetches_in_flight=3,
    )
    return {**snap.to_json(), "maxConcurrency": 32, "runStatus": "running"}


def render(snap: dict[str, Any] | None, *, job: str) -> bytes:
    """The tests spell a status as its `/status` JSON; `/metrics` renders the typed JobStatus."""
    return render_status(None if snap is None else JobStatus.from_json(snap), job=job)


def samples(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample as {(name, labels): value}, via the Prometheus text parser."""
    out = {}
    for family in text_string_to_metric_families(text.decode("utf-8")):
        for s in family.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def value(parsed: dict[Any, float], name: str, **labels: str) -> float:
    return parsed[(name, frozenset({"job": "demo", **labels}.items()))]


def assert_matches(parsed: dict[Any, float], snap: dict[str, Any]) -> None:
    outcomes = {
        "uploaded": "uploaded",
        "skipped_exists": "skippedExists",
        "no_remote": "noRemote",
        "failed": "failedItems",
    }
    for outcome, key in outcomes.items():
        assert value(parsed, "tui_backfill_items_total", outcome=outcome) == snap[key]
    errors = {
        dict(labels)["code"]: v
        for (name, labels), v in parsed.items()
        if name == "tui_backfill_errors_total"
    }
    assert errors == snap["errorsByCode"]
    assert sum(errors.values()) == snap["errorsTotal"]
    assert value(parsed, "tui_backfill_scanned_skus_total") == snap["scannedSkus"]
    assert value(parsed, "tui_backfill_attempted_downloads_total") == snap["attemptedDownloads"]
    assert value(parsed, "tui_backfill_bytes_uploaded_total") == snap["bytesUploaded"]
    assert value(parsed, "tui_backfill_in_flight_fetches") == snap["fetchesInFlight"] == 3
    assert value(parsed, "tui_backfill_in_flight_items") == snap["inFlight"] == 4
    assert value(parsed, "tui_backfill_concurrency") == snap["concurrency"]
    assert value(parsed, "tui_backfill_planned_items") == snap["plannedItems"]
    assert value(parsed, "tui_backfill_planned_skus") == snap["plannedSkus"]
    assert value(parsed, "tui_backfill_run_id") == snap["runId"]
    assert value(parsed, "tui_backfill_live") == (1.0 if snap["live"] else 0.0)
    assert value(parsed, "tui_backfill_run_present") == 1.0
    for state in STATES:
        expected = 1.0 if state == snap["state"] else 0.0
        assert value(parsed, "tui_backfill_run_state", state=state) == expected
    last_sku = snap["checkpoint"]["lastSku"] or ""
    assert value(parsed, "tui_backfill_checkpoint_info", last_sku=last_sku) == 1.0
    pending = len(snap["checkpoint"]["completedAngles"])
    assert value(parsed, "tui_backfill_checkpoint_pending_skus") == pending


def test_metrics_match_the_status_snapshot() -> None:
    snap = make_snapshot()
    parsed = samples(render(snap, job="demo"))
    assert_matches(parsed, snap)
    assert value(parsed, "tui_backfill_items_total", outcome="uploaded") == 20
    assert value(parsed, "tui_backfill_errors_total", code="timeout") == 4
    assert value(parsed, "tui_backfill_max_concurrency") == 32
    assert value(parsed, "tui_backfill_checkpoint_info", last_sku="100421") == 1
    assert value(parsed, "tui_backfill_checkpoint_pending_skus") == 2
    # A private registry: no process/platform/GC metrics of the server itself.
    assert all(name.startswith("tui_backfill_") for name, _ in parsed)
    assert CONTENT_TYPE.startswith("text/plain")


def test_metric_types_are_declared() -> None:
    families = {
        f.name: f.type
        for f in text_string_to_metric_families(render(make_snapshot(), job="demo").decode())
    }
    assert families["tui_backfill_items"] == "counter"
    assert families["tui_backfill_errors"] == "counter"
    assert families["tui_backfill_bytes_uploaded"] == "counter"
    assert families["tui_backfill_in_flight_fetches"] == "gauge"
    assert families["tui_backfill_run_state"] == "gauge"


def test_no_run_renders_only_the_run_state() -> None:
    parsed = samples(render(None, job="demo"))
    assert value(parsed, "tui_backfill_run_present") == 0
    assert all(value(parsed, "tui_backfill_run_state", state=s) == 0 for s in STATES)
    assert not [name for name, _ in parsed if name.startswith("tui_backfill_items")]
    assert {name for name, _ in parsed} == {"tui_backfill_run_present", "tui_backfill_run_state"}


def test_sparse_snapshot_of_a_run_without_progress() -> None:
    # What `status` falls back to for a run that never published a snapshot.
    snap = {"job": "demo", "runId": 3, "state": "paused", "maxConcurrency": None}
    parsed = samples(render(snap, job="demo"))
    assert value(parsed, "tui_backfill_items_total", outcome="uploaded") == 0
    assert value(parsed, "tui_backfill_run_state", state="paused") == 1
    assert value(parsed, "tui_backfill_run_id") == 3
    assert value(parsed, "tui_backfill_checkpoint_info", last_sku="") == 1
    assert not [name for name, _ in parsed if name == "tui_backfill_max_concurrency"]


def test_interrupted_is_one_of_the_run_states() -> None:
    """Every run has a series for `interrupted` (0 unless its process died), so an alert on it
    has something to watch before the first crash."""
    parsed = samples(render(None, job="demo"))
    assert value(parsed, "tui_backfill_run_state", state="interrupted") == 0
    parsed = samples(render(make_snapshot(state="interrupted"), job="demo"))
    assert value(parsed, "tui_backfill_run_state", state="interrupted") == 1
    assert all(value(parsed, "tui_backfill_run_state", state=s) == 0 for s in STATES)


def test_unknown_state_is_shown_not_dropped() -> None:
    parsed = samples(render(make_snapshot(state="abandoned"), job="demo"))
    assert value(parsed, "tui_backfill_run_state", state="abandoned") == 1
    assert all(value(parsed, "tui_backfill_run_state", state=s) == 0 for s in STATES)


def test_awkward_label_values_survive_the_round_trip() -> None:
    sku = 'A"1\\b\nñ-日本'
    code = 'http_5"03\\x é'
    snap = make_snapshot(errors={code: 3, "timeout": 1}, last_sku=sku)
    parsed = samples(render(snap, job='j"ob\\'))
    key = ("tui_backfill_checkpoint_info", frozenset({"job": 'j"ob\\', "last_sku": sku}.items()))
    assert parsed[key] == 1
    key = ("tui_backfill_errors_total", frozenset({"job": 'j"ob\\', "code": code}.items()))
    assert parsed[key] == 3


label_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)


@given(
    counts=st.tuples(*[st.integers(0, 2**40)] * 7),
    errors=st.dictionaries(label_text, st.integers(0, 10**9), max_size=5),
    last_sku=st.none() | label_text.filter(bool),
    state=st.sampled_from(STATES),
)
def test_any_snapshot_round_trips(
    counts: tuple[int, ...], errors: dict[str, int], last_sku: str | None, state: str
) -> None:
    snap = make_snapshot(counts=counts, errors=errors, last_sku=last_sku, state=state)
    assert_matches(samples(render(snap, job="demo")), snap)
