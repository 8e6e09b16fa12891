"""A bucket that the settings and the environment describe completely, reached without
botocore: the direct path of the hash index and of the publishing worker.

botocore's import and an aiobotocore client cost about 0.2 s of start-up (0.1 s to import,
0.1 s to load the S3 model and endpoint rules), most of a re-run over an unchanged bucket that
lists 30 pages in 3 s. When nothing is left for botocore to resolve, the bucket's URL, signing
region and credentials are known from the settings and the environment alone, and the lean
path (seams/s3_lean: requests signed by seams/sigv4, sent on seams/http1) needs no client:

- an endpoint URL is given (`--endpoint-url` or `AWS_ENDPOINT_URL`): requests go path-style to
  `ENDPOINT/BUCKET`, as botocore's endpoint rules send them for a custom endpoint; the signing
  region is `--region` (or AWS_REGION / AWS_DEFAULT_REGION), else us-east-1, as the client's;
- the key pair is in the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, a session
  token in AWS_SESSION_TOKEN or AWS_SECURITY_TOKEN): the first provider of botocore's chain;
  or it is given ahead of the chain (the publishing worker's B2_KEY_ID and B2_APP_KEY), as
  `Bucket(credentials=...)` sets it on its session;
- no AWS config file and no profile, and no other AWS_* variable than those botocore reads
  to the same effect here (`_SAME_EFFECT`): a profile's ca_bundle, a FIPS or dual-stack
  endpoint, a credential expiry are botocore's to apply;
- a bucket name of letters, digits, dots, hyphens and underscores (an ARN is botocore's);
- an endpoint that is not AWS's own (`*.amazonaws.com`: its endpoint rules have exceptions,
  Transfer Acceleration's virtual-hosted URLs for one).

Anything else is botocore's: `direct_bucket` answers None and the caller uses
`seams.bucket.Bucket`. Both reach the same URL with the same signature (tests/test_s3_direct.py
holds them to it) and classify answers with the same rules (seams/s3_wire).

The preflight is a HeadBucket, as `Bucket.preflight`: the same messages and exit 2 for a
missing bucket, rejected credentials or an endpoint that takes no connection; transient
failures retried under the retry policy. A wrong-region answer (a 301, or a 400 naming the
bucket's region in `x-amz-bucket-region` or its XML) is followed as botocore's redirector
follows it: the request is signed again for the region it names, to the same URL, and the
bucket keeps that region for the rest of the run.
"""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Self

from tui_backfill.outcomes import ConfigError, RetryableError
from tui_backfill.seams.connect_errors import unreachable_reason
from tui_backfill.seams.http1 import CannotConnect
from tui_backfill.seams.s3_lean import LeanObjects
from tui_backfill.seams.s3_wire import ListedPage, ObjectTarget, head_bucket_problem, preflight
from tui_backfill.seams.sigv4 import Credentials

if TYPE_CHECKING:
    from tui_backfill.seams.bucket import Bucket

# AWS_* variables that botocore reads to the effect the direct path reproduces (or that do
# not change an S3 client given an endpoint, a region and the retry settings here)
_SAME_EFFECT = frozenset(
    {
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_REGION",
        "AWS_DEFAULT_REGION",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_S3",  # an explicit endpoint is given, which botocore puts first
        "AWS_CONFIG_FILE",  # read below: an empty file (or /dev/null) says nothing
        "AWS_EC2_METADATA_DISABLED",  # the instance's credentials come after the environment's
        "AWS_CA_BUNDLE",
        "AWS_SHARED_CREDENTIALS_FILE",  # read only when the environment holds no key pair
        "AWS_MAX_ATTEMPTS",  # retries are set explicitly: one send per call
        "AWS_RETRY_MODE",
        "AWS_PAGER",  # the AWS CLI's
    }
)
_BUCKET_NAME = re.compile(r"[A-Za-z0-9._-]+")


