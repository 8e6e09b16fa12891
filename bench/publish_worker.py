"""The publishing worker's performance points, measured on real servers: PostgreSQL (the queue),
the RAID-like origin and `rclone serve s3`, all on 127.0.0.1 of this machine.

1. **Variants per second per core** (goal: the worker reaches at least 90 % of the minimal
   loop). One `tui-backfill publish worker --no-ui --burst` process at CONCURRENCY = cores
   against `minimal`: Pillow alone on the same images in memory, in a pool of as many threads
   as cores (decode with `draft`, resize to the 1600 box, resize that to the 400 box, two WebP
   encodes at quality 80, method 4, Lanczos with reducing_gap 3 as the worker; nothing else).
   Two image sets: `small` (`many_images`, 480-1024 px, 20-120 KB) and `camera` (3000x2000
   photo-like JPEGs of ~2 MB, distinct). The worker's rate is read over its work (first
   attempt's `started_at` to the last one's `ended_at`, from `publish_attempts`); its whole
   process (start-up, ~1 s of imports, the preflight) is reported too. The loop's rate is read
   over its own timer around the work.
2. **Peak RSS per in-flight 24-megapixel job** (goal: < 100 MB). A worker (not burst) at
   CONCURRENCY 1 and 2 starts on an empty queue; once it is idle its VmRSS is the baseline; then
   N jobs of the 6000x4000 `large_photo` (11.5 MB) are enqueued (NOTIFY wakes it) and its
   VmHWM after the last completion, minus the baseline, over the jobs in flight, is the figure.
   The marginal cost of the second slot (peak at 2 minus peak at 1) is shown too.
3. **Claim overhead on PostgreSQL** (goal: < 5 ms a job). 3 processes, each a loop of
   `claim(n)` then `complete()` of each claimed job (a Published, as the worker records it),
   no media work, over 3,000 jobs, for n = 1 (one claim a job: the worker before claims were
   batched) and n = 4 (the worker's refill once running: `ClaimPlan.ahead`, at least 4). Per job: the
   wall time of all three / jobs, and a worker's own time in queue calls / its jobs.
   **Pinned** (machines of 2 CPUs or more): the same two contenders on CPUs of their own, the
   servers (and this script) pinned to the others (the first half of the CPUs; on 2 CPUs,
   CPU 0 for the servers and CPU 1 for the contender), so that nothing but the contender runs
   on its CPUs, as in production where the queue, the store and the bucket are other
   machines. The worker runs with CONCURRENCY unset: its default, the CPUs it may use
   (seams/cpus.py), which the script checks in its start line; the loop runs as many threads.
4. **Throughput of 1, 2 and 3 worker processes** (each CONCURRENCY = cores) on the camera set.
   Both sets also run one worker at CONCURRENCY = 2 x cores (twice the downloads and image
   threads), for contrast with the default (cores).

The ratios are given two ways: per core of the machine (the servers share its 2 cores with the
contender), and per core left to the contender (the machine's cores less the share the S3
server, the RAID origin and PostgreSQL took during its run: in production they are elsewhere).

Before each series the script waits (up to 10 minutes, polling) while `pgrep -fa
"bench/|pytest"` shows another benchmark or test run. Repetitions are interleaved (the order of
the contenders rotates); figures are medians (min-max) and ratios are medians of per-repetition
ratios. CPU seconds of every process over each run: the worker(s) and the loop from `wait4`,
`rclone serve s3` and the RAID origin (a child process) from `/proc/PID/stat`, PostgreSQL as
its postmaster's own + reaped children's + live backends', `other` the rest of the machine
(`/proc/stat`). Not part of the tests.

    .venv/bin/python bench/publish_worker.py --quick
    .venv/bin/python bench/publish_worker.py [--reps 3] [--series cpu,memory,claim]
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import io
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))
from peers import CLK_TCK, machine, machine_cpu, proc_cpu  # noqa: E402

CORES = len(os.sched_getaffinity(0))
# Pinned runs: the servers (and this script) on SERVER_CPUS, the contender on CONTENDER_CPUS
_ALL_CPUS = sorted(os.sched_getaffinity(0))
SERVER_CPUS = set(_ALL_CPUS[: len(_ALL_CPUS) // 2])
CONTENDER_CPUS = set(_ALL_CPUS[len(_ALL_CPUS) // 2 :])
BUCKET = "bench"
CDN = "https://cdn.example.test/lots"
RAID_SECRET = "bench-raid-secret"
QUALITY, THUMB, DISPLAY = 80, 400, 1600
MB = 1024 * 1024


# -- helpers ---------------------------------------------------------------------------------


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def span(values: list[float], fmt: str = "{:.2f}") -> str:
    """'median (min–max)', or the single value."""
    if not values:
        return "–"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(med(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


NO_WAIT = False
QUIET: list[str] = []  # what wait_quiet found before each series, for the report


WAIT_LIMIT = 600.0


def wait_quiet(name: str) -> str:
    """Wait while another benchmark or test run is going (not this script's own processes)."""
    found = _wait_quiet(WAIT_LIMIT)
    QUIET.append(f"{name}: {found}")
    return found


def _wait_quiet(limit: float) -> str:
    if NO_WAIT:
        return "not checked (--no-wait)"
    started = time.monotonic()
    while True:
        out = subprocess.run(
            ["pgrep", "-fa", "bench/|pytest"], capture_output=True, text=True
        ).stdout
        busy = [
            line
            for line in out.splitlines()
            if "publish_worker.py" not in line and "/bench-publish-" not in line  # ours
        ]
        waited = time.monotonic() - started
        if not busy:
            return f"quiet after {waited:.0f} s" if waited > 1 else "quiet"
        if waited > limit:
            return f"NOT quiet after {waited:.0f} s: {busy[0][:100]}"
        print(f"  waiting for: {busy[0][:100]}", file=sys.stderr, flush=True)
        time.sleep(15)


def proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None


def pg_cpu(postmaster: int) -> float:
    """PostgreSQL's CPU seconds so far: the postmaster's own and its reaped children's, plus its
    live children's (backends come and go with the workers' connections)."""
    fields = proc_stat(postmaster)
    if fields is None:
        return 0.0
    total = sum(int(fields[i]) for i in (11, 12, 13, 14))
    try:
        children = Path(f"/proc/{postmaster}/task/{postmaster}/children").read_text().split()
    except OSError:
        children = []
    for child in children:
        f = proc_stat(int(child))
        if f is not None:
            total += int(f[11]) + int(f[12])
    return total / CLK_TCK


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of a live process onto `cpus` (threads it starts later inherit it)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:  # a thread that ended meanwhile
            pass


def pin_servers(servers: Servers, cpus: set[int]) -> None:
    """The servers (PostgreSQL's postmaster and its children: backends forked later inherit
    it) and this script onto `cpus`."""
    pids = [servers.s3.process.pid, servers.raid.pid, servers.postmaster]
    try:
        pids += [
            int(c)
            for c in Path(f"/proc/{servers.postmaster}/task/{servers.postmaster}/children")
            .read_text()
            .split()
        ]
    except OSError:
        pass
    for pid in [*pids, os.getpid()]:
        pin(pid, cpus)


def vm(pid: int, name: str) -> float:
    """VmRSS / VmHWM of a live process, MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(name)


# -- the image sets ----------------------------------------------------------------------------


def image_sets(quick: bool) -> dict[str, dict[str, bytes]]:
    from tui_backfill.servers.images import cached, large_photo, many_images, photo_jpeg

    n_small, n_camera = (40, 16) if quick else (200, 40)
    small = {f"small/{k.rsplit('/', 1)[1]}": v for k, v in many_images(n_small, seed=11).items()}
    camera = {
        f"camera/{i:04d}.jpg": cached(
            f"bench-photo-3000x2000-{i}.jpg", lambda i=i: photo_jpeg(3000, 2000, seed=5000 + i)
        )
        for i in range(n_camera)
    }
    return {"small": small, "camera": camera, "big": {"big/24mp.jpg": large_photo()}}


def write_sets(sets: dict[str, dict[str, bytes]], root: Path) -> None:
    for images in sets.values():
        for key, data in images.items():
            (root / key).parent.mkdir(parents=True, exist_ok=True)
            (root / key).write_bytes(data)


# -- child modes -------------------------------------------------------------------------------


def serve_raid(root: Path) -> None:
    """The RAID origin in its own process (its CPU measured apart): every file under root."""
    from tui_backfill.servers.raid import RaidServer

    images = {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        async with RaidServer(images, token=RAID_SECRET) as raid:
            print(f"RAID {raid.endpoint}", flush=True)
            await stop.wait()

    asyncio.run(main())


def minimal_job(data: bytes) -> int:
    """Decode with draft, resize into the 1600 box, resize that into the 400 box, two WebP
    encodes: what the worker's media step does to a plain RGB JPEG, and nothing else."""
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    w, h = image.size
    scale = min(DISPLAY / w, DISPLAY / h, 1.0)
    display = (max(1, round(w * scale)), max(1, round(h * scale)))
    image.draft("RGB", display)
    image.load()
    out = 0
    pixels = image
    for box in (DISPLAY, THUMB):
        s = min(box / pixels.width, box / pixels.height, 1.0)
        size = (max(1, round(pixels.width * s)), max(1, round(pixels.height * s)))
        if pixels.size != size:
            pixels = pixels.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        buffer = io.BytesIO()
        pixels.save(buffer, "WEBP", quality=QUALITY, method=4)
        out += buffer.tell()
    return out


def minimal_loop(root: Path, threads: int) -> None:
    from PIL import Image  # noqa: F401  (imported before the timer, as the worker's start-up)

    images = [p.read_bytes() for p in sorted(root.glob("*.jpg"))]
    minimal_job(images[0])  # warm: libwebp loaded, as in a worker that has done one job
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        written = sum(pool.map(minimal_job, images))
    seconds = time.perf_counter() - started
    print(json.dumps({"jobs": len(images), "seconds": seconds, "bytes": written}))


def claim_loop(url: str, batch: int, worker: str, start_at: float) -> None:
    """Claim and complete until the queue is empty; per-call latencies as JSON."""
    from tui_backfill.seams.queue import open_queue
    from tui_backfill.seams.queue.base import Published

    async def main() -> dict[str, Any]:
        queue = await open_queue(url)
        claims: list[float] = []
        completes: list[float] = []
        jobs = 0
        await asyncio.sleep(max(0.0, start_at - time.time()))
        started = time.time()
        try:
            while True:
                t = time.perf_counter()
                claimed = await queue.claim(worker, batch, 60.0)
                claims.append(time.perf_counter() - t)
                if not claimed:
                    break
                for job in claimed:
                    t = time.perf_counter()
                    ok = await queue.complete(
                        worker, job, Published(f"{CDN}/t/{job.id}", f"{CDN}/d/{job.id}")
                    )
                    completes.append(time.perf_counter() - t)
                    assert ok
                    jobs += 1
            ended = time.time()
        finally:
            await queue.close()
        return {
            "jobs": jobs,
            "claims": claims,
            "completes": completes,
            "start": started,
            "end": ended,
        }

    print(json.dumps(asyncio.run(main())))


# -- the harness -------------------------------------------------------------------------------


@dataclass
class Servers:
    root: Path
    raid: subprocess.Popen[str]
    raid_url: str
    pg: Any
    s3: Any
    postmaster: int

    def cpu(self) -> dict[str, float]:
        return {
            "rclone": proc_cpu(self.s3.process.pid) or 0.0,
            "raid": proc_cpu(self.raid.pid) or 0.0,
            "postgres": pg_cpu(self.postmaster),
            "machine": machine_cpu(),
        }

    def env(self, **extra: str) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("AWS_", "TUI_BACKFILL_", "B2_", "RAID_"))
            and k not in ("DATABASE_URL", "CDN_BASE_URL", "CONCURRENCY", "WORKER_POLL_INTERVAL")
            and k != "PYTHONDONTWRITEBYTECODE"  # compiled modules cached, as an operator has them
        }
        env.update(
            PYTHONPATH=str(REPO),
            AWS_CONFIG_FILE=os.devnull,
            AWS_SHARED_CREDENTIALS_FILE=os.devnull,
            AWS_EC2_METADATA_DISABLED="true",
            DATABASE_URL=self.pg.url,
            RAID_PUBLISHER_SECRET=RAID_SECRET,
            RAID_PUB_ENDPOINT=self.raid_url,
            B2_KEY_ID=self.s3.access_key,
            B2_APP_KEY=self.s3.secret_key,
            B2_BUCKET=BUCKET,
            B2_ENDPOINT=self.s3.endpoint_url,
            B2_REGION=self.s3.region,
            CDN_BASE_URL=CDN,
            CONCURRENCY=str(CORES),
            TUI_BACKFILL_PATH_STYLE="true",
        )
        env.update(extra)
        return env


