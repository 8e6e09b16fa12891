"""What the benchmarks share: the `tui-backfill run` command line over a test catalog, a test
origin and an S3 server, and the CPU a finished child used.

Every script in bench/ that runs the real CLI builds its command here, so a change of flags
(or of what a benchmark run must say: path-style addressing, politeness cap) is made once.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from tui_backfill.servers.catalog import ACTIVE_SKUS_QUERY

CLI = (sys.executable, "-m", "tui_backfill")


def run_args(
    *,
    state: str | Path,
    origin: str,
    bucket: str,
    endpoint_url: str,
    skus: int,
    catalog: str | Path | None = None,
    skus_file: str | Path | None = None,
    concurrency: int = 3,
    upload_concurrency: int | None = None,
    progress_interval: float = 3600,
    ui: bool = False,
    extra: Iterable[str] = (),
) -> list[str]:
    """`run ...` (without the interpreter): SKUs from the test catalog's active-SKU query or a
    file, path-style S3, `--max-concurrency` raised when C is above the politeness cap of 6."""
    if (catalog is None) == (skus_file is None):
        raise ValueError("give exactly one of catalog and skus_file")
    source = ["--skus-file", str(skus_file)] if skus_file is not None else ["--skus-db", str(catalog), "--skus-query", ACTIVE_SKUS_QUERY]
    argv = ["run", "--state", str(state), *source, "--origin", origin, "--bucket", bucket, "--endpoint-url", endpoint_url,
            "--path-style", "--limit-skus", str(skus), "--concurrency", str(concurrency)]  # fmt: skip
    if concurrency > 6:
        argv += ["--max-concurrency", str(concurrency)]
    if upload_concurrency is not None:
        argv += ["--upload-concurrency", str(upload_concurrency)]
    if not ui:
        argv += ["--no-ui", "--progress-interval", f"{progress_interval:g}"]
    return [*argv, *extra]


def run_argv(**kwargs: object) -> list[str]:
    """The whole command: this interpreter, `-m tui_backfill`, then `run_args(**kwargs)`."""
    return [*CLI, *run_args(**kwargs)]  # type: ignore[arg-type]


def child_cpu_seconds(argv: list[str], env: dict[str, str], *, expect: int = 0) -> float:
    """Run argv to its end, output discarded; its CPU (user + sys) from wait4. Blocking: call it
    through asyncio.to_thread (asyncio's child watcher would otherwise reap the child first)."""
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != expect:
        raise SystemExit(f"exited {proc.returncode}, expected {expect}: {shlex.join(argv)}")  # no secret: those are in env
    return usage.ru_utime + usage.ru_stime


def require_tmux() -> None:
    if shutil.which("tmux") is None:
        raise SystemExit("tmux is needed (apt-get install tmux)")


@contextlib.contextmanager
def tmux_session(name: str, *command: str) -> Iterator[list[str]]:
    """COMMAND in a detached 80x24 session on a tmux server of its own (one per use: a killed
    server may linger), killed on the way out; yields the `tmux -L NAME` prefix for more calls."""
    tmux = ["tmux", "-L", name]
    subprocess.run([*tmux, "new-session", "-d", "-x", "80", "-y", "24", *command], check=True)
    try:
        yield tmux
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
