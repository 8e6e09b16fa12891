"""Coverage (the seed's stats and gap) before and after a run, through the real CLI.

Expected keys are the whole catalog x angles; present keys come from a bucket listing (one
request per 1,000 keys, counted at the proxy); the gap file lists exactly the missing keys.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from helpers import Backfill, assert_counters_add_up, key_of

from tui_backfill.servers.origin import expected_body

if TYPE_CHECKING:
    pass

ANGLES = (1, 2, 3)
MakeJob = Callable[..., Awaitable[Backfill]]


def _parse(key: str) -> tuple[str, int]:
    sku, angle = key.removeprefix("rsr/highres/").removesuffix("_HR.jpg").rsplit("_", 1)
    return sku, int(angle)


def _gap(path: Path) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(set(lines)), "the gap file repeats keys"
    return lines


async def test_coverage_shows_the_improvement_and_the_exact_gap(
    make_job: MakeJob, tmp_path: Path
) -> None:
    job = await make_job(120)
    catalog = job.skus()
    assert len(catalog) == 120
    expected_all = {key_of(s, a) for s in catalog for a in ANGLES}
    # Some catalog objects are there already; over a thousand keys under the prefix that are no
    # catalog's (they interleave with the real keys) make the listing take several pages; a key
    # outside the prefix must not count either.
    seeded = {key_of(catalog[0], 1), key_of(catalog[77], 2), key_of(catalog[-1], 3)}
    strangers = {key_of(f"1000{i:04d}x", 1) for i in range(1050)} | {"other/100000_1_HR.jpg"}
    assert job.direct.data_dir is not None
    for key in seeded | strangers:  # rclone serves plain files: write them in place
        path = job.direct.data_dir / job.bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" if key in strangers else expected_body(*_parse(key)))
    assert await job.bucket_keys() == seeded | strangers

    gap_before = tmp_path / "gap-before.txt"
    result = await job.cli(
        "coverage", "--json", "--gap-file", str(gap_before), *job.coverage_flags()
    )
    assert result.rc == 0, str(result)
    before = result.json()
    assert before["catalogSkus"] == 120
    assert before["expected"] == 360
    assert before["present"] == len(seeded)
    assert before["missing"] == 360 - len(seeded)
    assert before["coveragePercent"] == round(100 * len(seeded) / 360, 2)
    assert set(_gap(gap_before)) == expected_all - seeded
    # one listing request per 1,000 keys, no HEAD per key, nothing fetched or written
    assert before["listRequests"] == job.proxy.count("list") >= 2
    assert job.proxy.count("head_object") == 0
    assert job.proxy.count("put_object") == job.proxy.count("get_object") == 0
    assert job.origin.requests == {}

    run = await job.run(limit=60)
    assert run.rc == 0, str(run)
    snapshot = run.json()
    assert_counters_add_up(snapshot)
    assert snapshot["uploaded"] > 0

    # After the run, with only --job/--state: the rest comes from the job's stored settings.
    gap_after = tmp_path / "gap-after.txt"
    fillable_after = tmp_path / "fillable-after.txt"
    result = await job.cli(
        "coverage", "--json", "--gap-file", str(gap_after),
        "--fillable-file", str(fillable_after), *job.job_flags(),
    )  # fmt: skip
    assert result.rc == 0, str(result)
    after = result.json()
    keys = await job.bucket_keys()
    present = expected_all & keys
    assert after["expected"] == 360
    assert after["present"] == len(present) == before["present"] + snapshot["uploaded"]
    assert after["missing"] == 360 - len(present)
    assert after["coveragePercent"] == round(100 * len(present) / 360, 2)
    assert after["coveragePercent"] > before["coveragePercent"]
    gap = set(_gap(gap_after))
    assert gap == expected_all - keys
    # the gap: the 404s of the SKUs the run scanned and everything of the SKUs it did not
    scanned = catalog[:60]
    not_fetched = {key_of(s, a) for s, a in job.missing_items(scanned, ANGLES)}
    not_scanned = {key_of(s, a) for s in catalog[60:] for a in ANGLES}
    assert gap == (not_fetched | not_scanned) - seeded
    # The fillable split: the gap without the keys the origin answered 404 for (noRemote),
    # in the gap file's order (catalog order, then angles); the gap file is as it was.
    assert not_fetched and not_fetched.isdisjoint(seeded)
    in_order = [key_of(s, a) for s in catalog for a in ANGLES]
    assert _gap(gap_after) == [key for key in in_order if key in gap]
    assert _gap(fillable_after) == [key for key in in_order if key in not_scanned - seeded]
    assert after["fillable"] == len(not_scanned - seeded) == after["missing"] - len(not_fetched)
    assert after["fillableFile"] == str(fillable_after)

    # The latest answer wins: the 404 items attempted again and failing (503s now) are no
    # longer known to be absent, so they are fillable again.
    job.origin.faults.missing_fraction = 0
    job.origin.faults.error_rate = 1.0
    again = await job.run(limit=60, extra=("--from-start",))
    assert again.rc == 1, str(again)
    assert again.json()["failedItems"] == len(not_fetched)
    result = await job.cli(
        "coverage", "--json", "--fillable-file", str(fillable_after), *job.job_flags()
    )
    assert result.rc == 0, str(result)
    assert result.json()["fillable"] == result.json()["missing"] == len(gap)
    assert _gap(fillable_after) == [key for key in in_order if key in gap]


async def test_coverage_of_an_empty_bucket_and_a_full_one(
    make_job: MakeJob, tmp_path: Path
) -> None:
    job = await make_job(40)
    catalog = job.skus()
    job.origin.faults.missing_fraction = 0  # the origin has everything: full coverage possible
    gap = tmp_path / "gap.txt"
    fillable = tmp_path / "fillable.txt"
    flags = job.coverage_flags(angles="1-2")
    empty = (
        await job.cli(
            "coverage", "--json", "--gap-file", str(gap), "--fillable-file", str(fillable), *flags
        )
    ).json()
    assert (empty["present"], empty["expected"], empty["coveragePercent"]) == (0, 80, 0.0)
    assert set(_gap(gap)) == {key_of(s, a) for s in catalog for a in (1, 2)}
    # nothing attempted yet (no state): every missing key is fillable
    assert empty["fillable"] == empty["missing"] == 80
    assert _gap(fillable) == _gap(gap)

    run = await job.run(limit=40, angles="1-2")
    assert run.rc == 0, str(run)
    assert run.json()["uploaded"] == 80
    full = (
        await job.cli(
            "coverage", "--json", "--gap-file", str(gap), "--fillable-file", str(fillable), *flags
        )
    ).json()
    assert (full["present"], full["missing"], full["coveragePercent"]) == (80, 0, 100.0)
    assert full["fillable"] == 0
    assert _gap(gap) == [] and _gap(fillable) == []


def downgrade_to_schema_2(state: Path) -> None:
    """The state as tui-backfill wrote it at schema 2: schema 3 only added `absent_items`
    (and, in meta, the run after which it counts)."""
    conn = sqlite3.connect(state, isolation_level=None)
    try:
        conn.execute("DROP TABLE absent_items")
        conn.execute("DELETE FROM meta WHERE key = 'absent_items_after_run'")
        conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    finally:
        conn.close()


async def test_coverage_after_an_upgrade_from_schema_2_says_fillable_misses_older_404s(
    make_job: MakeJob,
) -> None:
    """404s counted before the state kept absent keys (schema 3) are not known absent: the
    report says up to how many of the fillable ones the origin lacked, not `0 absent`."""
    job = await make_job(40)
    run = await job.run(limit=40)
    assert run.rc == 0, str(run)
    no_remote = run.json()["noRemote"]
    assert no_remote > 0
    current = (await job.cli("coverage", "--json", *job.job_flags())).json()
    assert current["missing"] - current["fillable"] == no_remote  # known, nothing untracked
    assert current["noRemoteUntracked"] == 0

    downgrade_to_schema_2(job.state)
    upgraded = (await job.cli("coverage", "--json", *job.job_flags())).json()
    assert upgraded["fillable"] == upgraded["missing"] == no_remote  # absences unknown
    assert upgraded["noRemoteUntracked"] == no_remote
    text = await job.cli("coverage", *job.job_flags())
    assert text.rc == 0, str(text)
    assert f"{no_remote} missing ({no_remote} fillable, 0 absent at the origin)" in text.out
    words = " ".join(text.out.split())
    assert f"fillable may include up to {no_remote} 404s from before the state upgrade" in words
    assert max(len(line) for line in text.out.splitlines()) <= 80
