"""The publishing worker's image step: variants per second per core, Pillow against libvips.

Three contenders make the same two variants (thumb 400x400, display 1600x1600, WebP quality
80, effort/method 4) from the same images, one image at a time on one core:

- ``pillow``: a minimal Pillow loop: open, `draft` (JPEG), decode, resize to display, resize
  the thumb from the display pixels, two WebP encodes; nothing else (no orientation, no colour
  management, no metadata care, no checks);
- ``pyvips``: libvips through pyvips + pyvips-binary, `thumbnail_buffer` once per size
  (shrink-on-load, auto-rotation, `export_profile="srgb"`), `webpsave_buffer(keep="none")`;
  `VIPS_CONCURRENCY=1` so it uses one core like the others, and its operation cache off;
- ``ours``: `tui_backfill.seams.media.make_variants`, every promise kept.

Images (made once, cached on disk): 24 MP photo-like JPEGs (6000x4000), ~3 MP camera-size JPEGs
(2048x1536) and PNGs (1600x1200 RGB, 1200x900 RGBA). Repetitions are interleaved (the order of
the contenders shuffled each time), medians quoted. Peak memory per 24 MP job is measured in a
fresh subprocess per contender (VmHWM growth over the resident size before the job).

    .venv/bin/python bench/publish_media.py [--reps 5]

Prints a Markdown section for bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("VIPS_CONCURRENCY", "1")  # before pyvips loads libvips

from PIL import Image

from tui_backfill.seams.media import DEFAULT_SPECS, make_variants
from tui_backfill.servers import images

QUALITY = 80
EFFORT = 4
Contender = Callable[[bytes], list[bytes]]


def pillow_minimal(data: bytes) -> list[bytes]:
    with Image.open(io.BytesIO(data)) as image:
        display_box, thumb_box = (1600, 1600), (400, 400)
        scale = min(display_box[0] / image.width, display_box[1] / image.height, 1.0)
        display_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        if image.format == "JPEG":
            image.draft("RGB", display_size)
        image.load()
        display = image.resize(display_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    scale = min(thumb_box[0] / display.width, thumb_box[1] / display.height, 1.0)
    thumb_size = (max(1, round(display.width * scale)), max(1, round(display.height * scale)))
    thumb = display.resize(thumb_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    out = []
    for pixels in (thumb, display):
        buffer = io.BytesIO()
        pixels.save(buffer, "WEBP", quality=QUALITY, method=EFFORT)
        out.append(buffer.getvalue())
    return out


def pyvips_contender() -> Contender:
    import pyvips

    pyvips.cache_set_max(0)  # each call does the work again, as a worker's distinct images do

    def run(data: bytes) -> list[bytes]:
        out = []
        for spec in DEFAULT_SPECS:
            thumb = pyvips.Image.thumbnail_buffer(
                data, spec.max_width, height=spec.max_height, size="down", export_profile="srgb"
            )
            out.append(thumb.webpsave_buffer(Q=QUALITY, effort=EFFORT, keep="none"))
        return out

    return run


def ours(data: bytes) -> list[bytes]:
    return [v.data for v in make_variants(data, DEFAULT_SPECS, quality=QUALITY)]


def contenders() -> dict[str, Contender]:
    return {"pillow": pillow_minimal, "pyvips": pyvips_contender(), "ours": ours}


def image_set() -> dict[str, list[bytes]]:
    def png(width: int, height: int, seed: int, mode: str) -> bytes:
        def make() -> bytes:
            with Image.open(io.BytesIO(images.photo_jpeg(width, height, seed))) as photo:
                pixels = photo.convert(mode)
            if mode == "RGBA":
                mask = Image.radial_gradient("L").resize((width, height))
                pixels.putalpha(mask)
            buffer = io.BytesIO()
            pixels.save(buffer, "PNG", compress_level=6)
            return buffer.getvalue()

        return images.cached(f"bench-{width}x{height}-{seed}-{mode}.png", make)

    def jpeg(width: int, height: int, seed: int) -> bytes:
        return images.cached(
            f"bench-{width}x{height}-{seed}.jpg", lambda: images.photo_jpeg(width, height, seed)
        )

    return {
        "24mp_jpeg": [images.large_photo(), jpeg(6000, 4000, 25)],
        "3mp_jpeg": [jpeg(2048, 1536, s) for s in range(4)],
        "png": [png(1600, 1200, 1, "RGB"), png(1200, 900, 2, "RGBA")],
    }


def run_benchmark(reps: int) -> dict[str, object]:
    sets = image_set()
    runners = contenders()
    for run in runners.values():  # warm up: codecs loaded, caches primed
        run(sets["3mp_jpeg"][0])
    wall: dict[tuple[str, str], list[float]] = {}
    cpu: dict[tuple[str, str], list[float]] = {}
    sizes: dict[tuple[str, str], int] = {}
    rng = random.Random(1)
    for _ in range(reps):
        order = list(runners)
        rng.shuffle(order)
        for name in order:
            for category, datas in sets.items():
                started, started_cpu = time.perf_counter(), time.process_time()
                total = 0
                for data in datas:
                    total += sum(len(b) for b in runners[name](data))
                wall.setdefault((name, category), []).append(time.perf_counter() - started)
                cpu.setdefault((name, category), []).append(time.process_time() - started_cpu)
                sizes[(name, category)] = total
    return {
        "images": {category: len(datas) for category, datas in sets.items()},
        "source_bytes": {category: sum(map(len, d)) for category, d in sets.items()},
        "wall": {f"{n}/{c}": v for (n, c), v in wall.items()},
        "cpu": {f"{n}/{c}": v for (n, c), v in cpu.items()},
        "output_bytes": {f"{n}/{c}": v for (n, c), v in sizes.items()},
        "memory": {name: memory_probe(name) for name in runners},
    }


def memory_probe(name: str) -> float:
    """Peak resident growth (MiB) of one 24 MP job, in a fresh process."""
    images.large_photo()  # cached for the child
    done = subprocess.run(
        [sys.executable, __file__, "--memory-probe", name],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return float(json.loads(done.stdout)["growth_mib"])


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _probe(name: str) -> None:
    run = contenders()[name]
    big = images.large_photo()
    run(images.photo_jpeg(320, 240, 1))  # codecs loaded; the small image leaves the peak alone
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # VmHWM := VmRSS
    before = _status_mib("VmRSS")
    run(big)
    print(json.dumps({"growth_mib": _status_mib("VmHWM") - before}))


def report(figures: dict[str, object], reps: int) -> str:
    wall = figures["wall"]
    cpu = figures["cpu"]
    out_bytes = figures["output_bytes"]
    counts = figures["images"]
    memory = figures["memory"]
    assert isinstance(wall, dict) and isinstance(cpu, dict) and isinstance(out_bytes, dict)
    assert isinstance(counts, dict) and isinstance(memory, dict)
    names = ["pillow", "pyvips", "ours"]
    categories = list(counts)
    lines = [
        "| contender | "
        + " | ".join(f"{c}: variants/s (CPU s/image)" for c in categories)
        + " | all: variants/s | output KiB (all) | peak MB per 24 MP job |",
        "|---|" + "---:|" * (len(categories) + 3),
    ]
    medians: dict[str, float] = {}
    for name in names:
        cells = []
        total_wall = 0.0
        total_variants = 0
        total_out = 0
        for category in categories:
            key = f"{name}/{category}"
            seconds = statistics.median(wall[key])
            cpu_s = statistics.median(cpu[key])
            variants = 2 * counts[category]
            cells.append(f"{variants / seconds:.1f} ({cpu_s / counts[category]:.3f})")
            total_wall += seconds
            total_variants += variants
            total_out += out_bytes[key]
        medians[name] = total_variants / total_wall
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {medians[name]:.1f} | {total_out / 1024:.0f} | {memory[name]:.0f} |"
        )
    lines += [
        "",
        f"Ratios (all images, medians of {reps} interleaved repetitions): "
        f"pyvips/ours {medians['pyvips'] / medians['ours']:.2f}x, "
        f"pillow minimal/ours {medians['pillow'] / medians['ours']:.2f}x, "
        f"pyvips/pillow minimal {medians['pyvips'] / medians['pillow']:.2f}x.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--memory-probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures")
    args = parser.parse_args(argv)
    if args.memory_probe:
        _probe(args.memory_probe)
        return 0
    figures = run_benchmark(args.reps)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1))
    print(report(figures, args.reps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
