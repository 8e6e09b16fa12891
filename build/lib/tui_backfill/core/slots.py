"""A semaphore whose limit can change while it is in use (the live `+`/`-` concurrency keys).

Waiters are served first come, first served, and a release wakes only as many as can proceed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator


class Slots:
    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def used(self) -> int:
        return self._used

    def set_limit(self, limit: int) -> None:
        self._limit = limit
        self._wake()

    async def acquire(self) -> None:
        if self._used < self._limit and not self._waiters:
            self._used += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # woken with its slot already counted in `_used`
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # woken, then cancelled: hand the slot on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        self._used -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._used < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._used += 1  # the slot passes straight to the waiter
                waiter.set_result(None)

    @contextlib.asynccontextmanager
    async def hold(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()
