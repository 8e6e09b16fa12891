"""AWS Signature Version 4 for S3 requests, signed as botocore's `S3SigV4Auth` signs them, with
the standard library alone.

Why not botocore's signer: importing botocore costs about 0.1 s of start-up and its signer
about 0.13 ms of CPU a request (an AWSRequest, header maps, URL parses); the hash index's
re-run is mostly start-up and the publishing worker signs two PUTs a job. The result is the
same bytes: `tests/test_sigv4.py` compares every header with botocore's for generated
requests (keys with any character, query strings, session tokens, bodies).

The rules, as botocore applies them to S3 (no path normalisation, the payload's SHA-256
signed on http and https alike when no checksum header is sent):
- the canonical URI is the URL's path as sent (already percent-encoded by the caller);
- the canonical query is the URL's `k=v` pairs, sorted, as sent (already encoded);
- every header is signed except the hop-by-hop and tracing ones botocore leaves out;
  `host` is added from the URL (lowercase, without a default port) when not given;
- header values are trimmed and inner runs of white space made one space;
- `X-Amz-Date`, `X-Amz-Security-Token` (with a session token) and `X-Amz-Content-SHA256`
  are set, then `Authorization`.

Not reproduced, since nothing here sends them: botocore's UNSIGNED-PAYLOAD for an https
request that carries a checksum header (`Content-MD5`, `x-amz-checksum-*`), and its `Date`
header handling. A caller that adds one of those must extend this signer and its test first.
"""

from __future__ import annotations

import hashlib
import hmac
import time
import urllib.parse
from dataclasses import dataclass, field

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()

# botocore's SIGNED_HEADERS_BLACKLIST: headers a proxy or the transport may change
UNSIGNED_HEADERS = frozenset(
    {
        "baggage",
        "connection",
        "expect",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "traceparent",
        "tracestate",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "user-agent",
        "x-amzn-trace-id",
    }
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True, slots=True)
class Credentials:
    """A key pair and an optional session token (botocore's ReadOnlyCredentials' fields).
    The secret and the token never appear in a repr."""

    access_key: str
    secret_key: str = field(repr=False)
    token: str | None = field(default=None, repr=False)


def host_of(url: str) -> str:
    """The Host header a request to `url` carries: the host in lowercase, an IPv6 address in
    brackets, the port unless it is the scheme's default; no user info."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None and parts.port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{parts.port}"
    return host


class Signer:
    """Signs S3 requests for one region with credentials given at each call (they may be
    refreshed between calls). The day's signing key is kept: one HMAC a request, not five."""

    def __init__(self, region: str, service: str = "s3") -> None:
        self.region = region
        self.service = service
        self._key_for: tuple[str, str] = ("", "")  # (day, secret) the key below is for
        self._key = b""

    def sign(
        self,
        method: str,
        url: str,
        headers: dict[str, str],
        body: bytes,
        credentials: Credentials,
        *,
        now: float | None = None,
    ) -> dict[str, str]:
        """`headers` and the signing headers added, in botocore's order; `url` as it will be
        sent (path and query percent-encoded)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
        day = stamp[:8]
        payload = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        signed_headers = {
            name: value
            for name, value in headers.items()
            if name.lower() not in ("authorization", "x-amz-date", "x-amz-content-sha256")
            and not (credentials.token and name.lower() == "x-amz-security-token")
        }
        signed_headers["X-Amz-Date"] = stamp
        if credentials.token:
            signed_headers["X-Amz-Security-Token"] = credentials.token
        signed_headers["X-Amz-Content-SHA256"] = payload

        canonical: dict[str, list[str]] = {}
        for name, value in signed_headers.items():
            lname = name.lower()
            if lname not in UNSIGNED_HEADERS:
                canonical.setdefault(lname, []).append(" ".join(value.split()))
        if "host" not in canonical:
            canonical["host"] = [host_of(url)]
        names = sorted(canonical)
        signed_names = ";".join(names)
        parts = urllib.parse.urlsplit(url)
        query = ""
        if parts.query:
            pairs = sorted(pair.partition("=")[::2] for pair in parts.query.split("&"))
            query = "&".join(f"{k}={v}" for k, v in pairs)
        request = "\n".join(
            [
                method.upper(),
                parts.path,
                query,
                "".join(f"{name}:{','.join(canonical[name])}\n" for name in names),
                signed_names,
                payload,
            ]
        )
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join(
            [
                "AWS4-HMAC-SHA256",
                stamp,
                scope,
                hashlib.sha256(request.encode("utf-8")).hexdigest(),
            ]
        )
        signature = hmac.new(
            self._signing_key(day, credentials.secret_key), to_sign.encode("utf-8"), hashlib.sha256
        ).hexdigest()
        signed_headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={credentials.access_key}/{scope}, "
            f"SignedHeaders={signed_names}, Signature={signature}"
        )
        return signed_headers

    def _signing_key(self, day: str, secret: str) -> bytes:
        if self._key_for != (day, secret):
            key = f"AWS4{secret}".encode()
            for part in (day, self.region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode("utf-8"), hashlib.sha256).digest()
            self._key_for, self._key = (day, secret), key
        return self._key
