"""tui-backfill against its peers: the minimal loop of the card's libraries and `rclone copy`.

Starts `rclone serve s3` behind the counting reverse proxy (a child process, so S3 requests are
counted by kind) and the origin (in this process: 64 KiB objects, latency L, a fraction of 404s,
GET/HEAD counted, with an HTML listing for rclone's http backend). Each repetition runs, in a
rotating order, the same N objects (N/3 SKUs x angles 1-3) into fresh buckets with:

- tui-backfill: `python -m tui_backfill run --no-ui` (fresh state, `--concurrency C`);
- the minimal loop (`bench/minimal_loop.py`): aiohttp GET + aiobotocore HEAD + PUT, a semaphore
  of C around each object's HEAD + GET + PUT;
- `rclone copy` from the origin over HTTP to the S3 server, `--transfers C --checkers C`. The
  404 items are not in the origin's listing (rclone cannot know them), so it handles N minus
  those;
- the GET-only ceiling (`bench/get_loop.py`): aiohttp GETs alone, C at a time, nothing
  written: what any client can reach against this origin (L plus the per-request cost of the
  loopback and of aiohttp at both ends);
- with `--baseline-tree PATH`, a second tui-backfill, `tui-backfill@NAME` (`--baseline-label`,
  default the tree's short commit): the same `run --no-ui` command line, run by this venv's
  interpreter with `-P` and `PYTHONPATH=PATH`, so with that tree's own code (e.g. a worktree of
  an older commit; it must take the same flags and dependencies). The two tui-backfills are one
  unit of the rotation, run back to back, this tree's first in even repetitions. Before the
  runs, the package each one imports is checked and printed, and both are compiled to bytecode.
  `--only-tui` leaves the other tools out.

Reports medians over the repetitions of: objects/s (objects written + 404s handled, per second
of work: the run's own startedAt..lastUpdateAt, the loop's own timer, rclone's elapsed time),
client CPU ms per object (user + sys of the child from os.wait4, process startup included; and
sampled during the work only), peak RSS, origin and S3 requests per object, how full the C
origin slots were, and how busy each process was during the work (CPU seconds per second,
sampled from /proc: the client, rclone serve s3, the proxy, the origin = this process, and the
rest of the machine), so a result says which process was the bottleneck; with the ratios
tui-backfill/minimal and tui-backfill/rclone and the limit C / L. With a baseline, also the pair
ratios new/old per case: each repetition's tui-backfill over its tui-backfill@NAME, for objects/s
and client CPU per object, as the median over the repetitions with min–max, and whether each
median is within ±5 %. Prints Markdown tables and appends them, with the machine, to
bench/RESULTS.md (LEGEND explains the columns). Not part of the tests. The proxy adds a few ms
to every S3 request (the minimal loop holds its slot through two of them); `--no-proxy`
measures without it, and without S3 counts.

    .venv/bin/python bench/peers.py --latency 0.05 --concurrency 3 --objects 1200 --reps 3
    .venv/bin/python bench/peers.py --suite   # L=50 ms C=3, L=50 ms C=6, L=0 C=32
    git worktree add --detach ../old-8f705c8 8f705c8   # then, this tree's against that commit's:
    .venv/bin/python bench/peers.py --suite --reps 5 --baseline-tree ../old-8f705c8
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from common import run_argv  # bench/, beside this script
from s3_counter import CounterProcess

from tui_backfill.servers.catalog import active_skus, make_catalog
from tui_backfill.servers.origin import OriginFaults, OriginServer, is_missing
from tui_backfill.servers.rclone_s3 import RcloneS3, find_rclone

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
TUI = "tui-backfill"
TOOLS = (TUI, "minimal", "rclone", "get-only")
ANGLES = 3
OBJECT_SIZE = 64 * 1024
SUITE = ((0.05, 3, 1200), (0.05, 6, 1200), (0.0, 32, 3000))  # latency, concurrency, objects
S3_KINDS = ("head_object", "put_object", "list", "get_object", "head_bucket", "other")
S3_LABELS = {"head_object": "HEAD", "put_object": "PUT", "list": "LIST", "get_object": "GET",
             "head_bucket": "HEADb", "other": "other"}
CLK_TCK = os.sysconf("SC_CLK_TCK")
LEGEND = """# Benchmark results: tui-backfill against its peers

Appended by `bench/peers.py` (see its docstring; `--suite` runs the three cases of issue 4).
Each section is one run of the benchmark: compare tools only within a section.

