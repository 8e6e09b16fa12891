"""Outcomes of items and the error codes every seam classifies its failures into.

Origins, the bucket and the state store raise these typed errors so that the engine never
parses exception text: it only looks at `code`, `retryable` and `fatal`.
"""

from __future__ import annotations

import enum


class Outcome(enum.StrEnum):
    """How one item (SKU x angle) ended."""

    UPLOADED = "uploaded"
    SKIPPED_EXISTS = "skippedExists"
    NO_REMOTE = "noRemote"
    FAILED = "failed"
    PLANNED = "planned"  # dry run: missing at the destination, would be fetched


class RunState(enum.StrEnum):
    """The `state` key of the status snapshot."""

    RUNNING = "running"
    PAUSING = "pausing"
    PAUSED = "paused"
    # Its process died without pausing (crash, SIGKILL, power loss); resumable like paused.
    # No engine ever reports it of itself: the readers of the state (`job_status`) say it.
    INTERRUPTED = "interrupted"
    COMPLETED = "completed"
    FAILED = "failed"


class BackfillError(Exception):
    """A classified failure. `code` lands in `errorsByCode`.

    `unreachable` is True only on OriginUnreachable: the server is absent (nothing listens,
    the host does not resolve), which the engine may treat as a reason to stop a run rather
    than fail item after item. It is an attribute so the engine can read it like `retryable`
    and `fatal`, without importing the subclass. `unreachable_in` is the engine's note of the
    slot the attempt held when it met the absence (whose breaker it feeds).
    """

    code: str = "error"
    retryable: bool = False
    fatal: bool = False
    unreachable: bool = False
    unreachable_in: str | None = None

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class RetryableError(BackfillError):
    """5xx, 429, resets, timeouts, truncated bodies, bad content, S3 throttling."""

    retryable = True


class OriginUnreachable(RetryableError):
    """The server is absent, not faulty: a refused connection, a host that does not resolve,
    no route to it, or a file:// origin whose base directory is missing. Raised by the origins,
    and by the lean S3 path for a bucket's server (code `s3_connection`).

    Still retryable and still its connection code (errorsByCode is a contract), so a run treats
    it like any connection error; `unreachable` marks it so that twenty in a row in one slot
    (the origin's, or the destination's) can stop the run (exit 3) instead of marking every
    item failed. Resets, timeouts, 5xx and truncated bodies are the server's faults while it is
    there, and never carry the mark.
    """

    code = "connection"
    unreachable = True


class NotFoundError(BackfillError):
    """The origin does not have the object (HTTP 404/410, FTP 550, missing file)."""

    code = "noRemote"


class PermanentError(BackfillError):
    """Not worth retrying (other 4xx): the item fails at once."""


class FatalError(BackfillError):
    """The whole run must stop: credentials rejected, bucket gone, state unwritable."""

    fatal = True


class ConfigError(Exception):
    """Bad input found before any work: exit 2 with a one-line message naming the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class JobBusy(ConfigError):
    """The job is already running in another process (named by pid)."""


class RunConflict(ConfigError):
    """The request does not fit the job's unfinished run (other settings; nothing to resume)."""