async def db_exec(url: str, sql: str, *args: Any) -> Any:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


def reset_queue(servers: Servers, keys: list[str], lot: int) -> None:
    """Empty queue, then one file (lot `lot`: fresh bucket keys) and one pending job per key."""

    async def main() -> None:
        from tui_backfill.seams.queue import open_queue

        await db_exec(
            servers.pg.url,
            "TRUNCATE publish_attempts, publish_jobs, auction_files, publish_workers,"
            " publish_commands RESTART IDENTITY",
        )
        if keys:
            await db_exec(
                servers.pg.url,
                "INSERT INTO auction_files (id, lot_id, source_key, publish_status)"
                " SELECT i, $1, k, 'pending' FROM unnest($2::text[]) WITH ORDINALITY AS t(k, i)",
                lot,
                keys,
            )
            queue = await open_queue(servers.pg.url)
            try:
                assert await queue.enqueue() == len(keys)
            finally:
                await queue.close()

    asyncio.run(main())


def queue_result(servers: Servers) -> dict[str, Any]:
    rows = asyncio.run(
        db_exec(
            servers.pg.url,
            "SELECT (SELECT count(*) FROM publish_jobs WHERE status = 'completed'),"
            " (SELECT count(*) FROM publish_jobs),"
            " (SELECT EXTRACT(EPOCH FROM max(ended_at) - min(started_at))::float8"
            "  FROM publish_attempts),"
            " (SELECT count(*) FROM publish_attempts)",
        )
    )
    completed, total, work, attempts = rows[0]
    return {"completed": completed, "total": total, "work": work, "attempts": attempts}


