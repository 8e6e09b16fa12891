"""Origins: HTTP, FTP (credentials in the URL or in ORIGIN_USERNAME/ORIGIN_PASSWORD) and file://
each fill the bucket byte-identically through the real CLI; missing objects (404, FTP 550, no
file) are noRemote; each origin classifies its failures into the engine's codes, checked against
the real origin server (no mocked HTTP client).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from helpers import (
    KEY,
    Result,
    bucket_bytes,
    check_identity,
    closed_port,
    expected,
    run_args,
    tool,
    tool_env,
)

from tui_backfill.outcomes import ConfigError, NotFoundError, OriginUnreachable, RetryableError
from tui_backfill.seams.origins import Fetched, open_origin, sniff_image
from tui_backfill.servers.origin import (
    HTML_ERROR_PAGE,
    OriginFaults,
    OriginServer,
    expected_body,
)

if TYPE_CHECKING:
    from conftest import FtpOrigin, S3Target


async def backfill(
    tmp: Path,
    target: S3Target,
    origin: str,
    skus: list[str],
    *extra: str,
    env: dict[str, str] | None = None,
) -> Result:
    skus_file = tmp / "skus.txt"
    skus_file.write_text("\n".join(skus) + "\n")
    return await tool(
        *run_args(tmp / "state" / "s.sqlite3", skus_file, origin, target, *extra, timeout="1"),
        env=env or tool_env(target),
    )


SKUS = ["100000", "100001", "A_1"]
PAIRS = [(s, a) for s in SKUS for a in (1, 2)]
MISSING = ("100001", 2)


# -- end to end through the CLI -------------------------------------------------------------
async def test_http_origin_fills_bucket(
    tmp_path: Path, origin: OriginServer, rclone_s3: S3Target
) -> None:
    origin.faults.missing = {MISSING}
    # no fields in the URL: the seed's naming /{sku}_{angle} is appended
    result = await backfill(tmp_path, rclone_s3, origin.base_url + "/img", SKUS, "--angles", "1-2")
    assert result.rc == 0, result.err
    snap = result.snap
    check_identity(snap, 2)
    assert snap["uploaded"] == 5 and snap["noRemote"] == 1 and snap["errorsTotal"] == 0
    present = [p for p in PAIRS if p != MISSING]
    assert bucket_bytes(rclone_s3) == expected(present)
    assert all(origin.requests[("GET", f"/img/{s}_{a}")] == 1 for s, a in PAIRS)
    head = rclone_s3.client().head_object(
        Bucket=rclone_s3.bucket, Key=KEY.format(sku="A_1", angle=1)
    )
    assert head["ContentType"] == "image/jpeg"


@pytest.mark.parametrize("credentials", ["url", "env"])
async def test_ftp_origin_fills_bucket(
    tmp_path: Path, ftp_server, rclone_s3: S3Target, credentials: str
) -> None:
    files = {f"{s}_{a}": expected_body(s, a) for s, a in PAIRS if (s, a) != MISSING}
    ftp: FtpOrigin = await ftp_server(files)
    if credentials == "url":
        url, env = ftp.url_template, tool_env(rclone_s3)
    else:
        url = ftp.bare_url_template
        env = tool_env(rclone_s3, ORIGIN_USERNAME=ftp.user, ORIGIN_PASSWORD=ftp.password)
    result = await backfill(tmp_path, rclone_s3, url, SKUS, "--angles", "1-2", env=env)
    assert result.rc == 0, result.err
    snap = result.snap
    check_identity(snap, 2)
    assert snap["uploaded"] == 5 and snap["noRemote"] == 1  # FTP 550
    assert snap["errorsTotal"] == 0 and snap["failedItems"] == 0
    assert bucket_bytes(rclone_s3) == expected([p for p in PAIRS if p != MISSING])


async def test_ftp_rejected_login_stops_the_run_then_resumes(
    tmp_path: Path, ftp_server, rclone_s3: S3Target
) -> None:
    """A rejected FTP login is fatal (exit 3), not one error per item; fixed, it continues."""
    skus = [str(100000 + i) for i in range(20)]
    pairs = [(s, 1) for s in skus]
    ftp: FtpOrigin = await ftp_server({f"{s}_{a}": expected_body(s, a) for s, a in pairs})
    wrong = ftp.url_template.replace(f":{ftp.password}@", ":not-the-password@")
    first = await backfill(tmp_path, rclone_s3, wrong, skus, "--angles", "1")
    assert first.rc == 3, first.err
    snap = first.snap
    assert snap["state"] == "failed" and snap["uploaded"] == 0
    assert 1 <= snap["errorsTotal"] <= 3  # at most one per fetch slot
    assert "not-the-password" not in first.out + first.err
    assert rclone_s3.keys() == []

    second = await backfill(tmp_path, rclone_s3, ftp.url_template, skus, "--angles", "1")
    assert second.rc == 0, second.err
    snap = second.snap
    check_identity(snap, 1)
    assert snap["uploaded"] == 20
    assert bucket_bytes(rclone_s3) == expected(pairs)


async def test_file_origin_fills_bucket(tmp_path: Path, rclone_s3: S3Target) -> None:
    root = tmp_path / "images"
    root.mkdir()
    for sku, angle in PAIRS:
        if (sku, angle) != MISSING:
            (root / f"{sku}_{angle}.jpg").write_bytes(expected_body(sku, angle))
    result = await backfill(
        tmp_path, rclone_s3, f"{root.as_uri()}/{{sku}}_{{angle}}.jpg", SKUS, "--angles", "1-2"
    )
    assert result.rc == 0, result.err
    snap = result.snap
    check_identity(snap, 2)
    assert snap["uploaded"] == 5 and snap["noRemote"] == 1 and snap["errorsTotal"] == 0
    assert bucket_bytes(rclone_s3) == expected([p for p in PAIRS if p != MISSING])


# -- classification -------------------------------------------------------------------------
def test_sniff_image() -> None:
    assert sniff_image(expected_body("100000", 1)) == "image/jpeg"
    assert sniff_image(b"\x89PNG\r\n\x1a\n" + b"\0" * 16) == "image/png"
    assert sniff_image(b"GIF89a" + b"\0" * 8) == "image/gif"
    assert sniff_image(b"GIF87a" + b"\0" * 8) == "image/gif"
    assert sniff_image(b"RIFF\x10\0\0\0WEBPVP8 ") == "image/webp"
    assert sniff_image(b"\0\0\0\x1cftypavif\0\0\0\0") == "image/avif"
    for body, what in (
        (b"", "empty"),
        (HTML_ERROR_PAGE, "HTML"),
        (b"  \n<html><body>503</body></html>", "HTML"),
        (b'{"error": "not found"}', "not an image"),
        (b"\xff\xd8", "not an image"),  # a JPEG's first two bytes only
    ):
        with pytest.raises(RetryableError) as err:
            sniff_image(body)
        assert err.value.code == "bad_content" and err.value.retryable
        assert what in str(err.value)


HTTP_FAULTS = [
    pytest.param(OriginFaults(truncate_rate=1.0), "truncated", id="truncate"),
    pytest.param(OriginFaults(html_rate=1.0), "bad_content", id="html"),
    pytest.param(OriginFaults(stall_rate=1.0, stall_seconds=5.0), "timeout", id="stall"),
    pytest.param(OriginFaults(reset_rate=1.0), "connection", id="reset"),
    pytest.param(OriginFaults(fail_first_n=1), "http_503", id="503"),
]


@pytest.mark.parametrize(("faults", "code"), HTTP_FAULTS)
async def test_http_origin_classifies(
    origin: OriginServer, faults: OriginFaults, code: str
) -> None:
    fetcher = open_origin(origin.url_template, concurrency=2, timeout=0.3)
    try:
        healthy = await fetcher.fetch("100000", 1)  # also leaves a pooled keep-alive connection
        assert healthy == Fetched(expected_body("100000", 1), "image/jpeg")
        origin.faults = faults
        with pytest.raises(RetryableError) as err:
            await fetcher.fetch("100001", 2)
        assert err.value.code == code and err.value.retryable
        assert origin.requests[("GET", "/100001_2")] == 1  # one fetch is one GET
        origin.faults = OriginFaults()
        assert (await fetcher.fetch("100001", 2)).body == expected_body("100001", 2)
    finally:
        await fetcher.close()


async def test_http_origin_404_and_5xx(origin: OriginServer) -> None:
    fetcher = open_origin(origin.url_template, concurrency=2, timeout=1)
    try:
        origin.faults.missing = {("100000", 3)}
        with pytest.raises(NotFoundError) as missing:
            await fetcher.fetch("100000", 3)
        assert missing.value.code == "noRemote" and not missing.value.retryable
        origin.faults = OriginFaults(error_rate=1.0)
        codes = set()
        for angle in range(1, 9):
            with pytest.raises(RetryableError) as err:
                await fetcher.fetch("100002", angle)
            codes.add(err.value.code)
        assert codes == {"http_500", "http_503"}
        assert origin.gets == 9
    finally:
        await fetcher.close()


async def test_ftp_origin_classifies(ftp_server) -> None:
    ftp: FtpOrigin = await ftp_server(
        {"100000_1": expected_body("100000", 1), "100000_2": HTML_ERROR_PAGE}
    )
    fetcher = open_origin(
        ftp.bare_url_template,
        concurrency=2,
        timeout=2,
        env={
            "ORIGIN_USERNAME": ftp.user,
            "ORIGIN_PASSWORD": ftp.password,
        },
    )
    try:
        assert await fetcher.fetch("100000", 1) == Fetched(expected_body("100000", 1), "image/jpeg")
        with pytest.raises(NotFoundError) as missing:
            await fetcher.fetch("100000", 3)
        assert missing.value.code == "noRemote"
        with pytest.raises(RetryableError) as html:
            await fetcher.fetch("100000", 2)
        assert html.value.code == "bad_content"
        # the pooled client still works after a 550
        assert (await fetcher.fetch("100000", 1)).body == expected_body("100000", 1)
    finally:
        await fetcher.close()


async def test_file_origin_classifies(tmp_path: Path) -> None:
    (tmp_path / "100000_1.jpg").write_bytes(expected_body("100000", 1))
    (tmp_path / "100000_2.jpg").write_bytes(HTML_ERROR_PAGE)
    (tmp_path / "100000_3.jpg").write_bytes(b"")
    fetcher = open_origin(f"{tmp_path.as_uri()}/{{sku}}_{{angle}}.jpg", concurrency=1, timeout=1)
    try:
        assert await fetcher.fetch("100000", 1) == Fetched(expected_body("100000", 1), "image/jpeg")
        with pytest.raises(NotFoundError) as missing:
            await fetcher.fetch("100000", 4)
        assert missing.value.code == "noRemote"
        for angle in (2, 3):
            with pytest.raises(RetryableError) as bad:
                await fetcher.fetch("100000", angle)
            assert bad.value.code == "bad_content"
    finally:
        await fetcher.close()


# -- an absent origin (unreachable) is not a faulty one -------------------------------------


def absent_hosts() -> list[object]:
    """A refused connection and a name that fails at resolution (the reserved .invalid TLD)."""
    return [
        pytest.param(lambda: f"127.0.0.1:{closed_port()}", id="refused"),
        pytest.param(lambda: "no-such-host.invalid", id="unresolvable"),
    ]


@pytest.mark.parametrize("netloc", absent_hosts())
async def test_http_origin_absent_is_unreachable(netloc) -> None:
    fetcher = open_origin(f"http://{netloc()}/{{sku}}_{{angle}}", concurrency=2, timeout=2)
    try:
        with pytest.raises(OriginUnreachable) as err:
            await fetcher.fetch("100000", 1)
        assert err.value.code == "connection" and err.value.retryable and err.value.unreachable
        assert not err.value.fatal
    finally:
        await fetcher.close()


@pytest.mark.parametrize(("faults", "code"), HTTP_FAULTS)
async def test_http_origin_faults_are_not_unreachable(
    origin: OriginServer, faults: OriginFaults, code: str
) -> None:
    """A reset, a 503, a timeout or a truncated body come from an origin that is there."""
    origin.faults = faults
    fetcher = open_origin(origin.url_template, concurrency=2, timeout=0.3)
    try:
        with pytest.raises(RetryableError) as err:
            await fetcher.fetch("100001", 2)
        assert err.value.code == code and not err.value.unreachable
    finally:
        await fetcher.close()


@pytest.mark.parametrize("netloc", absent_hosts())
async def test_ftp_origin_absent_is_unreachable(netloc) -> None:
    env = {"ORIGIN_USERNAME": "u", "ORIGIN_PASSWORD": "p"}
    fetcher = open_origin(f"ftp://{netloc()}/{{sku}}_{{angle}}", concurrency=1, timeout=2, env=env)
    try:
        with pytest.raises(OriginUnreachable) as err:
            await fetcher.fetch("100000", 1)
        assert err.value.code == "connection" and err.value.retryable and err.value.unreachable
    finally:
        await fetcher.close()


async def test_ftp_origin_broken_answer_is_not_unreachable() -> None:
    """A server that accepts the connection and hangs up without a greeting is faulty, not
    absent."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    fetcher = open_origin(f"ftp://u:p@127.0.0.1:{port}/{{sku}}_{{angle}}", concurrency=1, timeout=2)
    try:
        with pytest.raises(RetryableError) as err:
            await fetcher.fetch("100000", 1)
        assert err.value.code == "connection" and not err.value.unreachable
    finally:
        await fetcher.close()
        server.close()
        await server.wait_closed()


