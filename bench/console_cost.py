"""The console's cost: one workload headless vs under the console in a real terminal.

Each repetition runs the same job (fresh state and bucket) once headless (`--no-ui`) and once
with the console, both in a tmux session of their own (80x24, TERM=xterm-256color: the same
scheduling group, see `one`), interleaved, and takes from each run:

- throughput: planned items / (lastUpdateAt - startedAt) of the run's own snapshot;
- client CPU per object, three ways: over the whole process (user + sys, start-up and exit
  included: imports, the first render, the wait for `q`); during the work (the client's /proc
  CPU sampled every 0.2 s, between the snapshot's startedAt and lastUpdateAt); and in the
  steady middle of the run (CPU used / items finished between the first and last samples taken
  while 10-90 % of the items were finished (a run too short for two falls back to the work
  figure), read from the snapshot the run publishes in its state,
  every 0.5 s).
  Process minus work is the process's fixed cost (start-up, exit), reported in ms.

The steady figure is what the console adds per object on a run of any length; the work and
process figures add fixed costs (the first screen falls inside the work window, since the
run's startedAt is set just before it; Textual's import comes before), amortised over this
run's objects. Reports medians of the interleaved repetitions and the ratios console / headless.

    .venv/bin/python bench/console_cost.py [SKUS] [REPS] [ORIGIN_LATENCY_SECONDS] [--zero]

The workload is the demo's (4 ms origin with its faults, concurrency 3); the latency replaces
the 4 ms (0.02 is a typical third-party origin). `--zero` is bench/checkpoint_cost.py's
workload instead: zero latency, no faults, concurrency 32, the CPU-bound case.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import require_tmux, run_argv, tmux_session  # bench/, beside this script
from peers import Sampler, epoch, proc_cpu

from tui_backfill.frontends.demo import demo_faults
from tui_backfill.servers.catalog import make_catalog
from tui_backfill.servers.origin import OriginFaults, OriginServer
from tui_backfill.servers.rclone_s3 import RcloneS3


@dataclass
class Measured:
    rate: float  # objects per second of work
    cpu_ms: float  # client CPU ms per object, whole process
    work_cpu_ms: float  # client CPU ms per object, during the work
    steady_cpu_ms: float  # client CPU ms per object, from 10 % to 90 % of the items
    fixed_ms: float  # process CPU outside the work (start-up, exit), ms


def _children_cpu(times_output: str) -> float:
    """CPU seconds of the shell's children, from bash's `times` (second line: user sys)."""

    def secs(text: str) -> float:
        minutes, rest = text.rstrip("s").split("m")
        return int(minutes) * 60 + float(rest)

    user, system = times_output.strip().splitlines()[-1].split()
    return secs(user) + secs(system)


def _last_snapshot(state: Path) -> dict:
    """The run's latest published snapshot, read straight from the state (no process)."""
    if not state.exists():
        return {}
    try:
        with sqlite3.connect(f"file:{state}?mode=ro", uri=True, timeout=5) as db:
            row = db.execute("SELECT snapshot FROM runs ORDER BY id DESC LIMIT 1").fetchone()
    except sqlite3.Error:
        return {}
    return json.loads(row[0]) if row and row[0] else {}


def _done(snapshot: dict) -> int:
    return sum(snapshot.get(k, 0) for k in ("uploaded", "skippedExists", "noRemote", "failedItems"))


async def _progress(pid: int, state: Path, out: list[tuple[int, float]], latest: dict) -> None:
    """(items finished, client CPU seconds) each time the run publishes a snapshot (every 0.5 s;
    looked for every 50 ms, so a count is at most that much older than its CPU reading); the
    latest snapshot in ``latest`` (the one read of the state the benchmark makes)."""
    seen = None
    while True:
        snap = _last_snapshot(state)
        cpu = proc_cpu(pid)
        if cpu is not None and snap and snap.get("lastUpdateAt") != seen:
            seen = snap.get("lastUpdateAt")
            out.append((_done(snap), cpu))
            latest.update(snap)
        await asyncio.sleep(0.05)