def wait4(proc: subprocess.Popen[Any]) -> tuple[int, float]:
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_utime + usage.ru_stime


@dataclass
class Run:
    contender: str
    set: str
    jobs: int
    wall: float  # whole process(es)
    work: float  # the work alone
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds by process, during `wall`
    cores: int = CORES  # the CPUs it ran on

    @property
    def rate(self) -> float:
        return self.jobs / self.work


def run_workers(
    servers: Servers,
    set_name: str,
    keys: list[str],
    procs: int,
    lot: int,
    concurrency: int = CORES,
    cpus: set[int] | None = None,
) -> Run:
    """`procs` worker processes at CONCURRENCY `concurrency`; with `cpus`, each pinned to them
    and CONCURRENCY unset (the worker's default: the CPUs it may use)."""
    reset_queue(servers, keys, lot)
    logs = servers.root / "logs"
    logs.mkdir(exist_ok=True)
    before = servers.cpu()
    started = time.perf_counter()
    children = []
    for i in range(procs):
        out = open(logs / f"worker-{lot}-{i}.out", "w")
        err = open(logs / f"worker-{lot}-{i}.err", "w")
        argv = [sys.executable, "-m", "tui_backfill", "publish", "worker", "--no-ui", "--burst"]
        if cpus is not None:
            argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]
        env = servers.env(CONCURRENCY=str(concurrency))
        if cpus is not None:
            del env["CONCURRENCY"]
        children.append(
            subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        )
    with concurrent.futures.ThreadPoolExecutor(procs) as pool:
        done = list(pool.map(wait4, children))
    wall = time.perf_counter() - started
    after = servers.cpu()
    for i, (rc, _) in enumerate(done):
        if rc != 0:
            tail = (logs / f"worker-{lot}-{i}.err").read_text()[-1500:]
            raise SystemExit(f"worker exited {rc}: {tail}")
    result = queue_result(servers)
    if result["completed"] != len(keys) or result["attempts"] != len(keys):
        raise SystemExit(f"worker run incomplete: {result}")
    written = list((servers.s3.data_dir / BUCKET / "media" / str(lot)).rglob("*.webp"))
    if len(written) != 2 * len(keys):
        raise SystemExit(f"{len(written)} variants in the bucket, expected {2 * len(keys)}")
    cpu = {"self": sum(c for _, c in done)}
    cpu.update({k: after[k] - before[k] for k in ("rclone", "raid", "postgres")})
    cpu["other"] = max(0.0, after["machine"] - before["machine"] - sum(cpu.values()))
    name = "worker" if procs == 1 else f"worker x{procs}"
    if cpus is not None:
        banner = (logs / f"worker-{lot}-0.err").read_text().splitlines()[0]
        if f"concurrency {len(cpus)} " not in banner:
            raise SystemExit(f"pinned to {len(cpus)} CPU(s), the worker said: {banner}")
        return Run(name + " pinned", set_name, len(keys), wall, result["work"], cpu, len(cpus))
    if concurrency != CORES:
        name += f" C={concurrency}"
    return Run(name, set_name, len(keys), wall, result["work"], cpu)


