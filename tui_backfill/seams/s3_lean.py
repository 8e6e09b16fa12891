"""PUT, HEAD and streamed GET of one bucket's objects, and its listing pages, signed here
(seams/sigv4, botocore's S3 signature reproduced) and sent on our own HTTP/1.1 wire
(seams/http1).

aiobotocore spends about 2 ms of CPU on each call (endpoint rules, event hooks, serialisation,
answer parsing): on the publishing worker's event-loop thread that is CPU taken from the image
threads. A PUT or HEAD of an object needs none of it once the bucket's URL is known, so here:

- the bucket's URL (path-style or virtual-hosted) and the signing region are resolved ONCE, by
  the bucket it serves (`BucketAccess.object_target`): a Bucket asks its own client, so they
  are exactly what aiobotocore uses; a DirectBucket (seams/s3_direct) knows them from the
  settings and the environment, and no botocore is imported at all;
- each request is signed with the bucket's credentials as they are now (refreshed ones
  included); the payload's SHA-256 is signed, as botocore does for a PutObject without a
  checksum header, on http and https alike;
- one Wire (seams/http1) sends it, kept-alive connections pooled, never sent twice (the
  engine owns retries: bucket._OneSendSession says why), each call bounded as a whole by the
  bucket's timeout; the wire costs a third less CPU a call than aiohttp did here, and not
  importing aiohttp spares a hash-index run about 0.13 s of start-up;
- answers are classified by the Bucket's own rules (`classify_answer`, `already_there`,
  `rejects_conditional`, `not_found`), and a server without conditional writes is remembered
  on the Bucket (`conditional_writes`), so both paths agree.

A GET (`open`) answers the S3 GET seam's `ObjectBody` (seams/s3_objects): the body read from
the wire a piece at a time (as the socket delivered it), each within the timeout, a short body
`truncated`; 404 is NotFoundError (`noRemote`). `LeanObjects` is that seam's reader on this
path, set up on first use and closed with its Bucket: the hash index hashes from it (no
aiobotocore call, its answer wrapper and its per-chunk bookkeeping, per object).

A ListObjectsV2 page (`list_page`) is read by seams/s3_listing: botocore's parse of 1,000
entries costs about 110 ms of CPU here, that reader's about 5 (11 for an answer of a shape its
scanner leaves to ElementTree).

As the Bucket's client does: proxies from HTTP_PROXY / HTTPS_PROXY / NO_PROXY (`proxy_for`);
TLS verified with its CA bundle (`verify_context`); a wrong-region answer found once through
the client, whose region redirector learns the region, and the request sent again
(`_relocate`; a DirectBucket takes the region the answer names, as that redirector does).

Not sent: botocore's `Expect: 100-continue` (a round trip per PUT; our bodies are small) and
its SDK bookkeeping headers (invocation id, attempt), none of which is signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import http.client
import ssl
import urllib.parse
import urllib.request
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from types import TracebackType
from typing import Any, Protocol, Self
from xml.etree import ElementTree

from tui_backfill import __version__
from tui_backfill.outcomes import BackfillError, NotFoundError, RetryableError
from tui_backfill.seams.http1 import Answer, Proxy, TruncatedBody, Wire
from tui_backfill.seams.s3_listing import read_listing
from tui_backfill.seams.s3_objects import ObjectBody, ObjectInfo, ObjectReader
from tui_backfill.seams.s3_wire import (
    CLASSIFIED,
    ListedPage,
    ObjectTarget,
    already_there,
    call_timed_out,
    classify,
    classify_answer,
    not_found,
    rejects_conditional,
)
from tui_backfill.seams.s3_wire import answer as said_by
from tui_backfill.seams.sigv4 import Credentials, Signer, host_of

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


class BucketAccess(Protocol):
    """What the lean path needs of the bucket it serves: an entered `seams.bucket.Bucket`
    (aiobotocore's client resolves the URL, region and credentials) or a
    `seams.s3_direct.DirectBucket` (the environment gives them, no botocore)."""

    name: str
    timeout: float
    pool_size: int
    verify: bool | str  # a CA bundle's path, True (the default bundle) or False
    conditional_writes: bool  # until the server rejects If-None-Match

    async def object_target(self) -> ObjectTarget: ...

    async def frozen_credentials(self) -> Credentials:
        """The credentials as they are now; a classified error (BackfillError) when none."""
        ...

    async def locate(self, region: str) -> None:
        """Learn the bucket's region after a wrong-region answer that named `region`
        (object_target then gives it); a classified error when that fails."""
        ...


class LeanBucket:
    """PUT and HEAD of objects in `bucket` (an entered Bucket or DirectBucket). Use as an
    async context manager; `put` and `exists` behave as `Bucket.put` and `Bucket.exists`."""

    def __init__(self, bucket: BucketAccess) -> None:
        self._bucket = bucket
        self._signers: dict[tuple[str, str], Signer] = {}  # by (region, signing name)
        self.timeout = bucket.timeout
        self._target: ObjectTarget | None = None
        self._host = ""
        self._wire: Wire | None = None
        self._proxy: Proxy | None = None
        self._proxy_in_request: dict[str, str] = {}  # in each request itself, for http
        self._relocating = asyncio.Lock()

    async def __aenter__(self) -> Self:
        await self._resolve()
        assert self._target is not None
        # The bucket's verification, for an https endpoint and for an https proxy (even in
        # front of an http endpoint); with neither, never used.
        tls: ssl.SSLContext | None = None
        schemes = {urllib.parse.urlsplit(self._target.bucket_url).scheme}
        if self._proxy is not None:
            schemes.add(urllib.parse.urlsplit(self._proxy.url).scheme)
        if "https" in schemes:
            tls = await asyncio.to_thread(verify_context, self._bucket.verify)  # reads a file
        self._wire = Wire(
            limit=self._bucket.pool_size, tls=tls, connect_timeout=min(self.timeout, 10.0)
        )
        return self

    async def _resolve(self) -> None:
        """Where requests go and how they are signed, from the Bucket's client (again after a
        wrong-region answer); the proxy for that URL."""
        self._target = await self._bucket.object_target()
        # The Host header the signer would derive from each URL (botocore's own rule): given
        # up front, it spares the signer a URL parse per request.
        self._host = host_of(self._target.bucket_url + "/")
        self._proxy = proxy = proxy_for(self._target.bucket_url + "/")
        self._proxy_in_request = (  # a plain-http request carries them itself
            dict(proxy.headers)
            if proxy is not None and urllib.parse.urlsplit(self._target.bucket_url).scheme == "http"
            else {}
        )

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        wire, self._wire = self._wire, None
        if wire is not None:
            wire.close()

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

    @contextlib.asynccontextmanager
    async def open(self, key: str) -> AsyncIterator[ObjectBody]:
        """GetObject `key`, its head within the timeout; the body is read inside the block (see
        ObjectBody.chunks). Its connection goes back to the pool when the body was read to the
        end, and is closed otherwise (never reused mid-body)."""
        response = await self._get(key)
        headers = response.headers
        info = ObjectInfo(
            key=key,
            size=response.content_length,
            content_type=headers.get("Content-Type") or "application/octet-stream",
            etag=headers.get("ETag", ""),
            last_modified=_http_date(headers.get("Last-Modified")),
        )
        body = ObjectBody(info, response.content, self.timeout)
        try:
            yield body
        finally:
            if info.size is not None and body.received == info.size:
                response.release()
            else:
                response.close()

    async def _get(self, key: str, *, relocated: bool = False) -> Answer:
        """The answer's head of a GET of `key` (a 2xx; its body unread), or a classified error;
        a wrong region is found once (`_relocate`) and the GET sent again."""
        response: Answer | None = None
        refused: Refused | None = None
        answer = b""
        url_of = self._url_of(key)
        used: ObjectTarget | None = None
        try:
            async with asyncio.timeout(self.timeout):
                used, response = await self._exchange("GET", url_of, {}, b"")
                if response.status >= 300:
                    answer = await response.read()
                    refused = read_error(response.status, answer)
        except TimeoutError:
            raise RetryableError(
                f"S3 GET {key}: no answer within {self.timeout:g} s", code="timeout"
            ) from None
        except TruncatedBody:  # an error's XML cut short
            raise RetryableError(
                f"S3 GET {key}: truncated answer, the connection closed mid-body",
                code="truncated",
            ) from None
        except BackfillError:
            raise
        except CLASSIFIED as exc:
            raise classify(exc) from exc
        finally:
            if response is not None and response.status >= 300:  # its body read, or not
                response.release()
        assert response is not None
        if refused is not None:
            assert used is not None
            if not relocated and await self._relocate(used, refused, response.headers, answer):
                return await self._get(key, relocated=True)
            code, status, message = refused
            if not_found(code, status) and code != "NoSuchBucket":
                raise NotFoundError(f"S3 {said_by(status, code)}: {key}", code="noRemote")
            raise classify_answer(code, status, message)
        return response

    async def _relocate(
        self, used: ObjectTarget, refused: Refused, headers: Any, answer: bytes
    ) -> bool:
        """A wrong-region answer to a request sent to `used`, read as botocore's region
        redirector reads them (301, 302 or 307 with `x-amz-bucket-region`; 400
        AuthorizationHeaderMalformed or IllegalLocationConstraintException naming the <Region>,
        or a HEAD's bare 400 with that header): the Bucket's client makes one HeadBucket, which
        that redirector follows and remembers, and the object target is resolved again. One
        relocation at a time; a request that finds it done by another is just sent again.
        True when the region now differs from the one `used` (send again)."""
        code, status, _ = refused
        if status not in (301, 302, 307, 400):
            return False
        region = headers.get("x-amz-bucket-region") or _xml_text(answer, "Region")
        if status == 400 and not (
            code in ("AuthorizationHeaderMalformed", "IllegalLocationConstraintException")
            or headers.get("x-amz-bucket-region")
        ):
            return False
        if not region or region == used.region:
            return False
        async with self._relocating:
            if self._target is used:  # nobody has relocated since this request was sent
                try:
                    await self._bucket.locate(region)
                finally:  # what the client learned, even when its HeadBucket then failed
                    await self._resolve()
        return self._target is not None and self._target.region != used.region

    async def signed(
        self, method: str, key: str, headers: dict[str, str], body: bytes
    ) -> tuple[str, dict[str, str]]:
        """The URL and headers of the request for `key`, signed with the credentials as they
        are now."""
        _, url, sent = await self._sign(method, self._url_of(key), headers, body)
        return url, sent

    def _url_of(self, key: str) -> Callable[[], str]:
        """What gives `key`'s URL when a request is signed (the bucket's URL as it is then);
        a key that is not a str fails here, before any request."""
        if not isinstance(key, str):  # a caller's bug, not an S3 failure
            raise TypeError(f"key must be a str, not {key.__class__.__name__}")
        quoted = urllib.parse.quote(key.encode("utf-8"), safe="/~")  # botocore's encoding
        return lambda: f"{self.bucket_url}/{quoted}"

    async def _exchange(
        self, method: str, url_of: Callable[[], str], headers: dict[str, str], body: bytes
    ) -> tuple[ObjectTarget, Answer]:
        """The request signed and sent (through the proxy when there is one): the target it
        was signed for and the answer's head, its body unread. The caller bounds it and reads,
        releases or closes the answer."""
        wire = self._wire
        assert wire is not None, "use LeanBucket as an async context manager"
        used, url, sent = await self._sign(method, url_of, headers, body)
        if self._proxy_in_request:
            sent = {**sent, **self._proxy_in_request}
        return used, await wire.request(method, url, sent, body, proxy=self._proxy)

    async def _sign(
        self, method: str, url_of: Callable[[], str], headers: dict[str, str], body: bytes
    ) -> tuple[ObjectTarget, str, dict[str, str]]:
        """The target used, the URL and the signed headers. The target, its Host and the URL
        are read together, after the only wait (the credentials), so a relocation by another
        request can never mix two regions in one request."""
        credentials = await self._bucket.frozen_credentials()
        target = self._target
        assert target is not None, "use LeanBucket as an async context manager"
        url = url_of()
        signer = self._signers.get((target.region, target.signing_name))
        if signer is None:
            signer = Signer(target.region, target.signing_name)
            self._signers[(target.region, target.signing_name)] = signer
        sent = signer.sign(method, url, {"Host": self._host, **headers}, body, credentials)
        sent["User-Agent"] = _USER_AGENT  # neither is signed
        sent["Accept-Encoding"] = "identity"
        return target, url, sent

    def _bucket_root(self) -> str:
        """The bucket's own URL: ENDPOINT/BUCKET path-style, or `https://BUCKET.HOST/`."""
        base = self.bucket_url
        if not urllib.parse.urlsplit(base).path.strip("/"):  # virtual-hosted: bucket = host
            base += "/"
        return base

    async def head_bucket(self) -> Refused | None:
        """HeadBucket: None when the bucket answers 2xx, else its error answer (a HEAD's has
        no body: the status is its code). Transport failures raise classified, their cause
        kept."""
        status, answer = await self._request("HEAD", "head_bucket", self._bucket_root, {}, b"")
        return None if status < 300 else read_error(status, answer)

    async def list_page(self, prefix: str, *, start_after: str | None = None) -> ListedPage:
        """One ListObjectsV2 page, as `Bucket.list_page`: up to 1,000 objects under `prefix`
        after `start_after`, in ascending key order (keys URL-encoded on the wire, as botocore
        asks for them, so that any key survives XML)."""
        query = {"list-type": "2", "max-keys": "1000", "prefix": prefix, "encoding-type": "url"}
        if start_after:
            query["start-after"] = start_after
        encoded = "&".join(f"{_quote(k)}={_quote(v)}" for k, v in sorted(query.items()))

        def url() -> str:
            return f"{self._bucket_root()}?{encoded}"

        status, answer = await self._request("GET", "list_objects_v2", url, {}, b"")
        if status >= 300:
            raise classify_answer(*read_error(status, answer))
        try:
            return read_listing(answer)
        except (ElementTree.ParseError, ValueError) as exc:
            raise RetryableError(
                f"S3 list_objects_v2: an answer that is not a listing ({exc})", code="bad_content"
            ) from None

    async def _send(
        self, method: str, operation: str, key: str, headers: dict[str, str], body: bytes
    ) -> Refused | None:
        """One signed request for `key`; None when answered 2xx, else the error answer."""
        status, answer = await self._request(method, operation, self._url_of(key), headers, body)
        if status < 300:
            return None
        return read_error(status, answer)

    async def _request(
        self,
        method: str,
        operation: str,
        url_of: Callable[[], str],
        headers: dict[str, str],
        body: bytes,
        *,
        relocated: bool = False,
    ) -> tuple[int, bytes]:
        """One signed request to `url_of()`: its status and body; a wrong region is found once
        (`_relocate`) and the request sent again to the URL it then gives. Transport failures
        and a call past the timeout raise classified errors; anything else (a bug) propagates
        unchanged, as from the Bucket's methods."""
        try:
            async with asyncio.timeout(self.timeout):
                used, response = await self._exchange(method, url_of, headers, body)
                async with response:
                    answer = await response.read()
                    status = response.status
                    answered = response.headers
        except TimeoutError:
            raise call_timed_out(operation, self.timeout) from None
        except BackfillError:
            raise
        except CLASSIFIED as exc:  # its cause kept: a preflight tells an absent server apart
            raise classify(exc) from exc
        if (
            status >= 300
            and not relocated
            and await self._relocate(used, read_error(status, answer), answered, answer)
        ):
            return await self._request(method, operation, url_of, headers, body, relocated=True)
        return status, answer


