"""Scale: a 1,000,000-SKU catalog. Planning time and peak RSS of a run that plans all of it,
and how fast a resume after 900,000 finished SKUs fetches its first object.

The 900,000 finished SKUs are written into the state's checkpoint directly (processing them
for real would take hours); everything else is the real CLI against loopback servers.
Usage: .venv/bin/python bench/scale.py [SKUS]   (default 1000000)
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from common import CLI, run_argv  # bench/, beside this script

from tui_backfill.servers.origin import OriginFaults, OriginServer
from tui_backfill.servers.rclone_s3 import RcloneS3


def vm_hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def until_fetching(proc: asyncio.subprocess.Process, origin: OriginServer, started: float) -> tuple[float, float]:
    """Seconds from start to the first origin GET, and peak RSS (MB) once 300 GETs are done."""
    first = None
    base = origin.gets
    while proc.returncode is None:
        if first is None and origin.gets > base:
            first = time.perf_counter() - started
        if origin.gets > base + 300:
            return first or 0.0, vm_hwm_mb(proc.pid)
        await asyncio.sleep(0.01)
    raise SystemExit(f"the run ended early (exit {proc.returncode})")


async def pause(state: Path, env: dict[str, str], proc: asyncio.subprocess.Process) -> None:
    await (await asyncio.create_subprocess_exec(*CLI, "pause", "--state", str(state), env=env,
                                                stderr=asyncio.subprocess.DEVNULL)).wait()
    await proc.wait()
    assert proc.returncode == 75, proc.returncode


async def main(skus: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    catalog, state = tmp / "catalog.sqlite3", tmp / "state.sqlite3"
    await (await asyncio.create_subprocess_exec(sys.executable, "-m", "tui_backfill.servers.catalog", str(catalog),
                                                "--active", str(skus), stdout=asyncio.subprocess.DEVNULL)).wait()
    async with RcloneS3(tmp / "s3", buckets=("scale",)) as s3, OriginServer(OriginFaults()) as origin:
        env = dict(os.environ, **s3.env())
        run = run_argv(state=state, catalog=catalog, origin=origin.url_template, bucket="scale",
                       endpoint_url=s3.endpoint_url, skus=skus, concurrency=6)
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*run, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        plan_s, rss = await until_fetching(proc, origin, started)
        await pause(state, env, proc)
        print(f"{skus:,}-SKU catalog: first fetch {plan_s:.1f} s after start (read, dedupe, sort and store the SKUs); "
              f"peak RSS {rss:.0f} MB")

        # Pretend 90 % of the SKUs are finished: the checkpoint says so, the counters agree.
        done = skus * 9 // 10
        db = sqlite3.connect(state)
        (last,) = db.execute("SELECT sku FROM run_skus ORDER BY sku LIMIT 1 OFFSET ?", (done - 1,)).fetchone()
        counters = json.loads(db.execute("SELECT counters FROM runs").fetchone()[0])
        counters.update(scanned_skus=done, uploaded=done * 3)
        db.execute("UPDATE runs SET checkpoint = ?, counters = ?",
                   (json.dumps({"lastSku": last, "completedAngles": {}}), json.dumps(counters)))
        db.commit()
        db.close()

        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*CLI, "resume", "--no-ui", "--state", str(state), env=env,
                                                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        first_s, rss = await until_fetching(proc, origin, started)
        await pause(state, env, proc)
        print(f"resume after {done:,} finished SKUs: first fetch {first_s:.2f} s after start; peak RSS {rss:.0f} MB")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000))