def _steady(points: list[tuple[int, float]], items: int) -> float | None:
    """CPU seconds per item between the first and last samples within 10-90 % of the items
    finished; None when the run was too short to give two distinct ones."""
    inside = [p for p in points if 0.1 * items <= p[0] <= 0.9 * items]
    if len(inside) < 2 or inside[-1][0] == inside[0][0]:
        return None
    (d0, c0), (d1, c1) = inside[0], inside[-1]
    return (c1 - c0) / (d1 - d0)


async def _until(check, what: str, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"gave up waiting for {what} after {timeout:.0f} s")
        await asyncio.sleep(0.1)


def _child_of(ppid: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(fields[1]) == ppid:
                return int(entry.name)
    return None


async def one(mode: str, skus: int, tmp: Path, catalog: Path, s3: RcloneS3, origin: OriginServer, env: dict, rep: int,
              concurrency: int) -> Measured:
    bucket = f"bench-{mode}-{rep}"  # created before rclone starts (it caches the directory list)
    state = tmp / f"{bucket}.sqlite3"
    argv = run_argv(state=state, catalog=catalog, origin=origin.url_template, bucket=bucket, endpoint_url=s3.endpoint_url,
                    skus=skus, concurrency=concurrency, upload_concurrency=32 if concurrency == 32 else None, ui=mode == "console",
                    progress_interval=60, extra=["--timeout", "5", "--backoff", "0.2"])
    # Both modes run in a tmux session of their own: a session is its own scheduling group on
    # Linux (autogroup), so a headless child of this script would share CPU with the origin here
    # while the console got a group of its own, and the comparison would measure that instead.
    times, exit_code = tmp / f"{bucket}.times", tmp / f"{bucket}.rc"
    script = tmp / f"{bucket}.sh"
    script.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items() if k.startswith("AWS_"))
                      + f"export TERM=xterm-256color\n{shlex.join(argv)}\n"
                      + f"echo $? > {exit_code}\ntimes > {times}\n")
    sampling: list[asyncio.Task[None]] = []
    # short tmux calls, before the run starts or after it ended (the origin shares this loop)
    with tmux_session(f"bench-{os.getpid()}-{bucket}", "bash", str(script)) as tmux:
        try:
            shell = int(subprocess.run([*tmux, "display", "-p", "#{pane_pid}"], check=True, capture_output=True, text=True).stdout)  # noqa: ASYNC221
            await _until(lambda: _child_of(shell) is not None or times.exists(), "the run's process", 10)
            client = _child_of(shell)
            assert client is not None, "the run ended before it could be watched"
            sampler = Sampler({"client": client}, rss_pid=client)
            points: list[tuple[int, float]] = []
            latest: dict = {}
            sampling += [asyncio.create_task(sampler.run()), asyncio.create_task(_progress(client, state, points, latest))]
            await _until(lambda: latest.get("state") == "completed" or times.exists(), "the run to complete", 600)
            if mode == "console":
                await asyncio.sleep(0.5)  # the console shows the end
                subprocess.run([*tmux, "send-keys", "q"], check=True)  # noqa: ASYNC221
            await _until(lambda: times.exists() and len(times.read_text().strip().splitlines()) >= 2, "the process to exit", 60)
        finally:
            for task in sampling:
                task.cancel()
    assert exit_code.read_text().strip() == "0", f"{mode} run exited {exit_code.read_text().strip()}"
    cpu = _children_cpu(times.read_text())
    snap = _last_snapshot(state)
    assert snap["state"] == "completed", snap
    start, end = epoch(snap["startedAt"]), epoch(snap["lastUpdateAt"])
    items = snap["plannedItems"]
    work_cpu = sampler.busy(start, end, ["client"])["client"] * (end - start)
    steady = _steady(points, items)
    if steady is None:  # too short a run for a steady middle: the work figure stands in
        steady = work_cpu / items
    return Measured(items / (end - start), cpu * 1000 / items, work_cpu * 1000 / items, steady * 1000,
                    (cpu - work_cpu) * 1000)


