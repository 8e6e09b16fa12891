"""S3 origin: `s3://BUCKET/KEY_TEMPLATE`, fetched through the S3 GET seam (seams/s3_objects).

The origin is another S3 service than the destination (S3 -> R2, B2 -> S3, MinIO -> AWS), so
nothing of the destination's configuration reaches it by accident:

- endpoint: `--origin-endpoint-url`, else AWS S3; `AWS_ENDPOINT_URL` and a profile's
  `endpoint_url` are ignored (they are the destination's);
- region: `--origin-region`, else us-east-1; addressing: `--origin-path-style`;
- credentials: `ORIGIN_AWS_ACCESS_KEY_ID` / `ORIGIN_AWS_SECRET_ACCESS_KEY` (and
  `ORIGIN_AWS_SESSION_TOKEN`) from the environment, or `--origin-profile NAME` (a profile of the
  shared AWS files: botocore then ignores the `AWS_*` key variables), not both; with neither,
  requests are anonymous (a public bucket). The destination's `AWS_*` keys are never used.

A fetch is bounded as a whole by the timeout, as every origin's is (the image job's hard
timeout); the seam also bounds the time to the first byte and each idle gap. 404 is
`noRemote`; a refused connection is OriginUnreachable; rejected credentials stop the run.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Mapping
from typing import Any

import aiohttp
import botocore
import botocore.exceptions

from tui_backfill.outcomes import BackfillError, ConfigError, FatalError, RetryableError
from tui_backfill.seams.bucket import (
    Refusal,
    answer,
    client_config,
    head_bucket_refusal,
    s3_session,
)
from tui_backfill.seams.connect_errors import unreachable_reason
from tui_backfill.seams.origins import (
    Bandwidth,
    Fetched,
    S3Access,
    connection_error,
    sniff_image,
)
from tui_backfill.seams.s3_objects import S3Objects
from tui_backfill.seams.templates import Template, s3_origin

KEY_ID = "ORIGIN_AWS_ACCESS_KEY_ID"
SECRET = "ORIGIN_AWS_SECRET_ACCESS_KEY"
TOKEN = "ORIGIN_AWS_SESSION_TOKEN"


def origin_keys(env: Mapping[str, str]) -> tuple[str, str, str | None] | None:
    """The origin's key pair from the environment, or None; ConfigError for half a pair."""
    key_id, secret = env.get(KEY_ID, ""), env.get(SECRET, "")
    if key_id and not secret:
        raise ConfigError(SECRET, f"required with {KEY_ID}; set both, or neither")
    if secret and not key_id:
        raise ConfigError(KEY_ID, f"required with {SECRET}; set both, or neither")
    return (key_id, secret, env.get(TOKEN) or None) if key_id else None


