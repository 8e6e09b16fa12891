"""PUT and HEAD of one bucket's objects, signed by botocore and sent by aiohttp directly.

aiobotocore spends about 2 ms of CPU on each call (endpoint rules, event hooks, serialisation,
answer parsing): on the publishing worker's event-loop thread that is CPU taken from the image
threads. A PUT or HEAD of an object needs none of it once the bucket's URL is known, so here:

- the bucket's URL (path-style or virtual-hosted) and the signing region are resolved ONCE, by
  the Bucket's own client (`Bucket.object_target`), so they are exactly what aiobotocore uses;
- each request is signed with botocore's `S3SigV4Auth` and the client's credentials as they
  are now (refreshed ones included); the payload's SHA-256 is signed, as botocore does for a
  PutObject without a checksum header, on http and https alike;
- one aiohttp session sends it, without aiohttp's silent re-send (see bucket._OneSendSession),
  each call bounded as a whole by the bucket's timeout;
- answers are classified by the Bucket's own rules (`classify_answer`, `already_there`,
  `rejects_conditional`, `not_found`), and a server without conditional writes is remembered
  on the Bucket (`conditional_writes`), so both paths agree.

Not sent: botocore's `Expect: 100-continue` (a round trip per PUT; our bodies are small) and
its SDK bookkeeping headers (invocation id, attempt), none of which is signed.
"""

from __future__ import annotations

import asyncio
import http.client
from types import TracebackType
from typing import Self
from xml.etree import ElementTree

import aiohttp
import botocore.auth
import botocore.awsrequest
import botocore.utils
import yarl

from tui_backfill import __version__
from tui_backfill.outcomes import BackfillError
from tui_backfill.seams.bucket import (
    CLASSIFIED,
    Bucket,
    ObjectTarget,
    already_there,
    call_timed_out,
    classify,
    classify_answer,
    not_found,
    rejects_conditional,
)

_USER_AGENT = f"tui-backfill/{__version__}"

# (S3 code, HTTP status, message) of an error answer
Refused = tuple[str, int, str]


def read_error(status: int, body: bytes) -> Refused:
    """An S3 error answer read as botocore reads it: <Code> and <Message> of its XML body; with
    no body (a HEAD) or no XML, the status is the code and its reason phrase the message."""
    code = message = ""
    if body:
        try:
            root = ElementTree.fromstring(body)
        except ElementTree.ParseError:
            root = None
        if root is not None:
            fields = {el.tag.rpartition("}")[2]: (el.text or "") for el in root.iter()}
            code, message = fields.get("Code", ""), fields.get("Message", "")
    if not code and not message:
        code, message = str(status), http.client.responses.get(status, "")
    code = code or str(status)
    return code, status, message or code


class LeanBucket:
    """PUT and HEAD of objects in `bucket` (an entered Bucket). Use as an async context
    manager; `put` and `exists` behave as `Bucket.put` and `Bucket.exists`."""

    def __init__(self, bucket: Bucket) -> None:
        self._bucket = bucket
        self.timeout = bucket.timeout
        self._target: ObjectTarget | None = None
        self._host = ""
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._target = await self._bucket.object_target()
        # The Host header the signer would derive from each URL (botocore's own rule): given
        # up front, it spares the signer two URL parses per request.
        self._host = botocore.auth._host_from_url(self._target.bucket_url + "/")
        timeout = self.timeout
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._bucket.pool_size),
            timeout=aiohttp.ClientTimeout(
                total=None, sock_connect=min(timeout, 10.0), sock_read=timeout
            ),
            auto_decompress=False,
            skip_auto_headers=("Content-Type",),
        )
        # No silent second send of a PUT whose keep-alive connection dropped: the engine
        # owns retries (bucket._OneSendSession says why).
        session._retry_connection = False
        self._session = session
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    @property
    def bucket_url(self) -> str:
        assert self._target is not None, "use LeanBucket as an async context manager"
        return self._target.bucket_url

    async def exists(self, key: str) -> bool:
        refused = await self._send("HEAD", "head_object", key, {}, b"")
        if refused is None:
            return True
        code, status, message = refused
        if not_found(code, status):
            return False
        raise classify_answer(code, status, message)

    async def put(
        self,
        key: str,
        body: bytes,
        content_type: str,
        *,
        if_none_match: bool,
        cache_control: str | None = None,
    ) -> bool:
        """Write the object; False when a conditional PUT found it already there (412)."""
        headers = {"Content-Type": content_type}
        if cache_control is not None:
            headers["Cache-Control"] = cache_control
        conditional = if_none_match and self._bucket.conditional_writes
        if conditional:
            headers["If-None-Match"] = "*"
        refused = await self._send("PUT", "put_object", key, headers, body)
        if refused is None:
            return True
        code, status, message = refused
        if already_there(code, status):
            return False
        if conditional and rejects_conditional(code, status):
            # The server does not do conditional writes: remember (for the Bucket too), and
            # write plainly.
            self._bucket.conditional_writes = False
            return await self.put(
                key, body, content_type, if_none_match=False, cache_control=cache_control
            )
        raise classify_answer(code, status, message)

    async def signed(
        self, method: str, key: str, headers: dict[str, str], body: bytes
    ) -> tuple[str, dict[str, str]]:
        """The URL and headers of the request for `key`, signed with the credentials as they
        are now."""
        target = self._target
        assert target is not None, "use LeanBucket as an async context manager"
        if not isinstance(key, str):  # a caller's bug, not an S3 failure
            raise TypeError(f"key must be a str, not {key.__class__.__name__}")
        url = f"{target.bucket_url}/{botocore.utils.percent_encode(key, safe='/~')}"
        credentials = await self._bucket.frozen_credentials()
        request = botocore.awsrequest.AWSRequest(
            method=method, url=url, headers={"Host": self._host, **headers}, data=body
        )
        botocore.auth.S3SigV4Auth(credentials, target.signing_name, target.region).add_auth(request)
        sent = dict(request.headers.items())
        sent["User-Agent"] = _USER_AGENT  # neither is signed
        sent["Accept-Encoding"] = "identity"
        return url, sent

    async def _send(
        self, method: str, operation: str, key: str, headers: dict[str, str], body: bytes
    ) -> Refused | None:
        """One signed request; None when answered 2xx, else the error answer. Transport
        failures and a call past the timeout raise classified errors; anything else (a bug)
        propagates unchanged, as from the Bucket's methods."""
        session = self._session
        assert session is not None, "use LeanBucket as an async context manager"
        try:
            async with asyncio.timeout(self.timeout):
                url, sent = await self.signed(method, key, headers, body)
                async with session.request(
                    method,
                    yarl.URL(url, encoded=True),
                    headers=sent,
                    data=body or None,
                    allow_redirects=False,
                ) as response:
                    answer = await response.read()
                    status = response.status
        except TimeoutError:
            raise call_timed_out(operation, self.timeout) from None
        except BackfillError:
            raise
        except CLASSIFIED as exc:
            raise classify(exc) from None
        if status < 300:
            return None
        return read_error(status, answer)
