"""The content-hash index against its peers: `tui-backfill hash-index`, `rclone hashsum` and the
minimal loop, on `rclone serve s3` at concurrency 8.

Each case writes its objects (random bytes) straight into the data directory of a fresh
`rclone serve s3` (DIR/bench/CASE/obj-NNNNNN.bin is served as object CASE/obj-NNNNNN.bin of
bucket `bench`: much faster than PUTs), in a temporary directory, before the server starts
(rclone caches its directory listings), and computes their SHA-256s as the reference. Cases:

- `small`: 3,000 x 64 KiB; `large`: 100 x 8 MiB (goals: at least 0.9x the minimal loop's
  throughput on `small`, at least rclone's on `large`);
- `rerun`: 30,000 x 4 KiB hashed again over an unchanged bucket (goal: tui-backfill's re-run at
  least 5x faster than rclone's, which downloads everything again; start-up included). The
  tui-backfill contender first fills its index once (timed, reported as its first run), then every
  measured repetition runs the same command again on the same state and index: a new run, whose
  skip rule leaves only listings;
- `huge`: one 1 GiB object (a random 1 MiB block pattern: hashing costs the same) (goal:
  tui-backfill's peak RSS under 150 MB).

`--quick` divides the sizes (300 x 64 KiB, 10 x 8 MiB, 3,000 x 4 KiB, 64 MiB) to check the
harness in a minute. Contenders, run one after another in an order rotated every repetition:

- `rclone`: `rclone hashsum sha256 src:bench/CASE --download --checkers 8`, its remote from
  `RCLONE_CONFIG_SRC_*` variables (an empty config file otherwise); its output must list every
  object with the right hash;
- `minimal`: `bench/hash_loop.py` (aiobotocore list + 8 concurrent GETs + streaming sha256,
  nothing else), in its own process; its digest of all hashes must match;
- `floor`: `bench/hash_floor.py`, the same loop with aiohttp alone and a hand-made SigV4 (no
  botocore): what the leanest Python client reaches on this machine, so a goal out of its reach
  is out of reach for any client written in Python here; in `rerun` it only lists
  (`--list-only`), and asks for the pages tui-backfill's re-run asks for, 4 at a time after
  every 1,000th key (`--strides`; the re-run takes those keys from its index): the floor of a
  re-run that must learn what the bucket holds, and reads its listing ahead;
- `tui-backfill`: `tui-backfill hash-index --no-ui --job bench --state S --bucket bench --prefix
  CASE/ --endpoint-url URL --path-style --index-db I --concurrency 8`, credentials in AWS_*
  variables; fresh state and index every repetition (except `rerun`). Its final snapshot
  (stdout) and index table are checked; a problem is reported beside the figures, not fatal.
  By default this tree (`python -m tui_backfill`, this venv); `--tui-cmd` names another (e.g.
  `/work/main/.venv/bin/tui-backfill`). When `CMD hash-index --help` fails, the contender is
  reported "not available" and the others run alone. Its package is compiled to bytecode
  first, as a wheel's install does (`compile_contender`).

Measured per run: wall time of the contender's whole process (start-up included: the goals are
read on it), its CPU (user + sys) and peak RSS from `wait4` in a small wrapper process (so the
peak is the contender's own, or the wrapper's ~10 MB if smaller: Linux carries the parent's
high-water mark across exec), the CPU `rclone serve s3` used meanwhile (`/proc/PID/stat`), the
CPU of every other process of the machine meanwhile (`/proc/stat`, less those two: on a shared
2-core box a busy neighbour explains a slow repetition), and the work time the tool reports
itself (the loop's timer, the snapshot's startedAt..lastUpdateAt). The goals are read on the
median speed ratios, which drift far less than the times themselves.
Reports medians with min–max, and per-repetition speed ratios (X/Y = Y's wall time / X's: above
1 X is faster) as medians with min–max; Markdown on stdout, `--json [FILE]` for machine reading
(to stdout without FILE, instead of the Markdown). Not part of the tests.

    .venv/bin/python bench/hash_index.py --quick
    .venv/bin/python bench/hash_index.py --cases small,large,rerun,huge --reps 5
    .venv/bin/python bench/hash_index.py --tui-cmd /work/main/.venv/bin/tui-backfill
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from hash_digest import digest_of  # bench/, beside this script
from peers import machine, machine_cpu, proc_cpu, tui_package

from tui_backfill.servers.rclone_s3 import RcloneS3, find_rclone

BENCH = Path(__file__).resolve().parent
BUCKET = "bench"
CONCURRENCY = 8
KIB, MIB = 1024, 1024 * 1024
TUI, MINIMAL, RCLONE, FLOOR = "tui-backfill", "minimal", "rclone", "floor"
TOOLS = (RCLONE, MINIMAL, FLOOR, TUI)
RSS_GOAL_MB = 150
# name -> (objects, bytes each), full size and --quick
CASES = {
    "small": (3000, 64 * KIB),
    "large": (100, 8 * MIB),
    "rerun": (30000, 4 * KIB),
    "huge": (1, 1024 * MIB),
}
QUICK = {
    "small": (300, 64 * KIB),
    "large": (10, 8 * MIB),
    "rerun": (3000, 4 * KIB),
    "huge": (1, 64 * MIB),
}
EMPTY_PREFIX = "empty/"  # no object under it: a run over it costs what every run costs
# where throughput with each contender's fixed cost taken out is reported (the goal of
# `large` speaks of throughput; `rerun`'s counts start-up in)
FIXED_COST_CASES = ("small", "large")
PATTERN_BLOCKS = 16  # the huge object: 16 random 1 MiB blocks, repeated

# Runs argv, waits for it with wait4 and writes its wall time, CPU and peak RSS as JSON to
# argv[1]. Small (no site, a few stdlib modules) so that the high-water mark a child inherits
# from its parent across exec is the wrapper's ~10 MB, not this benchmark's.
WRAPPER = """\
import json, os, sys, time
out, argv = sys.argv[1], sys.argv[2:]
started = time.perf_counter()
pid = os.posix_spawnp(argv[0], argv, os.environ)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - started
with open(out, "w") as f:
    json.dump({"rc": os.waitstatus_to_exitcode(status), "wall": wall, "cpu": usage.ru_utime + usage.ru_stime,
               "maxrss_kib": usage.ru_maxrss}, f)
