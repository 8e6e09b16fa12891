"""The standard-library SigV4 signer (seams/sigv4) against botocore's S3SigV4Auth: the same
headers, byte for byte, for generated requests, at a fixed instant."""

from __future__ import annotations

import datetime
import urllib.parse

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tui_backfill.seams.sigv4 import Credentials, Signer, host_of

NOW = 1_765_000_000.5  # 2025-12-06T05:46:40Z


def botocore_headers(
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes,
    credentials: Credentials,
    region: str,
) -> dict[str, str]:
    moment = datetime.datetime.fromtimestamp(NOW, datetime.UTC).replace(tzinfo=None)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: moment)
    request = botocore.awsrequest.AWSRequest(method=method, url=url, headers=headers, data=body)
    frozen = botocore.credentials.ReadOnlyCredentials(
        credentials.access_key, credentials.secret_key, credentials.token
    )
    botocore.auth.S3SigV4Auth(frozen, "s3", region).add_auth(request)
    return dict(request.headers.items())


keys = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
tokens = st.one_of(
    st.none(), st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=30)
)
header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30)


@settings(
    max_examples=300,
    deadline=None,
    # the patched clock is the same for every example
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    method=st.sampled_from(["GET", "HEAD", "PUT", "DELETE"]),
    scheme=st.sampled_from(["http", "https"]),
    host=st.sampled_from(
        ["127.0.0.1:9000", "s3.example.com", "Bucket.S3.example.com:443", "[::1]:8080"]
    ),
    key=keys,
    query=st.dictionaries(
        st.sampled_from(["list-type", "prefix", "start-after", "max-keys", "encoding-type", "x"]),
        keys,
        max_size=4,
    ),
    extra=st.dictionaries(
        st.sampled_from(
            [
                "Content-Type",
                "Cache-Control",
                "If-None-Match",
                "User-Agent",
                "x-amz-meta-a",
                "Expect",
            ]
        ),
        header_values,
        max_size=4,
    ),
    body=st.binary(max_size=64),
    secret=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40),
    token=tokens,
    region=st.sampled_from(["us-east-1", "auto", "eu-central-003"]),
    host_header=st.booleans(),
)
def test_the_same_signature_as_botocore(
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    scheme: str,
    host: str,
    key: str,
    query: dict[str, str],
    extra: dict[str, str],
    body: bytes,
    secret: str,
    token: str | None,
    region: str,
    host_header: bool,
) -> None:
    path = "/bucket/" + urllib.parse.quote(key.encode("utf-8"), safe="/~")
    encoded = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in sorted(query.items())
    )
    url = f"{scheme}://{host}{path}" + (f"?{encoded}" if encoded else "")
    headers = dict(extra)
    if host_header:
        headers = {"Host": host_of(url), **headers}
    credentials = Credentials("AKIDEXAMPLE", secret, token)
    theirs = botocore_headers(monkeypatch, method, url, dict(headers), body, credentials, region)
    ours = Signer(region).sign(method, url, dict(headers), body, credentials, now=NOW)
    assert ours == theirs
    assert list(ours) == list(theirs)  # the same order on the wire too


def test_the_signing_key_follows_the_day_and_the_secret() -> None:
    signer = Signer("us-east-1")
    url = "http://127.0.0.1:9000/b/k"
    one = Credentials("AK", "secret-one")
    first = signer.sign("GET", url, {}, b"", one, now=NOW)["Authorization"]
    next_day = signer.sign("GET", url, {}, b"", one, now=NOW + 86_400)["Authorization"]
    other = signer.sign("GET", url, {}, b"", Credentials("AK", "secret-two"), now=NOW)
    again = signer.sign("GET", url, {}, b"", one, now=NOW)["Authorization"]
    assert len({first, next_day, other["Authorization"]}) == 3
    assert again == first


def test_secrets_stay_out_of_the_repr() -> None:
    shown = repr(Credentials("AKID", "the-secret-key", "the-session-token"))
    assert "AKID" in shown
    assert "the-secret-key" not in shown and "the-session-token" not in shown


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("http://127.0.0.1:9000/b", "127.0.0.1:9000"),
        ("https://S3.Example.com:443/b", "s3.example.com"),
        ("http://s3.example.com:80/b", "s3.example.com"),
        ("https://user:pw@s3.example.com:8443/", "s3.example.com:8443"),
        ("http://[::1]:9000/b", "[::1]:9000"),
    ],
)
def test_host_as_botocore_derives_it(url: str, host: str) -> None:
    assert host_of(url) == host == botocore.auth._host_from_url(url)


def test_header_values_are_trimmed_as_botocore_trims_them(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "https://s3.example.com/bucket/a%20key"
    headers = {"Content-Type": "  image/webp ", "x-amz-meta-note": "two  inner   runs\tof space"}
    credentials = Credentials("AKID", "secret", "token")
    theirs = botocore_headers(monkeypatch, "PUT", url, dict(headers), b"x", credentials, "auto")
    assert Signer("auto").sign("PUT", url, dict(headers), b"x", credentials, now=NOW) == theirs
