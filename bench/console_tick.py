"""The console's own CPU per second of a run, without the noise of a run beside it.

Runs the console (the real BackfillApp, in tmux at 80x24, TERM=xterm-256color) over a
controller whose snapshot moves as a busy run's does: every counter, the rates, the ETA, the
checkpoint and the error counts change between two reads, so every panel redraws at each
refresh. After a 2 s settle it measures the process's CPU (user + sys) over SECONDS and prints
ms of CPU per second. Divided by a run's objects per second, that is what the console adds to
each object (e.g. 12 ms/s over a run of 200 obj/s at 2 ms each is +3 %). Each repetition is a
fresh process; prints the median of REPS. Also the console's start-up, paid once a process: the
CPU of importing it (Textual, beyond the engine's own modules, which a headless run imports
too) and from the app's start to its first screen.

    .venv/bin/python bench/console_tick.py [SECONDS] [REPS] [REFRESH]   # default 15 3, the app's own

REFRESH (seconds) replaces the console's refresh interval, to compare rates (e.g. 0.5).

Also `--child` (internal): the app itself, run inside tmux.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import require_tmux, tmux_session  # bench/, beside this script

from tui_backfill.core.snapshot import utc_now_iso
from tui_backfill.pipelines.mirror.checkpoint import Checkpoint
from tui_backfill.pipelines.mirror.snapshot import Counters, StatusSnapshot


def busy_snapshot(seconds: float) -> StatusSnapshot:
    """A run `seconds` in, at 180 objects/s, with a few errors and a moving checkpoint."""
    n = int(seconds * 180)
    counters = Counters(
        scanned_skus=n // 3, attempted_downloads=n + 5, uploaded=n - n // 30, skipped_exists=0,
        no_remote=n // 30, errors_by_code={"http_503": n // 100, "timeout": n // 300},
        bytes_uploaded=n * 65536,
    )  # fmt: skip
    sku = 100000 + n // 3
    return StatusSnapshot(
        job="bench", run_id=1, state="running", dry_run=False, started_at="2026-12-03T10:00:00.000Z",
        last_update_at=utc_now_iso(), angles_planned="1-3", angles_per_sku=3, concurrency=3,
        planned_skus=100_000, counters=counters,
        checkpoint=Checkpoint(str(sku), {str(sku + 1): (1,), str(sku + 2): (2, 3)}), in_flight=5,
        items_per_second=180 + n % 7, skus_per_second=60 + n % 5 / 10, bytes_per_second=180 * 65536.0,
        eta_seconds=(100_000 - n // 3) / 60, last_errors={"http_503": "HTTP 503 Service Unavailable",
        "timeout": "no complete answer within 20 s"}, bucket="bench", endpoint="http://127.0.0.1:9000",
        origin="http://127.0.0.1:8000/{sku}_{angle}", checkpoint_saved_at=utc_now_iso(), checkpoint_saved_sku=str(sku),
    )  # fmt: skip


class MovingController:
    attached = False
    job = "bench"
    max_concurrency = 6
    where = "this process"

    def lost_for(self) -> float | None:
        return None

    def resume_ways(self) -> list[str]:
        return []

    def __init__(self) -> None:
        self.began = time.monotonic()

    async def snapshot(self) -> StatusSnapshot:
        return busy_snapshot(time.monotonic() - self.began)

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def set_concurrency(self, value: int) -> None: ...

    async def failed_items(self) -> list:  # type: ignore[type-arg]
        return []


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(seconds: float, out: str, refresh: float | None) -> None:
    import asyncio

    import tui_backfill.frontends.headless
    import tui_backfill.pipelines.mirror.prepare  # noqa: F401  the engine's modules: a headless run imports them too

    cpu_before_ui = cpu_seconds()
    from tui_backfill.frontends.ui import app

    cpu_imported = cpu_seconds()
    if refresh is not None:
        app.REFRESH_EVERY = refresh

    class Measured(app.BackfillApp):
        CSS_PATH = str(Path(app.__file__).with_name("app.tcss"))  # Textual reads it beside the subclass

        async def on_mount(self) -> None:  # BackfillApp's own on_mount runs too (Textual calls both)
            first_screen: list[float] = []
            self.call_after_refresh(lambda: first_screen.append(cpu_seconds()))

            async def measure() -> None:
                await asyncio.sleep(2)
                cpu0, wall0 = cpu_seconds(), time.monotonic()
                await asyncio.sleep(seconds)
                cpu1, wall1 = cpu_seconds(), time.monotonic()
                Path(out).write_text(f"{1000 * (cpu1 - cpu0) / (wall1 - wall0):.2f} {1000 * (cpu_imported - cpu_before_ui):.1f}"
                                     f" {1000 * (first_screen[0] - cpu_imported):.1f}\n")
                self.exit(0)

            self.run_worker(measure(), exit_on_error=False)

    Measured(MovingController()).run()  # type: ignore[arg-type]


def main(seconds: float, reps: int, refresh: float | None) -> None:
    require_tmux()
    tmp = Path(tempfile.mkdtemp(prefix="bench-tick-"))
    results: list[float] = []
    starts: list[tuple[float, float]] = []
    for rep in range(reps):
        out = tmp / f"{rep}.txt"
        line = (f"TERM=xterm-256color exec {sys.executable} {Path(__file__).resolve()} --child {seconds} {out}"
                f" {refresh or ''} 2>/dev/null")
        with tmux_session(f"bench-tick-{os.getpid()}-{rep}", line):
            deadline = time.monotonic() + seconds + 30
            while not out.exists() and time.monotonic() < deadline:
                time.sleep(0.2)
        if not out.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            raise SystemExit(f"repetition {rep}: the console did not report")
        per_second, ui_import, first_screen = map(float, out.read_text().split())
        results.append(per_second)
        starts.append((ui_import, first_screen))
        print(f"  rep {rep}: {per_second:.1f} ms CPU per second; start-up: {ui_import:.0f} ms importing the console,"
              f" {first_screen:.0f} ms to its first screen", flush=True)
    print(f"console over a moving snapshot, {seconds:.0f} s per repetition, refresh every {refresh or 1:g} s:"
          f" median {statistics.median(results):.1f} ms of CPU per second ({', '.join(f'{r:.1f}' for r in results)});"
          f" start-up (once a process, medians): {statistics.median(u for u, _ in starts):.0f} ms importing the console"
          f" (Textual, beyond the engine's imports) + {statistics.median(f for _, f in starts):.0f} ms to the first screen")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(float(sys.argv[2]), sys.argv[3], float(sys.argv[4]) if len(sys.argv) > 4 else None)
    else:
        main(float(sys.argv[1]) if len(sys.argv) > 1 else 15, int(sys.argv[2]) if len(sys.argv) > 2 else 3,
             float(sys.argv[3]) if len(sys.argv) > 3 else None)
