"""The publishing worker's image step: source bytes in, WebP variants out (Pillow).

`make_variants` is pure, synchronous and CPU-bound; the worker runs it in a thread pool bounded
by the cores. Pillow releases the GIL while it decodes, converts colours, resizes and encodes,
so the threads run in parallel and the event loop stays responsive.

What it guarantees for every variant:
- the image as a viewer shows it: EXIF orientation applied; the first frame of an animation;
- sRGB: an embedded ICC profile (Display P3, Adobe RGB, a CMYK or grey profile) converted with
  LittleCMS (relative colorimetric, black point compensation); CMYK without a profile, palette,
  grey, 16-bit grey and other modes converted to RGB; alpha kept (RGBA stays RGBA);
- inside its box (`VariantSpec`), aspect ratio kept, never upscaled;
- WebP at `quality` (method 4), with no EXIF, ICC profile or XMP.

Cost and memory: the pixel count is checked from the header before anything is decoded. A JPEG
is decoded once, shrunk on load (`Image.draft`, DCT scaling by 1/2, 1/4 or 1/8) to the smallest
scale the largest variant still needs; the colour conversion and the rotation run on the
resized image, and each smaller variant is resized from the bigger variant's pixels (never from
its encoded WebP). A 24-megapixel JPEG thus holds a 6-megapixel decode at most, freed once the
largest variant is made.

Failures are `MediaError`s (permanent): `corrupt` (cannot be decoded, truncated, not an image),
`unsupported` (an image format the worker does not decode: HEIC, SVG, PDF, PSD...),
`too_many_pixels` (over `max_pixels`, or over Pillow's own decompression-bomb limit).

Pillow's own guard (`Image.MAX_IMAGE_PIXELS`, 89.5 MP: a warning above it, an error above
twice it) would warn at `Image.open` for images between 89.5 MP and the default `max_pixels` of
100 MP, and refuse a caller's higher limit. So the header is parsed by the format's plugin
directly (what `Image.open` does, minus that one check; no global warning filter or limit is
touched, which threads could not share safely) and `max_pixels` alone decides. Pillow's later
checks stay (a TIFF tile or GIF frame far bigger than the image): their error, or their warning
when warnings are errors, is classified `too_many_pixels`.
"""

from __future__ import annotations

import functools
import io
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import ExifTags, Image, ImageCms, _imaging, features

from tui_backfill.seams.media.errors import MediaError, MediaErrorCode

__all__ = [
    "DEFAULT_SPECS",
    "Variant",
    "VariantSpec",
    "keep_image_blocks",
    "make_variants",
]

Image.init()  # register every plugin, so `Image.OPEN` holds the formats below

# Formats decoded here; anything else is `unsupported` (and never handed to another Pillow
# plugin: EPS, for one, would run Ghostscript on untrusted bytes).
_FORMATS = ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"] + (
    ["AVIF"] if features.check("avif") else []
)

# Exceptions Pillow's decoders raise on damaged data (OSError: "image file is truncated",
# "broken data stream"; SyntaxError: "not a JPEG file"; the rest from plugins' parsers).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error)

_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)