- **obj/s**: objects written + 404s handled, per second of work (tui-backfill: its snapshot's
  `startedAt`..`lastUpdateAt`; the minimal loop: its own timer around the work; rclone: its
  `Elapsed time`). rclone never sees the 404 items (they are not in the origin's listing).
- **of C/L**: of the physical limit, C parallel fetches of latency L.
- **get-only**: not a tool but the origin's ceiling: aiohttp GETs alone, C at a time, nothing
  written (`bench/get_loop.py`). Since 2026-12-03 the origin answers L after a request arrives
  (`origin ms/answer`), and this reaches 96-97 % of C/L (the rest is the loopback's and aiohttp's
  cost per request at both ends); before, the origin added its own 1-3 ms (its handling, its
  timer's rounding) to L, and even this reached only 90-95 % of C/L.
- **client CPU ms/obj**: user + sys of the tool's process (`os.wait4`), with process startup
  (about 1 s of imports for the Python tools); in brackets, only during the work (sampled).
- **peak RSS**: the tool's process's `VmHWM`, sampled every 0.2 s (`ru_maxrss` from `wait4`
  would start at the forking benchmark's own RSS: Linux keeps it across exec).
- **origin req/obj**, **S3 req/obj**: requests counted at the origin and at the counting proxy
  in front of `rclone serve s3`, per object handled (HEADb: HEAD of the bucket).
- **errors**: failed attempts the tool reports (retried; no item failed in a recorded run).
- **limited by**: a heuristic reading of the figures: at >= 90 % of C/L the origin's latency;
  else a single-threaded process at >= 85 % of a core; else, when all processes together use
  >= 75 % of the cores (they queue for them), CPU, naming the busiest; else, with latency, the
  time a fetch slot spends per object in units of L.
- **origin span**: from the first origin request to the end of the last.
- **origin peak in flight**: most origin requests at once (the politeness cap is C).
- **origin slots busy**: the origin's summed request time / (C x work): how full the C slots
  were (rclone's include its HEADs).
- **slot ms/obj**: C / (obj/s): how long a fetch slot takes per object (L is the floor).
- **origin ms/answer**: the origin's mean time from a request's arrival to its answer (its
  handler's time; L by design, since the origin takes its own costs and its timer's lateness
  off the wait), so what is above it in slot ms/obj is the loopback's and the client's; in
  brackets the 10th and 90th percentiles of those times (medians over the repetitions).
- **CPU busy %**: CPU seconds per second during the work, sampled every 0.2 s from `/proc`:
  the client, `rclone serve s3`, the counting proxy, the origin (the benchmark's own process)
  and the rest (every other process on the machine, and the kernel); 100 % is one core.
- **tui-backfill@NAME** (`--baseline-tree PATH`): tui-backfill from another source tree (e.g. a
  worktree of an older commit, NAME its short commit), with the same command line, this venv's
  interpreter and `PYTHONPATH=PATH`; run back to back with tui-backfill (this tree's), in
  alternating order. `--only-tui`: only these two, no ratio to the other tools.
- **pair ratios new/old**: per repetition, this tree's tui-backfill's figure over
  tui-backfill@NAME's of the same repetition; the median over the repetitions (min–max). obj/s:
  higher is better; client CPU ms/obj (process with startup, and during the work only): lower is
  better. "within ±5 %" when the median is 0.95–1.05×, else "better" or "WORSE".
"""


class Origin(OriginServer):
    """The origin, also tracking image requests in flight: the most at once, the seconds they
    spent in the handler (summed), and when the first began and the last ended."""

    in_flight = peak = 0
    busy_seconds = first_at = last_at = 0.0
    answer_seconds: list[float]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.answer_seconds = []

    def reset_counters(self) -> None:
        super().reset_counters()
        self.in_flight = self.peak = 0
        self.busy_seconds = 0.0
        self.first_at = self.last_at = 0.0
        self.answer_seconds = []

    async def _handle_image(self, request: web.Request) -> web.StreamResponse:
        started = time.time()
        self.first_at = self.first_at or started
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        try:
            return await super()._handle_image(request)
        finally:
            self.in_flight -= 1
            self.last_at = time.time()
            self.busy_seconds += self.last_at - started
            self.answer_seconds.append(self.last_at - started)


def _p10_p90_ms(seconds: list[float]) -> tuple[float, float]:
    """The 10th and 90th percentiles of answer times, in ms ((0, 0) with none)."""
    if len(seconds) < 2:
        return (1000 * seconds[0],) * 2 if seconds else (0.0, 0.0)
    deciles = statistics.quantiles(seconds, n=10)
    return 1000 * deciles[0], 1000 * deciles[-1]


@dataclass
class Case:
    latency: float
    concurrency: int
    objects: int
    missing: float
    upload_concurrency: int

    @property
    def name(self) -> str:
        return f"L = {self.latency * 1000:.0f} ms, C = {self.concurrency}"

    @property
    def label(self) -> str:
        return f"{self.name}, {self.objects // ANGLES * ANGLES} obj"

    @property
    def limit(self) -> float | None:
        return self.concurrency / self.latency if self.latency > 0 else None


@dataclass
class Baseline:
    """A second tui-backfill from another source tree (e.g. a worktree of an older commit), run by
    this interpreter (its venv's dependencies) with the tree first on PYTHONPATH and `-P`: without
    it, `-m` puts the working directory (often this tree) first on sys.path. This venv's editable
    install of this tree is a meta-path finder consulted only after sys.path."""

    tree: Path
    label: str

    @property
    def tool(self) -> str:
        return f"{TUI}@{self.label}"

    @property
    def interpreter(self) -> list[str]:
        return [sys.executable, "-P"]

    def env(self, base: dict[str, str]) -> dict[str, str]:
        path = [str(self.tree), *filter(None, [base.get("PYTHONPATH")])]
        return {**base, "PYTHONPATH": os.pathsep.join(path)}


@dataclass
class Run:
    tool: str
    handled: int  # objects written + 404s
    written: int
    work: float  # seconds of work as the tool measures it
    wall: float  # seconds of the tool's process
    cpu: float  # client CPU seconds (user + sys), process startup included
    rss_mb: float
    origin: dict[str, int]  # GET, HEAD, index
    s3: dict[str, int] | None  # requests by kind; None without the proxy
    origin_peak: int
    origin_span: float  # seconds from the first origin request to the end of the last
    slots_busy: float  # the origin's summed request time / (C x work): how full the C slots were
    answer_ms: float  # the origin's mean time from a request's arrival to its answer
    answer_p10_p90_ms: tuple[float, float]  # and the spread of those times
    errors: int  # failed attempts the tool reports (retried or not)
    busy: dict[str, float] = field(default_factory=dict)  # process -> CPU s / s during the work

    @property
    def rate(self) -> float:
        return self.handled / self.work

    @property
    def work_cpu(self) -> float:
        """Client CPU seconds during the work (sampled), without startup and exit."""
        return self.busy["client"] * self.work


# -- processes -----------------------------------------------------------------------------
def proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a live process (``/proc/PID/stat``), None if gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def peak_rss_kib(pid: int) -> int | None:
    """The process's peak resident set (``VmHWM``, KiB) since its exec, None if gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else None


def machine_cpu() -> float:
    """CPU seconds all processes of the machine have used (``/proc/stat``: all but idle, iowait)."""
    with open("/proc/stat", encoding="ascii") as f:
        ticks = [int(x) for x in f.readline().split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLK_TCK


class Sampler:
    """Samples the CPU time of some processes (and of this one, the origin) every ``interval``,
    and the peak RSS of one (``rss_pid``).

    The peak RSS is sampled because ``ru_maxrss`` from ``wait4`` is not the child's own: Linux
    keeps it across exec, so it starts at this (forking) process's RSS, and this process holds
    the origin's cache of bodies (up to 4,096 x 64 KiB).
    """

    def __init__(self, pids: dict[str, int], rss_pid: int, interval: float = 0.2) -> None:
        self.pids = pids
        self.rss_pid = rss_pid
        self.interval = interval
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.peak_rss_kib = 0

    def sample(self) -> None:
        self.peak_rss_kib = max(self.peak_rss_kib, peak_rss_kib(self.rss_pid) or 0)
        usage = resource.getrusage(resource.RUSAGE_SELF)
        values = {"origin": usage.ru_utime + usage.ru_stime, "machine": machine_cpu()}
        for name, pid in self.pids.items():
            cpu = proc_cpu(pid)
            if cpu is not None:
                values[name] = cpu
        self.samples.append((time.time(), values))

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(self.interval)

    def busy(self, start: float, end: float, names: list[str]) -> dict[str, float]:
        """CPU seconds per second of each process between the samples nearest ``start``..``end``."""
        out = {}
        for name in names:
            points = [(t, v[name]) for t, v in self.samples if name in v]
            inside = [p for p in points if start <= p[0] <= end]
            if len(inside) < 2:  # a run shorter than two samples: use what there is
                inside = points
            (t0, c0), (t1, c1) = inside[0], inside[-1]
            out[name] = (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0
        return out


def go_duration(text: str) -> float:
    """``1h2m3.5s`` / ``850ms`` -> seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "µs": 1e-6, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"([\d.]+)(ms|µs|us|ns|h|m|s)", text)
    if not parts:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


def epoch(timestamp: str) -> float:
    """ISO-8601 UTC (``...Z``) -> seconds since the epoch."""
    return dt.datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def snapshot_seconds(snap: dict[str, Any]) -> float:
    return epoch(snap["lastUpdateAt"]) - epoch(snap["startedAt"])


def tui_package(interpreter: list[str], env: dict[str, str]) -> Path:
    """The `tui_backfill` package directory that this interpreter command and environment import
    (as the run's `-m tui_backfill` would, from the same working directory), compiled to bytecode
    first, so that no contender's first run pays for compiling it."""
    code = "import tui_backfill; print(tui_backfill.__file__)"
    out = subprocess.run([*interpreter, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    package = Path(out.strip()).resolve().parent
    subprocess.run([*interpreter, "-m", "compileall", "-q", str(package)], env=env, check=True, stdout=subprocess.DEVNULL)
    return package


def git_describe(tree: Path) -> str:
    """`abc1234`, or `abc1234 with uncommitted changes in tui_backfill/`."""
    head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "tui_backfill"],
                           capture_output=True, text=True).stdout.strip()
    return f"{head}{' with uncommitted changes in tui_backfill/' if dirty else ''}"


# -- the benchmark -------------------------------------------------------------------------
class Bench:
    def __init__(self, case: Case, reps: int, tmp: Path, use_proxy: bool,
                 baseline: Baseline | None = None, only_tui: bool = False) -> None:
        self.case = case
        self.baseline = baseline
        # the rotation's units: the two tui-backfills are one unit, run back to back (in
        # alternating order), so each repetition's pair sees the same moment of the machine
        tui = (TUI, baseline.tool) if baseline is not None else (TUI,)
        self.units: list[tuple[str, ...]] = [tui, *([] if only_tui else [(t,) for t in TOOLS if t != TUI])]
        self.tools = [t for unit in self.units for t in unit]
        self.reps = reps
        self.tmp = tmp
        self.use_proxy = use_proxy
        self.skus_file = tmp / "skus.txt"
        self.skus: list[str] = []
        self.expected_missing = 0
        self.s3: RcloneS3 | None = None
        self.proxy: CounterProcess | None = None
        self.origin: Origin | None = None
        self.endpoint_url = ""

    def bucket(self, rep: int, tool: str) -> str:
        return f"r{rep}-{'tui-baseline' if self.is_baseline(tool) else tool}"  # a label may not suit a bucket name

    def is_baseline(self, tool: str) -> bool:
        return self.baseline is not None and tool == self.baseline.tool

    def prepare(self) -> None:
        skus = self.case.objects // ANGLES
        make_catalog(self.tmp / "catalog.sqlite3", skus, 0)
        self.skus = active_skus(self.tmp / "catalog.sqlite3")
        self.skus_file.write_text("".join(f"{s}\n" for s in self.skus))
        self.expected_missing = sum(is_missing(s, a, self.case.missing) for s in self.skus for a in range(1, ANGLES + 1))

    def names(self) -> list[str]:
        """The origin's listing: the objects it has (the 404s are not listed)."""
        return [f"{s}_{a}.jpg" for s in self.skus for a in range(1, ANGLES + 1) if not is_missing(s, a, self.case.missing)]

    def base_env(self) -> dict[str, str]:
        assert self.s3 is not None
        return {**os.environ, **self.s3.env(), "AWS_ENDPOINT_URL": self.endpoint_url}

    def command(self, tool: str, bucket: str) -> tuple[list[str], dict[str, str]]:
        c, s3, origin = self.case, self.s3, self.origin
        assert s3 is not None and origin is not None
        env = self.base_env()
        if tool.startswith(TUI):
            argv = run_argv(state=self.tmp / f"{bucket}.sqlite3", skus_file=self.skus_file, origin=origin.index_template,
                            bucket=bucket, endpoint_url=self.endpoint_url, skus=len(self.skus), concurrency=c.concurrency,
                            upload_concurrency=c.upload_concurrency, extra=["--angles", f"1-{ANGLES}"])
            if self.is_baseline(tool):  # the same command line (8f705c8's `run` takes all of it), its tree's code
                assert self.baseline is not None and argv[:3] == [sys.executable, "-m", "tui_backfill"], argv
                argv, env = [*self.baseline.interpreter, *argv[1:]], self.baseline.env(env)
        elif tool == "get-only":
            argv = [sys.executable, str(BENCH / "get_loop.py"), "--skus-file", str(self.skus_file), "--angles", str(ANGLES),
                    "--concurrency", str(c.concurrency), "--origin", origin.index_template]
        elif tool == "minimal":
            argv = [sys.executable, str(BENCH / "minimal_loop.py"), "--skus-file", str(self.skus_file), "--angles", str(ANGLES),
                    "--concurrency", str(c.concurrency), "--origin", origin.index_template, "--bucket", bucket,
                    "--endpoint-url", self.endpoint_url]
        else:
            config = self.tmp / "rclone.conf"
            config.write_text("")
            env.update({
                "RCLONE_CONFIG": str(config),
                "RCLONE_CONFIG_ORIGIN_TYPE": "http",
                "RCLONE_CONFIG_ORIGIN_URL": origin.base_url + origin.index_prefix,
                "RCLONE_CONFIG_DST_TYPE": "s3",
                "RCLONE_CONFIG_DST_PROVIDER": "Other",
                "RCLONE_CONFIG_DST_ENDPOINT": self.endpoint_url,
                "RCLONE_CONFIG_DST_ACCESS_KEY_ID": s3.access_key,
                "RCLONE_CONFIG_DST_SECRET_ACCESS_KEY": s3.secret_key,
                "RCLONE_CONFIG_DST_REGION": s3.region,
                "RCLONE_CONFIG_DST_FORCE_PATH_STYLE": "true",
            })
            argv = [find_rclone(), "copy", "origin:", f"dst:{bucket}/rsr/highres", "--transfers", str(c.concurrency),
                    "--checkers", str(c.concurrency), "-v", "--stats", "1h"]
        return argv, env

    async def one(self, rep: int, tool: str) -> Run:
        s3, origin = self.s3, self.origin
        assert s3 is not None and origin is not None and s3.process is not None
        bucket = self.bucket(rep, tool)
        argv, env = self.command(tool, bucket)
        if self.proxy is not None:
            await self.proxy.reset()
        origin.reset_counters()
        out, err = self.tmp / f"{bucket}.out", self.tmp / f"{bucket}.err"
        with out.open("wb") as stdout_file, err.open("wb") as stderr_file:
            started = time.perf_counter()
            # not asyncio's subprocess: its child watcher would reap the child, and os.wait4 is
            # what gives this child's own CPU time (its peak RSS is sampled: see Sampler)
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=stdout_file, stderr=stderr_file)  # noqa: ASYNC220
            pids = {"client": proc.pid, "S3 server": s3.process.pid}
            if self.proxy is not None:
                pids["proxy"] = self.proxy.pid
            sampler = Sampler(pids, rss_pid=proc.pid)  # Popen returns after the exec
            sampling = asyncio.create_task(sampler.run())
            try:
                _, status, usage = await asyncio.to_thread(os.wait4, proc.pid, 0)
            finally:
                sampling.cancel()
            wall, ended = time.perf_counter() - started, time.time()
        rc = proc.returncode = os.waitstatus_to_exitcode(status)
        stdout, stderr = out.read_text(), err.read_text()
        if rc != 0:
            raise RuntimeError(f"{tool} exited {rc}: {stderr[-2000:]}")
        total = self.case.objects // ANGLES * ANGLES
        written = sum(1 for p in (s3.data_dir / bucket).rglob("*") if p.is_file())
        if tool.startswith(TUI):
            snap = json.loads(stdout)
            assert snap["state"] == "completed" and snap["failedItems"] == 0, snap
            assert (snap["uploaded"], snap["noRemote"]) == (written, self.expected_missing), snap
            handled, work = snap["uploaded"] + snap["noRemote"], snapshot_seconds(snap)
            errors, work_end = snap["errorsTotal"], epoch(snap["lastUpdateAt"])
        elif tool == "minimal":
            result = json.loads(stdout)
            assert result["failed"] == 0 and (result["written"], result["noRemote"]) == (written, self.expected_missing), result
            handled, work = result["written"] + result["noRemote"], result["seconds"]
            errors, work_end = result["errors"], result["startedAt"] + work
        elif tool == "get-only":
            result = json.loads(stdout)
            assert result["failed"] == 0 and result["noRemote"] == self.expected_missing, result
            handled, work = result["fetched"] + result["noRemote"], result["seconds"]
            errors, work_end = 0, result["startedAt"] + work
        else:
            elapsed = re.findall(r"Elapsed time:\s*(\S+)", stderr)
            handled, work = written, go_duration(elapsed[-1]) if elapsed else wall
            errors = sum(int(n) for n in re.findall(r"^Errors:\s*(\d+)", stderr, re.MULTILINE)[-1:])
            work_end = ended
        expected_written = 0 if tool == "get-only" else total - self.expected_missing
        assert written == expected_written, (tool, written, total, self.expected_missing)
        counts = await self.proxy.counts() if self.proxy is not None else None
        busy = sampler.busy(work_end - work, work_end, [*pids, "origin", "machine"])
        machine_busy = busy.pop("machine")
        busy["rest"] = machine_busy - sum(busy.values())  # other processes on the box, the kernel
        return Run(
            tool=tool, handled=handled, written=written, work=work, wall=wall, cpu=usage.ru_utime + usage.ru_stime,
            rss_mb=sampler.peak_rss_kib / 1024,
            origin={"GET": origin.gets, "HEAD": origin.heads, "index": origin.index_gets},
            s3=counts["requests"] if counts is not None else None, origin_peak=origin.peak,
            origin_span=origin.last_at - origin.first_at, slots_busy=origin.busy_seconds / (self.case.concurrency * work),
            answer_ms=1000 * origin.busy_seconds / max(1, origin.gets + origin.heads),
            answer_p10_p90_ms=_p10_p90_ms(origin.answer_seconds),
            errors=errors, busy=busy,
        )

    async def run(self) -> dict[str, list[Run]]:
        self.prepare()
        buckets = [self.bucket(r, t) for r in range(self.reps) for t in self.tools]
        faults = OriginFaults(latency=self.case.latency, missing_fraction=self.case.missing)
        # every bucket exists before rclone starts: it caches its directory list
        async with (
            RcloneS3(self.tmp / "s3", buckets=buckets) as s3,
            Origin(faults, object_size=OBJECT_SIZE, index=self.names()) as origin,
        ):
            self.s3, self.origin = s3, origin
            for sku in self.skus:  # the bodies (and their palette: PIL) made now, not during the first run
                for angle in range(1, ANGLES + 1):
                    origin.body_for(sku, angle)
            if self.use_proxy:
                async with CounterProcess(s3.endpoint_url) as proxy:
                    self.proxy, self.endpoint_url = proxy, proxy.endpoint_url
                    return await self._reps()
            self.endpoint_url = s3.endpoint_url
            return await self._reps()

    async def _reps(self) -> dict[str, list[Run]]:
        runs: dict[str, list[Run]] = {t: [] for t in self.tools}
        for rep in range(self.reps):
            units = self.units[rep % len(self.units):] + self.units[:rep % len(self.units)]
            order = [t for unit in units for t in (unit if rep % 2 == 0 else unit[::-1])]
            for tool in order:
                run = await self.one(rep, tool)
                runs[tool].append(run)
                print(f"  {self.case.name}, rep {rep + 1}/{self.reps}, {tool:20}: {run.rate:7.1f} obj/s"
                      f" ({run.handled} in {run.work:.2f} s; process {run.wall:.2f} s; origin span {run.origin_span:.2f} s,"
                      f" slots {100 * run.slots_busy:.0f} % busy),"
                      f" {run.cpu * 1000 / run.handled:.2f} ms CPU/obj ({run.work_cpu * 1000 / run.handled:.2f} during the work),"
                      f" {run.errors} errors, busy "
                      + ", ".join(f"{k} {100 * v:.0f} %" for k, v in run.busy.items()), flush=True)
        return runs


# -- reporting -----------------------------------------------------------------------------
@dataclass
class Summary:
    rate: float
    work: float
    wall: float
    cpu_ms: float
    work_cpu_ms: float
    rss_mb: float
    origin: dict[str, float]
    s3: dict[str, float] | None
    origin_peak: int
    origin_span: float
    slots_busy: float
    answer_ms: float
    answer_p10_p90_ms: tuple[float, float]
    errors: int
    busy: dict[str, float]

    def slot_ms(self, case: Case) -> float:
        """Milliseconds an origin slot spends per object: C / (objects/s)."""
        return 1000 * case.concurrency / self.rate


def summarize(runs: list[Run]) -> Summary:
    med = statistics.median
    s3 = None
    if runs[0].s3 is not None:
        s3 = {k: med((r.s3 or {}).get(k, 0) / r.handled for r in runs) for k in S3_KINDS}
    return Summary(
        rate=med(r.rate for r in runs),
        work=med(r.work for r in runs),
        wall=med(r.wall for r in runs),
        cpu_ms=med(r.cpu * 1000 / r.handled for r in runs),
        work_cpu_ms=med(r.work_cpu * 1000 / r.handled for r in runs),
        rss_mb=med(r.rss_mb for r in runs),
        origin={k: med(r.origin[k] / r.handled for r in runs) for k in ("GET", "HEAD", "index")},
        s3=s3,
        origin_peak=max(r.origin_peak for r in runs),
        origin_span=med(r.origin_span for r in runs),
        slots_busy=med(r.slots_busy for r in runs),
        answer_ms=med(r.answer_ms for r in runs),
        answer_p10_p90_ms=(med(r.answer_p10_p90_ms[0] for r in runs), med(r.answer_p10_p90_ms[1] for r in runs)),
        errors=sum(r.errors for r in runs),
        busy={k: med(r.busy[k] for r in runs) for k in runs[0].busy},
    )


def bottleneck(case: Case, tool: str, s: Summary) -> str:
    """A heuristic reading of the busy figures (a Python process saturates at one core)."""
    cores = os.cpu_count() or 1
    ours = {k: v for k, v in s.busy.items() if k != "rest"}
    threaded = {"S3 server"} | ({"client"} if tool == "rclone" else set())  # Go: several cores
    single = {k: v for k, v in ours.items() if k not in threaded}
    hot = max(single, key=lambda k: single[k])
    if case.limit is not None and s.rate >= 0.9 * case.limit:
        return "origin latency (C/L)"
    if single[hot] >= 0.85:
        return f"{hot} CPU (one core)"
    total = sum(s.busy.values())
    if total >= 0.75 * cores:  # the processes queue for the cores: the busiest one is the likely limit
        busiest = max(ours, key=lambda k: ours[k])
        return f"CPU: {busiest} at {100 * ours[busiest]:.0f} % of a core, machine {100 * total:.0f} % of {100 * cores} %"
    if case.latency > 0:
        return f"round trips: a slot spends {s.slot_ms(case) / (1000 * case.latency):.2f} L per object"
    return "no process saturated"


def _s3_text(s3: dict[str, float] | None) -> str:
    if s3 is None:
        return "–"
    parts = (f"{S3_LABELS[k]} {v:.2f}" if v >= 0.01 else f"{S3_LABELS[k]} {v:.2g}" for k, v in s3.items() if v > 0)
    return ", ".join(parts) or "0"


def table(results: list[tuple[Case, dict[str, Summary]]]) -> str:
    """Three Markdown tables: the figures, the diagnosis (where the time went), the ratios."""
    main = ["| case | tool | obj/s | of C/L | client CPU ms/obj: process (work) | peak RSS MB"
            " | origin req/obj: GET + HEAD | S3 req/obj | errors | limited by |",
            "|---|---|---:|---:|---:|---:|---|---|---:|---|"]
    busy_keys = list(next(iter(results[0][1].values())).busy)
    diagnosis = ["| case | tool | work s (process; origin span) | origin peak in flight | origin slots busy"
                 " | slot ms/obj | origin ms/answer: mean (p10–p90) | CPU busy % (" + " / ".join(busy_keys) + ") |",
                 "|---|---|---:|---:|---:|---:|---:|---|"]
    for case, summaries in results:
        for tool, s in summaries.items():
            of_limit = f"{100 * s.rate / case.limit:.0f} %" if case.limit else "–"
            origin = f"{s.origin['GET'] + s.origin['HEAD']:.2f}: {s.origin['GET']:.2f} + {s.origin['HEAD']:.2f}"
            main.append(f"| {case.label} | {tool} | {s.rate:.1f} | {of_limit} | {s.cpu_ms:.2f} ({s.work_cpu_ms:.2f})"
                        f" | {s.rss_mb:.0f} | {origin} | {_s3_text(s.s3)} | {s.errors} | {bottleneck(case, tool, s)} |")
            peak = s.origin_peak if case.latency > 0 else "–"  # no latency: no overlap to see
            slots = f"{100 * s.slots_busy:.0f} %" if case.latency > 0 else "–"
            busy = " / ".join(f"{100 * v:.0f}" for v in s.busy.values())
            diagnosis.append(f"| {case.label} | {tool} | {s.work:.1f} ({s.wall:.1f}; {s.origin_span:.1f}) | {peak} | {slots}"
                             f" | {s.slot_ms(case):.1f} | {s.answer_ms:.1f} ({s.answer_p10_p90_ms[0]:.1f}–{s.answer_p10_p90_ms[1]:.1f}) | {busy} |")
    ratios = ["| case | limit C/L | obj/s tui-backfill / GET-only ceiling | obj/s tui-backfill / minimal | obj/s tui-backfill / rclone"
              " | CPU/obj tui-backfill / minimal: process (work) | CPU/obj tui-backfill / rclone: process (work) |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for case, s in results:
        if not {"minimal", "rclone", "get-only"} <= s.keys():  # --only-tui
            return "\n".join([*main, "", *diagnosis])
        tui, mini, rcl, ceiling = s["tui-backfill"], s["minimal"], s["rclone"], s["get-only"]
        limit = f"{case.limit:.0f} obj/s" if case.limit else "CPU"
        ratios.append(f"| {case.label} | {limit} | {100 * tui.rate / ceiling.rate:.0f} % | {tui.rate / mini.rate:.2f}× | {tui.rate / rcl.rate:.2f}×"
                      f" | {tui.cpu_ms / mini.cpu_ms:.2f}× ({tui.work_cpu_ms / mini.work_cpu_ms:.2f}×)"
                      f" | {tui.cpu_ms / rcl.cpu_ms:.2f}× ({tui.work_cpu_ms / rcl.work_cpu_ms:.2f}×) |")
    return "\n".join([*main, "", *diagnosis, "", *ratios])


@dataclass
class Pairs:
    """This tree's tui-backfill over the baseline's, one ratio per repetition (its two runs)."""

    rate: list[float]  # objects/s, new / old
    cpu: list[float]  # client CPU ms per object (process, with startup), new / old
    work_cpu: list[float]  # the same during the work only (sampled)

    @classmethod
    def of(cls, new: list[Run], old: list[Run]) -> Pairs:
        pairs = list(zip(new, old, strict=True))  # both lists in repetition order
        return cls(rate=[n.rate / o.rate for n, o in pairs],
                   cpu=[(n.cpu / n.handled) / (o.cpu / o.handled) for n, o in pairs],
                   work_cpu=[(n.work_cpu / n.handled) / (o.work_cpu / o.handled) for n, o in pairs])


def _spread(ratios: list[float]) -> str:
    return f"{statistics.median(ratios):.3f}× ({min(ratios):.3f}–{max(ratios):.3f})"


def _verdict(what: str, ratios: list[float], higher_is_better: bool) -> str:
    median = statistics.median(ratios)
    if abs(median - 1) <= 0.05:
        return f"{what} new/old {median:.3f}×: within ±5 %"
    better = (median > 1) == higher_is_better
    return f"{what} new/old {median:.3f}×: outside ±5 % ({'better' if better else 'WORSE'})"


def pair_table(pairs: list[tuple[Case, Pairs]]) -> str:
    """The pair ratios new/old per case (medians over the repetitions, min–max), then one line per
    case saying whether each median is within ±5 %."""
    rows = ["| case | pairs | obj/s new/old: median (min–max) | client CPU ms/obj new/old: process, median (min–max)"
            " | client CPU ms/obj new/old: work, median (min–max) |",
            "|---|---:|---:|---:|---:|"]
    lines = []
    for case, p in pairs:
        rows.append(f"| {case.label} | {len(p.rate)} | {_spread(p.rate)} | {_spread(p.cpu)} | {_spread(p.work_cpu)} |")
        lines.append(f"- {case.label}: {_verdict('obj/s', p.rate, True)}; {_verdict('CPU/obj (process)', p.cpu, False)}"
                     f" (work only: {statistics.median(p.work_cpu):.3f}×).")
    return "\n".join([*rows, "", *lines])


def machine(baseline: Baseline | None = None) -> str:
    model = "unknown"
    with open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    rclone = subprocess.run([find_rclone(), "version"], capture_output=True, text=True).stdout.split("\n", 1)[0]
    other = f"; {baseline.tool} at {git_describe(baseline.tree)} from {baseline.tree}" if baseline is not None else ""
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs ({model}); Python {platform.python_version()};"
            f" {rclone}; tui-backfill at {git_describe(REPO)}{other}; load average at start {load}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency", type=float, default=0.05, help="origin latency, seconds (default 0.05)")
    p.add_argument("--concurrency", type=int, default=3, help="C: parallel origin fetches (default 3)")
    p.add_argument("--objects", type=int, default=None, help="objects per run, N/3 SKUs x 3 angles (default 1200; --suite: 1200, 1200, 3000)")
    p.add_argument("--reps", type=int, default=3, help="interleaved repetitions (default 3)")
    p.add_argument("--missing", type=float, default=0.03, help="fraction of objects the origin answers 404 (default 0.03)")
    p.add_argument("--upload-concurrency", type=int, default=None, help="tui-backfill's --upload-concurrency (default max(8, C))")
    p.add_argument("--suite", action="store_true", help="the issue's cases: L=50 ms C=3, L=50 ms C=6, L=0 C=32")
    p.add_argument("--no-proxy", action="store_true", help="talk to rclone serve s3 directly (no S3 request counts)")
    p.add_argument("--baseline-tree", type=Path, default=None,
                   help="another source tree (e.g. a worktree of an older commit) whose tui-backfill runs too, interleaved,"
                        " with this venv's interpreter and dependencies; reports the pair ratios new (this tree) / old (it)")
    p.add_argument("--baseline-label", default=None, help="its name: tui-backfill@NAME (default its short commit)")
    p.add_argument("--only-tui", action="store_true", help="run only the tui-backfills (no minimal loop, rclone, GET-only)")
    p.add_argument("--results", type=Path, default=BENCH / "RESULTS.md", help="Markdown file the table is appended to")
    return p.parse_args(argv)


def contenders(args: argparse.Namespace) -> Baseline | None:
    """The baseline, if any; checks (and says) which code each tui-backfill will run: this tree's,
    and the baseline's from its own tree."""
    baseline = None
    if args.baseline_tree is not None:
        tree = args.baseline_tree.resolve()
        if tree == REPO:
            raise SystemExit(f"--baseline-tree {tree} is this tree")
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
        label = args.baseline_label or head.strip() or tree.name  # a tree outside git: its directory's name
        baseline = Baseline(tree, label)
    new_package = tui_package([sys.executable], dict(os.environ))
    print(f"{TUI} runs {new_package}", flush=True)
    if new_package != REPO / "tui_backfill":
        raise SystemExit(f"{TUI} would import {new_package}, not {REPO / 'tui_backfill'}: run from this tree, with its venv")
    if baseline is not None:
        old_package = tui_package(baseline.interpreter, baseline.env(dict(os.environ)))
        print(f"{baseline.tool} runs {old_package}", flush=True)
        if old_package != baseline.tree / "tui_backfill":
            raise SystemExit(f"{baseline.tool} would import {old_package}, not {baseline.tree / 'tui_backfill'}")
    return baseline


async def main(args: argparse.Namespace) -> None:
    def case(latency: float, concurrency: int, objects: int) -> Case:
        return Case(latency, concurrency, args.objects or objects, args.missing,
                    args.upload_concurrency or max(8, concurrency))

    cases = [case(*c) for c in SUITE] if args.suite else [case(args.latency, args.concurrency, 1200)]
    baseline = contenders(args)
    about = machine(baseline)
    print(about, flush=True)
    results: list[tuple[Case, dict[str, Summary]]] = []
    pairs: list[tuple[Case, Pairs]] = []
    for c in cases:
        with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
            print(f"{c.name}: {c.objects // ANGLES * ANGLES} objects of {OBJECT_SIZE // 1024} KiB, "
                  f"{100 * c.missing:.0f} % 404, {args.reps} repetitions", flush=True)
            runs = await Bench(c, args.reps, Path(tmp), not args.no_proxy, baseline, args.only_tui).run()
        results.append((c, {tool: summarize(r) for tool, r in runs.items()}))
        if baseline is not None:
            pairs.append((c, Pairs.of(runs[TUI], runs[baseline.tool])))
    text = table(results)
    if baseline is not None:
        text += (f"\n\nPair ratios new/old, new = {TUI} (this tree), old = {baseline.tool}: per repetition, its two"
                 f" runs (back to back, in alternating order); acceptance asks the medians to stay within ±5 %"
                 f" (obj/s at L = 50 ms, CPU/obj at L = 0).\n\n{pair_table(pairs)}")
    print(text)
    command = shlex.join([".venv/bin/python", "bench/peers.py", *sys.argv[1:]])
    through = "through the counting proxy" if not args.no_proxy else "straight to rclone serve s3 (not counted)"
    section = (f"\n## {about.split(';')[0]}: `{command}`\n\n{about}.\n\n"
               f"Objects of 64 KiB, {100 * args.missing:.0f} % of them 404 at the origin (not in rclone's listing);"
               f" medians of {args.reps} interleaved repetitions; S3 requests {through};"
               f" tui-backfill with `--upload-concurrency {args.upload_concurrency or 'max(8, C)'}`.\n\n{text}\n")
    if not args.results.exists():
        args.results.write_text(LEGEND)
    with args.results.open("a", encoding="utf-8") as f:
        f.write(section)
    print(f"appended to {args.results}")


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
