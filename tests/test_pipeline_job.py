"""A job's pipeline is part of the job: set by `pipeline` (flag, environment or TOML, also
under [jobs.NAME]), stored with its runs, fixed once the job has run."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from helpers import tool, tool_env
from keys_pipeline import NAME as KEYS_PIPELINE
from keys_pipeline import new_run

from tui_backfill.outcomes import ConfigError
from tui_backfill.pipelines.config import resolve, validate_for_run
from tui_backfill.pipelines.prepare import RunRequest, prepare_run
from tui_backfill.state.sqlite import StateStore


async def test_a_job_of_another_pipeline_is_exit_2_before_any_work(
    tmp_path: Path, rclone_s3: Any
) -> None:
    state = tmp_path / "state.sqlite3"
    store = await StateStore.open(str(state))
    try:
        await new_run(store, "keys", ["a", "b"])  # a job of the test pipeline
    finally:
        await store.close()
    resolved = resolve(
        {
            "state": str(state), "job": "keys", "skus_file": str(tmp_path / "none.txt"),
            "origin": "http://127.0.0.1:9/{sku}_{angle}", "bucket": rclone_s3.bucket,
        },
        env={},
    )  # fmt: skip
    with pytest.raises(ConfigError, match=f"job 'keys' is a {KEYS_PIPELINE} job") as caught:
        await prepare_run(RunRequest(resolved), env={})
    assert caught.value.field == "--job"
    conn = sqlite3.connect(state)
    try:  # nothing was started, abandoned or added
        assert conn.execute("SELECT count(*), min(status) FROM runs").fetchone() == (1, "running")
    finally:
        conn.close()


async def test_a_run_stores_its_pipeline_and_a_toml_job_names_it(
    tmp_path: Path, rclone_s3: Any, origin: Any
) -> None:
    skus = tmp_path / "skus.txt"
    skus.write_text("100001\n100002\n")
    config = tmp_path / "jobs.toml"
    config.write_text(
        f'[jobs.images]\npipeline = "mirror"\nskus_file = "{skus}"\n'
        f'origin = "{origin.url_template}"\nbucket = "{rclone_s3.bucket}"\n'
        f'endpoint_url = "{rclone_s3.endpoint_url}"\npath_style = true\n'
    )
    state = tmp_path / "state.sqlite3"
    env = tool_env(rclone_s3)
    result = await tool(
        "run", "--no-ui", "--config", str(config), "--job", "images", "--state", str(state), env=env
    )
    assert result.rc == 0, result
    conn = sqlite3.connect(state)
    try:
        (settings,) = conn.execute("SELECT settings FROM runs WHERE job = 'images'").fetchone()
    finally:
        conn.close()
    assert json.loads(settings)["pipeline"] == "mirror"


async def test_a_run_of_a_pipeline_this_version_does_not_know_is_exit_2(
    tmp_path: Path, rclone_s3: Any
) -> None:
    state = tmp_path / "state.sqlite3"
    store = await StateStore.open(str(state))
    try:
        await new_run(store, "future", ["a"])
    finally:
        await store.close()
    conn = sqlite3.connect(state)
    try:
        conn.execute("""UPDATE runs SET settings = '{"pipeline": "teleport"}'""")
        conn.commit()
    finally:
        conn.close()
    result = await tool("status", "--job", "future", "--state", str(state), env=tool_env(rclone_s3))
    assert result.rc == 2, result
    lines = result.err.splitlines()
    assert len(lines) == 1 and "--state" in lines[0] and "'teleport'" in lines[0], result.err
    assert "Traceback" not in result.err


def test_file_names_are_made_absolute_where_they_are_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files a run's settings name are stored absolute (a resume elsewhere opens the same
    ones); a run stored with a relative name before that still continues from where it was
    started, and refuses another file."""
    from types import SimpleNamespace

    from tui_backfill.outcomes import RunConflict
    from tui_backfill.pipelines.continuing import check_same_settings

    monkeypatch.chdir(tmp_path)
    flags = {"pipeline": "hash-index", "bucket": "b", "index_db": "i.sqlite3", "emit_sql": "u.sql"}
    resolved = resolve(flags, env={})
    assert resolved.settings.index_db == str(tmp_path / "i.sqlite3")
    assert resolved.settings.emit_sql == str(tmp_path / "u.sql")
    old = SimpleNamespace(id=1, settings={**resolved.settings.stored(), "index_db": "i.sqlite3"})
    check_same_settings(old, resolved)  # type: ignore[arg-type]  # the same file: continues
    other = resolve({**flags, "index_db": "other.sqlite3"}, env={})
    with pytest.raises(RunConflict, match="differs from the unfinished run 1"):
        check_same_settings(old, other)  # type: ignore[arg-type]


def test_a_switch_that_differs_from_the_unfinished_run_is_named_on_or_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from types import SimpleNamespace

    from tui_backfill.outcomes import RunConflict
    from tui_backfill.pipelines.continuing import check_same_settings

    monkeypatch.chdir(tmp_path)
    flags = {"pipeline": "hash-index", "bucket": "b", "index_db": "i.sqlite3"}
    stored = resolve(flags, env={}).settings.stored()
    run = SimpleNamespace(id=4, settings=stored)
    verify = resolve({**flags, "verify": True}, env={})
    with pytest.raises(RunConflict) as info:
        check_same_settings(run, verify)  # type: ignore[arg-type]
    assert str(info.value).startswith("--verify: on differs from the unfinished run 4 (off);")


def test_a_catalog_url_is_no_file_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only file names are made absolute: a URL (a catalog's, with its password) is left as
    given, and refused as such, never shown mangled into a path."""
    monkeypatch.chdir(tmp_path)
    url = "postgresql://u:pw-never-shown@db.example/cat"
    flags = {"skus_db": url, "skus_query": "SELECT 1", "bucket": "bkt"}
    flags["origin"] = "http://127.0.0.1:9/{sku}_{angle}"
    resolved = resolve(flags, env={})
    assert resolved.settings.skus_db == url
    with pytest.raises(ConfigError) as info:
        validate_for_run(resolved.settings, resolved.explicit)
    assert "postgresql:// catalogs are not supported" in str(info.value)
    assert "pw-never-shown" not in str(info.value) and str(tmp_path) not in str(info.value)


@pytest.mark.parametrize(
    ("argv", "env", "job"),
    [
        (["serve", "--pipeline", "hash-index"], {}, "hash-index"),
        (["run", "--pipeline", "hash-index"], {}, "hash-index"),
        (["serve"], {"TUI_BACKFILL_PIPELINE": "hash-index"}, "hash-index"),
        (["serve", "--pipeline", "hash-index", "--job", "assets"], {}, "assets"),
        (["serve", "--pipeline", "hash-index"], {"TUI_BACKFILL_JOB": "assets"}, "assets"),
        (["serve"], {}, "default"),
        (["hash-index"], {}, "hash-index"),
    ],
)
def test_a_hash_index_pipeline_names_its_default_job(
    monkeypatch: pytest.MonkeyPatch, argv: list[str], env: dict[str, str], job: str
) -> None:
    from tui_backfill.frontends import cli

    for name in ("TUI_BACKFILL_PIPELINE", "TUI_BACKFILL_JOB"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = cli.build_parser().parse_args(argv)
    assert cli._resolve(args).settings.job == job
