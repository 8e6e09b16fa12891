"""The publishing worker's permanent media failures: one error class, four codes.

A `MediaError` is never worth another attempt: the same bytes fail the same way. The worker
reads `permanent` (an attribute, like `retryable` and `fatal`, so it needs no import of this
class) and fails the job at once with `retry_count = max_retries`.
"""

from __future__ import annotations

import enum

from tui_backfill.outcomes import BackfillError


class MediaErrorCode(enum.StrEnum):
    CORRUPT = "corrupt"  # cannot be decoded: truncated, damaged, not an image at all
    UNSUPPORTED = "unsupported"  # an image, but of a format the worker does not decode
    TOO_MANY_PIXELS = "too_many_pixels"  # the header declares more than max_pixels
    TOO_LARGE = "too_large"  # the source has more bytes than max_bytes


class MediaError(BackfillError):
    """A permanent failure of one source image (`code` is a `MediaErrorCode`)."""

    permanent = True

    def __init__(self, message: str, code: MediaErrorCode) -> None:
        super().__init__(message, code=code)