"""


@dataclass
class Case:
    name: str
    objects: int
    size: int

    @property
    def prefix(self) -> str:
        return f"{self.name}/"

    @property
    def label(self) -> str:
        return f"{self.name}: {self.objects:,} x {_size(self.size)}"

    def key(self, i: int) -> str:
        return f"{self.prefix}obj-{i:06d}.bin"


@dataclass
class Run:
    tool: str
    rep: int
    wall: float  # seconds of the whole process, start-up included
    cpu: float  # user + sys of the contender's process
    server_cpu: float  # user + sys of rclone serve s3 meanwhile
    other_cpu: float  # every other process of the machine meanwhile (and the kernel)
    rss_mb: float  # peak RSS of the contender's process (at least the wrapper's)
    work: float | None  # the tool's own timer, where it has one
    problems: list[str] = field(default_factory=list)
    fixed: float | None = None  # wall of the same command over an empty prefix, just after
    snapshot: dict[str, Any] | None = None


def _size(n: int) -> str:
    return f"{n // MIB} MiB" if n >= MIB else f"{n // KIB} KiB"


# -- data ------------------------------------------------------------------------------------
def write_objects(case: Case, data_dir: Path) -> dict[str, str]:
    """The case's objects as files of bucket `bench` in data_dir; their SHA-256s by key."""
    (data_dir / BUCKET / case.prefix).mkdir(parents=True, exist_ok=True)
    hashes = {}
    if case.size > 64 * MIB:  # a pattern of random 1 MiB blocks, written a block at a time
        blocks = [os.urandom(MIB) for _ in range(PATTERN_BLOCKS)]
        for i in range(case.objects):
            sha = hashlib.sha256()
            with open(data_dir / BUCKET / case.key(i), "wb") as f:
                for b in range(case.size // MIB):
                    block = blocks[b % PATTERN_BLOCKS]
                    f.write(block)
                    sha.update(block)
            hashes[case.key(i)] = sha.hexdigest()
        return hashes
    for i in range(case.objects):
        body = os.urandom(case.size)
        (data_dir / BUCKET / case.key(i)).write_bytes(body)
        hashes[case.key(i)] = hashlib.sha256(body).hexdigest()
    return hashes


# -- contenders ------------------------------------------------------------------------------
def compile_contender(tui_cmd: list[str]) -> None:
    """The contender's package compiled to bytecode first, as installing a wheel does: with
    PYTHONDONTWRITEBYTECODE set (these machines set it) a tree run as `python -m` would
    otherwise compile its ~60 modules again at every start (about 0.1 s here). An entry-point
    script (`--tui-cmd .../bin/tui-backfill`) is compiled through the interpreter it names."""
    interpreter = tui_cmd[:1] if tui_cmd[1:3] == ["-m", "tui_backfill"] else None
    if interpreter is None and len(tui_cmd) == 1:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            first = Path(tui_cmd[0]).read_text().splitlines()[0]
            if first.startswith("#!") and "python" in first:
                interpreter = shlex.split(first[2:])
    if interpreter is not None:
        tui_package(interpreter, dict(os.environ))


def tui_available(tui_cmd: list[str]) -> tuple[bool, str]:
    try:
        done = subprocess.run(
            [*tui_cmd, "hash-index", "--help"],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, repr(exc)
    if done.returncode == 0:
        compile_contender(tui_cmd)
        return True, ""
    last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or [""]
    return (
        False,
        f"`{shlex.join([*tui_cmd, 'hash-index', '--help'])}` exited {done.returncode}: {last[0][:200]}",
    )


class Bench:
    def __init__(self, case: Case, args: argparse.Namespace, tools: list[str], tmp: Path) -> None:
        self.case = case
        self.args = args
        self.tools = tools
        self.tmp = tmp
        self.s3: RcloneS3 | None = None
        self.expected: dict[str, str] = {}
        self.first_run: Run | None = None

    @property
    def env(self) -> dict[str, str]:
        assert self.s3 is not None
        config = self.tmp / "rclone.conf"
        config.touch()
        s3 = self.s3
        # Python contenders as an operator runs them: compiled modules cached (a shell with
        # PYTHONDONTWRITEBYTECODE would recompile the tree's modules at every start)
        inherited = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        return {
            **inherited,
            **s3.env(),
            "RCLONE_CONFIG": str(config),
            "RCLONE_CONFIG_SRC_TYPE": "s3",
            "RCLONE_CONFIG_SRC_PROVIDER": "Other",
            "RCLONE_CONFIG_SRC_ENDPOINT": s3.endpoint_url,
            "RCLONE_CONFIG_SRC_ACCESS_KEY_ID": s3.access_key,
            "RCLONE_CONFIG_SRC_SECRET_ACCESS_KEY": s3.secret_key,
            "RCLONE_CONFIG_SRC_REGION": s3.region,
            "RCLONE_CONFIG_SRC_FORCE_PATH_STYLE": "true",
        }

    def remote(self, prefix: str | None = None) -> str:
        return f"src:{BUCKET}/{(prefix or self.case.prefix).rstrip('/')}"

    def tui_paths(self, rep: int) -> tuple[Path, Path]:
        """State and index: one pair for every run, except `rerun`'s, which share one."""
        where = self.tmp / ("tui" if self.case.name == "rerun" else f"tui-r{rep}")
        where.mkdir(exist_ok=True)
        return where / "state.sqlite3", where / "index.sqlite3"

    def command(self, tool: str, rep: int, prefix: str | None = None) -> list[str]:
        """The contender's command line; with `prefix`, over that prefix instead of the case's."""
        assert self.s3 is not None
        c = str(CONCURRENCY)
        prefix = prefix or self.case.prefix
        if tool == RCLONE:
            return [
                find_rclone(),
                "hashsum",
                "sha256",
                self.remote(prefix),
                "--download",
                "--checkers",
                c,
            ]
        if tool in (MINIMAL, FLOOR):
            return [
                sys.executable,
                str(BENCH / ("hash_loop.py" if tool == MINIMAL else "hash_floor.py")),
                *(
                    ["--list-only", "--strides", str(self.strides(prefix))]
                    if tool == FLOOR and self.case.name == "rerun"
                    else []
                ),
                "--bucket",
                BUCKET,
                "--prefix",
                prefix,
                "--endpoint-url",
                self.s3.endpoint_url,
                "--concurrency",
                c,
            ]
        state, index = self.tui_paths(rep) if prefix == self.case.prefix else self.empty_paths(rep)
        return [
            *self.args.tui_cmd,
            "hash-index",
            "--no-ui",
            "--job",
            "bench",
            "--state",
            str(state),
            "--bucket",
            BUCKET,
            "--prefix",
            prefix,
            "--endpoint-url",
            self.s3.endpoint_url,
            "--path-style",
            "--index-db",
            str(index),
            "--concurrency",
            c,
        ]

    def strides(self, prefix: str) -> Path:
        """The StartAfter keys of the re-run's pages after the first (every 1,000th key, as
        the hash index takes them from its index), for the floor to ask for the same pages
        the same number at a time; none over another prefix (the empty one)."""
        path = self.tmp / f"strides-{prefix.strip('/') or 'root'}.txt"
        keys = [self.case.key(i) for i in range(999, self.case.objects - 1, 1000)]
        path.write_text("\n".join(keys if prefix == self.case.prefix else []) + "\n")
        return path

    def empty_paths(self, rep: int) -> tuple[Path, Path]:
        where = self.tmp / f"tui-empty-r{rep}"
        where.mkdir(exist_ok=True)
        return where / "state.sqlite3", where / "index.sqlite3"

    def fixed_cost(self, tool: str, rep: int) -> float:
        """Wall time of the contender's command over an empty prefix: its start-up, its
        preflight and first listing, its exit; what every run pays whatever it hashes."""
        run = self.measure(tool, rep, prefix=EMPTY_PREFIX)
        if run.problems:
            raise SystemExit(f"{tool} over an empty prefix: {run.problems[0]}")
        return run.wall

    def measure(self, tool: str, rep: int, prefix: str | None = None) -> Run:
        assert self.s3 is not None and self.s3.process is not None
        argv = self.command(tool, rep, prefix)
        name = f"{tool}-r{rep}" + ("-empty" if prefix else "")
        out, err, result = (self.tmp / f"{name}.{ext}" for ext in ("out", "err", "json"))
        server_before, machine_before = proc_cpu(self.s3.process.pid) or 0.0, machine_cpu()
        with out.open("wb") as stdout, err.open("wb") as stderr:
            # its own session, so a timeout kills the wrapper and the contender together
            proc = subprocess.Popen(
                [sys.executable, "-S", "-c", WRAPPER, str(result), *argv],
                env=self.env,
                cwd=self.tmp,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                start_new_session=True,
            )
            try:
                proc.wait(timeout=self.args.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait()
                raise SystemExit(
                    f"{tool} took more than {self.args.timeout:g} s: {shlex.join(argv)}"
                ) from None
        server_cpu = (proc_cpu(self.s3.process.pid) or 0.0) - server_before
        machine_used = machine_cpu() - machine_before
        usage = json.loads(result.read_text())
        stdout_text, stderr_text = out.read_text(errors="replace"), err.read_text(errors="replace")
        run = Run(
            tool=tool,
            rep=rep,
            wall=usage["wall"],
            cpu=usage["cpu"],
            server_cpu=server_cpu,
            other_cpu=max(0.0, machine_used - server_cpu - usage["cpu"]),
            rss_mb=usage["maxrss_kib"] / 1024,
            work=None,
        )
        if usage["rc"] != 0:
            message = f"{tool} exited {usage['rc']}: {stderr_text[-1500:]}"
            if tool != TUI:  # ours: a failure is the harness's
                raise SystemExit(message)
            run.problems.append(message)
            return run
        if prefix is None:
            getattr(self, f"check_{tool.replace('-', '_')}")(run, stdout_text)
        return run

    def check_rclone(self, run: Run, stdout: str) -> None:
        lines = [line for line in stdout.splitlines() if line.strip()]
        got = {
            self.case.prefix + path: sha
            for sha, _, path in (line.partition("  ") for line in lines)
        }
        if len(lines) != self.case.objects or got != self.expected:
            raise SystemExit(
                f"rclone hashsum: {len(lines)} lines for {self.case.objects} objects,"
                f" {sum(got.get(k) != v for k, v in self.expected.items())} hashes wrong or missing"
            )

    def check_minimal(self, run: Run, stdout: str) -> None:
        result = json.loads(stdout)
        expected = self.expected
        if run.tool == FLOOR and self.case.name == "rerun":  # listed only
            expected = dict.fromkeys(self.expected, "")
        if result["objects"] != self.case.objects or result["digest"] != digest_of(expected):
            raise SystemExit(
                f"{run.tool} hashed {result['objects']} objects of {self.case.objects},"
                f" digest {'matches' if result['digest'] == digest_of(expected) else 'differs'}"
            )
        run.work = result["seconds"]

    check_floor = check_minimal

    def check_tui_backfill(self, run: Run, stdout: str) -> None:
        """The final snapshot and the index table, as the contract describes them; what differs
        is noted in run.problems (the command is young: its figures are still worth seeing)."""
        n = self.case.objects
        try:
            snap = json.loads(stdout)
        except json.JSONDecodeError:
            run.problems.append(f"stdout is not one JSON snapshot: {stdout[-300:]!r}")
            return
        run.snapshot = snap
        try:
            run.work = _epoch(snap["lastUpdateAt"]) - _epoch(snap["startedAt"])
        except (KeyError, TypeError, ValueError):
            pass
        rerun = self.case.name == "rerun" and self.first_run is not None
        want = {
            "state": "completed",
            "failedItems": 0,
            "scannedObjects": n,
            **({"skipped": n, "updated": 0} if rerun else {"updated": n, "skipped": 0}),
        }
        for key, value in want.items():
            if snap.get(key) != value:
                run.problems.append(f"snapshot {key} = {snap.get(key)!r}, expected {value!r}")
        _, index = self.tui_paths(run.rep)
        try:
            with sqlite3.connect(f"file:{index}?mode=ro", uri=True) as db:
                rows = dict(
                    db.execute(
                        "SELECT key, content_hash FROM files WHERE key LIKE ? || '%'",
                        (self.case.prefix,),
                    )
                )
        except sqlite3.Error as exc:
            run.problems.append(f"index {index}: {exc}")
            return
        wrong = sum(rows.get(k) != v for k, v in self.expected.items())
        if wrong or len(rows) != n:
            run.problems.append(
                f"index: {len(rows)} rows under the prefix for {n} objects, {wrong} hashes wrong or missing"
            )

    def run(self) -> dict[str, list[Run]]:
        data_dir = self.tmp / "s3"
        started = time.perf_counter()
        self.expected = write_objects(self.case, data_dir)
        (data_dir / BUCKET / EMPTY_PREFIX).mkdir()  # a "directory" with no object in it
        _log(f"{self.case.label}: objects written in {time.perf_counter() - started:.1f} s")
        runs: dict[str, list[Run]] = {t: [] for t in self.tools}
        with RcloneS3(data_dir) as s3:
            self.s3 = s3
            # one listing before the measured runs, so that no contender pays for rclone's cold caches
            subprocess.run(
                [find_rclone(), "lsf", self.remote()], env=self.env, check=True, capture_output=True
            )
            if TUI in self.tools and self.case.name == "rerun":
                self.first_run = self.measure(TUI, -1)
                _log(
                    f"  {self.case.name}, {TUI} first run (fills the index): {_run_text(self.first_run)}"
                )
            for rep in range(self.args.reps):
                shift = rep % len(self.tools)
                for tool in self.tools[shift:] + self.tools[:shift]:
                    run = self.measure(tool, rep)
                    if self.case.name in FIXED_COST_CASES:
                        run.fixed = self.fixed_cost(tool, rep)
                    runs[tool].append(run)
                    _log(
                        f"  {self.case.name}, rep {rep + 1}/{self.args.reps}, {tool:12}: {_run_text(run)}"
                    )
        return runs


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _run_text(run: Run) -> str:
    work = f", work {run.work:.2f} s" if run.work is not None else ""
    work += f", over an empty prefix {run.fixed:.2f} s" if run.fixed is not None else ""
    problems = f"; PROBLEMS: {' | '.join(run.problems)}" if run.problems else ""
    return (
        f"{run.wall:.2f} s{work}, CPU {run.cpu:.2f} s, server CPU {run.server_cpu:.2f} s,"
        f" other processes' CPU {run.other_cpu:.2f} s,"
        f" peak RSS {run.rss_mb:.0f} MB{problems}"
    )


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- reporting -------------------------------------------------------------------------------
def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(case: Case, runs: dict[str, list[Run]]) -> dict[str, Any]:
    """Per contender the medians (min–max); per pair of contenders the speed ratios of each
    repetition (Y's wall / X's), their median and min–max; the case's goal."""
    total = case.objects * case.size
    tools = {}
    for tool, rs in runs.items():
        if not rs:
            continue
        wall = _stats([r.wall for r in rs])
        works = [r.work for r in rs if r.work is not None]
        tools[tool] = {
            "wall_s": wall,
            "cpu_s": _stats([r.cpu for r in rs]),
            "server_cpu_s": _stats([r.server_cpu for r in rs]),
            "other_cpu_s": _stats([r.other_cpu for r in rs]),
            "peak_rss_mb": _stats([r.rss_mb for r in rs]),
            "work_s": _stats(works) if works else None,
            "fixed_s": _stats(fixed)
            if (fixed := [r.fixed for r in rs if r.fixed is not None])
            else None,
            "objects_per_s": case.objects / wall["median"],
            "mb_per_s": total / MIB / wall["median"],
            "problems": sorted({p for r in rs for p in r.problems}),
        }
    ratios = {}
    for x, y in ((TUI, RCLONE), (TUI, MINIMAL), (MINIMAL, RCLONE), (FLOOR, RCLONE), (TUI, FLOOR)):
        if runs.get(x) and runs.get(y):
            ratios[f"{x}/{y}"] = _stats(
                [b.wall / a.wall for a, b in zip(runs[x], runs[y], strict=True)]
            )
    net_ratios = {}  # each repetition's walls less the fixed cost measured right after it
    for pair in ratios:
        x, y = pair.split("/")
        pairs = list(zip(runs[x], runs[y], strict=True))
        if all(a.fixed is not None and b.fixed is not None for a, b in pairs):
            net_ratios[pair] = _stats(
                [(b.wall - (b.fixed or 0)) / (a.wall - (a.fixed or 0)) for a, b in pairs]
            )
    for s in tools.values():
        if s["fixed_s"] is not None:
            s["net_mb_per_s"] = total / MIB / (s["wall_s"]["median"] - s["fixed_s"]["median"])
    return {
        "objects": case.objects,
        "object_bytes": case.size,
        "contenders": tools,
        "speed_ratios": ratios,
        "net_speed_ratios": net_ratios,
        "goal": goal(case, tools, ratios, net_ratios),
    }


def goal(
    case: Case, tools: dict[str, Any], ratios: dict[str, Any], net_ratios: dict[str, Any]
) -> dict[str, Any]:
    """The issue's goal for this case, read on the medians (for `large`, also with each
    contender's fixed cost out: `net_value`, `net_met`)."""

    def speed(pair: str, floor: float, text: str) -> dict[str, Any]:
        value = ratios.get(pair, {}).get("median")
        return {"goal": text, "value": value, "met": None if value is None else value >= floor}

    if case.name == "small":
        return speed(
            f"{TUI}/{MINIMAL}", 0.9, "tui-backfill at least 0.9x the minimal loop's throughput"
        )
    if case.name == "large":
        result = speed(f"{TUI}/{RCLONE}", 1.0, "tui-backfill at least rclone's throughput")
        net = net_ratios.get(f"{TUI}/{RCLONE}", {}).get("median")
        result["net_value"] = net
        result["net_met"] = None if net is None else net >= 1.0
        return result
    if case.name == "rerun":
        return speed(
            f"{TUI}/{RCLONE}",
            5.0,
            "tui-backfill's re-run at least 5x faster than rclone's, start-up included",
        )
    rss = tools.get(TUI, {}).get("peak_rss_mb", {}).get("max")
    return {
        "goal": f"tui-backfill's peak RSS under {RSS_GOAL_MB} MB",
        "value": rss,
        "met": None if rss is None else rss < RSS_GOAL_MB,
    }


def _mm(s: dict[str, float] | None, fmt: str = ".2f") -> str:
    if s is None:
        return "–"
    return f"{s['median']:{fmt}} ({s['min']:{fmt}}–{s['max']:{fmt}})"


def markdown(
    case: Case,
    summary: dict[str, Any],
    first_run: Run | None,
    unavailable: dict[str, str],
    quick: bool,
) -> str:
    lines = [
        f"### {case.label}",
        "",
        "| contender | wall s, process (min–max) | obj/s | MiB/s | own work s | CPU s (user+sys) | rclone serve s3 CPU s | other CPU s | peak RSS MB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for tool in TOOLS:
        s = summary["contenders"].get(tool)
        if s is None:
            lines.append(f"| {tool} | not available | | | | | | | |")
            continue
        lines.append(
            f"| {tool} | {_mm(s['wall_s'])} | {s['objects_per_s']:,.{0 if s['objects_per_s'] >= 10 else 2}f} | {s['mb_per_s']:,.1f} | {_mm(s['work_s'])}"
            f" | {_mm(s['cpu_s'])} | {_mm(s['server_cpu_s'])} | {_mm(s['other_cpu_s'])} | {_mm(s['peak_rss_mb'], '.0f')} |"
        )
    lines += [
        "",
        "| speed ratio (Y's wall / X's; > 1: X faster) | median (min–max) over the repetitions |",
        "|---|---:|",
    ]
    lines += [f"| {pair} | {_mm(r)} |" for pair, r in summary["speed_ratios"].items()]
    if summary["net_speed_ratios"]:
        lines += [
            "",
            "Throughput with each contender's fixed cost out: the same command over an empty"
            " prefix (start-up, preflight, one listing, exit), run right after each repetition,"
            " taken off its wall time.",
            "",
            "| contender | fixed cost s (min–max) | MiB/s, fixed cost out |",
            "|---|---:|---:|",
        ]
        for tool in TOOLS:
            s = summary["contenders"].get(tool)
            if s is not None and s.get("fixed_s") is not None:
                lines.append(f"| {tool} | {_mm(s['fixed_s'])} | {s['net_mb_per_s']:,.1f} |")
        lines += ["", "| speed ratio, fixed cost out | median (min–max) |", "|---|---:|"]
        lines += [f"| {pair} | {_mm(r)} |" for pair, r in summary["net_speed_ratios"].items()]
    g = summary["goal"]
    verdict = {True: "met", False: "NOT met", None: "not measured"}[g["met"]]
    value = (
        ""
        if g["value"] is None
        else f" ({g['value']:.0f} MB)"
        if case.name == "huge"
        else f" ({g['value']:.2f}×)"
    )
    lines += [
        "",
        f"Goal: {g['goal']}: **{verdict}**{value}{' (quick sizes: indicative only)' if quick else ''}.",
    ]
    if g.get("net_value") is not None:
        net_verdict = "met" if g["net_met"] else "NOT met"
        lines.append(
            f"Read on throughput with each contender's fixed cost out: **{net_verdict}**"
            f" ({g['net_value']:.2f}×)."
        )
    if first_run is not None:
        lines.append(
            f"tui-backfill's first run, filling the index (not in the table): {_run_text(first_run)}."
        )
    for tool, why in unavailable.items():
        lines.append(f"{tool}: not available ({why}).")
    for tool in TOOLS:
        for problem in summary["contenders"].get(tool, {}).get("problems", []):
            lines.append(f"{tool} PROBLEM: {problem}")
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--cases", default="small,large,rerun,huge", help="comma-separated, of: " + ", ".join(CASES)
    )
    p.add_argument(
        "--reps", type=int, default=None, help="interleaved repetitions (default 5, 2 with --quick)"
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes: "
        + ", ".join(f"{k} {n:,} x {_size(s)}" for k, (n, s) in QUICK.items()),
    )
    p.add_argument(
        "--tui-cmd",
        default=None,
        type=shlex.split,
        help="the tui-backfill command (default: this venv's `python -m tui_backfill`, this tree)",
    )
    p.add_argument("--no-tui", action="store_true", help="leave tui-backfill out")
    p.add_argument(
        "--without",
        default="",
        help="comma-separated contenders to leave out (of: rclone, minimal, floor); ratios to them"
        " are then not reported",
    )
    p.add_argument("--timeout", type=float, default=1800, help="seconds one run may take")
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        default=None,
        metavar="FILE",
        help="write the results as JSON to FILE (without FILE: to stdout, instead of the Markdown)",
    )
    args = p.parse_args(argv)
    args.reps = args.reps if args.reps is not None else (2 if args.quick else 5)
    args.tui_cmd = args.tui_cmd or [sys.executable, "-m", "tui_backfill"]
    args.without = [t for t in args.without.split(",") if t]
    if [t for t in args.without if t not in TOOLS or t == TUI]:
        p.error(f"--without takes some of: {', '.join(t for t in TOOLS if t != TUI)}")
    wrong = [c for c in args.cases.split(",") if c not in CASES]
    if wrong or args.reps < 1:
        p.error(f"unknown cases {wrong}" if wrong else "--reps must be at least 1")
    return args


def main(args: argparse.Namespace) -> None:
    sizes = QUICK if args.quick else CASES
    cases = [Case(name, *sizes[name]) for name in args.cases.split(",")]
    unavailable = {tool: "--without" for tool in args.without}
    if args.no_tui:
        unavailable[TUI] = "--no-tui"
    else:
        ok, why = tui_available(args.tui_cmd)
        if not ok:
            unavailable[TUI] = why
    tools = [t for t in TOOLS if t not in unavailable]
    header = (
        f"{machine()}; tui-backfill contender: `{shlex.join(args.tui_cmd)}`"
        f"{' (not available)' if TUI in unavailable else ''}"
    )
    _log(header)
    results: dict[str, Any] = {
        "machine": header,
        "quick": args.quick,
        "reps": args.reps,
        "concurrency": CONCURRENCY,
        "unavailable": unavailable,
        "cases": {},
    }
    markdown_out = args.json != "-"
    if markdown_out:
        print(
            f"## `{shlex.join(['bench/hash_index.py', *sys.argv[1:]])}`\n\n{header}\n\n"
            f"Concurrency {CONCURRENCY}; medians of {args.reps} interleaved repetitions; wall time of each whole process"
            " (start-up included); peak RSS from wait4 (at least the ~10 MB of the wrapper that starts the contender).\n",
            flush=True,
        )
    for case in cases:
        with tempfile.TemporaryDirectory(prefix=f"hash-bench-{case.name}-") as tmp:
            bench = Bench(case, args, tools, Path(tmp))
            runs = bench.run()
        summary = summarize(case, runs)
        if bench.first_run is not None:
            summary["tui_first_run"] = asdict(bench.first_run)
        summary["runs"] = {tool: [asdict(r) for r in rs] for tool, rs in runs.items()}
        results["cases"][case.name] = summary
        if markdown_out:  # each case as soon as it is measured
            print(markdown(case, summary, bench.first_run, unavailable, args.quick), flush=True)
    if args.json == "-":
        print(json.dumps(results, indent=2))
    elif args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main(parse_args())