async def main(skus: int, reps: int, latency: float | None, zero: bool) -> None:
    require_tmux()
    tmp = Path(tempfile.mkdtemp(prefix="bench-console-"))
    catalog = tmp / "catalog.sqlite3"
    make_catalog(str(catalog), skus, 0)
    faults = OriginFaults() if zero else demo_faults()
    if latency is not None:
        faults.latency = latency
    concurrency = 32 if zero else 3
    workload = "zero-latency workload (no faults)" if zero else "demo workload"
    buckets = tuple(f"bench-{m}-{r}" for r in range(reps) for m in ("headless", "console"))
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    async with RcloneS3(tmp / "s3", buckets=buckets) as s3, OriginServer(faults, seed=1, object_size=65536 if zero else None) as origin:
        env = dict(os.environ, **s3.env())
        rows: dict[str, list[Measured]] = {"headless": [], "console": []}
        for rep in range(reps):
            for mode in ("headless", "console") if rep % 2 == 0 else ("console", "headless"):
                m = await one(mode, skus, tmp, catalog, s3, origin, env, rep, concurrency)
                rows[mode].append(m)
                print(f"  rep {rep} {mode:8}: {m.rate:.1f} obj/s, client CPU per object {m.steady_cpu_ms:.2f} ms steady,"
                      f" {m.work_cpu_ms:.2f} ms during the work, {m.cpu_ms:.2f} ms over the process"
                      f" ({m.fixed_ms:.0f} ms outside the work)", flush=True)
    names = ("rate", "cpu_ms", "work_cpu_ms", "steady_cpu_ms", "fixed_ms")
    med = {mode: Measured(*(statistics.median(getattr(m, f) for m in ms) for f in names)) for mode, ms in rows.items()}
    pairs = list(zip(rows["console"], rows["headless"], strict=True))
    print(f"{started}: {workload}, {skus} SKUs x 3 angles, origin latency {faults.latency * 1000:.0f} ms, concurrency {concurrency},"
          f" {reps} interleaved repetitions (medians):")
    for mode, m in med.items():
        print(f"  {mode:8}: {m.rate:.1f} obj/s; client CPU per object {m.steady_cpu_ms:.2f} ms steady, {m.work_cpu_ms:.2f} ms during the work,"
              f" {m.cpu_ms:.2f} ms over the process; {m.fixed_ms:.0f} ms of the process's CPU outside the work")
    c, h = med["console"], med["headless"]
    print(f"  console / headless: throughput {100 * c.rate / h.rate:.1f} % (median of pairs {100 * statistics.median(a.rate / b.rate for a, b in pairs):.1f} %);"
          f" CPU per object steady {100 * c.steady_cpu_ms / h.steady_cpu_ms:.1f} % (median of pairs"
          f" {100 * statistics.median(a.steady_cpu_ms / b.steady_cpu_ms for a, b in pairs):.1f} %),"
          f" during the work {100 * c.work_cpu_ms / h.work_cpu_ms:.1f} % (median of pairs"
          f" {100 * statistics.median(a.work_cpu_ms / b.work_cpu_ms for a, b in pairs):.1f} %),"
          f" over the process {100 * c.cpu_ms / h.cpu_ms:.1f} % (median of pairs"
          f" {100 * statistics.median(a.cpu_ms / b.cpu_ms for a, b in pairs):.1f} %);"
          f" fixed cost +{c.fixed_ms - h.fixed_ms:.0f} ms a process (median of pairs"
          f" {statistics.median(a.fixed_ms - b.fixed_ms for a, b in pairs):+.0f} ms)")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("skus", nargs="?", type=int, default=1000)
    parser.add_argument("reps", nargs="?", type=int, default=3)
    parser.add_argument("latency", nargs="?", type=float, help="origin latency in seconds (replaces the demo's 4 ms)")
    parser.add_argument("--zero", action="store_true",
                        help="bench/checkpoint_cost.py's workload: zero latency, no faults, concurrency 32")
    args = parser.parse_args()
    asyncio.run(main(args.skus, args.reps, args.latency, args.zero))
