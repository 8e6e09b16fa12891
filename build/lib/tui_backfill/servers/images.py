"""Real test images for the publishing worker: deterministic, made with Pillow, no files checked in.

Each image exercises one promise of `seams.media.variants`:

- ``orient/{1..8}.jpg``: 160x100 as shown upright (100x160 stored for 5-8), EXIF orientation
  1-8, stored pixels arranged so that, oriented correctly, a red block sits in the TOP-LEFT
  corner and a green block in the top-right (a mirror image puts green on the left);
- ``p3.jpg``: 64x64 of Display P3 (200, 60, 50) with an embedded Display P3 profile built here
  (:func:`display_p3_profile`); ``adobe_rgb.jpg`` likewise with Adobe RGB (1998);
- ``cmyk.jpg`` (no profile) and ``cmyk_icc.jpg`` (with :func:`cmyk_profile`, a small LUT
  profile whose inks are a press's, not the naive complement): a cyan block on the left half,
  magenta top-right, yellow bottom-right;
- ``alpha.png``: RGBA, opaque red left third, half-transparent green middle, fully transparent
  right third; ``palette.png`` (P with a transparent index) and ``gray16.png`` (16-bit grey);
- ``animated.gif``: three frames, red, green, blue: the first (red) is the one to publish;
- ``small.jpg``: 300x200, smaller than every box (never upscaled);
- ``corrupt.jpg`` (a JPEG cut in half), ``random.bin`` (random bytes), ``bomb.png`` (a valid
  header declaring 20000x20000 in a file of a few hundred bytes), ``big_header.png``
  (12000x10000: over the default 100 MP limit but under Pillow's own error threshold);
- :func:`photo_jpeg` makes photo-like JPEGs (gradients, shapes and noise, so they compress like
  photos); :func:`large_photo` is the 6000x4000 (24 MP) one, cached on disk because it takes a
  second or two to encode.

:func:`sample_images` returns these as a catalog ``{source_key: bytes}``; :func:`many_images`
returns ``n`` distinct photo-like JPEGs of varied sizes and aspect ratios (for multi-worker tests
and the demo), fast to make (about 5 ms each).

The ICC profiles are written here byte by byte (ICC v2 matrix/TRC RGB profiles, and a CMYK
profile with a 16-bit LUT) because Pillow can only make sRGB and Lab profiles.
"""

from __future__ import annotations

import functools
import hashlib
import io
import itertools
import os
import random
import struct
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from PIL import Image, ImageChops, ImageDraw

__all__ = [
    "P3_PATCH",
    "adobe_rgb_profile",
    "cmyk_profile",
    "display_p3_profile",
    "large_photo",
    "many_images",
    "photo_jpeg",
    "rgb_matrix_profile",
    "sample_images",
]

CACHE_VERSION = "2"
P3_PATCH = (200, 60, 50)  # a Display P3 colour inside sRGB's gamut, with distinct numbers
ORIENTED_SIZE = (160, 100)  # orient/*.jpg as shown upright
MARK = 40  # side of the corner blocks

# -- ICC profiles --------------------------------------------------------------------------
_D50 = (0.9642, 1.0, 0.8249)  # the ICC profile connection space's white
_BRADFORD = ((0.8951, 0.2664, -0.1614), (-0.7502, 1.7135, 0.0367), (0.0389, -0.0685, 1.0296))

Matrix = tuple[tuple[float, ...], ...]
Vector = tuple[float, float, float]


def _mul(a: Matrix, b: Matrix) -> Matrix:
    return tuple(
        tuple(sum(a[i][k] * b[k][j] for k in range(3)) for j in range(3)) for i in range(3)
    )


def _apply(m: Matrix, v: Sequence[float]) -> Vector:
    return (
        m[0][0] * v[0] + m[0][1] * v[1] + m[0][2] * v[2],
        m[1][0] * v[0] + m[1][1] * v[1] + m[1][2] * v[2],
        m[2][0] * v[0] + m[2][1] * v[1] + m[2][2] * v[2],
    )


