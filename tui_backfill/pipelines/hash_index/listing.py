"""The bucket's listing read ahead along the index's keys.

A re-run over an unchanged bucket is all listing: 1,000 keys a request, each request waiting
for the answer before it. The index knows where those pages begin: every 1,000th key of its
rows after the start is the `StartAfter` of the next page when the index holds a row for every
object. So up to `ahead` pages are asked for side by side, each after one such key (a stride
key), and handed out in key order, as the one-page-at-a-time listing would give them.

The bucket may have changed since the index was written; what is handed out is still the
listing, contiguous and in order (the stride keys only decide what is asked for):
- a page that runs past the next stride key is cut there (what lies past it comes from the
  page asked for after that key); the keys between its last one and the stride key are known
  to be absent, so the next call from anywhere in that gap goes on from the stride key;
- a page that stops short of the next stride key (the bucket has keys the index lacks) is
  handed out whole, and the next one is asked for after its last key;
- a page with nothing up to the next stride key (every object of that range gone) is cut at
  the stride key after it instead;
- a page the caller cut short, and the listing's last page, answer the calls after them that
  they cover: no request, and nothing asked for past the listing's end.

Stride keys are a page's worth of index rows apart until a page does not end at one: then the
rows it spanned are counted, and the stride keys asked for next are that many rows apart, less
1 %, so that the pages reach them (a page's worth again once a page spans exactly that).

An unchanged bucket costs the requests of the plain listing, ⌈objects / 1000⌉. New objects
spread over the bucket cost about 1 % more and a few pages as the spacing is learnt; a stretch
of rows with no object, at most the pages already asked for (`ahead - 1`). Whatever the bucket
and the index, reading ahead never costs more than its spare (2 x `ahead` pages and 5 % of the
pages handed out) beyond the plain listing: past that, the run lists one page after another.
With no index row past the start (a first run), it is the plain listing. A page's failure reaches the caller
when that page is due, never earlier.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from tui_backfill.outcomes import BackfillError
from tui_backfill.seams.s3_wire import ListedPage

PAGE = 1000  # keys a listing page holds (ListObjectsV2's most)
AHEAD = 4  # pages asked for at a time
MARGIN = 0.01  # stride keys this much closer than the measured density says, once it is measured
# Requests beyond the plain listing's allowed before reading ahead is given up for the run:
# 2 x ahead, and 5 % of the pages handed out so far
SPARE_PAGES, SPARE_SHARE = 2, 0.05


class ListingAhead:
    """`page(start)`: the listing after `start`, one page a call, read ahead along stride keys.

    `fetch(start_after)` lists one page; `stride_keys(after, count, every)` gives up to `count`
    keys of the index after `after`, `every` rows apart; `count_rows(after, upto)` counts the
    index rows in (after, upto].
    """

    def __init__(
        self,
        fetch: Callable[[str | None], Awaitable[ListedPage]],
        stride_keys: Callable[[str | None, int, int], Awaitable[list[str]]],
        count_rows: Callable[[str | None, str], Awaitable[int]],
        *,
        ahead: int = AHEAD,
        page_size: int = PAGE,
    ) -> None:
        self._list = fetch
        self._page_size = page_size
        self._stride_keys = stride_keys
        self._count_rows = count_rows
        self._ahead = max(1, ahead)
        self._every = page_size  # index rows between stride keys: a page's worth, until measured
        self._strides: list[str] = []  # ascending, after the last start; each one's page asked for
        self._no_more_strides = self._ahead == 1  # the index has none left at this spacing
        self._pending: dict[str, asyncio.Task[ListedPage]] = {}  # pages asked for ahead
        self._gap: tuple[str, str] | None = None  # (last key handed out, stride key): none between
        self._last: tuple[str | None, ListedPage] | None = None  # the last page listed, uncut
        self._asked = 0  # requests sent
        self._handed = 0  # keys handed out

    async def page(self, start: str | None) -> ListedPage:
        gap, self._gap = self._gap, None
        if gap is not None and start is not None and gap[0] <= start <= gap[1]:
            start = gap[1]  # nothing lies between: go on after the stride key
        asked = self._pass(start)
        page = None if asked is not None else self._rest_of_last(start)
        if page is None:
            try:
                await self._read_ahead(start)
                page = await (asked if asked is not None else self._fetch(start))
                self._last = (start, page)
                if page.truncated:
                    await self._measure(start, page)
            except BaseException:
                if asked is not None:  # stopped while waiting: its request is nobody's now
                    asked.cancel()
                raise
            if not page.truncated:  # the listing ends here: nothing after it to ask for
                self._drop_strides()
        objects = page.objects
        while self._strides and page.truncated and objects and objects[-1].key >= self._strides[0]:
            stride = self._strides[0]
            kept = [listed for listed in objects if listed.key <= stride]
            if kept:
                self._gap = (kept[-1].key, stride)
                return self._handing(ListedPage(kept, truncated=True))
            # nothing up to this stride key (its objects are all gone): its page is not needed
            self._cancel(self._strides.pop(0))
        return self._handing(page)

    def _fetch(self, start: str | None) -> Awaitable[ListedPage]:
        self._asked += 1
        return self._list(start)

    def _handing(self, page: ListedPage) -> ListedPage:
        """`page` is handed out. If reading ahead has cost too many requests beyond what the
        plain listing would have sent for the keys handed out so far (the bucket and the index
        have little to do with each other), the rest of the run lists one page after another."""
        self._handed += len(page.objects)
        plain = -(-self._handed // self._page_size)
        spare = SPARE_PAGES * self._ahead + SPARE_SHARE * plain
        if self._ahead > 1 and self._asked - plain > spare:
            self._give_up()
        return page

    def _give_up(self) -> None:
        """The rest of the run lists one page after another."""
        self._ahead = 1
        self._drop_strides()

    def _drop_strides(self) -> None:
        """No more stride keys: their pages asked for are cancelled."""
        self._no_more_strides = True
        for key in self._strides:
            self._cancel(key)
        self._strides.clear()

    def _rest_of_last(self, start: str | None) -> ListedPage | None:
        """What the last page listed holds after `start`, when it reaches past `start` (the
        caller cut it short) or is the listing's end: the listing after `start`, no request."""
        if self._last is None or start is None:
            return None
        after, last = self._last
        if after is not None and start < after:
            return None
        if last.truncated and not (last.objects and start < last.objects[-1].key):
            return None
        return ListedPage([listed for listed in last.objects if listed.key > start], last.truncated)

    def _pass(self, start: str | None) -> asyncio.Task[ListedPage] | None:
        """Forget the stride keys up to `start` (their pages, but `start`'s own, unwanted)."""
        while self._strides and start is not None and self._strides[0] <= start:
            key = self._strides.pop(0)
            if key != start:
                self._cancel(key)
        return None if start is None else self._pending.pop(start, None)

    async def _measure(self, start: str | None, page: ListedPage) -> None:
        """A page that did not end at the next stride key: the index rows it spans say how
        far apart the next stride keys should be: that many, less MARGIN, so that the pages
        reach them; a page's worth when it spans exactly that."""
        if self._ahead == 1 or not page.objects:
            return
        last = page.objects[-1].key
        if self._strides and self._strides[0] == last:
            return  # it ended at the stride key: the spacing holds
        try:
            spanned = await self._count_rows(start, last)
        except BackfillError:  # the index busy or gone: stride keys are hints, do without
            self._give_up()
            return
        if spanned == 0:
            return  # the index knows none of these keys: nothing to go by
        size = self._page_size
        every = size if spanned == size else max(1, int(spanned * (1 - MARGIN)))
        if every != self._every:
            self._every = every
            self._no_more_strides = False

    async def _read_ahead(self, start: str | None) -> None:
        """Keep the pages after the next `ahead - 1` stride keys asked for."""
        wanted = self._ahead - 1 - len(self._strides)
        if wanted > 0 and not self._no_more_strides:
            after = self._strides[-1] if self._strides else start
            try:
                more = await self._stride_keys(after, wanted, self._every)
            except BackfillError:  # the index busy or gone: stride keys are hints, do without
                self._give_up()
                return
            self._strides += more
            self._no_more_strides = len(more) < wanted
        for key in self._strides:  # `start`'s own page is the caller's
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
