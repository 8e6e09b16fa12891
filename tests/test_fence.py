"""The fence: the engine and every non-UI module import neither textual nor rich, the
light commands (`status`, `runs`, `pause`, `--help`) import neither botocore nor textual, and
neither does the hash index on its direct S3 path."""

from __future__ import annotations

import json
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import tui_backfill

NON_UI = sorted(
    m.name
    for m in pkgutil.walk_packages(tui_backfill.__path__, "tui_backfill.")
    if not m.name.startswith("tui_backfill.frontends.ui") and m.name != "tui_backfill.__main__"
)


def _imported_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    return {name.split(".")[0] for name in json.loads(out.splitlines()[-1])}


def test_non_ui_modules_do_not_import_textual_or_rich() -> None:
    assert "tui_backfill.core.engine" in NON_UI
    imported = _imported_after("\n".join(f"import {name}" for name in NON_UI))
    assert not imported & {"textual", "rich"}


def test_light_commands_do_not_import_botocore_or_textual() -> None:
    code = (
        "import tui_backfill.frontends.cli, tui_backfill.pipelines.prepare, tui_backfill.frontends.headless, tui_backfill.state.sqlite, "
        "tui_backfill.frontends.history"
    )
    imported = _imported_after(code)
    assert not imported & {"botocore", "aiobotocore", "textual", "rich"}


def test_the_hash_indexs_direct_s3_path_imports_no_botocore() -> None:
    """seams/s3_direct's reason to be: a hash-index run whose bucket the environment
    describes starts without botocore's 0.2 s (tests/test_s3_direct.py runs one)."""
    code = (
        "import tui_backfill.frontends.cli, tui_backfill.pipelines.hash_index.prepare, "
        "tui_backfill.pipelines.hash_index.batch, tui_backfill.seams.s3_direct, "
        "tui_backfill.seams.s3_lean, tui_backfill.seams.s3_objects, tui_backfill.seams.sigv4"
    )
    imported = _imported_after(code)
    assert not imported & {"botocore", "aiobotocore", "dateutil", "urllib3", "textual", "rich"}


REPO = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _lint_imports_with(tmp_path: Path, module: str, line: str) -> subprocess.CompletedProcess[str]:
    """The layer contracts over a copy of the package in which `module` gained `line`."""
    shutil.copytree(REPO / "tui_backfill", tmp_path / "tui_backfill")
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    if module:
        path = tmp_path / (module.replace(".", "/") + ".py")
        path.write_text(path.read_text() + f"\n{line}\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=tmp_path, env=env, capture_output=True, text=True
    )


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("", "", None),
        ("tui_backfill.core.engine", "import tui_backfill.pipelines.mirror.pipeline", "core"),
        ("tui_backfill.core.pipeline", "import tui_backfill.frontends.headless", "core"),
        ("tui_backfill.frontends.status", "import sqlite3", "sqlite3"),
        ("tui_backfill.core.counters", "import aiosqlite", "sqlite3"),
    ],
)
def test_the_layer_contracts_catch_a_wrong_import(
    tmp_path: Path, module: str, line: str, contract: str | None
) -> None:
    result = _lint_imports_with(tmp_path, module, line)
    if contract is None:
        assert result.returncode == 0, result.stdout  # the package as it is keeps them all
    else:
        assert result.returncode != 0
        assert "BROKEN" in result.stdout and contract in result.stdout