def _cause(exc: BaseException) -> BaseException | None:
    """The socket-level error (refused, no route, name not found) under a classified or
    botocore connection error, if there is one."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return None
        if isinstance(seen, aiohttp.ClientConnectorError):
            return seen.os_error
        if isinstance(seen, socket.gaierror) or (
            isinstance(seen, OSError)
            and not isinstance(seen, botocore.exceptions.BotoCoreError)
            and seen.errno is not None
        ):
            return seen
        inner = None
        if isinstance(seen, botocore.exceptions.BotoCoreError):
            inner = getattr(seen, "kwargs", {}).get("error")
        seen = inner or seen.__cause__
    return None


class S3Origin:
    def __init__(
        self,
        template: Template,
        *,
        access: S3Access,
        concurrency: int,
        timeout: float,
        bandwidth: Bandwidth | None,
        env: Mapping[str, str],
    ) -> None:
        self._text = template.text
        self.bucket, self._key = s3_origin(template.text)
        self._access = access
        self._timeout = timeout
        self._bandwidth = bandwidth
        self._keys = origin_keys(env)
        if self._keys is not None and access.profile:
            raise ConfigError(
                "--origin-profile",
                f"give either --origin-profile or {KEY_ID}/{SECRET}, not both",
            )
        self._config = client_config(
            region=access.region,
            path_style=access.path_style,
            timeout=timeout,
            pool_size=concurrency + 2,
            ignore_configured_endpoint_urls=True,  # AWS_ENDPOINT_URL is the destination's
            **({} if self._keys or access.profile else {"signature_version": botocore.UNSIGNED}),
        )
        self._stack = contextlib.AsyncExitStack()
        self._objects: S3Objects | None = None
        self._opening = asyncio.Lock()

    @property
    def _where(self) -> str:
        return self._access.endpoint_url or "AWS S3"

    @property
    def _credentials_field(self) -> str:
        return "--origin-profile" if self._access.profile else KEY_ID

    async def _client(self) -> S3Objects:
        async with self._opening:
            if self._objects is None:
                session = s3_session(self._access.profile)
                params: dict[str, Any] = {}
                if self._keys is not None:
                    key_id, secret, token = self._keys
                    params = {
                        "aws_access_key_id": key_id,
                        "aws_secret_access_key": secret,
                        "aws_session_token": token,
                    }
                try:
                    client = await self._stack.enter_async_context(
                        session.create_client(
                            "s3",
                            endpoint_url=self._access.endpoint_url,
                            config=self._config,
                            **params,
                        )
                    )
                except botocore.exceptions.ProfileNotFound:
                    raise ConfigError(
                        "--origin-profile",
                        f"profile {self._access.profile!r} not found in the AWS config files",
                    ) from None
                self._objects = S3Objects(client, self.bucket, timeout=self._timeout)
        return self._objects

    async def fetch(self, sku: str, angle: int) -> Fetched:
        key = self._key.render(sku, angle)
        try:
            objects = await self._client()
            async with asyncio.timeout(self._timeout):
                parts = []
                async with objects.open(key) as obj:
                    async for chunk in obj.chunks():
                        if self._bandwidth is not None:
                            await self._bandwidth.take(len(chunk))
                        parts.append(chunk)
        except TimeoutError:
            raise RetryableError(
                f"no complete answer within {self._timeout:g} s", code="timeout"
            ) from None
        except ConfigError as exc:  # a profile that vanished since the preflight
            raise FatalError(str(exc), code="s3_credentials") from None
        except BackfillError as exc:
            raise self._as_origin_error(exc) from None
        body = b"".join(parts)
        return Fetched(body, sniff_image(body))

    def _as_origin_error(self, exc: BackfillError) -> BackfillError:
        """The seam's error, said of the origin: a transport failure is `connection` (or
        OriginUnreachable when nothing listens), a fatal one names the origin's field."""
        if exc.fatal:
            return FatalError(f"origin {self._where}: {exc.message}", code=exc.code)
        if exc.code == "s3_connection":
            detail = exc.message.removeprefix("S3 connection: ")
            return connection_error(_cause(exc) or exc, f"connection to {self._where}: {detail}")
        return exc

    async def preflight(self) -> None:
        """HeadBucket on the origin's bucket, before any run exists.

        An absent endpoint, a missing bucket and rejected credentials are ConfigErrors naming
        the field to fix; a slow or failing server (timeout, 5xx, throttling) is left to the
        run's retries, as the other origins do.
        """
        objects = await self._client()
        try:
            async with asyncio.timeout(self._timeout):
                await objects.client.head_bucket(Bucket=self.bucket)
        except TimeoutError:
            return
        except botocore.exceptions.NoCredentialsError:
            raise ConfigError(
                self._credentials_field, f"profile {self._access.profile!r} holds no credentials"
            ) from None
        except botocore.exceptions.ClientError as exc:
            refusal, status, code = head_bucket_refusal(exc)
            if refusal is Refusal.MISSING:
                raise ConfigError(
                    "--origin", f"bucket {self.bucket!r} does not exist at {self._where}"
                ) from None
            anonymous = self._keys is None and not self._access.profile
            if refusal is Refusal.CREDENTIALS or (anonymous and status == 400):
                raise ConfigError(self._credentials_field, self._rejected(status, code)) from None
            if refusal is Refusal.BUSY:
                return
            raise ConfigError(
                "--origin", f"HeadBucket {self.bucket!r} at {self._where}: {answer(status, code)}"
            ) from None
        except (botocore.exceptions.BotoCoreError, aiohttp.ClientError, OSError) as exc:
            cause = _cause(exc)
            reason = None if cause is None else unreachable_reason(cause)
            if isinstance(cause, socket.gaierror):
                reason = reason or "host not found"
            if reason is None:
                return
            field = "--origin-endpoint-url" if self._access.endpoint_url else "--origin"
            raise ConfigError(field, f"cannot reach {self._where}: {reason}") from None

    def _rejected(self, status: int, code: str) -> str:
        if self._access.profile:
            return f"{self._where} rejected the credentials of profile {self._access.profile!r} ({answer(status, code)})"
        if self._keys is None:
            return (
                f"{self._where} refused an anonymous request ({answer(status, code)}); set {KEY_ID} "
                f"and {SECRET}, or --origin-profile"
            )
        return f"{self._where} rejected the origin's key pair ({answer(status, code)}); check {KEY_ID} and {SECRET}"

    async def close(self) -> None:
        await self._stack.aclose()
        self._objects = None
