"""How the `tui-backfill` process ends (cli.console): at once when nothing is left to clean up,
its output and log complete; a normal exit when a thread or a newer exit hook is left."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

PRELUDE = """
import atexit, logging, sys, threading, time
from tui_backfill.frontends import cli
"""


def run(
    body: str, tmp_path: Path, *, launch: tuple[str, ...] = ("{python}", "{script}")
) -> subprocess.CompletedProcess[str]:
    """`body` then cli.console() in a new interpreter, started by the `launch` words."""
    script = tmp_path / "entry.py"
    script.write_text(PRELUDE + body + "\ncli.console()\n")
    argv = [word.format(python=sys.executable, script=script) for word in launch]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=tmp_path)


def test_output_and_log_are_complete_and_the_exit_code_kept(tmp_path: Path) -> None:
    log = tmp_path / "run.log"
    done = run(
        f"""
import os
class Witness:  # a normal exit tears module globals down, and this says so
    def __del__(self):
        os.write(2, b" torn down")
witness = Witness()
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
    assert done.stderr == "to stderr"  # no " torn down": the process ended at once
    assert log.read_text() == "the last log line\n"


@pytest.mark.parametrize(
    ("before", "left"),
    [
        ("", "atexit.register(lambda: print('hook ran'))"),
        ("", "threading.Thread(target=lambda: (time.sleep(0.3), print('hook ran'))).start()"),
        ("atexit.register(lambda: print('hook ran'))", ""),  # a sitecustomize's, coverage's
    ],
    ids=["exit-hook", "thread", "hook-before-main"],
)
def test_what_is_left_besides_the_program_gets_a_normal_exit(
    before: str, left: str, tmp_path: Path
) -> None:
    done = run(
        f"""
{before}
def main():
    {left or "pass"}
    return 1
cli.main = main
""",
        tmp_path,
    )
    assert done.returncode == 1
    assert done.stdout == "hook ran\n"


def test_a_profiler_gets_its_report(tmp_path: Path) -> None:
    done = run("cli.main = lambda: 4", tmp_path, launch=("{python}", "-m", "cProfile", "{script}"))
    assert "function calls" in done.stdout  # (cProfile ends with 0 after a SystemExit)


@pytest.mark.parametrize("stream", ["1", "2"])
def test_a_closed_stdout_or_stderr_is_no_crash(stream: str, tmp_path: Path) -> None:
    closed = f'exec "$0" "$1" {stream}>&-'
    done = run(
        "cli.main = lambda: 5", tmp_path, launch=("sh", "-c", closed, "{python}", "{script}")
    )
    assert done.returncode == 5, done.stderr


@pytest.mark.parametrize("launch", ["script", "module"])
def test_the_collector_is_tuned_before_the_heavy_imports(launch: str, tmp_path: Path) -> None:
    """The console script's entry and `python -m tui_backfill` set the collector's thresholds
    (entry.GC_THRESHOLDS) before asyncio, aiohttp or botocore is imported."""
    from tui_backfill.frontends.entry import GC_THRESHOLDS

    watch = tmp_path / "watch.py"
    watch.write_text(
        "import gc, sys\n"
        "seen = {}\n"
        "def hook(event, args):\n"
        "    if event == 'import' and args[0] in ('asyncio', 'aiohttp', 'botocore'):\n"
        "        seen.setdefault(args[0], gc.get_threshold())\n"
        "sys.addaudithook(hook)\n"
        "import atexit, json\n"
        "atexit.register(lambda: sys.stderr.write(json.dumps(seen)))\n"
        "sys.argv = ['tui-backfill', 'hash-index', '--bucket', 'b', '--index-db', '/', '--no-ui']\n"
        + (
            "from tui_backfill.frontends.entry import console\nconsole()\n"
            if launch == "script"
            else "import runpy\nrunpy.run_module('tui_backfill', run_name='__main__')\n"
        )
    )
    done = subprocess.run(
        [sys.executable, str(watch)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    seen = json.loads(done.stderr.splitlines()[-1])
    assert tuple(seen["asyncio"]) == GC_THRESHOLDS, done.stderr
    assert tuple(seen["asyncio"]) != (700, 10, 10)  # CPython's default, which the tuning replaces
