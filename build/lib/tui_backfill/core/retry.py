"""Retry policy: tenacity, exponential backoff with full jitter, interruptible waits.

Only errors the seams classified as retryable are retried. The sleep is injected so that a
pause or stop cancels backoff waits at once instead of waiting them out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from tui_backfill.outcomes import BackfillError


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, BackfillError) and exc.retryable


def retrying(
    *,
    max_attempts: int,
    backoff: float,
    sleep: Callable[[float], Awaitable[None]],
    on_retry: Callable[[RetryCallState], None] | None = None,
) -> AsyncRetrying:
    """A fresh policy for one stage of one item (tenacity objects hold per-call state)."""
    return AsyncRetrying(
        stop=stop_after_attempt(max_attempts),
        wait=wait_exponential_jitter(
            multiplier=backoff, exp_base=2, max=max(backoff * 32, backoff), jitter=backoff
        ),
        retry=retry_if_exception(_retryable),
        sleep=sleep,
        before_sleep=on_retry,
        reraise=True,
    )
