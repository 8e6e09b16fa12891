"""`file://` origin: a directory tree on this machine (read in a worker thread)."""

from __future__ import annotations

import asyncio
import urllib.parse
from pathlib import Path

from tui_backfill.outcomes import NotFoundError, PermanentError, RetryableError
from tui_backfill.seams.origins import Fetched, sniff_image
from tui_backfill.seams.templates import Template


class FileOrigin:
    def __init__(self, template: Template, *, timeout: float) -> None:
        self._template = template
        self._timeout = timeout

    async def fetch(self, sku: str, angle: int) -> Fetched:
        url = self._template.render_url(sku, angle)
        path = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
        try:
            async with asyncio.timeout(self._timeout):
                body = await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise NotFoundError(f"{path}: no such file", code="noRemote") from None
        except TimeoutError:
            raise RetryableError(
                f"{path}: not read within {self._timeout:g} s", code="timeout"
            ) from None
        except PermissionError as exc:
            raise PermanentError(f"{path}: {exc.strerror}", code="file_permission") from None
        except OSError as exc:
            raise RetryableError(f"{path}: {exc.strerror}", code="file_io") from None
        return Fetched(body, sniff_image(body))

    async def close(self) -> None:
        return None