def _inverse(m: Matrix) -> Matrix:
    (a, b, c), (d, e, f), (g, h, i) = m
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    return (
        ((e * i - f * h) / det, (c * h - b * i) / det, (b * f - c * e) / det),
        ((f * g - d * i) / det, (a * i - c * g) / det, (c * d - a * f) / det),
        ((d * h - e * g) / det, (b * g - a * h) / det, (a * e - b * d) / det),
    )


def _xyz(x: float, y: float) -> Vector:
    return (x / y, 1.0, (1 - x - y) / y)


def rgb_to_xyz_matrix(
    primaries: tuple[tuple[float, float], ...], white: tuple[float, float]
) -> Matrix:
    """Linear RGB -> XYZ (under the space's own white) from xy chromaticities."""
    columns = [_xyz(x, y) for x, y in primaries]
    p: Matrix = tuple(tuple(columns[j][i] for j in range(3)) for i in range(3))
    s = _apply(_inverse(p), _xyz(*white))
    return tuple(tuple(p[i][j] * s[j] for j in range(3)) for i in range(3))


def bradford(source_white: Vector, target_white: Vector) -> Matrix:
    """The Bradford chromatic adaptation from one white to another (XYZ -> XYZ)."""
    src = _apply(_BRADFORD, source_white)
    dst = _apply(_BRADFORD, target_white)
    scale: Matrix = (
        (dst[0] / src[0], 0.0, 0.0),
        (0.0, dst[1] / src[1], 0.0),
        (0.0, 0.0, dst[2] / src[2]),
    )
    return _mul(_inverse(_BRADFORD), _mul(scale, _BRADFORD))


def _s15(v: float) -> bytes:
    return struct.pack(">i", round(v * 65536))


def _xyz_tag(xyz: Sequence[float]) -> bytes:
    return b"XYZ \0\0\0\0" + b"".join(_s15(c) for c in xyz)


def _desc_tag(text: str) -> bytes:
    ascii_text = text.encode("ascii") + b"\0"
    return (
        b"desc\0\0\0\0"
        + struct.pack(">I", len(ascii_text))
        + ascii_text
        + struct.pack(">II", 0, 0)  # no Unicode description
        + struct.pack(">HB", 0, 0)  # no ScriptCode description
        + b"\0" * 67
    )


def _text_tag(text: str) -> bytes:
    return b"text\0\0\0\0" + text.encode("ascii") + b"\0"


def srgb_decode(v: float) -> float:
    """sRGB's (and Display P3's) transfer curve: encoded 0..1 -> linear 0..1."""
    return v / 12.92 if v <= 0.04045 else ((v + 0.055) / 1.055) ** 2.4


def srgb_encode(v: float) -> float:
    v = min(max(v, 0.0), 1.0)
    return v * 12.92 if v <= 0.0031308 else 1.055 * v ** (1 / 2.4) - 0.055


def _curve_tag(curve: Callable[[float], float] | float) -> bytes:
    if isinstance(curve, float):  # a pure gamma, u8Fixed8
        return b"curv\0\0\0\0" + struct.pack(">IH", 1, round(curve * 256))
    points = 1024
    table = [round(curve(i / (points - 1)) * 65535) for i in range(points)]
    return b"curv\0\0\0\0" + struct.pack(f">I{points}H", points, *table)


def _profile(
    device_class: bytes, colour_space: bytes, pcs: bytes, tags: list[tuple[bytes, bytes]]
) -> bytes:
    """An ICC v2.1 profile: header, tag table, tag data (4-byte aligned; equal data shared)."""
    table_size = 4 + 12 * len(tags)
    offset = 128 + table_size
    entries = []
    blobs = bytearray()
    placed: dict[bytes, int] = {}
    for signature, data in tags:
        if data not in placed:
            placed[data] = offset + len(blobs)
            blobs += data + b"\0" * (-len(data) % 4)
        entries.append(struct.pack(">4sII", signature, placed[data], len(data)))
    size = offset + len(blobs)
    header = (
        struct.pack(">I", size)
        + b"lcms"
        + bytes((2, 0x10, 0, 0))
        + device_class
        + colour_space
        + pcs
        + struct.pack(">6H", 2026, 1, 1, 0, 0, 0)
        + b"acsp"
        + b"\0" * 4  # platform
        + b"\0" * 4  # flags
        + b"\0" * 8  # manufacturer, model
        + b"\0" * 8  # attributes
        + struct.pack(">I", 0)  # perceptual
        + b"".join(_s15(c) for c in _D50)
        + b"tuib"  # creator
        + b"\0" * 16  # profile id (v4 only)
        + b"\0" * 28
    )
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + b"".join(entries) + bytes(blobs)