def _xml_text(body: bytes, tag: str) -> str:
    """The text of the first <tag> of an XML answer ("" when absent or not XML)."""
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return ""
    for element in root.iter():
        if element.tag.rpartition("}")[2] == tag:
            return element.text or ""
    return ""


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="-_.~")


def verify_context(verify: bool | str) -> ssl.SSLContext:
    """The TLS context the Bucket's client verifies with: the CA bundle botocore names (a
    path), or its default bundle (True: certifi's, as botocore's `get_cert_path`); False turns
    verification off, as botocore's does."""
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=_cert_path(verify))


def _cert_path(verify: bool | str) -> str:
    if verify is not True:
        return str(verify)
    try:
        import certifi
    except ImportError:  # botocore's own bundle, its fallback too
        import botocore.httpsession

        return str(botocore.httpsession.get_cert_path(True))
    return str(certifi.where())


def proxy_for(url: str) -> Proxy | None:
    """The proxy botocore would send `url`'s requests through, and its Proxy-Authorization:
    HTTP_PROXY or HTTPS_PROXY by the URL's scheme, unless NO_PROXY exempts its host (botocore's
    own reading of the environment, so both paths agree). Credentials in the proxy's URL become
    the header, never part of the URL sent. With no proxy in the environment, botocore is not
    imported."""
    if not urllib.request.getproxies():
        return None
    import botocore.httpsession
    import botocore.utils

    config = botocore.httpsession.ProxyConfiguration(
        proxies=botocore.utils.get_environ_proxies(url)
    )
    proxy_url = config.proxy_url_for(url)
    if not proxy_url:
        return None
    parts = urllib.parse.urlsplit(proxy_url)
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
    headers = config.proxy_headers_for(proxy_url)
    return Proxy(f"{parts.scheme}://{netloc}", tuple(headers.items()))


