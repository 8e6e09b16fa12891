"""The hash index's direct S3 path (seams/s3_direct): taken only when the settings and the
environment decide everything; then it reaches the URL botocore would, with no botocore in the
process; otherwise aiobotocore's client is used, and both give the same index."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import botocore.utils
import pytest
from helpers import REPO, closed_port, finish, one_line, tool_env

from tui_backfill.pipelines.config import is_s3_endpoint
from tui_backfill.seams.bucket import Bucket
from tui_backfill.seams.s3_direct import direct_target
from tui_backfill.seams.s3_wire import ObjectTarget
from tui_backfill.seams.sigv4 import Credentials

if TYPE_CHECKING:
    from conftest import S3Target

KEYS = {"AWS_ACCESS_KEY_ID": "AKID", "AWS_SECRET_ACCESS_KEY": "secret"}


# -- which path ------------------------------------------------------------------------------


def test_the_direct_path_needs_an_endpoint_and_the_key_pair_in_the_environment(
    tmp_path: Path,
) -> None:
    def target(
        env: dict[str, str], endpoint: str | None = "http://127.0.0.1:9000", bucket: str = "bench"
    ) -> object:
        return direct_target(bucket, endpoint_url=endpoint, region=None, environ=env, home=tmp_path)

    found = target({**KEYS, "AWS_CONFIG_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true"})
    assert found is not None
    assert target(KEYS, endpoint=None) is None  # AWS itself: botocore's endpoint rules
    assert target({"AWS_ACCESS_KEY_ID": "AKID"}) is None  # half a pair: botocore's message
    assert target({**KEYS, "AWS_SECRET_ACCESS_KEY": ""}) is None
    assert target({**KEYS, "AWS_PROFILE": "prod"}) is None
    assert target({**KEYS, "AWS_CREDENTIAL_EXPIRATION": "2030-01-01T00:00:00Z"}) is None
    assert target({**KEYS, "AWS_USE_FIPS_ENDPOINT": "true"}) is None
    assert target(KEYS, bucket="arn:aws:s3:us-east-1:1:accesspoint/x") is None
    assert target(KEYS, endpoint="http://user:pw@127.0.0.1:9000") is None
    assert target(KEYS, endpoint="http://127.0.0.1:9000/?x=1") is None
    # AWS's own endpoints: its rules have exceptions (Transfer Acceleration's virtual hosts)
    assert target(KEYS, endpoint="https://s3-accelerate.amazonaws.com") is None
    assert target(KEYS, endpoint="https://s3.eu-west-1.amazonaws.com") is None
    assert target(KEYS, endpoint="https://s3.cn-north-1.amazonaws.com.cn") is None
    config = tmp_path / "config"
    config.write_text("[default]\nca_bundle = /etc/ssl/other.pem\n")
    assert target({**KEYS, "AWS_CONFIG_FILE": str(config)}) is None
    (tmp_path / ".aws").mkdir()
    (tmp_path / ".aws" / "config").write_text("[default]\nregion = eu-west-1\n")
    assert target(KEYS) is None  # ~/.aws/config
    assert target({**KEYS, "AWS_CONFIG_FILE": os.devnull}) is not None  # names another, empty
    # botocore expands ~ and variables in AWS_CONFIG_FILE: so does the check
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(tmp_path))
        patch.setenv("CONFIG_DIR", str(tmp_path))
        assert target({**KEYS, "AWS_CONFIG_FILE": "~/config"}) is None
        assert target({**KEYS, "AWS_CONFIG_FILE": "$CONFIG_DIR/config"}) is None


def test_the_credentials_and_verification_are_botocores() -> None:
    env = {**KEYS, "AWS_SESSION_TOKEN": "session", "AWS_SECURITY_TOKEN": "security"}
    found = direct_target(
        "b",
        endpoint_url="https://s3.example.com",
        region="auto",
        environ=env,
        home=Path("/nonexistent"),
    )
    assert found is not None
    _, credentials, verify = found
    # botocore's EnvProvider reads AWS_SECURITY_TOKEN first
    assert (credentials.access_key, credentials.secret_key, credentials.token) == (
        "AKID",
        "secret",
        "security",
    )
    assert verify is True
    env = {**KEYS, "AWS_CA_BUNDLE": "/ca.pem", "REQUESTS_CA_BUNDLE": "/other.pem"}
    found = direct_target(
        "b",
        endpoint_url="https://s3.example.com",
        region=None,
        environ=env,
        home=Path("/nonexistent"),
    )
    assert found is not None and found[2] == "/ca.pem"


def test_a_key_pair_given_ahead_of_the_chain_is_used_as_the_clients_session_uses_it() -> None:
    """The publishing worker's B2_KEY_ID and B2_APP_KEY: `Bucket(credentials=...)` sets them
    on its session (no token, the chain not consulted), and so does the direct path."""

    def given(
        env: dict[str, str], pair: tuple[str, str]
    ) -> tuple[ObjectTarget, Credentials, bool | str] | None:
        return direct_target(
            "IBA-Lot-Media",
            endpoint_url="https://s3.us-west-004.backblazeb2.com",
            region="us-west-004",
            environ=env,
            home=Path("/nonexistent"),
            credentials=pair,
        )

    for env in ({}, {**KEYS, "AWS_SESSION_TOKEN": "session"}):
        found = given(env, ("b2-key", "b2-secret"))
        assert found is not None
        credentials = found[1]
        assert (credentials.access_key, credentials.secret_key, credentials.token) == (
            "b2-key",
            "b2-secret",
            None,
        )
    assert given({}, ("b2-key", "")) is None
    assert given({"AWS_PROFILE": "prod"}, ("b2-key", "b2-secret")) is None  # botocore's


CASES = [
    ("bench", "http://127.0.0.1:9000", None),
    ("bench", "http://127.0.0.1:9000/", "eu-west-1"),
    ("bench", "http://localhost:9000", None),
    ("my.bucket", "https://s3.example.com", None),
    ("IBA-Lot-Media", "https://s3.us-west-004.backblazeb2.com", "us-west-004"),
    ("My_Bucket", "https://s3.example.com:8443", None),
    ("bench", "https://acct.r2.cloudflarestorage.com", "auto"),
    ("bench", "https://s3.example.com/base", None),
    ("bench", "http://[::1]:9000", None),
    ("mybucket", "HTTPS://S3.Example.com", None),
    ("mybucket", "Http://minio.internal:9000", "eu-west-1"),
]


@pytest.mark.parametrize(("bucket", "endpoint", "region"), CASES)
@pytest.mark.parametrize("path_style", [False, True])
async def test_the_same_url_and_region_as_botocores_client(
    monkeypatch: pytest.MonkeyPatch,
    bucket: str,
    endpoint: str,
    region: str | None,
    path_style: bool,
) -> None:
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    found = direct_target(bucket, endpoint_url=endpoint, region=region, home=Path("/nonexistent"))
    assert found is not None
    client = Bucket(
        bucket, endpoint_url=endpoint, region=region, path_style=path_style, timeout=5, pool_size=1
    )
    async with client:
        assert found[0] == await client.object_target()


URLS = [
    "http://127.0.0.1:9000",
    "https://s3.example.com",
    "https://s3.example.com.",
    "https://s3_bad.example.com",
    "https://-bad.example.com",
    "https://bad-.example.com",
    "http://[::1]:9000",
    "http://[fe80::1%25eth0]:9000",
    "http://[fe80::1%eth0]",
    "http://[::ffff:10.0.0.1]",
    "http://[12345::1]",
    "http://[::1%25]",
    "https://" + "a" * 64 + ".example.com",
    "https://" + ".".join(["a" * 60] * 5),
    "http://999.1.1.1:80",
    "https://xn--bcher-kva.example",
    "https://host\t.example.com",
]


def test_an_endpoint_with_a_user_or_password_is_refused() -> None:
    """botocore would take it, and quote it, password and all, in its errors."""
    assert is_s3_endpoint("http://127.0.0.1:9000")
    assert not is_s3_endpoint("http://user:pw@127.0.0.1:9000")
    assert not is_s3_endpoint("https://user@s3.example.com")


@pytest.mark.parametrize("url", URLS)
def test_endpoints_are_read_as_botocore_reads_them(url: str) -> None:
    try:
        theirs = bool(
            botocore.utils.is_valid_endpoint_url(url)
            or botocore.utils.is_valid_ipv6_endpoint_url(url)
        )
    except ValueError:  # urlsplit's own check of a bracketed host: no client for it either
        theirs = False
    assert is_s3_endpoint(url) == theirs


# -- runs on a real server -------------------------------------------------------------------

# The CLI in a subprocess that says, on leaving, whether botocore was ever imported
_WATCHED = (
    "import atexit, runpy, sys\n"
    "atexit.register(lambda: print('aiohttp loaded:', 'aiohttp' in sys.modules, file=sys.stderr))\n"
    "atexit.register(lambda: print('botocore loaded:', 'botocore' in sys.modules, file=sys.stderr))\n"
    "sys.argv = ['tui-backfill', *sys.argv[1:]]\n"
    "runpy.run_module('tui_backfill', run_name='__main__')\n"
)


async def watched(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    import asyncio

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _WATCHED, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=REPO,
    )  # fmt: skip
    result = await finish(proc)
    return result.rc, result.out, result.err


def put(target: S3Target, count: int) -> dict[str, bytes]:
    assert target.data_dir is not None
    objects = {f"assets/o{n:04d}": os.urandom(100 + n) for n in range(count)}
    for key, body in objects.items():
        path = target.data_dir / target.bucket / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(body)
    return objects


def hashes(index: Path) -> dict[str, str]:
    with sqlite3.connect(index) as db:
        return dict(db.execute("SELECT key, content_hash FROM files"))


async def test_a_run_on_the_direct_path_loads_no_botocore_and_fills_the_index_as_the_client_does(
    rclone_s3: S3Target, tmp_path: Path
) -> None:
    objects = put(rclone_s3, 1_200)
    want = {key: hashlib.sha256(body).hexdigest() for key, body in objects.items()}
    config = tmp_path / "aws-config"
    config.write_text("[default]\nregion = us-east-1\n")  # a config file: botocore's to read
    for name, env, loaded in [
        ("direct", tool_env(rclone_s3), False),
        ("client", tool_env(rclone_s3, AWS_CONFIG_FILE=str(config)), True),
    ]:
        index = tmp_path / f"{name}.sqlite3"
        rc, _, err = await watched(
            "hash-index", "--no-ui", "--state", str(tmp_path / f"{name}-state.sqlite3"),
            "--bucket", rclone_s3.bucket, "--endpoint-url", rclone_s3.endpoint_url,
            "--prefix", "assets/", "--index-db", str(index), "--backoff", "0.01",
            env=env,
        )  # fmt: skip
        assert rc == 0, err
        assert f"botocore loaded: {loaded}" in err.splitlines()
        if not loaded:  # nor aiohttp: the wire (seams/http1) sends, and starts 0.13 s sooner
            assert "aiohttp loaded: False" in err.splitlines()
        assert hashes(index) == want, name


async def test_bad_endpoints_and_buckets_on_the_direct_path_exit_2_naming_the_field(
    rclone_s3: S3Target, tmp_path: Path
) -> None:
    env = tool_env(rclone_s3)
    cases = [
        (
            f"http://127.0.0.1:{closed_port()}",
            rclone_s3.bucket,
            "--endpoint-url",
            ": connection refused",
        ),
        (rclone_s3.endpoint_url, "no-such-bucket", "--bucket", "does not exist"),
    ]
    for endpoint, bucket, field, said in cases:
        rc, _, err = await watched(
            "hash-index", "--no-ui", "--state", str(tmp_path / "s.sqlite3"),
            "--bucket", bucket, "--endpoint-url", endpoint, "--index-db", str(tmp_path / "i.db"),
            "--backoff", "0.01",
            env=env,
        )  # fmt: skip
        lines = [line for line in err.splitlines() if " loaded: " not in line]
        assert rc == 2, err
        line = one_line("\n".join(lines))
        assert line.startswith(f"tui-backfill: error: {field}: ") and said in line, line
        assert "botocore loaded: False" in err
        assert not (tmp_path / "i.db").exists()


async def test_a_closed_direct_bucket_opens_no_new_reader(tmp_path: Path) -> None:
    from tui_backfill.outcomes import RetryableError
    from tui_backfill.seams.s3_direct import direct_bucket

    env = {**KEYS, "AWS_CONFIG_FILE": os.devnull}
    found = direct_target(
        "b", endpoint_url="http://127.0.0.1:9", region=None, environ=env, home=tmp_path
    )
    assert found is not None
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("AWS_")]:
            patch.delenv(name)
        for name, value in env.items():
            patch.setenv(name, value)
        bucket = direct_bucket(
            "b", endpoint_url="http://127.0.0.1:9", region=None, timeout=1, pool_size=1
        )
    assert bucket is not None
    async with bucket:
        reader = bucket.objects()
        assert bucket.objects() is reader  # one reader for the bucket
    with pytest.raises(RetryableError):
        bucket.objects()


async def test_a_wrong_region_answer_is_followed_as_botocores_redirector_follows_it(
    tmp_path: Path,
) -> None:
    """A server in eu-west-1 answers a request signed for another region with a 400 naming
    its region (as MinIO and S3 do): the direct path signs again for that region, once, and
    keeps it, as the aiobotocore path does."""
    import re

    from aiohttp import web

    from tui_backfill.seams.s3_direct import DirectBucket

    seen: list[tuple[str, str]] = []

    async def answer(request: web.Request) -> web.Response:
        region = re.search(r"Credential=[^/]+/[0-9]+/([^/]+)/", request.headers["Authorization"])
        assert region is not None
        seen.append((request.method, region[1]))
        if region[1] != "eu-west-1":
            return web.Response(
                status=400,
                headers={"x-amz-bucket-region": "eu-west-1"},
                content_type="application/xml",
                body=b"<Error><Code>AuthorizationHeaderMalformed</Code>"
                b"<Region>eu-west-1</Region></Error>"
                if request.method != "HEAD"
                else b"",
            )
        if request.method == "HEAD":
            return web.Response(status=200)
        return web.Response(
            content_type="application/xml",
            body=b"<ListBucketResult><IsTruncated>false</IsTruncated>"
            b"<Contents><Key>a</Key><LastModified>2026-12-07T00:00:00.000Z</LastModified>"
            b'<ETag>"e"</ETag><Size>1</Size></Contents></ListBucketResult>',
        )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        endpoint = f"http://127.0.0.1:{port}"
        found = direct_target("b", endpoint_url=endpoint, region=None, environ=KEYS, home=tmp_path)
        assert found is not None and found[0].region == "us-east-1"
        bucket = DirectBucket(
            "b", endpoint_url=endpoint, target=found[0], credentials=found[1], verify=True,
            timeout=5, pool_size=2,
        )  # fmt: skip
        async with bucket:
            await bucket.preflight(attempts=1, backoff=0.01)
            page = await bucket.list_page("")
        assert [listed.key for listed in page.objects] == ["a"]
        # once in the wrong region, then in the right one for good
        assert seen == [("HEAD", "us-east-1"), ("HEAD", "eu-west-1"), ("GET", "eu-west-1")]
    finally:
        await runner.cleanup()


async def test_https_on_the_direct_path_verifies_with_the_ca_bundle_and_says_so_when_refused(
    rclone_s3: S3Target, tmp_path: Path
) -> None:
    """An HTTPS endpoint under a private CA, its scheme written in capitals: with
    AWS_CA_BUNDLE naming the CA the run works with no botocore loaded; without it the
    certificate is refused, retried, then exit 2 naming --endpoint-url and the certificate
    (not "cannot reach", which is for a server that takes no connection)."""
    import ssl

    from test_s3_lean import self_signed

    from tui_backfill.servers.proxy import ReverseProxy

    objects = put(rclone_s3, 30)
    cert, key = self_signed(tmp_path)
    serving = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    serving.load_cert_chain(cert, key)
    https = await ReverseProxy(rclone_s3.endpoint_url, ssl_context=serving).start()
    try:
        endpoint = https.endpoint_url.replace("https://", "HTTPS://")
        for trusted in (True, False):
            env = tool_env(rclone_s3, **({"AWS_CA_BUNDLE": cert} if trusted else {}))
            env.pop("REQUESTS_CA_BUNDLE", None)
            index = tmp_path / f"tls-{trusted}.sqlite3"
            rc, _, err = await watched(
                "hash-index", "--no-ui", "--state", str(tmp_path / f"tls-{trusted}-state.sqlite3"),
                "--bucket", rclone_s3.bucket, "--endpoint-url", endpoint, "--prefix", "assets/",
                "--index-db", str(index), "--backoff", "0.01",
                env=env,
            )  # fmt: skip
            assert "botocore loaded: False" in err.splitlines()
            if trusted:
                assert rc == 0, err
                want = {key: hashlib.sha256(body).hexdigest() for key, body in objects.items()}
                assert hashes(index) == want
            else:
                line = one_line("\n".join(e for e in err.splitlines() if " loaded: " not in e))
                assert rc == 2 and line.startswith("tui-backfill: error: --endpoint-url: "), err
                assert "Certificate" in line and "cannot reach" not in line, line
                assert not index.exists()
    finally:
        await https.stop()