def rgb_matrix_profile(
    name: str,
    primaries: tuple[tuple[float, float], ...],
    white: tuple[float, float],
    curve: Callable[[float], float] | float,
) -> bytes:
    """An ICC v2 matrix/TRC RGB display profile: colorants adapted to D50 by Bradford."""
    to_xyz = rgb_to_xyz_matrix(primaries, white)
    adapted = _mul(bradford(_xyz(*white), _D50), to_xyz)
    trc = _curve_tag(curve)
    return _profile(
        b"mntr",
        b"RGB ",
        b"XYZ ",
        [
            (b"desc", _desc_tag(name)),
            (b"cprt", _text_tag("No copyright, use freely")),
            (b"wtpt", _xyz_tag(_D50)),
            (b"rXYZ", _xyz_tag([adapted[i][0] for i in range(3)])),
            (b"gXYZ", _xyz_tag([adapted[i][1] for i in range(3)])),
            (b"bXYZ", _xyz_tag([adapted[i][2] for i in range(3)])),
            (b"rTRC", trc),
            (b"gTRC", trc),
            (b"bTRC", trc),
        ],
    )


P3_PRIMARIES = ((0.680, 0.320), (0.265, 0.690), (0.150, 0.060))
ADOBE_PRIMARIES = ((0.640, 0.330), (0.210, 0.710), (0.150, 0.060))
SRGB_PRIMARIES = ((0.640, 0.330), (0.300, 0.600), (0.150, 0.060))
D65 = (0.3127, 0.3290)


@functools.cache
def display_p3_profile() -> bytes:
    return rgb_matrix_profile("Display P3 (tui-backfill test)", P3_PRIMARIES, D65, srgb_decode)


@functools.cache
def adobe_rgb_profile() -> bytes:
    return rgb_matrix_profile(
        "Adobe RGB (1998) (tui-backfill test)", ADOBE_PRIMARIES, D65, 563 / 256
    )


# A press's inks as sRGB colours (roughly SWOP's): the profile prints with these, so a cyan
# patch comes out (0, 160, 230)-ish instead of the naive complement (0, 255, 255).
CMYK_INKS = ((0, 160, 230), (230, 0, 126), (255, 240, 0), (40, 40, 40))


@functools.cache
def cmyk_profile() -> bytes:
    """An ICC v2 CMYK input profile: A2B0 is a 2x2x2x2 16-bit LUT to XYZ whose corners are
    the products of the inks' reflectances (`CMYK_INKS`) on white paper."""
    to_xyz = _mul(bradford(_xyz(*D65), _D50), rgb_to_xyz_matrix(SRGB_PRIMARIES, D65))
    inks = [tuple(srgb_decode(c / 255) for c in ink) for ink in CMYK_INKS]
    grid = bytearray()
    for corner in itertools.product((0, 1), repeat=4):  # C slowest, K fastest, as ICC orders
        linear = [1.0, 1.0, 1.0]
        for ink, on in zip(inks, corner, strict=True):
            if on:
                linear = [a * b for a, b in zip(linear, ink, strict=True)]
        xyz = _apply(to_xyz, linear)
        grid += struct.pack(">3H", *(min(65535, round(c * 32768)) for c in xyz))
    identity = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    lut = (
        b"mft2\0\0\0\0"
        + struct.pack(">BBBB", 4, 3, 2, 0)
        + b"".join(_s15(v) for v in identity)
        + struct.pack(">HH", 2, 2)
        + struct.pack(">8H", *([0, 65535] * 4))  # input tables: identity
        + bytes(grid)
        + struct.pack(">6H", *([0, 65535] * 3))  # output tables: identity
    )
    return _profile(
        b"prtr",
        b"CMYK",
        b"XYZ ",
        [
            (b"desc", _desc_tag("Test press CMYK (tui-backfill)")),
            (b"cprt", _text_tag("No copyright, use freely")),
            (b"wtpt", _xyz_tag(_D50)),
            (b"A2B0", lut),
        ],
    )