def direct_target(
    bucket: str,
    *,
    endpoint_url: str | None,
    region: str | None,
    environ: Mapping[str, str] | None = None,
    home: Path | None = None,
    credentials: tuple[str, str] | None = None,
) -> tuple[ObjectTarget, Credentials, bool | str] | None:
    """The bucket's URL and signing region, the credentials and the TLS verification (a CA
    bundle's path or True) when the settings and the environment decide them all; else None
    (botocore decides). `credentials`: a key pair given ahead of the AWS chain (the publishing
    worker's B2_KEY_ID and B2_APP_KEY), used as `Bucket` has its session use it (no token);
    then the environment need not hold one."""
    env = os.environ if environ is None else environ
    if not endpoint_url or not _BUCKET_NAME.fullmatch(bucket):
        return None
    parts = urllib.parse.urlsplit(endpoint_url)  # (its scheme in lower case)
    if (
        parts.scheme not in ("http", "https")
        or not parts.hostname
        or parts.hostname.rstrip(".").endswith((".amazonaws.com", ".amazonaws.com.cn"))
        or parts.query
        or parts.fragment
        or parts.username is not None
    ):
        return None
    if any(name.startswith("AWS_") and name not in _SAME_EFFECT for name in env):
        return None
    if _config_file(env, home):  # a profile's settings (ca_bundle, ...) are botocore's
        return None
    if credentials is not None:  # set on the session: the chain is not consulted
        key_id, secret = credentials
        token = None
        if not key_id or not secret:
            return None
    else:
        key_id = env.get("AWS_ACCESS_KEY_ID", "")
        secret = env.get("AWS_SECRET_ACCESS_KEY", "")
        if not key_id or not secret:  # botocore's chain, and its messages for a half-given pair
            return None
        token = next(
            (env[name] for name in ("AWS_SECURITY_TOKEN", "AWS_SESSION_TOKEN") if name in env),
            None,
        )
    verify: bool | str = env.get("AWS_CA_BUNDLE") or env.get("REQUESTS_CA_BUNDLE") or True
    endpoint = parts.scheme + endpoint_url[len(parts.scheme) :]  # `HTTPS://` as botocore
    target = ObjectTarget(
        bucket_url=f"{endpoint.rstrip('/')}/{bucket}",
        signing_name="s3",
        region=region or "us-east-1",
    )
    return target, Credentials(key_id, secret, token or None), verify


def _config_file(env: Mapping[str, str], home: Path | None) -> bool:
    """Whether an AWS config file with anything in it is there to read (AWS_CONFIG_FILE, or
    ~/.aws/config); an empty one, or /dev/null, says nothing."""
    named = env.get("AWS_CONFIG_FILE")
    if named:  # botocore expands both, in this order
        path = Path(os.path.expanduser(os.path.expandvars(named)))
    elif home is not None:
        path = home / ".aws" / "config"
    else:  # "~" left as it is where no home is known: no such file, as for botocore
        path = Path(os.path.expanduser("~/.aws/config"))
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False
    except OSError:  # there, but not to be read here: botocore says what it makes of it
        return True


