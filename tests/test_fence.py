"""The fence: the engine and every non-UI module import neither textual nor rich, and the
light commands (`status`, `runs`, `pause`, `--help`) import neither botocore nor textual."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

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
