"""The cost of checkpointing: client CPU per object with checkpoints every 200 SKUs (the
default) against one commit at the end, zero origin latency, interleaved repetitions.

Machine speed drifts more than the effect, so the figure is the median of per-pair ratios
over many interleaved repetitions (default 9). Usage:
.venv/bin/python bench/checkpoint_cost.py [SKUS] [REPS]   (defaults 500 SKUs x 3 angles, 9)
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

from common import child_cpu_seconds, run_argv  # bench/, beside this script

from tui_backfill.servers.catalog import make_catalog
from tui_backfill.servers.origin import OriginFaults, OriginServer
from tui_backfill.servers.rclone_s3 import RcloneS3

MODES = {"checkpoint every 200 SKUs": "200", "one commit at the end": "100000000"}


async def cpu_ms_per_object(argv: list[str], env: dict[str, str], objects: int) -> float:
    return await asyncio.to_thread(child_cpu_seconds, argv, env) * 1000 / objects


async def main(skus: int, reps: int) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-ckpt-"))
    catalog = tmp / "catalog.sqlite3"
    make_catalog(catalog, skus, 0)
    buckets = [f"ckpt-{rep}-{i}" for rep in range(reps) for i in range(len(MODES))]
    async with RcloneS3(tmp / "s3", buckets=buckets) as s3, OriginServer(OriginFaults(), object_size=65536) as origin:
        env = dict(os.environ, **s3.env())
        results: dict[str, list[float]] = {mode: [] for mode in MODES}
        for rep in range(reps):
            order = list(MODES.items()) if rep % 2 == 0 else list(reversed(MODES.items()))
            for mode, every in order:
                i = list(MODES).index(mode)
                argv = run_argv(state=tmp / f"{rep}-{i}.sqlite3", catalog=catalog, origin=origin.url_template,
                                bucket=f"ckpt-{rep}-{i}", endpoint_url=s3.endpoint_url, skus=skus, concurrency=32,
                                upload_concurrency=32, extra=["--checkpoint-every", every])
                results[mode].append(await cpu_ms_per_object(argv, env, skus * 3))
                print(f"  rep {rep + 1}/{reps} {mode:26}: {results[mode][-1]:.2f} ms CPU/obj", flush=True)
    with_ckpt, without = results.values()
    ratios = [a / b for a, b in zip(with_ckpt, without, strict=True)]
    print(f"{skus} SKUs x 3 angles, 64 KiB, zero latency, C=32, {reps} interleaved repetitions:")
    for mode, values in results.items():
        print(f"  {mode:26}: median {statistics.median(values):.2f} ms client CPU per object (process)")
    print(f"  checkpointing costs {100 * (statistics.median(ratios) - 1):+.1f} % CPU per object (median of pair ratios)")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 500, int(sys.argv[2]) if len(sys.argv) > 2 else 9))