def run_minimal(servers: Servers, set_name: str, cpus: set[int] | None = None) -> Run:
    """The loop, as many threads as cores; with `cpus`, pinned to them, a thread each."""
    before = servers.cpu()
    started = time.perf_counter()
    argv = [
        sys.executable,
        str(Path(__file__)),
        "--minimal",
        str(servers.root / set_name),
        str(len(cpus) if cpus else CORES),
    ]
    if cpus:
        argv = ["taskset", "-c", ",".join(map(str, sorted(cpus))), *argv]
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)}
    )
    assert proc.stdout is not None
    out = proc.stdout.read()
    rc, cpu_self = wait4(proc)
    wall = time.perf_counter() - started
    after = servers.cpu()
    if rc != 0:
        raise SystemExit(f"minimal loop exited {rc}")
    data = json.loads(out)
    cpu = {"self": cpu_self}
    cpu.update({k: after[k] - before[k] for k in ("rclone", "raid", "postgres")})
    cpu["other"] = max(0.0, after["machine"] - before["machine"] - sum(cpu.values()))
    if cpus:
        return Run("minimal pinned", set_name, data["jobs"], wall, data["seconds"], cpu, len(cpus))
    return Run("minimal", set_name, data["jobs"], wall, data["seconds"], cpu)


def series_cpu(
    servers: Servers,
    sets: dict[str, dict[str, bytes]],
    reps: int,
    lot: list[int],
    only: set[str] | None = None,
) -> list[Run]:
    runs: list[Run] = []
    # (processes, CONCURRENCY each); "minimal" the loop. CONCURRENCY = cores is the worker's
    # default (as many image threads; downloads and PUTs overlap them); 2 x cores for contrast.
    plans: dict[str, list[Any]] = {
        "small": ["minimal", (1, CORES), (1, 2 * CORES)],
        "camera": ["minimal", (1, CORES), (2, CORES), (3, CORES), (1, 2 * CORES)],
    }
    if SERVER_CPUS:  # and the two on CPUs of their own, the servers on the others
        for plan in plans.values():
            plan += ["minimal pinned", "worker pinned"]
    for set_name, plan in plans.items():
        if only is not None and set_name not in only:
            continue
        print(f"series cpu/{set_name}: {wait_quiet(set_name)}", file=sys.stderr, flush=True)
        keys = sorted(sets[set_name])
        for rep in range(reps):
            order = plan[rep % len(plan) :] + plan[: rep % len(plan)]
            for who in order:
                lot[0] += 1
                if who == "minimal":
                    run = run_minimal(servers, set_name)
                elif who == "minimal pinned":  # the servers idle, pinned: the worker's layout
                    try:
                        pin_servers(servers, SERVER_CPUS)
                        run = run_minimal(servers, set_name, CONTENDER_CPUS)
                    finally:
                        pin_servers(servers, set(_ALL_CPUS))
                elif who == "worker pinned":
                    try:
                        pin_servers(servers, SERVER_CPUS)
                        run = run_workers(servers, set_name, keys, 1, lot[0], cpus=CONTENDER_CPUS)
                    finally:
                        pin_servers(servers, set(_ALL_CPUS))
                else:
                    run = run_workers(servers, set_name, keys, who[0], lot[0], who[1])
                runs.append(run)
                cpu = ", ".join(f"{k} {v:.1f}" for k, v in run.cpu.items())
                print(f"  {set_name} rep {rep + 1} {run.contender}: {run.rate:.2f} jobs/s"
                      f" (work {run.work:.2f} s, wall {run.wall:.2f} s; CPU s: {cpu})", file=sys.stderr, flush=True)  # fmt: skip
    return runs


