"""The console's cost: the demo's workload headless vs under the console in a real terminal.

Each repetition runs the same job (fresh state and bucket) once headless and once in tmux with
the console, interleaved, and takes the run's throughput from its own snapshot (planned items /
(lastUpdateAt - startedAt)) and the client's CPU time. Reports medians and the ratio.
Usage: .venv/bin/python bench/console_cost.py [SKUS] [REPS] [ORIGIN_LATENCY_SECONDS]
(the latency replaces the demo's 4 ms: 0.02 is a typical third-party origin)
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from tui_backfill.demo import demo_faults
from tui_backfill.servers.catalog import ACTIVE_SKUS_QUERY, make_catalog
from tui_backfill.servers.origin import OriginServer
from tui_backfill.servers.rclone_s3 import RcloneS3


def _seconds(snapshot: dict) -> float:
    parse = lambda s: dt.datetime.fromisoformat(s.replace("Z", "+00:00"))  # noqa: E731
    return (parse(snapshot["lastUpdateAt"]) - parse(snapshot["startedAt"])).total_seconds()


def _children_cpu(times_output: str) -> float:
    """CPU seconds of the shell's children, from bash's `times` (second line: user sys)."""
    def secs(text: str) -> float:
        minutes, rest = text.rstrip("s").split("m")
        return int(minutes) * 60 + float(rest)

    user, system = times_output.strip().splitlines()[-1].split()
    return secs(user) + secs(system)


async def _status(state: Path, env: dict) -> dict:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "tui_backfill", "status", "--json", "--state", str(state),
                                                env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    out, _ = await proc.communicate()
    return json.loads(out) if proc.returncode == 0 else {}


async def one(mode: str, skus: int, tmp: Path, catalog: Path, s3: RcloneS3, origin: OriginServer, env: dict, rep: int) -> tuple[float, float]:
    bucket = f"bench-{mode}-{rep}"  # created before rclone starts (it caches the directory list)
    state = tmp / f"{bucket}.sqlite3"
    argv = [sys.executable, "-m", "tui_backfill", "run", "--state", str(state), "--skus-db", str(catalog), "--skus-query", ACTIVE_SKUS_QUERY,
            "--origin", origin.url_template, "--bucket", bucket, "--endpoint-url", s3.endpoint_url, "--path-style",
            "--limit-skus", str(skus), "--timeout", "5", "--backoff", "0.2"]
    times = tmp / f"{bucket}.times"
    if mode == "headless":
        line = f"{shlex.join(argv)} --no-ui --progress-interval 60 > /dev/null 2>&1; times > {times}"
        proc = await asyncio.create_subprocess_exec("bash", "-c", line, env=env)
        await proc.wait()
    else:
        script = tmp / f"{bucket}.sh"
        script.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items() if k.startswith("AWS_"))
                          + f"export TERM=xterm-256color\n{shlex.join(argv)}\n"
                          + f"times > {times}\n")
        sock = f"bench-{os.getpid()}"
        await (await asyncio.create_subprocess_exec("tmux", "-L", sock, "new-session", "-d", "-x", "80", "-y", "24", "bash", str(script))).wait()
        while True:
            await asyncio.sleep(0.5)
            if state.exists():
                snap = await _status(state, env)
                if snap.get("state") == "completed":
                    break
        await (await asyncio.create_subprocess_exec("tmux", "-L", sock, "send-keys", "q")).wait()
        while not times.exists() or len(times.read_text().strip().splitlines()) < 2:
            await asyncio.sleep(0.2)
        await (await asyncio.create_subprocess_exec("tmux", "-L", sock, "kill-server")).wait()
    snap = await _status(state, env)
    assert snap["state"] == "completed", snap
    cpu = _children_cpu(times.read_text())
    return snap["plannedItems"] / _seconds(snap), cpu * 1000 / snap["plannedItems"]


async def main(skus: int, reps: int, latency: float | None) -> None:
    if shutil.which("tmux") is None:
        raise SystemExit("tmux is needed (apt-get install tmux)")
    tmp = Path(tempfile.mkdtemp(prefix="bench-console-"))
    catalog = tmp / "catalog.sqlite3"
    make_catalog(str(catalog), skus, 0)
    faults = demo_faults()
    if latency is not None:
        faults.latency = latency
    buckets = tuple(f"bench-{m}-{r}" for r in range(reps) for m in ("headless", "console"))
    async with RcloneS3(tmp / "s3", buckets=buckets) as s3, OriginServer(faults, seed=1) as origin:
        env = dict(os.environ, **s3.env())
        rows: dict[str, list[tuple[float, float]]] = {"headless": [], "console": []}
        for rep in range(reps):
            for mode in ("headless", "console") if rep % 2 == 0 else ("console", "headless"):
                rows[mode].append(await one(mode, skus, tmp, catalog, s3, origin, env, rep))
                print(f"  rep {rep} {mode:8}: {rows[mode][-1][0]:.1f} obj/s, {rows[mode][-1][1]:.2f} ms CPU/obj", flush=True)
    med = {m: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for m, v in rows.items()}
    print(f"demo workload, {skus} SKUs x 3 angles, origin latency {faults.latency * 1000:.0f} ms, concurrency 3, "
          f"{reps} interleaved repetitions (medians):")
    for mode, (rate, cpu) in med.items():
        print(f"  {mode:8}: {rate:.1f} obj/s, {cpu:.2f} ms client CPU per object")
    paired = statistics.median(c[0] / h[0] for c, h in zip(rows["console"], rows["headless"], strict=True))
    print(f"  console/headless throughput: {100 * med['console'][0] / med['headless'][0]:.1f} % (ratio of medians),"
          f" {100 * paired:.1f} % (median of the per-repetition ratios);"
          f" CPU per object: {100 * med['console'][1] / med['headless'][1]:.1f} %")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000, int(sys.argv[2]) if len(sys.argv) > 2 else 3,
                     float(sys.argv[3]) if len(sys.argv) > 3 else None))
