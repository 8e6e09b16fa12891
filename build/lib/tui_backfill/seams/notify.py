"""Run-end notifications (`--notify-url`): POST a run's final status as JSON to a webhook.

The URL is a secret (webhooks carry their token in the path or the query): it is never stored,
shown or logged. `notify_label` (scheme, host and port, the rest `***`) is what may be stored,
and a failure is described by a code (`http_500`, `timeout`, `connection`, `tls`), never by
the URL or an exception's text (which may quote it).

Delivery is bounded: a few attempts, each with its own timeout, all within `BUDGET` seconds,
so the end of a process waits for it at most that long; the outcome never changes an exit
code. Redirects are not followed (the body would go to a host nobody configured). A 2xx answer
is delivered; 408, 429 and 5xx are retried; any other answer is final.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from typing import Any

from tui_backfill import __version__
from tui_backfill.outcomes import ConfigError

EVENT = "run.ended"
ATTEMPTS = 3
ATTEMPT_TIMEOUT = 2.5  # seconds, one POST from connecting to the answer
BACKOFF = 0.5  # seconds before the second attempt, doubled before each later one
BUDGET = 6.0  # seconds for every attempt and wait together: the most an exit waits for it
_RETRIED_STATUSES = frozenset({408, 429})


def check_notify_url(url: str | None, field: str) -> None:
    """An http(s) URL with a host, or None / "" (no notification). The message never quotes
    the URL: it is a secret."""
    if not url:
        return
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number in range
    except ValueError:
        raise ConfigError(field, "not a valid URL (not shown: it is a secret)") from None
    if parts.scheme not in ("http", "https"):
        shown = repr(parts.scheme) if parts.scheme.isalnum() else "(none)"
        raise ConfigError(
            field,
            f"scheme {shown} is not accepted; expected http://host/... or https://host/... "
            "(the URL is not shown: it is a secret)",
        )
    if not parts.hostname:
        raise ConfigError(field, "the URL has no host; expected http(s)://host[:port]/path")
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        raise ConfigError(field, "the URL holds spaces or control characters; encode them")


def notify_label(url: str | None) -> str | None:
    """What may be stored or shown of a notify URL: `https://host[:port]/***` (no userinfo,
    path or query), or None without one."""
    if not url:
        return None
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return f"{parts.scheme}://{host}/***"


def run_ended(
    *, job: str, run_id: int, exit_code: int, dry_run: bool, snapshot: dict[str, Any]
) -> dict[str, Any]:
    """The notification's body: the run's final status as `status --json` shows it, with the
    process's exit code. `deliveryId` is the same for every attempt (a receiver can drop a
    repeat whose first answer was lost)."""
    return {
        "event": EVENT,
        "deliveryId": uuid.uuid4().hex,
        "job": job,
        "runId": run_id,
        "exitCode": exit_code,
        "dryRun": dry_run,
        "snapshot": snapshot,
    }


@dataclass(frozen=True, slots=True)
class Delivery:
    delivered: bool
    attempts: int
    error: str | None = None  # the last failure's code (`http_500`, `timeout`, ...)

    def describe(self) -> str:
        """One line for the operator (no URL)."""
        if self.delivered:
            return f"delivered (attempt {self.attempts})"
        plural = "attempt" if self.attempts == 1 else "attempts"
        return f"delivery failed after {self.attempts} {plural}: {self.error}"


async def post_json(
    url: str,
    body: dict[str, Any],
    *,
    attempts: int = ATTEMPTS,
    timeout: float = ATTEMPT_TIMEOUT,
    backoff: float = BACKOFF,
    budget: float = BUDGET,
) -> Delivery:
    """POST `body` to `url` until a 2xx answer, a final refusal, `attempts` or `budget`."""
    import aiohttp  # not at import: the settings check this module, and startup stays light

    data = json.dumps(body).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"tui-backfill/{__version__}",
        "X-Tui-Backfill-Event": EVENT,
    }
    deadline = time.monotonic() + budget
    made = 0
    error = "timeout"
    async with aiohttp.ClientSession() as session:
        for attempt in range(1, attempts + 1):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            made = attempt
            try:
                async with asyncio.timeout(min(timeout, left)):
                    async with session.post(
                        url, data=data, headers=headers, allow_redirects=False
                    ) as answer:
                        await answer.read()
                        status = answer.status
            except TimeoutError:
                error = "timeout"
            except aiohttp.ClientSSLError:
                error = "tls"
            except (aiohttp.ClientError, OSError, ValueError):
                error = "connection"
            else:
                if 200 <= status < 300:
                    return Delivery(True, attempt)
                error = f"http_{status}"
                if status < 500 and status not in _RETRIED_STATUSES:
                    break  # a refusal (404, 401, a redirect): asking again changes nothing
            if attempt < attempts:
                wait = min(backoff * 2 ** (attempt - 1), deadline - time.monotonic())
                if wait > 0:
                    await asyncio.sleep(wait)
    return Delivery(False, made, error)
