"""The publishing worker's media step against a real RAID endpoint over a real socket.

Every image is downloaded from `servers.raid.RaidServer` with `download_source`, then turned
into variants with `make_variants`; the variants are decoded again and checked: size and aspect,
orientation, alpha, colour (sRGB from P3, Adobe RGB and CMYK), the first frame, no metadata.
Memory is measured in a subprocess from /proc/self/status (VmHWM sees the C allocations
tracemalloc does not, and unlike ru_maxrss is not inherited across exec).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import os
import struct
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from helpers import closed_port
from PIL import Image

from tui_backfill.outcomes import BackfillError, FatalError, NotFoundError, RetryableError
from tui_backfill.seams.http1 import Wire
from tui_backfill.seams.media import (
    DEFAULT_SPECS,
    MediaError,
    Variant,
    VariantSpec,
    download_source,
    make_variants,
    source_url,
)
from tui_backfill.seams.media.source import source_session
from tui_backfill.servers import images
from tui_backfill.servers.raid import RaidServer

SECRET = "s3cret-Publisher-TOKEN-4242"
MAX_BYTES = 200 * 1024 * 1024
BOXES = {spec.name: (spec.max_width, spec.max_height) for spec in DEFAULT_SPECS}


@pytest.fixture(scope="module")
def catalog() -> dict[str, bytes]:
    return images.sample_images()


@pytest.fixture
async def raid(catalog: dict[str, bytes]) -> AsyncIterator[RaidServer]:
    async with RaidServer(dict(catalog), token=SECRET) as server:
        yield server


@pytest.fixture
async def session() -> AsyncIterator[Wire]:
    async with source_session(connections=4) as client:  # the worker's
        yield client


async def download(
    session: Wire,
    raid: RaidServer,
    key: str,
    *,
    secret: str = SECRET,
    max_bytes: int = MAX_BYTES,
    timeout: float = 5.0,
    endpoint: str | None = None,
) -> bytes:
    return await download_source(
        session,
        endpoint or raid.endpoint,
        key,
        secret,
        max_bytes=max_bytes,
        timeout=timeout,
    )


async def publish(
    session: Wire, raid: RaidServer, key: str
) -> dict[str, tuple[Variant, Image.Image]]:
    """Download `key`, make the default variants in a thread, decode each: name -> both."""
    data = await download(session, raid, key)
    variants = await asyncio.to_thread(make_variants, data, DEFAULT_SPECS)
    assert [v.name for v in variants] == ["thumb", "display"]
    decoded = {}
    for variant in variants:
        image = Image.open(io.BytesIO(variant.data))
        assert image.format == "WEBP"
        image.load()
        assert image.size == (variant.width, variant.height)
        decoded[variant.name] = (variant, image)
    return decoded


def riff_chunks(data: bytes) -> list[bytes]:
    """The chunk ids of a WebP file (RIFF container)."""
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    ids, offset = [], 12
    while offset + 8 <= len(data):
        kind, size = (
            data[offset : offset + 4],
            struct.unpack("<I", data[offset + 4 : offset + 8])[0],
        )
        ids.append(kind)
        offset += 8 + size + (size & 1)
    return ids


def upright_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
            return height, width
        return width, height


def close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=False))


# -- the variants ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key",
    ["photo.jpg", "portrait.jpg", "small.jpg", "alpha.png", "orient/6.jpg", "animated.gif"],
)
async def test_variants_fit_their_boxes_keep_the_aspect_and_never_upscale(
    session: Wire, raid: RaidServer, catalog: dict[str, bytes], key: str
) -> None:
    source_w, source_h = upright_size(catalog[key])
    for name, (variant, _) in (await publish(session, raid, key)).items():
        box_w, box_h = BOXES[name]
        assert variant.width <= min(box_w, source_w) and variant.height <= min(box_h, source_h)
        # as big as the box allows: one side touches the box or the source's own size
        assert variant.width == min(box_w, source_w) or variant.height == min(box_h, source_h)
        assert abs(variant.width - variant.height * source_w / source_h) <= 1
        assert abs(variant.height - variant.width * source_h / source_w) <= 1
    assert raid.requests[key] == 1


async def test_a_small_source_gives_both_variants_at_its_own_size(
    session: Wire, raid: RaidServer
) -> None:
    variants = await publish(session, raid, "small.jpg")
    assert {name: image.size for name, (_, image) in variants.items()} == {
        "thumb": (300, 200),
        "display": (300, 200),
    }


def test_a_portrait_photo_fits_by_its_height() -> None:
    spec = VariantSpec("display", 1600, 1600)
    assert spec.fit(1200, 3000) == (640, 1600)
    assert spec.fit(6000, 4000) == (1600, 1067)
    assert spec.fit(300, 200) == (300, 200)
    assert VariantSpec("strip", 400, 10).fit(1000, 1000) == (10, 10)


@pytest.mark.parametrize("orientation", range(1, 9))
async def test_exif_orientation_is_applied(
    session: Wire, raid: RaidServer, orientation: int
) -> None:
    for _, image in (await publish(session, raid, f"orient/{orientation}.jpg")).values():
        assert image.size == images.ORIENTED_SIZE
        rgb = image.convert("RGB")
        inset = images.MARK // 4
        top_left = rgb.getpixel((inset, inset))
        top_right = rgb.getpixel((image.width - 1 - inset, inset))
        assert isinstance(top_left, tuple) and isinstance(top_right, tuple)
        assert close(top_left, (255, 0, 0), 40), f"orientation {orientation}: {top_left}"
        assert close(top_right, (0, 255, 0), 40), f"orientation {orientation}: {top_right}"


async def test_alpha_is_kept(session: Wire, raid: RaidServer) -> None:
    for _, image in (await publish(session, raid, "alpha.png")).values():
        assert image.mode == "RGBA"
        width, height = image.size
        middle = height // 2
        opaque = image.getpixel((width // 6, middle))
        half = image.getpixel((width // 2, middle))
        clear = image.getpixel((width * 5 // 6, middle))
        assert isinstance(opaque, tuple) and isinstance(half, tuple) and isinstance(clear, tuple)
        assert close(opaque, (255, 0, 0, 255), 4)
        assert close(half[1:], (255, 0, 128), 8)
        assert clear[3] == 0
    # a palette image's transparent index stays transparent
    for _, image in (await publish(session, raid, "palette.png")).values():
        assert image.mode == "RGBA"
        left = image.getpixel((5, 5))
        right = image.getpixel((image.width - 5, 5))
        assert isinstance(left, tuple) and isinstance(right, tuple)
        assert left[3] == 0 and close(right, (0, 0, 255, 255), 8)


@pytest.mark.parametrize("key", ["p3.jpg", "orient/6.jpg", "cmyk_icc.jpg", "alpha.png"])
async def test_outputs_carry_no_metadata(
    session: Wire, raid: RaidServer, catalog: dict[str, bytes], key: str
) -> None:
    with Image.open(io.BytesIO(catalog[key])) as source:  # the source has some to strip
        assert source.info.get("icc_profile") or source.info.get("exif") or key == "alpha.png"
    for variant, image in (await publish(session, raid, key)).values():
        assert not {"exif", "icc_profile", "xmp"} & set(image.info)
        chunks = riff_chunks(variant.data)
        assert not {b"EXIF", b"ICCP", b"XMP "} & set(chunks), chunks


def srgb_from(
    linear_to_xyz: list[list[float]], decode: object, rgb: tuple[int, ...]
) -> tuple[int, ...]:
    """An RGB colour of another D65 space in sRGB, by the published matrices (not the ICC
    profile the generator wrote, nor LittleCMS)."""
    xyz_to_srgb = [
        [3.2404542, -1.5371385, -0.4985314],
        [-0.9692660, 1.8760108, 0.0415560],
        [0.0556434, -0.2040259, 1.0572252],
    ]
    assert callable(decode)
    linear = [decode(c / 255) for c in rgb]
    xyz = [sum(row[i] * linear[i] for i in range(3)) for row in linear_to_xyz]
    out = [sum(row[i] * xyz[i] for i in range(3)) for row in xyz_to_srgb]
    return tuple(round(images.srgb_encode(v) * 255) for v in out)


P3_TO_XYZ = [
    [0.4865709, 0.2656677, 0.1982173],
    [0.2289746, 0.6917385, 0.0792869],
    [0.0000000, 0.0451134, 1.0439444],
]
ADOBE_TO_XYZ = [
    [0.5767309, 0.1855540, 0.1881852],
    [0.2973769, 0.6273491, 0.0752741],
    [0.0270343, 0.0706872, 0.9911085],
]


@pytest.mark.parametrize(
    ("key", "to_xyz", "decode"),
    [
        ("p3.jpg", P3_TO_XYZ, images.srgb_decode),
        ("adobe_rgb.jpg", ADOBE_TO_XYZ, lambda v: v ** (563 / 256)),
    ],
)
async def test_an_embedded_profile_is_converted_to_srgb(
    session: Wire,
    raid: RaidServer,
    key: str,
    to_xyz: list[list[float]],
    decode: object,
) -> None:
    expected = srgb_from(to_xyz, decode, images.P3_PATCH)
    assert not close(expected, images.P3_PATCH, 10)  # a conversion that did nothing would fail
    for _, image in (await publish(session, raid, key)).values():
        centre = image.convert("RGB").getpixel((image.width // 2, image.height // 2))
        assert isinstance(centre, tuple)
        assert close(centre, expected, 5), f"{key}: {centre} != {expected}"


async def test_cmyk_comes_out_as_plausible_rgb(session: Wire, raid: RaidServer) -> None:
    naive = (await publish(session, raid, "cmyk.jpg"))["display"][1].convert("RGB")
    profiled = (await publish(session, raid, "cmyk_icc.jpg"))["display"][1].convert("RGB")
    cyan, magenta, yellow = (32, 32), (100, 16), (100, 48)
    # no profile: the complement (cyan ink -> (0, 255, 255))
    assert close(naive.getpixel(cyan), (0, 255, 255), 12)  # type: ignore[arg-type]
    assert close(naive.getpixel(magenta), (255, 0, 255), 12)  # type: ignore[arg-type]
    assert close(naive.getpixel(yellow), (255, 255, 0), 12)  # type: ignore[arg-type]
    # with the press profile: its inks' colours, not the complement
    for where, ink in zip((cyan, magenta, yellow), images.CMYK_INKS, strict=False):
        assert close(profiled.getpixel(where), ink, 10), (where, profiled.getpixel(where))  # type: ignore[arg-type]


async def test_an_animation_gives_its_first_frame(session: Wire, raid: RaidServer) -> None:
    for _, image in (await publish(session, raid, "animated.gif")).values():
        assert getattr(image, "n_frames", 1) == 1
        assert close(image.convert("RGB").getpixel((32, 24)), (255, 0, 0), 6)  # type: ignore[arg-type]


async def test_sixteen_bit_grey_is_scaled_not_clipped(session: Wire, raid: RaidServer) -> None:
    image = (await publish(session, raid, "gray16.png"))["display"][1].convert("L")
    left, middle, right = (image.getpixel((x, 50)) for x in (5, 100, 194))
    assert isinstance(left, int) and isinstance(middle, int) and isinstance(right, int)
    assert left < 20 and 100 < middle < 160 and right > 235


# -- bad images ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("key", "code"),
    [
        ("corrupt.jpg", "corrupt"),
        ("random.bin", "corrupt"),
        ("bomb.png", "too_many_pixels"),  # over Pillow's own limit too
        ("big_header.png", "too_many_pixels"),  # over ours only
    ],
)
async def test_bad_images_fail_permanently(
    session: Wire, raid: RaidServer, key: str, code: str
) -> None:
    data = await download(session, raid, key)
    started = time.perf_counter()
    with warnings.catch_warnings(), pytest.raises(MediaError) as caught:
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not be raised
        make_variants(data, DEFAULT_SPECS)
    assert time.perf_counter() - started < 0.5  # nothing was decoded
    assert caught.value.code == code and caught.value.permanent
    assert not caught.value.retryable and not caught.value.fatal


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "corrupt"),
        (b"%PDF-1.7\n...", "unsupported"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "unsupported"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', "unsupported"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "corrupt"),  # a JPEG cut inside its header
    ],
)
def test_undecodable_bytes_are_classified(data: bytes, code: str) -> None:
    with pytest.raises(MediaError) as caught:
        make_variants(data, DEFAULT_SPECS)
    assert caught.value.code == code and caught.value.permanent


def test_max_pixels_is_checked_from_the_header(catalog: dict[str, bytes]) -> None:
    with pytest.raises(MediaError) as caught:
        make_variants(catalog["photo.jpg"], DEFAULT_SPECS, max_pixels=640 * 480 - 1)
    assert caught.value.code == "too_many_pixels"
    assert len(make_variants(catalog["photo.jpg"], DEFAULT_SPECS, max_pixels=640 * 480)) == 2


_MEMORY_PROBE = """
import json, sys
from tui_backfill.seams.media import MediaError, make_variants
from tui_backfill.seams.media.variants import keep_image_blocks
from tui_backfill.servers import images

