"""How the `tui-backfill` process ends (cli.console): at once when nothing is left to clean up,
its output and log complete; a normal exit when a thread or a newer exit hook is left."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

PRELUDE = """
import atexit, logging, sys, threading, time
from tui_backfill.frontends import cli
"""


def run(body: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "entry.py"
    script.write_text(PRELUDE + body + "\ncli.console()\n")
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )


def test_output_and_log_are_complete_and_the_exit_code_kept(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    done = run(
        f"""
def main():
    handler = logging.FileHandler({str(log)!r})
    logging.getLogger("t").addHandler(handler)
    logging.getLogger("t").warning("the last log line")
    sys.stdout.write("x" * 100_000 + "END")  # buffered, never flushed here
    sys.stderr.write("to stderr")
    return 3
cli.main = main
""",
        tmp_path,
    )
    assert done.returncode == 3
    assert done.stdout == "x" * 100_000 + "END"
    assert done.stderr == "to stderr"
    assert log.read_text() == "the last log line\n"


@pytest.mark.parametrize(
    "left",
    [
        "atexit.register(lambda: print('hook ran'))",
        "threading.Thread(target=lambda: (time.sleep(0.3), print('hook ran'))).start()",
    ],
    ids=["exit-hook", "thread"],
)
def test_what_main_leaves_behind_gets_a_normal_exit(left: str, tmp_path: Path) -> None:
    done = run(
        f"""
def main():
    {left}
    return 1
cli.main = main
""",
        tmp_path,
    )
    assert done.returncode == 1
    assert done.stdout == "hook ran\n"
