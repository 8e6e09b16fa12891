"""Keys that cannot escape (issue 6): which SKUs are usable, how they reach keys and origin URLs,
which key templates and angle specs are accepted — property tests over arbitrary text — and a
run through the real CLI with awkward SKUs (good ones written byte-identical under the expected
keys, bad ones failed items `bad_sku`/`bad_key` with no origin request and no PUT).
"""

from __future__ import annotations

import string
import unicodedata
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import yarl
from helpers import KEY, bucket_bytes, expected, run_args, tool, tool_env
from hypothesis import example, given
from hypothesis import strategies as st

from tui_backfill.outcomes import ConfigError
from tui_backfill.pipelines.config import Settings
from tui_backfill.pipelines.mirror.angles import MAX_ANGLE, parse_angles
from tui_backfill.seams.keys import printable, sku_problem, visible
from tui_backfill.seams.origins import open_origin
from tui_backfill.seams.sources import sku_batches
from tui_backfill.seams.templates import (
    DEFAULT_KEY_TEMPLATE,
    key_template,
    origin_template,
)
from tui_backfill.servers.origin import OriginServer, expected_body, parse_name
from tui_backfill.servers.proxy import ReverseProxy
from tui_backfill.state.sqlite import open_state

if TYPE_CHECKING:
    from conftest import FtpOrigin, S3Target

# -- the documented rule, written out independently of tui_backfill.seams.keys ---------------------

REJECTED_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}


def char_ok(ch: str) -> bool:
    """README, "Keys and SKUs": no '/', no '\\', no control (C0, DEL, C1), invisible format,
    line/paragraph separator or surrogate character, no Unicode noncharacter."""
    cp = ord(ch)
    noncharacter = 0xFDD0 <= cp <= 0xFDEF or cp % 0x10000 in (0xFFFE, 0xFFFF)
    return (
        ch not in "/\\" and unicodedata.category(ch) not in REJECTED_CATEGORIES and not noncharacter
    )


def documented_usable(sku: str) -> bool:
    return (
        sku not in ("", ".", "..")
        and sku == sku.strip()  # str.strip: exactly the characters str.isspace() accepts
        and all(char_ok(ch) for ch in sku)
    )


SPECIALS = [
    "/", "\\", ".", "..", " ", "\t", "\n", "\r", "\x00", "\x1b", "\x7f", "\x85", "\x9b", "\xa0",
    "\u00ad", "\u200b", "\u200d", "\u202e", "\u2028", "\u2029", "\u3000", "\ufeff", "\ufdd0",
    "\ufffe", "\uffff", "\U0001fffe", "\U0010ffff", "\ud800", "\udcff", "\ue000", "ü", "Ü", "é",
    "\u0301", "日", "😀", "#", "?", "%", "&", "+", "=", ";", ":", "@", "[", "]", "'", '"', "_",
    "-", "~", "$", "*", "<", ">", "|",
]  # fmt: skip
# Arbitrary text: any code point (surrogates included), biased towards the interesting ones.
sku_text = st.lists(
    st.one_of(
        st.sampled_from(SPECIALS),
        st.characters(codec=None, exclude_categories=()),
        st.characters(categories=["Cs"]),
        st.sampled_from(string.ascii_letters + string.digits),
    ),
    max_size=24,
).map("".join)
usable_skus = sku_text.filter(documented_usable)
angles = st.integers(1, MAX_ANGLE)


@pytest.mark.parametrize(
    "sku",
    ["100421", "A B", "Ünïcode-1", "x#y", "x?y", "100%", "%41", "a..b", ".x", "x.", "...",
     "日本語", "a\u00a0b", "😀", "A_1", "[b]x[i]", "it's", "a+b=c&d", "e\u0301"],
)  # fmt: skip
def test_usable_skus(sku: str) -> None:
    assert sku_problem(sku) is None