def _http_date(text: str | None) -> datetime | None:
    """A Last-Modified header as an aware datetime (UTC); None when absent or unreadable."""
    if not text:
        return None
    try:
        return email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None


class LeanObjects(ObjectReader):
    """The S3 GET seam's reader (as `S3Objects`: `open`, `chunks`, `get`) on the lean path: a
    LeanBucket entered on first use, closed by `aclose` (its Bucket does, on leaving)."""

    def __init__(self, bucket: BucketAccess) -> None:
        self.bucket = bucket.name
        self._lean = LeanBucket(bucket)
        self._entered = False
        self._closed = False
        self._lock = asyncio.Lock()

    async def _ready(self) -> LeanBucket:
        if not self._entered:
            async with self._lock:
                if self._closed:  # its Bucket has closed: nothing may open a session again
                    raise RetryableError(
                        f"S3 bucket {self.bucket}: read after the bucket was closed",
                        code="s3_connection",
                    )
                if not self._entered:
                    await self._lean.__aenter__()
                    self._entered = True
        return self._lean

    async def aclose(self) -> None:
        async with self._lock:
            self._closed = True
            if self._entered:
                self._entered = False
                await self._lean.__aexit__(None, None, None)

    @contextlib.asynccontextmanager
    async def open(self, key: str) -> AsyncIterator[ObjectBody]:
        lean = await self._ready()
        async with lean.open(key) as body:
            yield body

    async def list_page(self, prefix: str, *, start_after: str | None = None) -> ListedPage:
        lean = await self._ready()
        return await lean.list_page(prefix, start_after=start_after)

    async def head_bucket(self) -> Refused | None:
        lean = await self._ready()
        return await lean.head_bucket()