def memory_run(servers: Servers, concurrency: int, jobs: int, lot: int) -> dict[str, float]:
    reset_queue(servers, [], lot)
    (servers.root / "logs").mkdir(exist_ok=True)  # the cpu series may not have run first
    err_path = servers.root / "logs" / f"mem-{lot}.err"
    err = open(err_path, "w")
    argv = [sys.executable, "-m", "tui_backfill", "publish", "worker", "--no-ui"]
    env = servers.env(CONCURRENCY=str(concurrency))
    proc = subprocess.Popen(
        argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err
    )
    deadline = time.monotonic() + 30
    while "publish worker" not in err_path.read_text():
        if time.monotonic() > deadline or proc.poll() is not None:
            raise SystemExit(f"worker did not start: {err_path.read_text()[-1500:]}")
        time.sleep(0.1)
    time.sleep(2.0)  # idle: the first figures and heartbeat read
    idle_rss, idle_hwm = vm(proc.pid, "VmRSS"), vm(proc.pid, "VmHWM")

    async def enqueue() -> None:
        from tui_backfill.seams.queue import open_queue

        await db_exec(
            servers.pg.url,
            "INSERT INTO auction_files (id, lot_id, source_key, publish_status)"
            " SELECT i, $1, 'big/24mp.jpg', 'pending' FROM generate_series(1, $2) AS i",
            lot,
            jobs,
        )
        queue = await open_queue(servers.pg.url)
        try:
            await queue.enqueue()
        finally:
            await queue.close()

    started = time.perf_counter()
    asyncio.run(enqueue())
    while queue_result(servers)["completed"] < jobs:
        if proc.poll() is not None or time.perf_counter() - started > 300:
            raise SystemExit(f"memory run failed: {err_path.read_text()[-1500:]}")
        time.sleep(0.2)
    seconds = time.perf_counter() - started
    peak = vm(proc.pid, "VmHWM")
    after_rss = vm(proc.pid, "VmRSS")
    proc.send_signal(signal.SIGTERM)
    rc, _ = wait4(proc)
    if rc != 0:
        raise SystemExit(f"memory worker exited {rc}")
    return {"concurrency": concurrency, "idle_rss": idle_rss, "idle_hwm": idle_hwm, "peak": peak,
            "after_rss": after_rss, "per_job": (peak - idle_rss) / concurrency, "seconds": seconds}  # fmt: skip


def series_memory(servers: Servers, reps: int, jobs: int, lot: list[int]) -> list[dict[str, float]]:
    print(f"series memory: {wait_quiet('memory')}", file=sys.stderr, flush=True)
    out = []
    for rep in range(reps):
        for c in (1, 2) if rep % 2 == 0 else (2, 1):
            lot[0] += 1
            r = memory_run(servers, c, jobs, lot[0])
            out.append(r)
            print(f"  memory rep {rep + 1} C={c}: idle RSS {r['idle_rss']:.0f} MB, peak {r['peak']:.0f} MB,"
                  f" {r['per_job']:.1f} MB/job", file=sys.stderr, flush=True)  # fmt: skip
    return out


def claim_run(servers: Servers, batch: int, jobs: int, procs: int = 3) -> dict[str, Any]:
    async def fill() -> None:
        from tui_backfill.seams.queue import open_queue

        await db_exec(
            servers.pg.url,
            "TRUNCATE publish_attempts, publish_jobs, auction_files, publish_workers,"
            " publish_commands RESTART IDENTITY",
        )
        await db_exec(
            servers.pg.url,
            "INSERT INTO auction_files (id, lot_id, source_key, publish_status)"
            " SELECT i, 1, 'k/' || i, 'pending' FROM generate_series(1, $1) AS i",
            jobs,
        )
        queue = await open_queue(servers.pg.url)
        try:
            await queue.enqueue()
        finally:
            await queue.close()

    asyncio.run(fill())
    start_at = time.time() + 2.0  # all three connected and imported before the first claim
    before = servers.cpu()
    children = [
        subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__)),
                "--claim-loop",
                servers.pg.url,
                str(batch),
                f"bench:{i}",
                str(start_at),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        for i in range(procs)
    ]
    results = [json.loads(c.communicate()[0]) for c in children]
    after = servers.cpu()
    if any(c.returncode for c in children):
        raise SystemExit("a claim loop failed")
    done = sum(r["jobs"] for r in results)
    assert done == jobs, (done, jobs)
    wall = max(r["end"] for r in results) - min(r["start"] for r in results)
    claims = [x for r in results for x in r["claims"]]
    completes = [x for r in results for x in r["completes"]]
    own = [(sum(r["claims"]) + sum(r["completes"])) / r["jobs"] for r in results]

    def pct(values: list[float], q: float) -> float:
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    return {
        "batch": batch,
        "wall_ms_per_job": wall / jobs * 1000,
        "own_ms_per_job": med(own) * 1000,
        "claim_p50": pct(claims, 0.5),
        "claim_p95": pct(claims, 0.95),
        "complete_p50": pct(completes, 0.5),
        "complete_p95": pct(completes, 0.95),
        "jobs_per_s": jobs / wall,
        "pg_cpu_ms_per_job": (after["postgres"] - before["postgres"]) / jobs * 1000,
        "wall": wall,
    }


