"""The HTTP control API (aiohttp): the brief's endpoints, run history, metrics, OpenAPI.

A thin front end over `JobService`: parse and check the request, call the service, answer JSON.

The seed's routes (`/api/rsr-image-backfill/...`) serve the job `serve` was started with. The
generic routes `/api/jobs/{job}/status|run|pause|resume|hold|concurrency|runs|failed` serve
every job of the same state file: for the served job they are the seed's handlers; another
job is read through the state (`status`, `runs`, `failed`: 404 naming it when it has no runs)
and driven through its command channel while a process runs it (`pause`, `resume`, `hold`,
`concurrency`: 409 when none does), but never started here (`run`: 409, naming the job this
server starts runs of, and `serve --job NAME` for the other one). A `{job}` that is not a job
name is 400 naming `job`.
The seed's image routes (`/api/rsr-image-backfill/...`, `/api/rsr-image-stats`, `-gap`) serve
an image job; for a hash-index job they are 409 naming its generic routes. A hash-index job also
has the seed's batch interface, `GET /api/backfill-asset-index?limit=&cursor=&dry_run=` (one
batch of the index; 409 for an image job): since it changes data on a GET, it also refuses a
Host that is not the bound address (a wildcard bind leaves that to the token).
Every error is JSON (`{"error": ..., "field": ...}`), never an HTML page or a traceback. Bound to
127.0.0.1 by default; on any other address `TUI_BACKFILL_API_TOKEN` is required, and whenever a
token is set every request must carry it as `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from tui_backfill.core.records import Command
from tui_backfill.frontends.service import ApiError, JobService, parse_run_request
from tui_backfill.frontends.state_job import StateJob
from tui_backfill.outcomes import ConfigError, FatalError
from tui_backfill.pipelines.config import JOB_NAME

TOKEN_ENV = "TUI_BACKFILL_API_TOKEN"
BASE = "/api/rsr-image-backfill"
JOBS = "/api/jobs/{job}"  # the generic routes of every job of the state file
MAX_BODY = 64 * 1024
GAP_PAGE_DEFAULT, GAP_PAGE_MAX = 1000, 10_000
RUNS_DEFAULT, RUNS_MAX = 20, 1000  # as `runs --limit`
_DIGITS = re.compile(r"[0-9]{1,9}")  # not str.isdigit(): it takes "²", which int() refuses

SERVICE: web.AppKey[JobService] = web.AppKey("service", JobService)
TOKEN: web.AppKey[str] = web.AppKey("token", str)
BOUND: web.AppKey[str] = web.AppKey("bound", str)  # the address the server listens on
ASSET_INDEX = "/api/backfill-asset-index"  # the hash index's batch interface (the seed's)
ASSET_INDEX_FIELDS = ("limit", "cursor", "dry_run")
MAX_CURSOR_BYTES = 1024  # an S3 key's maximum length
WILDCARDS = ("0.0.0.0", "::", "")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, env: Mapping[str, str]) -> str:
    """The token to require ('' for none); a ConfigError for a non-loopback bind without one."""
    token = env.get(TOKEN_ENV, "")
    if not is_loopback(host) and not token:
        raise ConfigError(
            "--host",
            f"{host} is not a loopback address; set {TOKEN_ENV} (a bearer token every request "
            "must then carry) or bind to 127.0.0.1",
        )
    return token


def _json(status: int, body: Any) -> web.Response:
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, default=str))


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return _json(exc.status, exc.to_json())
    except (ConfigError, FatalError) as exc:  # the state file failed us (damaged, locked, full)
        return _json(503, {"error": f"state unavailable: {exc}"})
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        reason = exc.reason
        if exc.status == 413:
            reason = f"request body too large; at most {MAX_BODY} bytes"
        headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate")}
        response = _json(exc.status, {"error": reason})
        response.headers.update(headers)
        return response
    except Exception as exc:  # a bug: one line on stderr, a JSON 500, the server goes on
        # The class only: an exception built from request data could carry a header (a token).
        name = exc.__class__.__name__
        print(
            f"tui-backfill: API error on {request.method} {request.path}: {name}", file=sys.stderr
        )
        return _json(500, {"error": f"internal error: {exc.__class__.__name__}"})


LOOPBACK_NAMES = ("localhost",)


def _same_site(bound: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Refuse what a web page in a browser could send: a request carrying a cross-site
    `Origin` (a form POST needs no preflight), and, when bound to loopback, one whose `Host` is
    not a loopback name (DNS rebinding: evil.example resolving to 127.0.0.1). Off loopback the
    bearer token, which no page can add without a preflight, is the guard."""
    loopback = is_loopback(bound)

    @web.middleware
    async def same_site(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get("Host", "")
        origin = request.headers.get("Origin")
        if origin is not None:
            parts = urllib.parse.urlsplit(origin)
            if origin == "null" or parts.netloc.lower() != host.lower():
                return _json(
                    403, {"error": "cross-site request refused (its Origin is not this server)"}
                )
        if loopback:
            name = urllib.parse.urlsplit(f"//{host}").hostname or ""
            if not (is_loopback(name) or name in LOOPBACK_NAMES):
                return _json(
                    403, {"error": "request refused: its Host is not this loopback server"}
                )
        return await handler(request)

    return same_site


def _auth(token: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        # aiohttp keeps undecodable header bytes as surrogates: encode them back, never fail
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        if not hmac.compare_digest(given, expected):
            response = _json(
                401, {"error": "missing or wrong bearer token (Authorization: Bearer ...)"}
            )
            response.headers["WWW-Authenticate"] = 'Bearer realm="tui-backfill"'
            return response
        return await handler(request)

    return auth


async def _body(request: web.Request) -> dict[str, Any]:
    """The JSON object of the request body ({} when there is none)."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, f"request body too large; at most {MAX_BODY} bytes")
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None
    except RecursionError:  # e.g. 60,000 "[": within MAX_BODY, beyond the decoder's depth
        raise ApiError(400, "malformed JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the body must be a JSON object")
    return data


def _int_query(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not _DIGITS.fullmatch(text) or not low <= int(text) <= high:
        raise ApiError(400, f"{text!r}: accepted an integer from {low} to {high}", name)
    return int(text)


def _no_query(request: web.Request, allowed: tuple[str, ...] = ()) -> None:
    for name in request.query:
        if name not in allowed:
            raise ApiError(
                400,
                "unknown query parameter"
                + (f"; accepted: {', '.join(allowed)}" if allowed else ""),
                name,
            )


# -- handlers -------------------------------------------------------------------------------


async def run(request: web.Request) -> web.Response:
    params = parse_run_request(request.query, await _body(request))
    status, answer = await request.app[SERVICE].start(params)
    return _json(status, answer)


async def status(request: web.Request) -> web.Response:
    _no_query(request)
    return _json(200, (await request.app[SERVICE].status()).to_json())


def _command(name: str) -> Handler:
    """POST .../pause, .../resume, .../hold: no parameters; the service's answer as JSON."""

    async def handler(request: web.Request) -> web.Response:
        _no_query(request)
        await _body_must_be_empty(request)
        code, answer = await getattr(request.app[SERVICE], name)()
        return _json(code, answer)

    return handler


pause, resume, hold = _command("pause"), _command("resume"), _command("hold")


async def _concurrency_value(request: web.Request) -> int:
    _no_query(request)
    body = await _body(request)
    for name in body:
        if name != "concurrency":
            raise ApiError(400, "unknown field; accepted: concurrency", name)
    value = body.get("concurrency")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ApiError(400, "required: an integer", "concurrency")
    return value


async def concurrency(request: web.Request) -> web.Response:
    value = await _concurrency_value(request)
    code, answer = await request.app[SERVICE].set_concurrency(value)
    return _json(code, answer)


async def failed(request: web.Request) -> web.Response:
    _no_query(request)
    return _json(200, {"items": await request.app[SERVICE].failed_items()})


async def runs(request: web.Request) -> web.Response:
    _no_query(request, ("limit",))
    limit = _int_query(request, "limit", RUNS_DEFAULT, 1, RUNS_MAX)
    service = request.app[SERVICE]
    return _json(200, {"job": service.job, "runs": await service.runs(limit)})


async def stats(request: web.Request) -> web.Response:
    _no_query(request)
    return _json(200, await request.app[SERVICE].coverage())


async def gap(request: web.Request) -> web.Response:
    _no_query(request, ("limit", "after"))
    limit = _int_query(request, "limit", GAP_PAGE_DEFAULT, 1, GAP_PAGE_MAX)
    after = request.query.get("after") or None
    return _json(200, await request.app[SERVICE].gap(after=after, limit=limit))


async def metrics(request: web.Request) -> web.Response:
    from tui_backfill.frontends.metrics import CONTENT_TYPE, render

    _no_query(request)
    service = request.app[SERVICE]
    body = render(await service.status_or_none(), job=service.job)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def openapi(request: web.Request) -> web.Response:
    from tui_backfill.frontends.openapi import document

    service = request.app[SERVICE]
    return _json(200, document(max_concurrency=service.max_concurrency, pipeline=service.pipeline))


async def _body_must_be_empty(request: web.Request) -> None:
    body = await _body(request)
    if body:
        raise ApiError(400, "this endpoint takes no parameters", next(iter(body)))


def _image_job_only(handler: Handler) -> Handler:
    """The seed's image routes serve an image job (pipeline mirror); for a job of another
    pipeline they are 409 naming the routes that serve it."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        service = request.app[SERVICE]
        if service.pipeline != "mirror":
            job = service.job
            routes = f"/api/jobs/{job}/status, /run, /pause, /resume, ..."
            if service.pipeline == "hash-index":
                routes += f" and GET {ASSET_INDEX}"
            raise ApiError(
                409,
                f"{request.path} is the image backfill's route; job {job!r} is a "
                f"{service.pipeline} job: use {routes}",
            )
        return await handler(request)

    return guarded


def _bound_host_only(request: web.Request) -> None:
    """A GET that changes data answers only a request whose Host names the address the
    server is bound to (a loopback name for a loopback bind). A wildcard bind has no one
    address: there the token, required off loopback, is the guard."""
    bound = request.app[BOUND]
    if bound in WILDCARDS:
        return
    host = request.headers.get("Host", "")
    try:
        name = urllib.parse.urlsplit(f"//{host}").hostname or ""
    except ValueError:
        name = ""
    if is_loopback(bound):
        accepted = is_loopback(name) or name in LOOPBACK_NAMES
    else:
        accepted = name == bound.lower().strip("[]") or _same_address(name, bound)
    if not accepted:
        raise ApiError(403, "request refused: its Host is not the address this server is bound to")


def _same_address(name: str, bound: str) -> bool:
    try:
        return ipaddress.ip_address(name) == ipaddress.ip_address(bound.strip("[]"))
    except ValueError:
        return False


def _bool_query(request: web.Request, name: str, default: bool) -> bool:
    text = request.query.get(name)
    if text is None:
        return default
    if text.strip().lower() in ("true", "1", "yes"):
        return True
    if text.strip().lower() in ("false", "0", "no"):
        return False
    raise ApiError(400, f"{text!r} is not a boolean; accepted true or false", name)


def _cursor_query(request: web.Request) -> str | None:
    """The last key of the previous batch (absent or empty: from the start)."""
    cursor = request.query.get("cursor") or None
    if cursor is None:
        return None
    try:
        size = len(cursor.encode("utf-8"))
    except UnicodeEncodeError:
        raise ApiError(
            400, "not UTF-8 text; give the cursor of the previous answer", "cursor"
        ) from None
    if size > MAX_CURSOR_BYTES:
        raise ApiError(400, f"longer than {MAX_CURSOR_BYTES} bytes (an S3 key's maximum)", "cursor")
    return cursor


async def asset_index(request: web.Request) -> web.Response:
    """GET /api/backfill-asset-index?limit=50&cursor=C&dry_run=true: one batch of the hash
    index, answered in the seed's shape (errors too carry `"success": false`)."""
    try:
        _bound_host_only(request)
        _no_query(request, ASSET_INDEX_FIELDS)
        from tui_backfill.pipelines.hash_index.batch import LIMIT_DEFAULT, LIMIT_MAX

        limit = _int_query(request, "limit", LIMIT_DEFAULT, 1, LIMIT_MAX)
        cursor = _cursor_query(request)
        dry_run = _bool_query(request, "dry_run", False)
        answer = await request.app[SERVICE].index_batch(cursor=cursor, limit=limit, dry_run=dry_run)
    except ApiError as exc:
        return _json(exc.status, {"success": False, **exc.to_json()})
    return _json(200, answer)


# -- the generic routes: /api/jobs/{job}/... ----------------------------------------------------


def _other_job(request: web.Request) -> StateJob | None:
    """The job the route names when it is not the served one (None: the served job, which the
    seed's handlers answer for). A name that is no job name is 400 naming `job`."""
    name = request.match_info["job"]
    if not JOB_NAME.fullmatch(name):  # fullmatch: JOB_NAME's `$` would let "a\n" through
        raise ApiError(
            400,
            f"{name!r} is not a job name; use letters, digits, . _ - (max 64, the first a "
            "letter or digit)",
            "job",
        )
    service = request.app[SERVICE]
    if name == service.job:
        return None
    return StateJob(service.state_path, name, served=service.job)


async def job_status(request: web.Request) -> web.Response:
    other = _other_job(request)
    if other is None:
        return await status(request)
    _no_query(request)
    return _json(200, (await other.status()).to_json())


async def job_run(request: web.Request) -> web.Response:
    other = _other_job(request)
    if other is None:
        return await run(request)
    served = request.app[SERVICE].job
    raise ApiError(
        409,
        f"this server starts runs of job {served!r} only; start "
        f"`tui-backfill serve --job {other.job}` (or `tui-backfill run --job {other.job}`) "
        f"for {other.job!r}",
    )


def _job_command(name: str, seed: Handler) -> Handler:
    """POST /api/jobs/{job}/pause|resume|hold: the seed's handler for the served job; for
    another, the command sent to the process running it."""

    async def handler(request: web.Request) -> web.StreamResponse:
        other = _other_job(request)
        if other is None:
            return await seed(request)
        _no_query(request)
        await _body_must_be_empty(request)
        code, answer = await (other.pause() if name == "pause" else other.command(Command(name)))
        return _json(code, answer)

    return handler


job_pause = _job_command("pause", pause)
job_resume = _job_command("resume", resume)
job_hold = _job_command("hold", hold)


async def job_concurrency(request: web.Request) -> web.Response:
    other = _other_job(request)
    if other is None:
        return await concurrency(request)
    value = await _concurrency_value(request)
    maximum = (await other.status()).max_concurrency or request.app[SERVICE].max_concurrency
    if not 1 <= value <= maximum:
        raise ApiError(400, f"{value} is out of range; accepted 1 to {maximum}", "concurrency")
    code, answer = await other.command(Command.CONCURRENCY, str(value))
    return _json(code, answer)


async def job_failed(request: web.Request) -> web.Response:
    other = _other_job(request)
    if other is None:
        return await failed(request)
    _no_query(request)
    items = await other.failed_items()
    if items is None:
        raise other.no_runs()
    return _json(200, {"items": items})


async def job_runs(request: web.Request) -> web.Response:
    other = _other_job(request)
    if other is None:
        return await runs(request)
    _no_query(request, ("limit",))
    limit = _int_query(request, "limit", RUNS_DEFAULT, 1, RUNS_MAX)
    entries = await other.runs(limit)
    if not entries:
        raise other.no_runs()
    return _json(200, {"job": other.job, "runs": entries})


def build_app(service: JobService, *, token: str = "", host: str = "127.0.0.1") -> web.Application:
    middlewares: list[Any] = [_errors, _same_site(host)]
    if token:
        middlewares.append(_auth(token))
    app = web.Application(middlewares=middlewares, client_max_size=MAX_BODY)
    app[SERVICE] = service
    app[BOUND] = host
    # Each route of the image job's seed API, and its generic twin for any job of the state.
    for method, name, seed, generic in (
        ("POST", "run", run, job_run),
        ("GET", "status", status, job_status),
        ("POST", "pause", pause, job_pause),
        ("POST", "resume", resume, job_resume),
        ("POST", "hold", hold, job_hold),
        ("POST", "concurrency", concurrency, job_concurrency),
        ("GET", "failed", failed, job_failed),
        ("GET", "runs", runs, job_runs),
    ):
        add = app.router.add_get if method == "GET" else app.router.add_post  # GET: HEAD too
        add(f"{BASE}/{name}", _image_job_only(seed))
        add(f"{JOBS}/{name}", generic)
    app.router.add_get("/api/rsr-image-stats", _image_job_only(stats))
    app.router.add_get("/api/rsr-image-gap", _image_job_only(gap))
    app.router.add_get(ASSET_INDEX, asset_index, allow_head=False)  # a HEAD runs no batch
    app.router.add_get("/api/openapi.json", openapi)
    app.router.add_get("/metrics", metrics)
    return app


class _OneLine(logging.Handler):
    """aiohttp's own error log (a request it cannot parse, such as a NUL byte in a header,
    answered 400 before the app sees it): one line on stderr, not a traceback per request."""

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        reason = f": {exc.__class__.__name__}" if exc is not None else ""
        print(f"tui-backfill: API: {record.getMessage()}{reason}", file=sys.stderr, flush=True)


def _one_line_server_errors() -> None:
    log = logging.getLogger("aiohttp.server")
    if not any(isinstance(handler, _OneLine) for handler in log.handlers):
        log.addHandler(_OneLine(logging.WARNING))
        log.propagate = False


class ApiServer:
    """The API on host:port (port 0: a free one, in `url` after start)."""

    def __init__(
        self, service: JobService, *, host: str, port: int, token: str, field: str = "--port"
    ) -> None:
        _one_line_server_errors()
        self.service = service
        self.host = host
        self.port = port
        self._field = field
        self._runner = web.AppRunner(
            build_app(service, token=token, host=host), access_log=None, shutdown_timeout=5
        )
        self.url = ""

    async def start(self) -> ApiServer:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise ConfigError(
                self._field, f"cannot listen on {self.host}:{self.port}: {exc.strerror or exc}"
            ) from None
        address = self._runner.addresses[0]
        self.port = int(address[1])
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{host}:{self.port}"
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()
