"""The bucket's listing read ahead along the index's keys.

A re-run over an unchanged bucket is all listing: 1,000 keys a request, each request waiting
for the answer before it. The index knows where those pages begin: once a run has hashed the
bucket, every 1,000th hashed key after the start is the `StartAfter` of the next page. So up
to `ahead` pages are asked for side by side, each after one such key (a stride key), and
handed out in key order, as the one-page-at-a-time listing would give them.

The bucket may have changed since the index was written; what is handed out is still the
listing, contiguous and in order:
- a page that runs past the next stride key is cut there (what lies past it comes from the
  page asked for after that key); the keys between its last one and the stride key are known
  to be absent, so the next call from anywhere in that gap goes on from the stride key;
- a page that stops short of the next stride key (keys were added) is handed out whole, and
  the next one is asked for after its last key, in turn cut at the stride key;
- a page with nothing up to the next stride key (every object of that range deleted) is cut
  at the stride key after it instead, and the page asked for after the one passed over is
  not needed.

An unchanged bucket costs the requests of the plain listing: ⌈objects / 1000⌉. A stride key
needs a hashed key after it, so the last page never asks for an empty one. With no hashed key
past the start (a first run), it is the plain listing. Any page's failure reaches the caller
when that page is due, never earlier.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from tui_backfill.seams.bucket import ListedPage

PAGE = 1000  # keys a listing page holds (ListObjectsV2's most), the stride of the stride keys
AHEAD = 4  # pages asked for at a time


class ListingAhead:
    """`page(start)`: the listing after `start`, one page a call, read ahead along stride keys.

    `fetch(start_after)` lists one page; `stride_keys(after, count)` gives up to `count` keys
    of the index after `after`, `PAGE` keys apart.
    """

    def __init__(
        self,
        fetch: Callable[[str | None], Awaitable[ListedPage]],
        stride_keys: Callable[[str | None, int], Awaitable[list[str]]],
        *,
        ahead: int = AHEAD,
    ) -> None:
        self._fetch = fetch
        self._stride_keys = stride_keys
        self._ahead = max(1, ahead)
        self._strides: list[str] = []  # ascending, each after the last start asked for
        self._strides_ended = self._ahead == 1  # no more stride keys in the index
        self._pending: dict[str, asyncio.Task[ListedPage]] = {}  # pages asked for ahead
        self._gap: tuple[str, str] | None = (
            None  # (last key handed out, stride key): nothing between
        )

    async def page(self, start: str | None) -> ListedPage:
        gap, self._gap = self._gap, None
        if gap is not None and start is not None and gap[0] <= start <= gap[1]:
            start = gap[1]  # nothing lies between: go on after the stride key
        asked = self._pass(start)
        await self._read_ahead(start)
        page = await (asked if asked is not None else self._fetch(start))
        objects = page.objects
        while self._strides and page.truncated and objects and objects[-1].key >= self._strides[0]:
            stride = self._strides[0]
            kept = [listed for listed in objects if listed.key <= stride]
            if kept:
                self._gap = (kept[-1].key, stride)
                return ListedPage(kept, truncated=True)
            # nothing up to this stride key (its objects are all gone): its page is not needed
            self._cancel(self._strides.pop(0))
        return page

    def _pass(self, start: str | None) -> asyncio.Task[ListedPage] | None:
        """Forget the stride keys up to `start` (their pages, but `start`'s own, unwanted)."""
        while self._strides and start is not None and self._strides[0] <= start:
            key = self._strides.pop(0)
            if key != start:
                self._cancel(key)
        return None if start is None else self._pending.pop(start, None)

    async def _read_ahead(self, start: str | None) -> None:
        """Keep the pages after the next `ahead - 1` stride keys asked for."""
        if not self._strides_ended and len(self._strides) < self._ahead:
            wanted = 4 * self._ahead
            more = await self._stride_keys(self._strides[-1] if self._strides else start, wanted)
            self._strides += more
            self._strides_ended = len(more) < wanted
        for key in self._strides[: self._ahead - 1]:  # `start`'s own page is the caller's
            if key not in self._pending:
                task = asyncio.ensure_future(self._fetch(key))
                task.add_done_callback(_retrieve)
                self._pending[key] = task

    def _cancel(self, key: str) -> None:
        task = self._pending.pop(key, None)
        if task is not None:
            task.cancel()

    async def close(self) -> None:
        """Stop the pages asked for and not handed out."""
        tasks = list(self._pending.values())
        self._pending.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def _retrieve(task: asyncio.Task[ListedPage]) -> None:
    """A page read ahead and never handed out may have failed: its error is not news."""
    if not task.cancelled():
        task.exception()