def series_claim(servers: Servers, reps: int, jobs: int) -> list[dict[str, Any]]:
    print(f"series claim: {wait_quiet('claim')}", file=sys.stderr, flush=True)
    out = []
    batches = (1, 4)
    for rep in range(reps):
        for batch in batches if rep % 2 == 0 else batches[::-1]:
            r = claim_run(servers, batch, jobs)
            out.append(r)
            print(f"  claim rep {rep + 1} batch {batch}: {r['own_ms_per_job']:.2f} ms/job in a worker,"
                  f" {r['wall_ms_per_job']:.2f} ms/job wall", file=sys.stderr, flush=True)  # fmt: skip
    return out


# -- the report --------------------------------------------------------------------------------


def cores_left(run: Run) -> float:
    """The cores the contender had: this machine's, less the share the servers it talks to
    (S3, the RAID origin, PostgreSQL: elsewhere in production) took during its run."""
    servers = run.cpu["rclone"] + run.cpu["raid"] + run.cpu["postgres"]
    return CORES - servers / run.wall


def report_cpu(runs: list[Run], sets: dict[str, dict[str, bytes]]) -> list[str]:
    lines: list[str] = []
    for set_name in ("small", "camera"):
        mine = [r for r in runs if r.set == set_name]
        if not mine:
            continue
        images = sets[set_name]
        sizes = sorted(len(v) for v in images.values())
        lines += [f"### {set_name}: {len(images)} JPEGs, median {med(sizes) / 1e6:.2f} MB", "",
                  "| contender | jobs/s, work (min–max) | variants/s/core | work s | wall s, process(es) | CPU s: self | rclone | RAID | PostgreSQL | other | self CPU ms/job | CPU busy % of 2 cores during wall |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for who in dict.fromkeys(r.contender for r in mine):
            rs = [r for r in mine if r.contender == who]
            cpu = {k: [r.cpu[k] for r in rs] for k in rs[0].cpu}
            busy = [sum(r.cpu.values()) / r.wall / CORES * 100 for r in rs]
            lines.append(
                f"| {who} | {span([r.rate for r in rs])} | {med([2 * r.rate / r.cores for r in rs]):.2f}"
                f" | {span([r.work for r in rs])} | {span([r.wall for r in rs])}"
                f" | {span(cpu['self'])} | {span(cpu['rclone'])} | {span(cpu['raid'])}"
                f" | {span(cpu['postgres'])} | {span(cpu['other'])}"
                f" | {med([r.cpu['self'] / r.jobs * 1000 for r in rs]):.0f} | {med(busy):.0f} |"
            )
        lines.append("")
        reps = len([r for r in mine if r.contender == "minimal"])
        per_rep: dict[str, list[float]] = {}
        for who in dict.fromkeys(r.contender for r in mine):
            if who.startswith("minimal"):
                continue
            # a pinned worker against the pinned loop (same CPUs, the servers elsewhere)
            base = "minimal pinned" if who.endswith(" pinned") else "minimal"
            mins = [r for r in mine if r.contender == base]
            its = [r for r in mine if r.contender == who]
            per_rep[f"{who}/{base}, work"] = [
                a.rate / b.rate for a, b in zip(its, mins, strict=True)
            ]
            per_rep[f"{who}/{base}, whole process"] = [
                (a.jobs / a.wall) / (b.jobs / b.wall) for a, b in zip(its, mins, strict=True)
            ]
            if base == "minimal":
                per_rep[f"{who}/{base}, work per core left to it"] = [
                    (a.rate / cores_left(a)) / (b.rate / cores_left(b))
                    for a, b in zip(its, mins, strict=True)
                ]
        if per_rep:
            lines += [
                f"| throughput ratio ({reps} interleaved reps) | median (min–max) |",
                "|---|---:|",
            ]
            lines += [f"| {k} | {span(v)} |" for k, v in per_rep.items()]
            lines.append("")
    return lines


def report(args: argparse.Namespace, header: str, sets: dict[str, dict[str, bytes]], cpu_runs: list[Run],
           mem: list[dict[str, float]], claims: list[dict[str, Any]], mem_jobs: int, claim_jobs: int) -> str:  # fmt: skip
    lines = [
        f"## {header}",
        "",
        f"`{shlex.join(['.venv/bin/python', 'bench/publish_worker.py', *sys.argv[1:]])}`",
        "",
        "Other benchmarks or tests before each series (`pgrep -fa 'bench/|pytest'`): "
        + "; ".join(QUIET)
        + ".",
        "",
    ]
    goals: list[str] = []
    if cpu_runs:
        lines += report_cpu(cpu_runs, sets)
        for set_name in ("small", "camera"):
            mins = [r for r in cpu_runs if r.set == set_name and r.contender == "minimal"]
            its = [r for r in cpu_runs if r.set == set_name and r.contender == "worker"]
            if mins and its:
                ratio = med([a.rate / b.rate for a, b in zip(its, mins, strict=True)])
                left = med([(a.rate / cores_left(a)) / (b.rate / cores_left(b)) for a, b in zip(its, mins, strict=True)])  # fmt: skip
                pinned = ""
                pmins = [
                    r for r in cpu_runs if r.set == set_name and r.contender == "minimal pinned"
                ]
                pits = [r for r in cpu_runs if r.set == set_name and r.contender == "worker pinned"]
                if pmins and pits:
                    alone = med([a.rate / b.rate for a, b in zip(pits, pmins, strict=True)])
                    pinned = (
                        f" On CPUs of their own ({len(CONTENDER_CPUS)}; the servers on the other {len(SERVER_CPUS)}):"
                        f" **{'met' if alone >= 0.9 else 'NOT met'}** ({alone * 100:.0f} %)."
                    )
                goals.append(f"Goal 1 ({set_name}): the worker at >= 90 % of the minimal loop. Sharing the machine's cores with the servers:"
                             f" per core left to it (the servers' CPU taken out) {'met' if left >= 0.9 else 'NOT met'} ({left * 100:.0f} %),"
                             f" per core of the machine {'met' if ratio >= 0.9 else 'NOT met'} ({ratio * 100:.0f} %).{pinned}")  # fmt: skip
        cam = [
            r
            for r in cpu_runs
            if r.set == "camera"
            and r.contender != "minimal"
            and not r.contender.endswith(" pinned")
        ]
        if cam:
            rates = {
                w: med([r.rate for r in cam if r.contender == w])
                for w in dict.fromkeys(r.contender for r in cam)
            }
            goals.append(
                "Goal 4 (camera set, jobs/s over the work): "
                + ", ".join(f"{w} {v:.2f}" for w, v in rates.items())
                + "."
            )
    if mem:
        lines += [f"### Peak RSS, {mem_jobs} jobs of the 24-megapixel JPEG (6000x4000, {len(sets['big']['big/24mp.jpg']) / 1e6:.1f} MB)", "",
                  "| CONCURRENCY | idle RSS MB | idle VmHWM MB | peak VmHWM MB | RSS after MB | (peak − idle RSS) / in flight, MB | s for the jobs |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for c in (1, 2):
            rs = [r for r in mem if r["concurrency"] == c]
            lines.append(f"| {c} | {span([r['idle_rss'] for r in rs], '{:.0f}')} | {span([r['idle_hwm'] for r in rs], '{:.0f}')}"
                         f" | {span([r['peak'] for r in rs], '{:.0f}')} | {span([r['after_rss'] for r in rs], '{:.0f}')}"
                         f" | {span([r['per_job'] for r in rs], '{:.1f}')} | {span([r['seconds'] for r in rs], '{:.1f}')} |")  # fmt: skip
        p1 = med([r["peak"] for r in mem if r["concurrency"] == 1])
        p2 = med([r["peak"] for r in mem if r["concurrency"] == 2])
        worst = max(r["per_job"] for r in mem)
        lines += [
            "",
            f"Marginal cost of the second slot (median peak at 2 − at 1): {p2 - p1:.1f} MB.",
            "",
        ]
        goals.append(f"Goal 2: peak RSS per in-flight 24 MP job < 100 MB: **{'met' if worst < 100 else 'NOT met'}** "
                     f"(worst {worst:.1f} MB; medians C=1 {med([r['per_job'] for r in mem if r['concurrency'] == 1]):.1f},"
                     f" C=2 {med([r['per_job'] for r in mem if r['concurrency'] == 2]):.1f}).")  # fmt: skip
    if claims:
        lines += [f"### Claim overhead: 3 processes, claim(n) → complete() each, {claim_jobs:,} jobs, no media work", "",
                  "| n | ms/job in a worker (queue calls / its jobs) | ms/job, wall of all 3 | jobs/s | claim p50 / p95 ms | complete p50 / p95 ms | PostgreSQL CPU ms/job |",
                  "|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for batch in dict.fromkeys(r["batch"] for r in claims):
            rs = [r for r in claims if r["batch"] == batch]
            lines.append(f"| {batch} | {span([r['own_ms_per_job'] for r in rs])} | {span([r['wall_ms_per_job'] for r in rs])}"
                         f" | {span([r['jobs_per_s'] for r in rs], '{:.0f}')} | {med([r['claim_p50'] for r in rs]):.2f} / {med([r['claim_p95'] for r in rs]):.2f}"
                         f" | {med([r['complete_p50'] for r in rs]):.2f} / {med([r['complete_p95'] for r in rs]):.2f}"
                         f" | {span([r['pg_cpu_ms_per_job'] for r in rs])} |")  # fmt: skip
        lines.append("")
        # The worker refills in claims of 4 once running (ClaimPlan.ahead); n = 1 is for contrast.
        refill = med([r["own_ms_per_job"] for r in claims if r["batch"] == 4] or [float("inf")])
        goals.append(f"Goal 3: claim + complete under 5 ms a job with 3 workers on PostgreSQL, at the worker's claims of 4: **{'met' if refill < 5 else 'NOT met'}** "
                     f"({refill:.2f} ms in a worker).")  # fmt: skip
    lines += goals
    return "\n".join(lines) + "\n"


def start_servers(root: Path) -> Servers:
    from tui_backfill.servers.postgres import PostgresServer
    from tui_backfill.servers.rclone_s3 import RcloneS3

    raid = subprocess.Popen(
        [sys.executable, str(Path(__file__)), "--serve-raid", str(root / "raid")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert raid.stdout is not None
    line = raid.stdout.readline()
    if not line.startswith("RAID "):
        raise SystemExit("the RAID origin did not start")
    pg = PostgresServer().start()
    s3 = RcloneS3(root / "s3", buckets=[BUCKET]).start()
    postmaster = int((Path(pg._dir) / "data" / "postmaster.pid").read_text().split()[0])  # type: ignore[arg-type]
    servers = Servers(root, raid, line.split()[1], pg, s3, postmaster)

    async def init() -> None:
        from tui_backfill.seams.queue import open_queue

        queue = await open_queue(pg.url)
        try:
            await queue.init_db()
        finally:
            await queue.close()

    asyncio.run(init())
    return servers


def main() -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick", action="store_true", help="small sets, one repetition: checks the harness"
    )
    p.add_argument(
        "--reps", type=int, default=None, help="interleaved repetitions (default 3; --quick 1)"
    )
    p.add_argument("--series", default="cpu,memory,claim", help="which series (default all)")
    p.add_argument(
        "--sets", default="small,camera", help="the cpu series' image sets (default both)"
    )
    p.add_argument(
        "--no-wait", action="store_true", help="do not wait for other benchmarks or tests"
    )
    p.add_argument("--wait-limit", type=float, default=600.0, help="longest wait for quiet, s")
    p.add_argument("--json", type=Path, default=None, help="also write the raw runs here")
    p.add_argument("--serve-raid", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--minimal", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--claim-loop", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve_raid:
        serve_raid(args.serve_raid)
        return 0
    if args.minimal:
        minimal_loop(Path(args.minimal[0]), int(args.minimal[1]))
        return 0
    if args.claim_loop:
        url, batch, worker, start_at = args.claim_loop
        claim_loop(url, int(batch), worker, float(start_at))
        return 0

    global NO_WAIT, WAIT_LIMIT
    NO_WAIT, WAIT_LIMIT = args.no_wait, args.wait_limit
    reps = args.reps or (1 if args.quick else 3)
    series = set(args.series.split(","))
    mem_jobs, claim_jobs = (4, 300) if args.quick else (8, 3000)
    header = (
        f"Publishing worker ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})\n\n{machine()}"
    )
    sets = image_sets(args.quick)
    with tempfile.TemporaryDirectory(prefix="bench-publish-") as tmp:
        root = Path(tmp)
        write_sets(sets, root / "raid")
        for name in ("small", "camera"):  # the minimal loop reads its set from here
            (root / name).symlink_to(root / "raid" / name)
        servers = start_servers(root)
        lot = [0]
        try:
            only = set(args.sets.split(","))
            if not only <= {"small", "camera"}:
                raise SystemExit(f"--sets: {args.sets!r}; accepted: small, camera, or both")
            cpu_runs = series_cpu(servers, sets, reps, lot, only) if "cpu" in series else []
            mem = series_memory(servers, reps, mem_jobs, lot) if "memory" in series else []
            claims = series_claim(servers, reps, claim_jobs) if "claim" in series else []
        finally:
            servers.raid.send_signal(signal.SIGTERM)
            servers.raid.wait(10)
            servers.s3.stop()
            servers.pg.stop()
    text = report(args, header, sets, cpu_runs, mem, claims, mem_jobs, claim_jobs)
    print(text)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"cpu": [r.__dict__ for r in cpu_runs], "memory": mem, "claim": claims}, indent=1
            )
        )
    return 0


def _exit_on_signal(signum: int, _frame: Any) -> None:
    raise SystemExit(128 + signum)  # the servers (PostgreSQL, rclone, RAID) stopped on the way


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    # started in the background SIGINT may be ignored: both signals stop it cleanly
    signal.signal(signal.SIGINT, _exit_on_signal)
    signal.signal(signal.SIGTERM, _exit_on_signal)
    sys.exit(main())
