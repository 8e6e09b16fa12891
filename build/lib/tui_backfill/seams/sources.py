"""SKU sources: a file (one SKU per line, or CSV with a `sku` column) or a catalog query.

Sources stream batches of SKUs; the state store snapshots them (deduplicated, in byte order)
at the start of a run, so a query is read once and a million SKUs never sit in memory. A
catalog database is opened read-only.
"""

from __future__ import annotations

import asyncio
import csv
import itertools
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol, TextIO

from tui_backfill.outcomes import ConfigError


class SkuSource(Protocol):
    """Where the SKUs come from (a run's settings have these three)."""

    @property
    def skus_file(self) -> str | None: ...

    @property
    def skus_db(self) -> str | None: ...

    @property
    def skus_query(self) -> str | None: ...


BATCH = 5000


def _clean(value: object) -> str | None:
    if value is None:
        return None
    sku = str(value).strip()
    return sku or None


def _file_skus(path: str) -> Iterator[str]:
    try:
        handle = open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise ConfigError("--skus-file", f"{path}: {exc.strerror}") from None
    with handle:
        try:
            yield from _parse_skus(path, handle)
        except UnicodeDecodeError as exc:
            raise ConfigError(
                "--skus-file", f"{path}: not valid UTF-8 text ({exc.reason}); save it as UTF-8"
            ) from None


def _parse_skus(path: str, handle: TextIO) -> Iterator[str]:
    first = handle.readline()
    header = [cell.strip().lower() for cell in next(csv.reader([first]), [])]
    if "," in first or header == ["sku"]:
        if "sku" not in header:
            raise ConfigError(
                "--skus-file",
                f"{path}: CSV without a 'sku' column (columns: {', '.join(header)})",
            )
        column = header.index("sku")
        for row in csv.reader(handle):
            if len(row) > column and (sku := _clean(row[column])):
                yield sku
        return
    for line in itertools.chain((first,), handle):  # streamed, never the whole file
        sku = _clean(line)
        if sku and not sku.startswith("#"):
            yield sku


def _open_catalog(path: str) -> sqlite3.Connection:
    if not Path(path).is_file():
        raise ConfigError("--skus-db", f"{path}: no such file")
    try:
        uri = Path(path).resolve().as_uri() + "?mode=ro"
        return sqlite3.connect(uri, uri=True, check_same_thread=False)
    except sqlite3.Error as exc:
        raise ConfigError("--skus-db", f"{path}: {exc}") from None


def _run_query(conn: sqlite3.Connection, query: str) -> sqlite3.Cursor:
    try:
        cursor = conn.execute(query)
    except sqlite3.Error as exc:
        raise ConfigError("--skus-query", f"the catalog query failed: {exc}") from None
    if cursor.description is None or len(cursor.description) != 1:
        width = 0 if cursor.description is None else len(cursor.description)
        raise ConfigError(
            "--skus-query", f"returns {width} columns; expected exactly one (the SKU)"
        )
    return cursor


def check_source(settings: SkuSource) -> None:
    """Preflight: the file exists and parses, or the catalog opens and the query runs."""
    if settings.skus_file:
        next(_file_skus(settings.skus_file), None)  # opens it and reads the header / first SKU
        return
    assert settings.skus_db and settings.skus_query
    conn = _open_catalog(settings.skus_db)
    try:
        cursor = _run_query(conn, settings.skus_query)
        try:
            cursor.fetchone()
        except sqlite3.Error as exc:
            raise ConfigError("--skus-query", f"the catalog query failed: {exc}") from None
    finally:
        conn.close()


async def sku_batches(settings: SkuSource) -> AsyncIterator[list[str]]:
    """Stream the source's SKUs in batches (unsorted, possibly with duplicates)."""
    if settings.skus_file:
        lines = _file_skus(settings.skus_file)
        while True:
            batch = await asyncio.to_thread(
                lambda: [s for _, s in zip(range(BATCH), lines, strict=False)]
            )
            if not batch:
                return
            yield batch
    assert settings.skus_db and settings.skus_query
    conn = _open_catalog(settings.skus_db)
    try:
        # A sorted query over a big catalog takes seconds: off the event loop.
        cursor = await asyncio.to_thread(_run_query, conn, settings.skus_query)
        while True:
            try:
                rows = await asyncio.to_thread(cursor.fetchmany, BATCH)
            except sqlite3.Error as exc:
                raise ConfigError("--skus-query", f"the catalog query failed: {exc}") from None
            if not rows:
                return
            yield [sku for row in rows if (sku := _clean(row[0]))]
    finally:
        conn.close()
