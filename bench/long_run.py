"""Long run: memory and open file descriptors stay flat over 50,000 items.

One run of the real CLI (headless) over 16,667 SKUs x 3 angles (small objects, zero origin
latency, 3 % 404s, concurrency 32) against `rclone serve s3` and the origin on loopback. Every
0.5 s the client's resident set (``VmRSS`` of /proc/PID/status) and open descriptors
(``len(os.listdir(/proc/PID/fd))``) are sampled, with the items done so far (origin GETs) and
the client's CPU time. Prints the samples at about every 10 % (with each stretch's rate and
client and S3 server CPU per item: a rate that falls while CPU per item stays level is the
machine, not the client), then start (the first sample after 1,000 items) and end (the last sample before the
process exits) and their ratios.
Usage: .venv/bin/python bench/long_run.py [ITEMS] [CONCURRENCY]   (defaults 50000, 32)
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from common import run_argv  # bench/, beside this script

from tui_backfill.servers.origin import OriginFaults, OriginServer
from tui_backfill.servers.rclone_s3 import RcloneS3

ANGLES = 3
START_AFTER = 1000  # items: past start-up and the first listings


@dataclass(frozen=True)
class Sample:
    seconds: float
    items: int
    rss_mb: float
    fds: int
    cpu: float  # client user + system seconds
    s3_cpu: float  # the S3 server's


def rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except FileNotFoundError:
        return None


async def sample_until_exit(
    proc: asyncio.subprocess.Process, origin: OriginServer, s3_pid: int, started: float
) -> list[Sample]:
    samples: list[Sample] = []
    while proc.returncode is None:
        rss, fds, cpu = rss_mb(proc.pid), open_fds(proc.pid), cpu_seconds(proc.pid)
        s3_cpu = cpu_seconds(s3_pid) or 0.0
        if rss is not None and fds is not None and cpu is not None and proc.returncode is None:
            now = time.perf_counter() - started
            samples.append(Sample(now, origin.gets, rss, fds, cpu, s3_cpu))
        try:
            await asyncio.wait_for(proc.wait(), 0.5)
        except TimeoutError:
            pass
    return samples


async def main(items: int, concurrency: int) -> None:
    skus = -(-items // ANGLES)
    tmp = Path(tempfile.mkdtemp(prefix="bench-long-"))
    catalog, state = tmp / "catalog.sqlite3", tmp / "state.sqlite3"
    await (
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tui_backfill.servers.catalog",
            str(catalog),
            "--active",
            str(skus),
            stdout=asyncio.subprocess.DEVNULL,
        )
    ).wait()
    async with (
        RcloneS3(tmp / "s3", buckets=("long",)) as s3,
        OriginServer(OriginFaults(missing_fraction=0.03)) as origin,
    ):
        # rclone can answer 500 when PUTs race to create the first object's directory
        (tmp / "s3" / "long" / "rsr" / "highres").mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **s3.env())
        argv = run_argv(
            state=state,
            catalog=catalog,
            origin=origin.url_template,
            bucket="long",
            endpoint_url=s3.endpoint_url,
            skus=skus,
            concurrency=concurrency,
            upload_concurrency=concurrency,
        )
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        assert proc.stdout is not None
        out_task = asyncio.create_task(proc.stdout.read())
        assert s3.process is not None
        samples = await sample_until_exit(proc, origin, s3.process.pid, started)
        snapshot = json.loads(await out_task)
    if proc.returncode != 0:
        raise SystemExit(f"the run exited {proc.returncode}")
    planned = skus * ANGLES
    done = snapshot["uploaded"] + snapshot["skippedExists"] + snapshot["noRemote"]
    assert done == planned, snapshot
    wall = samples[-1].seconds if samples else 0.0
    print(
        f"{planned:,} items ({skus:,} SKUs x {ANGLES}), concurrency {concurrency}, zero latency: "
        f"{snapshot['uploaded']:,} uploaded, {snapshot['noRemote']:,} noRemote in {wall:.0f} s "
        f"({planned / wall:.0f} items/s)"
    )
    print(
        "   items     s   RSS MB   fds   items/s   CPU ms/item: client  S3 server (since the line above)"
    )
    step = planned / 10
    previous = samples[0]
    for s in samples:
        if s.items >= previous.items + step or (s is samples[-1] and s.items > previous.items):
            rate = (s.items - previous.items) / max(s.seconds - previous.seconds, 1e-9)
            done = max(s.items - previous.items, 1)
            cpu_ms = 1000 * (s.cpu - previous.cpu) / done
            s3_ms = 1000 * (s.s3_cpu - previous.s3_cpu) / done
            print(
                f"  {s.items:6,} {s.seconds:5.0f}  {s.rss_mb:7.1f}  {s.fds:4}  {rate:8.0f}  "
                f"{cpu_ms:17.2f}  {s3_ms:9.2f}"
            )
            previous = s
    # end: the last sample while items were still being done (the next one may catch the
    # process closing its connections and state on the way out)
    working = [s for s in samples if START_AFTER <= s.items < planned]
    first, last = working[0], working[-1]
    peak_rss = max(s.rss_mb for s in working)
    peak_fds = max(s.fds for s in working)
    print(f"start (after {first.items:,} items): RSS {first.rss_mb:.1f} MB, {first.fds} fds")
    print(f"end   (after {last.items:,} items): RSS {last.rss_mb:.1f} MB, {last.fds} fds")
    print(
        f"end / start: RSS {last.rss_mb / first.rss_mb:.2f}x, fds {last.fds / first.fds:.2f}x; "
        f"peaks after start: RSS {peak_rss:.1f} MB, {peak_fds} fds"
    )


if __name__ == "__main__":
    asyncio.run(
        main(
            int(sys.argv[1]) if len(sys.argv) > 1 else 50_000,
            int(sys.argv[2]) if len(sys.argv) > 2 else 32,
        )
    )
