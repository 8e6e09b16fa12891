"""Every console snapshot on disk belongs to a snapshot test that still exists.

syrupy fails a run that leaves a snapshot unused, but not under pytest-xdist (`make test` runs
two processes), so a renamed or deleted snapshot test would leave its SVG behind unnoticed.
This keeps that gate: each `tests/__snapshots__/MODULE/NAME[PARAMS].svg` needs a `def NAME(`
in `tests/MODULE.py` that uses `snap_compare`. (A removed parameter is not caught here; a full
serial run reports it.)
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_every_snapshot_has_its_test() -> None:
    svgs = sorted((TESTS / "__snapshots__").glob("*/*.svg"))
    assert svgs, "no snapshots found: the console's snapshot tests write them"
    orphans = []
    for svg in svgs:
        module = TESTS / f"{svg.parent.name}.py"
        name = svg.stem.split("[", 1)[0]
        source = module.read_text(encoding="utf-8") if module.exists() else ""
        match = re.search(rf"^def {re.escape(name)}\((?P<args>[^)]*)\)", source, re.MULTILINE)
        if match is None or "snap_compare" not in match["args"]:
            orphans.append(str(svg.relative_to(TESTS)))
    assert orphans == [], (
        f"snapshots without their test (delete them or restore the test): {orphans}"
    )