async def test_file_origin_missing_base_directory_is_unreachable(tmp_path: Path) -> None:
    """A missing file is noRemote; a missing base directory (an unmounted share) is absence."""
    (tmp_path / "images").mkdir()
    present = open_origin(
        f"{(tmp_path / 'images').as_uri()}/{{sku}}_{{angle}}.jpg", concurrency=1, timeout=1
    )
    gone = open_origin(
        f"{(tmp_path / 'gone').as_uri()}/{{sku}}_{{angle}}.jpg", concurrency=1, timeout=1
    )
    with pytest.raises(NotFoundError):
        await present.fetch("100000", 1)
    with pytest.raises(OriginUnreachable) as err:
        await gone.fetch("100000", 1)
    assert err.value.code == "connection" and err.value.unreachable


# -- preflight: reach the origin, fetch nothing ---------------------------------------------
async def test_http_preflight_connects_without_a_request(origin: OriginServer) -> None:
    origin.faults = OriginFaults(error_rate=1.0, stall_rate=1.0, stall_seconds=5.0)
    fetcher = open_origin(origin.url_template, concurrency=1, timeout=1)
    try:
        await fetcher.preflight()  # a 5xx or slow origin is there: not a preflight failure
    finally:
        await fetcher.close()
    assert origin.gets == 0 and origin.heads == 0 and sum(origin.requests.values()) == 0


