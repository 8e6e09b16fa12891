"""What a hash-index run needs beyond the shared checks: a bucket, an index, and modes that
make sense together. Every problem is a ConfigError naming the field (exit 2, before work)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from tui_backfill.files import unwritable
from tui_backfill.outcomes import ConfigError
from tui_backfill.seams.index_table import check_table_name

if TYPE_CHECKING:
    from tui_backfill.pipelines.config import Settings

# Options of the image job that mean nothing to the hash index: given, they are a mistake.
MIRROR_ONLY = ("origin", "skus_file", "skus_db", "skus_query")
VERIFY_ONLY = ("repair", "mismatch_file")


def parse_since(text: str, field: str = "--since") -> datetime:
    """An ISO-8601 time (a date alone is its midnight; no zone means UTC), to the second."""
    value = text.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        value += "T00:00:00"
    try:
        moment = datetime.fromisoformat(value[:-1] + "Z" if value.endswith("z") else value)
    except ValueError:
        raise ConfigError(
            field,
            f"{text!r} is not an ISO-8601 time; write e.g. 2026-12-06T09:30:00Z or 2026-12-06",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).replace(microsecond=0)


def validate_hash_run(settings: Settings, where: Mapping[str, str]) -> None:
    from tui_backfill.pipelines.config import BY_NAME, check_bucket

    def field(name: str) -> str:
        return where.get(name, BY_NAME[name].flag)

    for name in MIRROR_ONLY:
        if name in where:
            raise ConfigError(
                field(name), "only for the image job (pipeline mirror), not hash-index"
            )
    if not settings.index_db:
        raise ConfigError(
            "--index-db", "required: the SQLite file of the index table (created when missing)"
        )
    if Path(settings.index_db).is_dir():
        raise ConfigError(field("index_db"), f"{settings.index_db} is a directory, not a file")
    check_table_name(settings.index_table, field("index_table"))
    if not settings.uploader_id:
        raise ConfigError(field("uploader_id"), "must not be empty")
    if settings.since is not None:
        parse_since(settings.since, field("since"))
    if not settings.verify:
        for name in VERIFY_ONLY:
            if getattr(settings, name):
                raise ConfigError(field(name), "only with --verify")
    if settings.limit_objects is not None and settings.limit_objects < 1:
        raise ConfigError(field("limit_objects"), f"{settings.limit_objects}: accepted 1 or more")
    for name in ("emit_sql", "mismatch_file"):
        path = getattr(settings, name)
        if path:
            _check_writable(path, field(name))
    check_bucket(settings, where)


def _check_writable(path: str, field: str) -> None:
    """A file the run will write: not a directory, in a directory that exists, writable."""
    target = Path(path)
    if target.is_dir():
        raise ConfigError(field, f"{path} is a directory; give a file")
    parent = target.resolve().parent
    if not parent.is_dir():
        raise ConfigError(field, f"{path}: its directory does not exist")
    reason = (
        unwritable(path)
        if os.access(target if target.exists() else parent, os.W_OK)
        else ("permission denied")
    )
    if reason is not None:
        raise ConfigError(field, f"{path}: {reason}; give a writable file")


def check_modes(settings: Settings, where: Mapping[str, str], *, dry_run: bool) -> None:
    """Modes that cannot go with a dry run (it downloads nothing and writes nothing)."""
    if not dry_run:
        return
    if settings.verify:
        raise ConfigError(
            field_of(where, "verify"), "a dry run downloads nothing: drop --dry-run or --verify"
        )
    if settings.emit_sql:
        raise ConfigError(
            field_of(where, "emit_sql"), "a dry run writes nothing: drop --dry-run or --emit-sql"
        )


def field_of(where: Mapping[str, str], name: str) -> str:
    return where.get(name, "--" + name.replace("_", "-"))
