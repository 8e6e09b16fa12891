"""`file://` origin: a directory tree on this machine (read in a worker thread).

A missing file is noRemote; a missing base directory (the fixed part of the template, e.g. an
unmounted share) is the origin's absence, not 404 after 404: OriginUnreachable.
"""

from __future__ import annotations

import asyncio
import errno
import os
import urllib.parse
from pathlib import Path

from tui_backfill.outcomes import NotFoundError, OriginUnreachable, PermanentError, RetryableError
from tui_backfill.seams.origins import Fetched, preflight_failed, sniff_image
from tui_backfill.seams.templates import Template

# A mount whose server went away: the files are not missing, the origin is.
_GONE_ERRNOS = frozenset({errno.ENOTCONN, errno.ESTALE, errno.EHOSTDOWN, errno.EHOSTUNREACH})


def base_directory(template: Template) -> Path:
    """The deepest directory every rendered path lies in: the template's fixed text up to
    its last `/` before the first field."""
    path = urllib.parse.unquote(urllib.parse.urlsplit(template.literal_prefix).path)
    return Path(path.rsplit("/", 1)[0] or "/")


class FileOrigin:
    def __init__(self, template: Template, *, timeout: float) -> None:
        self._template = template
        self._timeout = timeout
        self._base = base_directory(template)

    def _read(self, path: Path) -> bytes:
        """The file's bytes; a missing file under a missing base directory is the origin's
        absence (checked only on a miss, so a hit costs no extra stat)."""
        try:
            return path.read_bytes()
        except FileNotFoundError:
            if not self._base.is_dir():
                raise OriginUnreachable(f"{self._base}: no such directory") from None
            raise

    async def fetch(self, sku: str, angle: int) -> Fetched:
        url = self._template.render_url(sku, angle)
        path = Path(urllib.parse.unquote(urllib.parse.urlsplit(url).path))
        try:
            async with asyncio.timeout(self._timeout):
                body = await asyncio.to_thread(self._read, path)
        except FileNotFoundError:
            raise NotFoundError(f"{path}: no such file", code="noRemote") from None
        except TimeoutError:
            raise RetryableError(
                f"{path}: not read within {self._timeout:g} s", code="timeout"
            ) from None
        except PermissionError as exc:
            raise PermanentError(f"{path}: {exc.strerror}", code="file_permission") from None
        except OSError as exc:
            if exc.errno in _GONE_ERRNOS:
                raise OriginUnreachable(f"{path}: {exc.strerror}") from None
            raise RetryableError(f"{path}: {exc.strerror}", code="file_io") from None
        return Fetched(body, sniff_image(body))

    async def preflight(self) -> None:
        """The base directory exists and can be listed and read, so a wrong path or an
        unmounted share stops the run before it starts rather than as noRemote for all."""
        base = self._base
        try:
            async with asyncio.timeout(self._timeout):
                present = await asyncio.to_thread(base.is_dir)
        except TimeoutError:
            return  # slow is not absent: the run's own timeouts handle a slow share
        if not present:
            raise preflight_failed(self._template.text, f"{base}: no such directory")
        if not os.access(base, os.R_OK | os.X_OK):
            raise preflight_failed(self._template.text, f"{base}: not readable")

    async def close(self) -> None:
        return None