class DirectBucket:
    """A bucket on the direct path (the hash index's; the publishing worker's, whose PUTs and
    HEADs go through seams/s3_lean either way): `preflight`, `list_page` and `objects` as
    `seams.bucket.Bucket`'s, with no botocore. Use as an async context manager."""

    def __init__(
        self,
        name: str,
        *,
        endpoint_url: str,
        target: ObjectTarget,
        credentials: Credentials,
        verify: bool | str,
        timeout: float,
        pool_size: int,
    ) -> None:
        self.name = name
        self.endpoint_url: str | None = endpoint_url
        self.timeout = timeout
        self.pool_size = pool_size
        self.verify = verify
        self.conditional_writes = True  # until the server rejects If-None-Match (s3_lean)
        self._target = target
        self._credentials = credentials
        self._objects: LeanObjects | None = None
        self._open = False  # between __aenter__ and __aexit__

    async def __aenter__(self) -> Self:
        self._open = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._open = False
        objects, self._objects = self._objects, None
        if objects is not None:
            await objects.aclose()

    async def object_target(self) -> ObjectTarget:
        return self._target

    async def frozen_credentials(self) -> Credentials:
        return self._credentials

    async def locate(self, region: str) -> None:
        """The bucket is in `region`, as a wrong-region answer said: requests are signed for
        it from now on (the URL stays: the endpoint is the one given)."""
        if region and region != self._target.region:
            self._target = dataclasses.replace(self._target, region=region)

    def objects(self) -> LeanObjects:
        """GETs of this bucket's objects and its listing pages (one reader, closed with the
        bucket)."""
        if not self._open:  # never a reader whose session nothing would close
            raise RetryableError(f"S3 bucket {self.name}: used while closed", code="s3_connection")
        if self._objects is None:
            self._objects = LeanObjects(self)
        return self._objects

    async def list_page(self, prefix: str, *, start_after: str | None = None) -> ListedPage:
        return await self.objects().list_page(prefix, start_after=start_after)

    async def preflight(self, *, attempts: int = 3, backoff: float = 0.5) -> None:
        """HeadBucket, as `Bucket.preflight`: endpoint reachable, bucket present, credentials
        accepted -> else exit 2; a transient failure retried, up to `attempts`."""
        where = self.endpoint_url or "AWS S3"
        await preflight(where, self._head_bucket, attempts=attempts, backoff=backoff)

    async def _head_bucket(self, where: str) -> None:
        try:
            refused = await self.objects().head_bucket()
        except RetryableError as exc:
            cause = exc.__cause__
            # (a TLS refusal is no CannotConnect: retried, then named)
            if isinstance(cause, (CannotConnect, socket.gaierror)):
                reason = unreachable_reason(getattr(cause, "os_error", cause)) or "cannot connect"
                raise ConfigError("--endpoint-url", f"cannot reach {where}: {reason}") from None
            raise RetryableError(exc.message, code="--endpoint-url") from None
        if refused is not None:
            code, status, _ = refused
            raise head_bucket_problem(self.name, where, code, status)


def direct_bucket(
    name: str,
    *,
    endpoint_url: str | None,
    region: str | None,
    timeout: float,
    pool_size: int,
    credentials: tuple[str, str] | None = None,
) -> DirectBucket | None:
    """The bucket on the direct path, or None when botocore must resolve it. `credentials`:
    a key pair ahead of the AWS chain, as `Bucket`'s."""
    found = direct_target(name, endpoint_url=endpoint_url, region=region, credentials=credentials)
    if found is None or endpoint_url is None:
        return None
    target, signing, verify = found
    return DirectBucket(
        name,
        endpoint_url=endpoint_url,
        target=target,
        credentials=signing,
        verify=verify,
        timeout=timeout,
        pool_size=pool_size,
    )


def bucket_for(
    name: str,
    *,
    endpoint_url: str | None,
    region: str | None,
    path_style: bool,
    timeout: float,
    pool_size: int,
    credentials: tuple[str, str] | None = None,
) -> DirectBucket | Bucket:
    """The bucket (not yet entered) on the direct path when the settings and the environment
    decide everything, else through aiobotocore (`seams.bucket.Bucket`, imported only then:
    botocore is heavy). `path_style` is the aiobotocore path's; the direct path's URLs are the
    ones botocore makes for a custom endpoint either way."""
    direct = direct_bucket(
        name,
        endpoint_url=endpoint_url,
        region=region,
        timeout=timeout,
        pool_size=pool_size,
        credentials=credentials,
    )
    if direct is not None:
        return direct
    from tui_backfill.seams.bucket import Bucket

    return Bucket(
        name,
        endpoint_url=endpoint_url,
        region=region,
        path_style=path_style,
        timeout=timeout,
        pool_size=pool_size,
        credentials=credentials,
    )