@pytest.mark.parametrize(
    ("sku", "reason"),
    [
        ("", "is empty"),
        (".", "relative path segment"),
        ("..", "relative path segment"),
        ("a/b", "contains '/'"),
        ("../etc", "contains '/'"),
        ("/abs", "contains '/'"),
        ("a\\b", "contains '\\'"),
        ("..\\x", "contains '\\'"),
        (" a", "leading or trailing whitespace"),
        ("a\u3000", "leading or trailing whitespace"),
        ("tab\tsku", "control character U+0009"),
        ("line\nbreak", "control character U+000A"),
        ("nul\x00", "control character U+0000"),
        ("esc\x1b[2J", "control character U+001B"),
        ("del\x7f", "control character U+007F"),
        ("c1\x85", "control character U+0085"),
        ("csi\x9b", "control character U+009B"),
        ("zw\u200bsp", "invisible format character U+200B"),
        ("bidi\u202eexe.gpj", "invisible format character U+202E"),
        ("bom\ufeff", "invisible format character U+FEFF"),
        ("ls\u2028x", "line separator U+2028"),
        ("ps\u2029x", "paragraph separator U+2029"),
        ("sur\udcff", "not valid UTF-8"),
        ("nc\uffff", "noncharacter U+FFFF"),
        ("nc\ufdd0", "noncharacter U+FDD0"),
    ],
)
def test_unusable_skus_name_the_reason(sku: str, reason: str) -> None:
    problem = sku_problem(sku)
    assert problem is not None and reason in problem, problem
    assert problem.isprintable()


@given(sku_text)
@example("A B")
@example("\udcff")
@example("\U0010fffe")
def test_sku_rule_accepts_exactly_the_documented_set(sku: str) -> None:
    problem = sku_problem(sku)
    assert (problem is None) == documented_usable(sku), (sku, problem)
    if problem is not None:
        assert problem.isprintable() and problem.strip() == problem
    # what screens and messages show of any SKU never holds a control or invisible character
    for shown in (visible(sku), printable(sku)):
        assert all(char_ok(ch) or ch in "/\\" for ch in shown), shown


# -- keys and origin URLs of usable SKUs -------------------------------------------------------


def assert_safe_key(key: str) -> None:
    assert not key.startswith("/"), key
    segments = key.split("/")
    assert "" not in segments, f"{key!r} has an empty segment"
    assert not {".", ".."} & set(segments), f"{key!r} has a dot segment"
    assert all(char_ok(ch) or ch == "/" for ch in key), f"{key!r} has a forbidden character"


@given(usable_skus, angles)
@example("..x", 1)
@example("x#y", 3)
@example("100%", 1)
def test_usable_skus_render_safe_keys_and_round_trip_through_origin_urls(
    sku: str, angle: int
) -> None:
    key = key_template(DEFAULT_KEY_TEMPLATE).render(sku, angle)
    assert key == f"rsr/highres/{sku}_{angle}_HR.jpg"  # the SKU as given: S3 keys are UTF-8
    assert_safe_key(key)
    name = f"{sku}_{angle}"
    for base in ("http://127.0.0.1:8080/img", "ftp://u:p@127.0.0.1/pub/", "file:///srv/img"):
        url = origin_template(base).render_url(sku, angle)  # the seed's naming appended
        parts = urllib.parse.urlsplit(url)
        assert not parts.query and not parts.fragment, url
        head, _, last = parts.path.rpartition("/")
        assert urllib.parse.unquote(last) == name, url
        assert urllib.parse.unquote(head) == urllib.parse.urlsplit(base).path.rstrip("/")
    # what aiohttp sends (yarl) and the test origin decodes back into (sku, angle)
    sent = yarl.URL(
        origin_template("http://127.0.0.1:8080/img/{sku}_{angle}.jpg").render_url(sku, angle)
    )
    assert sent.path == f"/img/{name}.jpg"
    assert not sent.query_string and not sent.fragment
    assert parse_name(sent.path.rsplit("/", 1)[-1]) == (sku, angle)
    # in a query string the SKU is one value, whatever it holds
    query = yarl.URL(
        origin_template("https://h/get?sku={sku}&angle={angle}").render_url(sku, angle)
    )
    assert dict(query.query) == {"sku": sku, "angle": str(angle)}