keep_image_blocks(int(sys.argv[2]))  # as the worker keeps them (0: Pillow's default)

def status_mib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024

# How far the peak resident size rose above the resident size before `job` ran. VmHWM, not
# ru_maxrss: Linux keeps ru_maxrss across exec, so a child of a big pytest process would
# report its parent's size. Writing 5 to clear_refs resets VmHWM.
def growth(job):
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = status_mib("VmRSS")
    result = job()
    return status_mib("VmHWM") - before, result

def bomb_code():
    try:
        make_variants(images.bomb_png())
    except MediaError as exc:
        return exc.code

big = open(sys.argv[1], "rb").read()
# load the codecs and LittleCMS on small images, which leave the peak where it is
for data in (
    images.patch_jpeg(images.P3_PATCH, images.display_p3_profile()),
    images.alpha_png(),
    images.cmyk_jpeg(images.cmyk_profile()),
    images.photo_jpeg(320, 240, 1),
):
    make_variants(data)
bomb, code = growth(bomb_code)
big_growth, variants = growth(lambda: make_variants(big))
print(json.dumps({"code": code, "bomb": bomb, "big": big_growth,
                  "sizes": [[v.width, v.height] for v in variants]}))
"""


@pytest.mark.parametrize("blocks", [0, 4])
def test_a_24_megapixel_jpeg_stays_under_100_mb_and_a_bomb_allocates_nothing(
    tmp_path: Path, blocks: int
) -> None:
    """With Pillow's block cache off, and on as the worker sets it (the small images before
    leave blocks in it)."""
    photo = tmp_path / "photo24mp.jpg"
    photo.write_bytes(images.large_photo())
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, str(photo), str(blocks)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    figures = json.loads(done.stdout)
    assert figures["code"] == "too_many_pixels"
    assert figures["bomb"] < 5, figures
    assert 5 < figures["big"] < 100, figures  # above 5: the probe saw the decode at all
    assert figures["sizes"] == [[400, 267], [1600, 1067]]


_BLOCKS_PROBE = """
from PIL import Image
from tui_backfill.seams.media.variants import keep_image_blocks
keep_image_blocks(4)
keep_image_blocks(2)  # never lowered
print(Image.core.get_blocks_max(), Image.core.get_block_size())
"""


@pytest.mark.parametrize(
    ("environ", "kept"),
    [
        ({}, [4, 4 << 20]),
        ({"PILLOW_BLOCKS_MAX": "1"}, [1, 16 << 20]),
        ({"PILLOW_BLOCK_SIZE": "1m"}, [0, 1 << 20]),
    ],
)
def test_freed_image_blocks_are_kept_for_the_next_images_unless_the_operator_says(
    environ: dict[str, str], kept: list[int]
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PILLOW_BLOCK")} | environ
    done = subprocess.run(
        [sys.executable, "-c", _BLOCKS_PROBE],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env=env,
    )
    assert [int(n) for n in done.stdout.split()] == kept


# -- the download ------------------------------------------------------------------------------
async def test_a_source_that_keeps_arriving_is_never_cut_off_as_a_whole(
    session: Wire,
) -> None:
    """The worker's session bounds no download as a whole (aiohttp's default of 300 s would
    cut a large source off mid-body over a slow link); only the wait for the answer's head and
    each gap between chunks are bounded, by `download_source`'s timeout: a body trickled over
    8 x the timeout arrives whole, one whose gap outlasts the timeout is cut off."""
    pieces = [bytes([n]) * 1000 for n in range(16)]

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        stall = b"stall" in head
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 16000\r\n\r\n")
        for n, piece in enumerate(pieces):
            await asyncio.sleep(0.6 if stall and n == 8 else 0.1)
            writer.write(piece)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    endpoint = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/pub"
    try:
        started = time.monotonic()
        got = await download_source(
            session, endpoint, "slow.jpg", SECRET, max_bytes=MAX_BYTES, timeout=0.2
        )
        assert got == b"".join(pieces) and time.monotonic() - started > 1.5
        with pytest.raises(RetryableError) as stalled:
            await download_source(
                session, endpoint, "stall.jpg", SECRET, max_bytes=MAX_BYTES, timeout=0.2
            )
        assert stalled.value.code == "timeout" and "after 8,000 bytes" in stalled.value.message
    finally:
        server.close()
        await server.wait_closed()


async def test_a_source_that_trickles_is_cut_off_under_the_minimum_rate(
    session: Wire,
) -> None:
    """Never idle for the timeout, yet slower than `min_rate` over a timeout of its body: cut
    off (`timeout`, retried after backoff) instead of holding its download slot for as long as
    it trickles. Above the floor it arrives whole; so does a body whose first byte came late (the
    first window opens at the first chunk), and one whose slow last window ends with its last
    byte (a body already whole is kept)."""
    piece = bytes(range(100))
    # key -> (seconds before the body, pieces of 100 bytes, seconds between pieces)
    shapes = {
        "ok.jpg": (0.0, 30, 0.05),  # 2,000 bytes/s for 1.5 s
        "slow.jpg": (0.0, 100, 0.05),  # 2,000 bytes/s for 5 s
        "late.jpg": (1.0, 200, 0.01),  # about 10,000 bytes/s for 2 s, after a pause
        "whole.jpg": (0.0, 4, 0.6),  # 400 bytes over 1.8 s, the last window closed by the end
    }

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        pause, count, every = next(v for k, v in shapes.items() if k in head)
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Length: {100 * count}\r\n\r\n".encode())
        await writer.drain()
        await asyncio.sleep(pause)
        with contextlib.suppress(ConnectionError):
            for n in range(count):
                if n:
                    await asyncio.sleep(every)
                writer.write(piece)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    endpoint = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/pub"

    async def fetch(key: str, *, timeout: float, min_rate: float) -> bytes:
        return await download_source(
            session, endpoint, key, SECRET, max_bytes=MAX_BYTES, timeout=timeout,
            min_rate=min_rate,
        )  # fmt: skip

    try:
        assert await fetch("ok.jpg", timeout=1.0, min_rate=200) == piece * 30
        assert await fetch("late.jpg", timeout=1.5, min_rate=4000) == piece * 200
        assert await fetch("whole.jpg", timeout=1.5, min_rate=4000) == piece * 4
        started = time.monotonic()
        with pytest.raises(RetryableError) as slow:
            await fetch("slow.jpg", timeout=0.5, min_rate=4000)
        took = time.monotonic() - started
        assert slow.value.code == "timeout", slow.value
        assert "slower than the minimum of 4,000 bytes/s" in slow.value.message, slow.value
        assert took < 3.0, took  # a window of 0.5 s and a piece, not the 5 s of the body
    finally:
        server.close()
        await server.wait_closed()


async def test_the_bearer_token_is_required(
    session: Wire, raid: RaidServer, catalog: dict[str, bytes]
) -> None:
    async with (
        aiohttp.ClientSession() as plain,
        plain.get(raid.endpoint, params={"key": "photo.jpg"}) as response,
    ):
        assert response.status == 401
    assert raid.unauthorized == 1
    assert await download(session, raid, "photo.jpg") == catalog["photo.jpg"]
    assert raid.unauthorized == 1 and raid.gets == 2


async def test_a_wrong_secret_is_fatal_and_never_shown(session: Wire, raid: RaidServer) -> None:
    wrong = "wrong-" + SECRET
    with pytest.raises(FatalError) as caught:
        await download(session, raid, "photo.jpg", secret=wrong)
    assert caught.value.code == "auth"
    assert wrong not in str(caught.value) and SECRET not in str(caught.value)
    assert raid.unauthorized == 1


async def test_keys_are_url_encoded_beside_an_endpoints_own_query(
    session: Wire, raid: RaidServer
) -> None:
    key = "lots/12/IMG 1+2&key=x%y?.jpg"
    raid.images[key] = b"odd key"
    endpoint = raid.endpoint + "?tenant=a%20b&key=ignored"
    assert source_url(endpoint, key).startswith(raid.endpoint + "?tenant=a%20b&key=lots%2F12")
    assert await download(session, raid, key, endpoint=endpoint) == b"odd key"
    assert raid.requests[key] == 1


@pytest.mark.parametrize(
    "endpoint",
    [
        "http://127.0.0.1:8080/pub",
        "https://raid.example/pub?tenant=a%20b&key=ignored",
        "https://raid.example/pub?key=only",
        "https://raid.example/pub?a=1&a=2&empty=#frag",
        "http://h/p?tuibackfillsourcekey=1",  # the mark itself: the slow way
    ],
)
def test_source_url_parsed_once_an_endpoint_is_the_same_url(endpoint: str) -> None:
    from tui_backfill.seams.media.source import _source_url

    for key in ("a.jpg", "lots/12/IMG 1+2&key=x%y?.jpg", "", "ünï/cødé #1.jpg", "k=v;&#"):
        assert source_url(endpoint, key) == _source_url(endpoint, key)


async def test_download_failures_are_classified(
    session: Wire, raid: RaidServer, catalog: dict[str, bytes]
) -> None:
    errors: list[BackfillError] = []

    async def failure(key: str, **kwargs: object) -> BackfillError:
        with pytest.raises(BackfillError) as caught:
            await download(session, raid, key, **kwargs)  # type: ignore[arg-type]
        errors.append(caught.value)
        return caught.value

    missing = await failure("no/such/key.jpg")
    assert isinstance(missing, NotFoundError) and not missing.retryable

    raid.faults.always_503.add("photo.jpg")
    busy = await failure("photo.jpg")
    assert isinstance(busy, RetryableError) and busy.code == "http_503"
    raid.faults.always_503.clear()

    raid.faults.fail_times["small.jpg"] = 2
    assert (await failure("small.jpg")).code == "http_503"
    assert (await failure("small.jpg")).code == "http_503"
    assert await download(session, raid, "small.jpg") == catalog["small.jpg"]
    assert raid.requests["small.jpg"] == 3

    too_large = await failure("photo.jpg", max_bytes=1000)  # by its Content-Length
    assert isinstance(too_large, MediaError) and too_large.code == "too_large"
    assert too_large.permanent
    raid.faults.chunked.add("portrait.jpg")
    streamed = await failure("portrait.jpg", max_bytes=200_000)  # no Content-Length
    assert isinstance(streamed, MediaError) and streamed.code == "too_large"
    assert await download(session, raid, "portrait.jpg") == catalog["portrait.jpg"]

    raid.faults.truncate.add("photo.jpg")
    truncated = await failure("photo.jpg")
    assert isinstance(truncated, RetryableError) and truncated.code == "truncated"
    raid.faults.truncate.clear()

    raid.faults.stall.add("alpha.png")
    raid.faults.stall_seconds = 5
    stalled = await failure("alpha.png", timeout=0.2)
    assert isinstance(stalled, RetryableError) and stalled.code == "timeout"

    refused = await failure("photo.jpg", endpoint=f"http://127.0.0.1:{closed_port()}/pub")
    assert isinstance(refused, RetryableError) and refused.code == "connection"

    for error in errors:
        assert SECRET not in str(error) and SECRET not in repr(error.args)


async def test_redirects_are_followed_and_the_secret_stays_with_the_endpoints_server(
    session: Wire,
) -> None:
    """An endpoint that redirects: to its own server (relative Location) the bearer token
    goes along; to another server it does not; a redirect loop ends as a permanent
    `redirect` failure after MAX_REDIRECTS, not a hang."""
    from aiohttp import web

    from tui_backfill.outcomes import PermanentError
    from tui_backfill.seams.media.source import MAX_REDIRECTS

    seen: list[tuple[str, str | None]] = []

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append(("elsewhere", request.headers.get("Authorization")))
        return web.Response(body=b"from elsewhere")

    async def endpoint(request: web.Request) -> web.Response:
        seen.append((request.path_qs, request.headers.get("Authorization")))
        key = request.query.get("key", "")
        if request.path == "/real":
            return web.Response(body=b"same server")
        if key == "same.jpg":
            raise web.HTTPFound("/real?key=same.jpg")
        if key == "other.jpg":
            raise web.HTTPTemporaryRedirect(f"{other_url}/img")
        raise web.HTTPFound(f"/pub?key={key}")  # a loop

    async def serve(route: str, handler: Any) -> tuple[web.AppRunner, str]:
        app = web.Application()
        app.router.add_get(route, handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"

    other, other_url = await serve("/img", elsewhere)
    raid, raid_url = await serve("/{tail:.*}", endpoint)
    try:
        fetch = functools.partial(
            download_source, session, raid_url + "/pub", secret=SECRET,
            max_bytes=MAX_BYTES, timeout=5.0,
        )  # fmt: skip
        bearer = f"Bearer {SECRET}"
        assert await fetch("same.jpg") == b"same server"
        assert seen == [("/pub?key=same.jpg", bearer), ("/real?key=same.jpg", bearer)]
        seen.clear()
        assert await fetch("other.jpg") == b"from elsewhere"
        assert seen == [("/pub?key=other.jpg", bearer), ("elsewhere", None)]
        seen.clear()
        with pytest.raises(PermanentError) as looped:
            await fetch("loop.jpg")
        assert looped.value.code == "redirect" and len(seen) == MAX_REDIRECTS + 1
    finally:
        await raid.cleanup()
        await other.cleanup()