# Images Pillow cannot (or must not) open here, by their magic bytes: `unsupported`, not
# `corrupt`, when no allowed decoder accepts them.
_UNSUPPORTED_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"%PDF", "PDF"),
    (0, b"8BPS", "PSD"),
    (0, b"%!PS", "EPS"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (0, b"\xff\x0a", "JPEG XL"),
    (0, b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (0, b"\xffO\xffQ", "JPEG 2000"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"II*\x00", "TIFF"),  # reached only when Pillow could not open it
    (0, b"MM\x00*", "TIFF"),
)

# EXIF orientation -> the transpose that shows the image upright (as ImageOps.exif_transpose)
_ORIENTATION: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_RESAMPLE = Image.Resampling.LANCZOS
_REDUCING_GAP = 3.0  # box-reduce first, then Lanczos: as good as a plain Lanczos, much faster
WEBP_METHOD = 4  # libwebp's speed/size trade-off: 4 is its default and measured best here


IMAGE_BLOCK_SIZE = 4 * 1024 * 1024  # bytes: the blocks Pillow allocates image memory in


def keep_image_blocks(blocks: int) -> None:
    """Let Pillow keep up to `blocks` freed image blocks of IMAGE_BLOCK_SIZE for the next
    images (its allocator's cache, `PILLOW_BLOCKS_MAX` and `PILLOW_BLOCK_SIZE`; by default
    none is kept, in blocks of 16 MB: every image's pixels are malloc'ed and freed, and glibc
    hands them back to the kernel). Without it a worker whose start-up leaves glibc's dynamic
    mmap threshold low (no botocore loaded: seams/s3_direct) gets each job's decode and
    resizes in fresh pages: on the `small` set (bench/publish_worker.py) about 350 page faults
    a job, 1 ms of the image threads' system CPU, the work 2 % slower. Blocks of 4 MB keep the
    cache small: at most `blocks` x 4 MB held, and a 24-megapixel job's growth stays 41 MB (the
    probe of tests/test_media.py; 50 MB with 4 blocks of 16 MB). An operator's
    PILLOW_BLOCKS_MAX or PILLOW_BLOCK_SIZE is left as it is."""
    if "PILLOW_BLOCKS_MAX" in os.environ or "PILLOW_BLOCK_SIZE" in os.environ:
        return
    if _imaging.get_blocks_max() < blocks:
        _imaging.set_block_size(IMAGE_BLOCK_SIZE)
        _imaging.set_blocks_max(blocks)


@dataclass(frozen=True, slots=True)
class VariantSpec:
    """A variant's name and the box it must fit inside."""

    name: str
    max_width: int
    max_height: int

    def __post_init__(self) -> None:
        if self.max_width < 1 or self.max_height < 1:
            raise ValueError(f"variant {self.name!r}: the box must be at least 1x1")

    def fit(self, width: int, height: int) -> tuple[int, int]:
        """The size of a `width`x`height` image inside this box: aspect kept, never upscaled."""
        scale = min(self.max_width / width, self.max_height / height, 1.0)
        if scale >= 1.0:
            return width, height
        return (
            max(1, min(self.max_width, round(width * scale))),
            max(1, min(self.max_height, round(height * scale))),
        )


@dataclass(frozen=True, slots=True)
class Variant:
    """One encoded variant: WebP bytes and the pixel size they decode to."""

    name: str
    data: bytes
    width: int
    height: int


DEFAULT_SPECS: tuple[VariantSpec, ...] = (
    VariantSpec("thumb", 400, 400),
    VariantSpec("display", 1600, 1600),
)


def make_variants(
    data: bytes,
    specs: Sequence[VariantSpec] = DEFAULT_SPECS,
    *,
    quality: int = 80,
    max_pixels: int = 100_000_000,
) -> list[Variant]:
    """WebP variants of the image in `data`, one per spec, in the order of `specs`.

    Raises MediaError (`corrupt`, `unsupported`, `too_many_pixels`), never anything else for
    bad input.
    """
    if not specs:
        return []
    image = _open(data, max_pixels)
    try:
        return _variants(image, specs, quality=quality)
    except _BOMB as exc:  # a TIFF tile or GIF frame over Pillow's limit
        raise MediaError(f"decompression bomb: {exc}", MediaErrorCode.TOO_MANY_PIXELS) from None
    except _DECODE_ERRORS as exc:
        raise MediaError(f"cannot decode the image: {exc}", MediaErrorCode.CORRUPT) from None
    finally:
        image.close()


# -- opening -------------------------------------------------------------------------------
def _open(data: bytes, max_pixels: int) -> Image.Image:
    """The image's header, parsed (nothing decoded yet), its pixel count checked."""
    try:
        image = _parse_header(data)
    except _BOMB as exc:  # an MPO's own check
        raise MediaError(f"decompression bomb: {exc}", MediaErrorCode.TOO_MANY_PIXELS) from None
    except _DECODE_ERRORS as exc:
        raise MediaError(f"cannot read the image header: {exc}", MediaErrorCode.CORRUPT) from None
    if image is None:
        raise _unidentified(data)
    width, height = image.size
    if width < 1 or height < 1:
        image.close()
        raise MediaError(f"image of {width}x{height} pixels", MediaErrorCode.CORRUPT)
    if width * height > max_pixels:
        image.close()
        raise MediaError(
            f"{width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,}",
            MediaErrorCode.TOO_MANY_PIXELS,
        )
    return image


def _parse_header(data: bytes) -> Image.Image | None:
    """`Image.open(..., formats=_FORMATS)` without its pixel-count check: the first plugin that
    accepts the bytes parses the header; None when none does."""
    prefix = data[:16]
    for name in _FORMATS:
        factory, accept = Image.OPEN[name]
        accepted = accept(prefix) if accept is not None else True
        if isinstance(accepted, str) or not accepted:  # a str says why not
            continue
        try:
            return factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue  # as Image.open: not this format after all, try the next
    return None


def _unidentified(data: bytes) -> MediaError:
    head = data[:64]
    if len(head) >= 12 and head[4:8] == b"ftyp":
        brand = head[8:12].decode("latin-1")
        return MediaError(
            f"unsupported format (ISO media, brand {brand!r})", MediaErrorCode.UNSUPPORTED
        )
    for offset, magic, name in _UNSUPPORTED_MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return MediaError(f"unsupported format ({name})", MediaErrorCode.UNSUPPORTED)
    text = data[:512].lstrip().lower()
    if text.startswith((b"<svg", b"<?xml")) and b"<svg" in text:
        return MediaError("unsupported format (SVG)", MediaErrorCode.UNSUPPORTED)
    if not data:
        return MediaError("empty body", MediaErrorCode.CORRUPT)
    return MediaError(
        f"not a decodable image ({len(data):,} bytes starting {head[:8].hex()})",
        MediaErrorCode.CORRUPT,
    )


# -- the variants --------------------------------------------------------------------------
def _variants(image: Image.Image, specs: Sequence[VariantSpec], *, quality: int) -> list[Variant]:
    orientation = _orientation(image)
    turned = orientation in (5, 6, 7, 8)  # width and height swap when shown upright
    stored_w, stored_h = image.size
    upright = (stored_h, stored_w) if turned else (stored_w, stored_h)
    targets = {spec.name: spec.fit(*upright) for spec in specs}
    need_w = max(w for w, _ in targets.values())
    need_h = max(h for _, h in targets.values())

    icc = image.info.get("icc_profile") or None
    if image.format in ("JPEG", "MPO"):
        # shrink on load: the decoder scales by 1/2, 1/4 or 1/8 while it decodes, no smaller
        # than what the largest variant needs
        request = (need_h, need_w) if turned else (need_w, need_h)
        image.draft("RGB" if image.mode == "RGB" else None, request)
    image.load()  # the first frame only

    # Largest first: each smaller variant is resized from the one before it.
    order = sorted(specs, key=lambda s: targets[s.name][0] * targets[s.name][1], reverse=True)
    pixels: Image.Image = _base_mode(image)
    made: dict[str, Variant] = {}
    first = True
    for spec in order:
        target_w, target_h = targets[spec.name]
        size = (target_h, target_w) if (turned and first) else (target_w, target_h)
        if pixels.size != size:
            pixels = pixels.resize(size, _RESAMPLE, reducing_gap=_REDUCING_GAP)
        if first:
            # colour and rotation on the largest variant's pixels, not the whole decode; from
            # here on `pixels` is upright sRGB and the decode can go
            pixels = _to_srgb(pixels, icc)
            if orientation in _ORIENTATION:
                pixels = pixels.transpose(_ORIENTATION[orientation])
            if pixels is not image:
                image.close()  # drops the decode's pixels now, not when the caller returns
            first = False
        made[spec.name] = _encode(spec.name, pixels, quality)
    return [made[spec.name] for spec in specs]


def _orientation(image: Image.Image) -> int:
    try:
        value = image.getexif().get(ExifTags.Base.Orientation, 1)
    except _DECODE_ERRORS:  # a damaged EXIF block does not make the pixels unreadable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _base_mode(image: Image.Image) -> Image.Image:
    """The decoded image in a mode Pillow resizes and LittleCMS converts: L, RGB, RGBA, CMYK.

    Palette and grey-with-transparency images become RGB(A) here (before resizing, which needs
    real colours); 16-bit and float grey are scaled to 8 bits.
    """
    mode = image.mode
    transparent = "transparency" in image.info
    if mode in ("RGB", "RGBA", "CMYK"):
        return image.convert("RGBA") if (mode == "RGB" and transparent) else image
    if mode == "L":
        return image.convert("RGBA") if transparent else image
    if mode in ("P", "PA"):
        return image.convert("RGBA" if (transparent or mode == "PA") else "RGB")
    if mode in ("LA", "La", "RGBa", "RGBX"):
        return image.convert("RGBA" if mode != "RGBX" else "RGB")
    if mode == "1":
        return image.convert("L")
    if mode.startswith("I") or mode == "F":
        return _scale_to_l(image)
    if mode == "LAB":
        lab = ImageCms.createProfile("LAB")
        converted = ImageCms.profileToProfile(image, lab, _srgb(), outputMode="RGB")
        assert converted is not None
        return converted
    return image.convert("RGB")  # YCbCr, HSV, ...


def _scale_to_l(image: Image.Image) -> Image.Image:
    """16-bit or 32-bit grey to 8 bits (Pillow's own convert clips at 255 instead)."""
    if image.mode == "F":
        high = _high(image)
        scale = 255.0 if high <= 1.0 else 1.0
        return image.point(lambda v: v * scale).convert("L")
    wide = image.convert("I")
    if _high(wide) <= 255:
        return wide.convert("L")
    return wide.point(lambda v: v * (1 / 257)).convert("L")


def _high(image: Image.Image) -> float:
    """The largest value of a one-band image."""
    high = image.getextrema()[1]
    return float(high) if isinstance(high, (int, float)) else 0.0


@functools.cache
def _srgb() -> ImageCms.ImageCmsProfile:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


@functools.lru_cache(maxsize=32)
def _transform(icc: bytes, in_mode: str, out_mode: str) -> ImageCms.ImageCmsTransform:
    """A LittleCMS transform from `icc` to sRGB; cached, so built without lcms's one-pixel
    cache, which is not safe to share between threads."""
    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    return ImageCms.buildTransform(
        source,
        _srgb(),
        in_mode,
        out_mode,
        renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC,
        flags=ImageCms.Flags.NOCACHE | ImageCms.Flags.BLACKPOINTCOMPENSATION,
    )


def _to_srgb(image: Image.Image, icc: bytes | None) -> Image.Image:
    """L / RGB / RGBA / CMYK pixels in sRGB RGB or RGBA.

    A profile that LittleCMS rejects, or that does not match the pixels (an RGB profile on a
    CMYK JPEG), is ignored rather than failing the image: the pixels are still good.
    """
    mode = image.mode
    out_mode = "RGBA" if mode == "RGBA" else "RGB"
    if icc:
        try:
            transform = _transform(icc, mode, out_mode)
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
        else:
            return transform.apply(image)
    return image if mode == out_mode else image.convert(out_mode)


def _encode(name: str, pixels: Image.Image, quality: int) -> Variant:
    buffer = io.BytesIO()
    # Nothing but pixels: WebP's ICCP, EXIF and XMP chunks come only from these arguments.
    pixels.save(buffer, "WEBP", quality=quality, method=WEBP_METHOD, exif=b"", xmp=b"")
    width, height = pixels.size
    return Variant(name, buffer.getvalue(), width, height)