# -- key templates ---------------------------------------------------------------------------

TEMPLATE_PIECES = [
    "{sku}", "{angle}", "{foo}", "{}", "{0}", "{sku:>4}", "{angle!r}", "{sku.x}", "{", "}",
    "{{", "}}", "/", "//", ".", "..", "./", "../", "/..", "rsr", "highres", "_", "-", "HR.jpg",
    " ", "\t", "\\", "\x00", "\u202e", "ü", "#", "%",
]  # fmt: skip


def documented_template_ok(text: str) -> bool:
    """README: only {sku} and {angle}, both, no format spec or conversion; no leading/trailing
    whitespace; does not start or end with '/'; no '//', no '.' or '..' segment; the text's
    characters follow the SKU rule ('/' aside)."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError:
        return False
    names = [name for _, name, _, _ in parsed if name is not None]
    if set(names) != {"sku", "angle"} or any(spec or conv for _, n, spec, conv in parsed if n):
        return False
    if text != text.strip() or text.startswith("/") or text.endswith("/"):
        return False
    literal = "".join(lit for lit, _, _, _ in parsed)
    if not all(char_ok(ch) or ch == "/" for ch in literal):
        return False
    sample = text.format(sku="x", angle=1)
    return not {"", ".", ".."} & set(sample.split("/"))


@given(st.lists(st.sampled_from(TEMPLATE_PIECES), max_size=10).map("".join), usable_skus, angles)
@example("rsr/highres/{sku}_{angle}_HR.jpg", "A B", 1)
@example("{angle}/{sku}.jpg", "..x", 2)
@example("a/.{sku}/{angle}", ".x", 2)
@example("a/{sku}{sku}/{angle}", "x", 2)
def test_key_templates_pass_exactly_when_documented(text: str, sku: str, angle: int) -> None:
    ok = documented_template_ok(text)
    try:
        template = key_template(text)
    except ConfigError as exc:
        assert not ok, f"{text!r} was refused: {exc}"
        assert exc.field == "--key-template"
        assert str(exc).startswith("--key-template: ") and "\n" not in str(exc)
        return
    assert ok, f"{text!r} was accepted"
    assert_safe_key(template.render(sku, angle))


segment_piece = st.sampled_from(
    ["rsr", "img", "HR", ".", "..", "-", "_", "ü", "x.y", "{sku}", "{angle}"]
)
segments_of_pieces = st.lists(
    st.lists(segment_piece, min_size=1, max_size=4).map("".join), min_size=1, max_size=4
)


@given(segments_of_pieces, st.integers(0, 3), st.integers(0, 3), usable_skus, angles)
@example(["{sku}", "."], 0, 0, "x", 1)
def test_templates_built_from_safe_segments_are_accepted(
    segments: list[str], at_sku: int, at_angle: int, sku: str, angle: int
) -> None:
    segments = [seg + "x" if seg in (".", "..") else seg for seg in segments]
    segments[at_sku % len(segments)] += "{sku}"
    segments[at_angle % len(segments)] += "{angle}"
    template = key_template("/".join(segments))
    assert_safe_key(template.render(sku, angle))


# -- angle specs -----------------------------------------------------------------------------


def documented_angles(spec: str) -> tuple[int, ...] | None:
    """README: comma-separated angles and ranges of ASCII digits, blanks around them allowed,
    1 to 999, ranges low-high; the result sorted and unique. None: refused."""
    blanks = " \t\n\r\x0b\x0c"
    result: set[int] = set()
    for part in spec.split(","):
        low, dash, high = part.strip(blanks).partition("-")
        low, high = low.strip(blanks), high.strip(blanks) if dash else low.strip(blanks)
        if not all(p.isascii() and p.isdigit() and len(p.lstrip("0")) <= 3 for p in (low, high)):
            return None  # not digits 0-9, or above 999 (never int() of thousands of digits)
        if not 1 <= int(low) <= int(high) <= MAX_ANGLE:
            return None
        result.update(range(int(low), int(high) + 1))
    return tuple(sorted(result))


angle_text = st.lists(
    st.sampled_from([*"0123456789", ",", "-", " ", "\t", "a", "١", "²", "\u00a0", "1000"]),
    max_size=16,
).map("".join)


@given(angle_text)
@example("1-3")
@example("3,1,2,2")
@example("١-٣")
@example("1000")
@example("9" * 5000)
def test_angle_specs_parse_exactly_when_documented(spec: str) -> None:
    wanted = documented_angles(spec)
    try:
        got = parse_angles(spec, field="angles")
    except ConfigError as exc:
        assert wanted is None, f"{spec!r} was refused: {exc}"
        assert exc.field == "angles" and str(exc).startswith("angles: ")
        assert "\n" not in str(exc)
        return
    assert wanted is not None, f"{spec!r} was accepted as {got}"
    assert got == wanted
    assert list(got) == sorted(set(got)) and all(1 <= a <= MAX_ANGLE for a in got)
    assert parse_angles(",".join(map(str, got))) == got  # the normal form round-trips


# -- the origins fetch awkward (usable) SKUs from the right path -----------------------------

AWKWARD = ["A B", "Ünïcode-1", "x#y", "x?y", "100%", "%41", "a+b", "[x]", "ü&ß=1;2"]


async def test_http_origin_requests_the_decoded_name(origin: OriginServer) -> None:
    http = open_origin(origin.base_url + "/img", concurrency=2, timeout=5)
    try:
        for sku in AWKWARD:
            fetched = await http.fetch(sku, 2)
            assert fetched.body == expected_body(sku, 2), sku
    finally:
        await http.close()
    assert dict(origin.requests) == {("GET", f"/img/{sku}_2"): 1 for sku in AWKWARD}


async def test_ftp_and_file_origins_read_the_sku_as_a_file_name(
    tmp_path: Path, ftp_server: Callable[[dict[str, bytes]], Awaitable[FtpOrigin]]
) -> None:
    files = {f"{sku}_1": expected_body(sku, 1) for sku in AWKWARD}
    ftp = await ftp_server(files)
    local = tmp_path / "local"
    local.mkdir()
    for name, body in files.items():
        (local / name).write_bytes(body)
    for url in (ftp.url_template, local.as_uri() + "/{sku}_{angle}"):
        source = open_origin(url, concurrency=1, timeout=5)
        try:
            for sku in AWKWARD:
                assert (await source.fetch(sku, 1)).body == expected_body(sku, 1), (url, sku)
        finally:
            await source.close()


# -- a run through the real CLI --------------------------------------------------------------

GOOD = ["A B", "Ünïcode-1", "x#y", "100%"]
BAD_SKU = ["../etc", "a/b", "tab\tsku", "..", "esc\x1b[2J"]
LONG = "L" * 1100  # a usable SKU whose key is over S3's 1,024 bytes


async def test_run_writes_good_skus_and_fails_bad_ones_without_a_request(
    tmp_path: Path,
    origin: OriginServer,
    rclone_s3: S3Target,
    s3_proxy: Callable[[S3Target], Awaitable[ReverseProxy]],
) -> None:
    proxy = await s3_proxy(rclone_s3)
    target = rclone_s3.via(proxy)
    skus_file = tmp_path / "skus.txt"
    skus_file.write_text("\n".join([*GOOD, *BAD_SKU, LONG]) + "\n", encoding="utf-8")
    state = tmp_path / "state" / "s.sqlite3"
    args = run_args(state, skus_file, origin.url_template, target, "--angles", "1-2")
    env = tool_env(target)

    result = await tool(*args, env=env)
    assert result.rc == 1, result  # completed, with failed items
    snap = result.snap
    good_pairs = [(s, a) for s in GOOD for a in (1, 2)]
    assert snap["state"] == "completed"
    assert snap["scannedSkus"] == len(GOOD) + len(BAD_SKU) + 1
    assert snap["uploaded"] == len(good_pairs) == snap["attemptedDownloads"]
    assert snap["failedItems"] == 2 * (len(BAD_SKU) + 1)
    assert snap["skippedExists"] == snap["noRemote"] == 0
    assert snap["scannedSkus"] * 2 == (
        snap["uploaded"] + snap["skippedExists"] + snap["noRemote"] + snap["failedItems"]
    )
    assert snap["errorsByCode"] == {"bad_sku": 2 * len(BAD_SKU), "bad_key": 2}
    assert snap["errorsTotal"] == 2 * (len(BAD_SKU) + 1)
    assert "\x1b" not in result.err and "\t" not in result.err  # progress lines escape SKUs

    # the good SKUs byte-identical under their keys, nothing else; one GET and one PUT each
    assert bucket_bytes(rclone_s3) == expected(good_pairs)
    assert {k.removeprefix(rclone_s3.bucket + "/"): n for k, n in proxy.puts.items()} == {
        KEY.format(sku=s, angle=a): 1 for s, a in good_pairs
    }
    assert dict(origin.requests) == {("GET", f"/{s}_{a}"): 1 for s, a in good_pairs}

    # status --json and the failed items name them
    status = await tool("status", "--json", "--state", str(state), env=env)
    assert status.rc == 0, status
    after = status.snap
    assert after["runStatus"] == "completed" and after["exitCode"] == 1
    assert after["failedItems"] == snap["failedItems"]
    assert after["errorsByCode"] == snap["errorsByCode"]
    async with open_state(str(state)) as store:
        failed = await store.failed_items("default")
    by_item = {(f.group, f.member): f for f in failed}
    assert set(by_item) == {(s, a) for s in [*BAD_SKU, LONG] for a in (1, 2)}
    for sku in BAD_SKU:
        item = by_item[(sku, 1)]
        assert item.code == "bad_sku" and item.attempts == 0
        assert item.message == f"SKU {printable(sku)} {sku_problem(sku)}; not fetched, not written"
        assert item.key == KEY.format(sku=sku, angle=1)
    assert "\x1b" not in by_item[("esc\x1b[2J", 2)].message
    assert by_item[(LONG, 2)].code == "bad_key"
    assert "over S3's limit of 1,024" in by_item[(LONG, 2)].message

    # the next run retries the failed items first: they fail again, still with no request
    origin.reset_counters()
    proxy.reset_counters()
    again = await tool(*args, env=env)
    assert again.rc == 1, again
    second = again.snap
    assert second["carryover"] == {"planned": len(by_item), "done": 0, "failed": len(by_item)}
    assert second["failedItems"] == len(by_item)
    assert second["skippedExists"] == len(good_pairs) and second["uploaded"] == 0
    assert proxy.puts == {}
    assert dict(origin.requests) == {}

    # a dry run counts them too (nothing recorded); coverage does not expect them
    dry = await tool(*args, "--dry-run", env=env)
    assert dry.rc == 1, dry
    assert dry.snap["failedItems"] == len(by_item) and dry.snap["wouldFetch"] == 0
    assert dry.snap["skippedExists"] == len(good_pairs)
    gap = tmp_path / "gap.txt"
    coverage = await tool(
        "coverage", "--json", "--state", str(state), "--gap-file", str(gap), env=env
    )
    assert coverage.rc == 0, coverage
    report = coverage.json()
    assert (report["expected"], report["present"]) == (len(good_pairs), len(good_pairs))
    assert report["unusable"] == len(by_item) and report["missing"] == 0
    assert gap.read_text(encoding="utf-8") == ""
    assert dict(origin.requests) == {} and proxy.puts == {}


async def test_a_skus_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    skus_file = tmp_path / "latin1.txt"
    skus_file.write_bytes("A1\nB\xfc2\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        async for _ in sku_batches(Settings(skus_file=str(skus_file))):
            pass
    assert info.value.field == "--skus-file" and "not valid UTF-8" in str(info.value)