# -- images --------------------------------------------------------------------------------
def _jpeg(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def _png(image: Image.Image, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **options)
    return buffer.getvalue()


# transpose applied to the upright image to get what is stored: the inverse of the one that
# shows orientation o upright (ImageOps.exif_transpose's)
_STORE: dict[int, Image.Transpose | None] = {
    1: None,
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,  # shown with ROTATE_270
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,  # shown with ROTATE_90
}


def oriented_jpeg(orientation: int) -> bytes:
    """A JPEG with EXIF `orientation` whose upright view has red top-left, green top-right."""
    width, height = ORIENTED_SIZE
    upright = Image.new("RGB", ORIENTED_SIZE, (128, 128, 128))
    draw = ImageDraw.Draw(upright)
    draw.rectangle((0, 0, MARK - 1, MARK - 1), fill=(255, 0, 0))
    draw.rectangle((width - MARK, 0, width - 1, MARK - 1), fill=(0, 255, 0))
    draw.rectangle((0, height - MARK // 2, width - 1, height - 1), fill=(0, 0, 255))
    method = _STORE[orientation]
    stored = upright if method is None else upright.transpose(method)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _jpeg(stored, quality=95, exif=exif.tobytes())


def patch_jpeg(colour: tuple[int, int, int], icc: bytes, size: int = 64) -> bytes:
    image = Image.new("RGB", (size, size), colour)
    return _jpeg(image, quality=98, subsampling=0, icc_profile=icc)


def cmyk_jpeg(icc: bytes | None) -> bytes:
    """128x64 CMYK: cyan left half, magenta top-right, yellow bottom-right."""
    image = Image.new("CMYK", (128, 64), (255, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rectangle((64, 0, 127, 31), fill=(0, 255, 0, 0))
    draw.rectangle((64, 32, 127, 63), fill=(0, 0, 255, 0))
    options: dict[str, object] = {"quality": 95}
    if icc is not None:
        options["icc_profile"] = icc
    return _jpeg(image, **options)


def alpha_png() -> bytes:
    """300x120 RGBA: opaque red | green at alpha 128 | fully transparent."""
    image = Image.new("RGBA", (300, 120), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 99, 119), fill=(255, 0, 0, 255))
    draw.rectangle((100, 0, 199, 119), fill=(0, 255, 0, 128))
    return _png(image)


def palette_png() -> bytes:
    """120x80 palette image: index 0 transparent (left half), index 1 blue (right half)."""
    image = Image.new("P", (120, 80), 0)
    image.putpalette([255, 255, 255, 0, 0, 255] + [0, 0, 0] * 254)
    ImageDraw.Draw(image).rectangle((60, 0, 119, 79), fill=1)
    return _png(image, transparency=0)


def gray16_png() -> bytes:
    """200x100 16-bit grey: a horizontal ramp 0..65535."""
    image = Image.linear_gradient("L").rotate(90).resize((200, 100)).convert("I")
    image = image.point(lambda v: v * 257).convert("I;16")
    return _png(image)


def animated_gif() -> bytes:
    frames = [
        Image.new("RGB", (64, 48), colour) for colour in ((255, 0, 0), (0, 255, 0), (0, 0, 255))
    ]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 20000, height: int = 20000) -> bytes:
    """A PNG whose header declares `width`x`height` grey pixels; the data is a few rows only."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\0" * (width + 1) * 4, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def photo_jpeg(
    width: int, height: int, seed: int = 0, *, quality: int = 88, grain: int = 40
) -> bytes:
    """A photo-like JPEG: gradients, a few shapes, grain (uniform noise of amplitude `grain`,
    what makes it compress like a photo); deterministic for (size, seed, options)."""
    rng = random.Random(f"{width}x{height}/{seed}")
    small = (max(1, width // 8), max(1, height // 8))
    channels = []
    for _ in range(3):
        gradient = Image.linear_gradient("L") if rng.random() < 0.5 else Image.radial_gradient("L")
        gradient = gradient.rotate(rng.uniform(0, 360)).resize(small)
        gain, lift = rng.uniform(0.3, 1.0), rng.randint(0, 80)
        channels.append(gradient.point(lambda v, a=gain, b=lift: v * a + b))
    base = Image.merge("RGB", channels)
    draw = ImageDraw.Draw(base)
    for _ in range(6):
        x, y = rng.randrange(small[0]), rng.randrange(small[1])
        r = rng.randint(2, max(3, min(small) // 3))
        colour = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
        if rng.random() < 0.5:
            draw.ellipse((x - r, y - r, x + r, y + r), fill=colour)
        else:
            draw.rectangle((x - r, y - r // 2, x + r, y + r // 2), fill=colour)
    image = base.resize((width, height), Image.Resampling.BILINEAR)
    if grain > 0:
        noise = Image.frombytes("L", (width, height), rng.randbytes(width * height))
        noise = noise.point(lambda v: v * grain / 255 + 128 - grain / 2).convert("RGB")
        image = ImageChops.add(image, noise, scale=1.0, offset=-128)
    return _jpeg(image, quality=quality)


def _cache_dir() -> Path:
    root = os.environ.get("TUI_BACKFILL_IMAGE_CACHE")
    return Path(root) if root else Path(tempfile.gettempdir()) / "tui-backfill-images"


def cached(name: str, make: Callable[[], bytes]) -> bytes:
    """`make()`'s bytes, kept on disk under `name` (versioned) so the next process reads them."""
    path = _cache_dir() / f"v{CACHE_VERSION}-{name}"
    try:
        return path.read_bytes()
    except OSError:
        pass
    data = make()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        scratch.write_bytes(data)
        scratch.replace(path)
    except OSError:
        pass  # a read-only temp dir only costs the next process the same work
    return data


def large_photo(width: int = 6000, height: int = 4000) -> bytes:
    """The 24-megapixel photo-like JPEG (cached on disk)."""
    return cached(f"photo-{width}x{height}.jpg", lambda: photo_jpeg(width, height, seed=24))


def sample_images(*, include_large: bool = False) -> dict[str, bytes]:
    """The catalog of special cases, `{source_key: bytes}` (the 24 MP photo when asked)."""
    catalog = {f"orient/{o}.jpg": oriented_jpeg(o) for o in range(1, 9)}
    good_jpeg = photo_jpeg(640, 480, seed=7)
    catalog.update(
        {
            "p3.jpg": patch_jpeg(P3_PATCH, display_p3_profile()),
            "adobe_rgb.jpg": patch_jpeg(P3_PATCH, adobe_rgb_profile()),
            "cmyk.jpg": cmyk_jpeg(None),
            "cmyk_icc.jpg": cmyk_jpeg(cmyk_profile()),
            "alpha.png": alpha_png(),
            "palette.png": palette_png(),
            "gray16.png": gray16_png(),
            "animated.gif": animated_gif(),
            "small.jpg": photo_jpeg(300, 200, seed=3),
            "photo.jpg": good_jpeg,
            "portrait.jpg": photo_jpeg(1200, 3000, seed=5),
            "corrupt.jpg": good_jpeg[: len(good_jpeg) // 2],
            "random.bin": random.Random(0).randbytes(4096),
            "bomb.png": bomb_png(),
            "big_header.png": bomb_png(12000, 10000),
        }
    )
    if include_large:
        catalog["photo24mp.jpg"] = large_photo()
    return catalog


def many_images(n: int, seed: int = 0) -> dict[str, bytes]:
    """`n` distinct photo-like JPEGs of varied sizes and aspects, keyed ``raid/{seed}/{i}.jpg``.

    Sizes range over about 480-1024 px on the long side, landscape, portrait and square; each
    is unique (its seed is in its pixels), and all are small (30-120 KB) and quick to make.
    """
    rng = random.Random(seed)
    shapes = ((800, 600), (600, 800), (640, 640), (1024, 576), (480, 720), (960, 720))
    catalog = {}
    for i in range(n):
        width, height = shapes[rng.randrange(len(shapes))]
        catalog[f"raid/{seed}/{i:05d}.jpg"] = photo_jpeg(
            width, height, seed=seed * 1_000_003 + i, quality=80, grain=0
        )
    return catalog


def fingerprint(data: bytes) -> str:
    """A short content id for test messages."""
    return hashlib.blake2b(data, digest_size=6).hexdigest()