@pytest.mark.parametrize("netloc", absent_hosts())
async def test_http_preflight_absent_origin_names_origin(netloc) -> None:
    host = netloc()
    fetcher = open_origin(
        f"http://user:s3cret-pw@{host}/{{sku}}_{{angle}}", concurrency=1, timeout=2
    )
    try:
        with pytest.raises(ConfigError) as err:
            await fetcher.preflight()
    finally:
        await fetcher.close()
    message = str(err.value)
    assert err.value.field == "--origin" and "\n" not in message
    assert host.split(":")[0] in message and "***" in message and "s3cret-pw" not in message


async def test_ftp_preflight(ftp_server) -> None:
    """It logs in to a live server; an absent one fails with the password hidden; a wrong
    password is left to the run (which stops at once with exit 3)."""
    ftp: FtpOrigin = await ftp_server({})
    good = open_origin(ftp.url_template, concurrency=1, timeout=2)
    wrong = open_origin(ftp.url_template.replace(ftp.password, "nope"), concurrency=1, timeout=2)
    absent_url = ftp.url_template.replace(f":{ftp.port}/", f":{closed_port()}/")
    absent = open_origin(absent_url, concurrency=1, timeout=2)
    try:
        await good.preflight()
        await wrong.preflight()
        with pytest.raises(ConfigError) as err:
            await absent.preflight()
    finally:
        for fetcher in (good, wrong, absent):
            await fetcher.close()
    assert err.value.field == "--origin" and "connection refused" in str(err.value)
    assert ftp.password not in str(err.value) and "***" in str(err.value)


async def test_file_preflight(tmp_path: Path) -> None:
    there = open_origin(f"{tmp_path.as_uri()}/{{sku}}_{{angle}}.jpg", concurrency=1, timeout=1)
    await there.preflight()
    gone = open_origin(f"{tmp_path.as_uri()}/nope/{{sku}}_{{angle}}.jpg", concurrency=1, timeout=1)
    with pytest.raises(ConfigError) as err:
        await gone.preflight()
    assert err.value.field == "--origin" and f"{tmp_path}/nope: no such directory" in str(err.value)
