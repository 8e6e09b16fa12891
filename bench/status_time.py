"""How long `tui-backfill status --json` takes on a finished job, from the shell's view.

Runs a job of N SKUs x 3 angles to completion against loopback servers (the real CLI), then
starts `tui-backfill status --json` REPS times, one after the other, and reports the wall time
of each process from start to exit (Python's start-up included: that is what an operator or a
monitoring script waits for), with the median, the 90th percentile and the worst. Then the same
for `status` (the human-readable form). (tests/test_fence.py keeps botocore and textual out of
`status`: that is what keeps its start-up light.)

    .venv/bin/python bench/status_time.py [SKUS] [REPS]      # default 2000 11
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from common import CLI, run_argv  # bench/, beside this script

from tui_backfill.servers.catalog import make_catalog
from tui_backfill.servers.origin import OriginFaults, OriginServer
from tui_backfill.servers.rclone_s3 import RcloneS3


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=True)
    return time.perf_counter() - started, done.stdout


async def main(skus: int, reps: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-status-") as tmp:
        catalog, state = f"{tmp}/catalog.sqlite3", f"{tmp}/state.sqlite3"
        make_catalog(catalog, skus, 0)
        async with RcloneS3(buckets=("bench",)) as s3, OriginServer(OriginFaults(missing_fraction=0.03)) as origin:
            env = dict(os.environ, **s3.env())
            run = run_argv(state=state, catalog=catalog, origin=origin.url_template, bucket="bench",
                           endpoint_url=s3.endpoint_url, skus=skus, concurrency=6, progress_interval=60)
            proc = await asyncio.create_subprocess_exec(*run, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
            out, _ = await proc.communicate()
            snap = json.loads(out)
            assert proc.returncode == 0 and snap["state"] == "completed", snap
        env = dict(os.environ)  # no servers needed: status reads the state file only
        print(f"finished job: {skus} SKUs x 3 angles ({snap['uploaded']} uploaded); {reps} runs of each command, wall time per process")
        for argv in (["status", "--json"], ["status"]):
            seconds = []
            for _ in range(reps):
                elapsed, stdout = timed([*CLI, *argv, "--state", state], env)
                if "--json" in argv:
                    assert json.loads(stdout)["state"] == "completed"
                seconds.append(elapsed)
            seconds.sort()
            p90 = seconds[min(len(seconds) - 1, round(0.9 * (len(seconds) - 1)))]
            print(f"  tui-backfill {' '.join(argv):14}: median {statistics.median(seconds):.3f} s, p90 {p90:.3f} s,"
                  f" worst {seconds[-1]:.3f} s, best {seconds[0]:.3f} s")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000, int(sys.argv[2]) if len(sys.argv) > 2 else 11))
