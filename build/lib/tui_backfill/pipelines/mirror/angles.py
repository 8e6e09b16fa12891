"""Angle specs: `1`, `1-4`, `1,2,3`, `1-2,4` -> a sorted tuple of distinct positive angles."""

from __future__ import annotations

import re

from tui_backfill.outcomes import ConfigError

_PART = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d+)\s*)?$", re.ASCII)  # digits 0-9 only
MAX_ANGLE = 999

ACCEPTED = "a list of positive angles and ranges such as 1-3, 1,2,3 or 1-2,4"


def _number(text: str, spec: str, field: str) -> int:
    if len(text.lstrip("0")) > len(str(MAX_ANGLE)):  # and never int() of 5,000 digits
        raise ConfigError(field, f"{spec!r}: angle {text} is above {MAX_ANGLE}")
    return int(text)


def parse_angles(spec: str, field: str = "--angles") -> tuple[int, ...]:
    """Parse and normalise an angle spec; raise ConfigError naming `field` when it is bad."""
    if not spec or not spec.strip():
        raise ConfigError(field, f"empty; expected {ACCEPTED}")
    angles: set[int] = set()
    for part in spec.split(","):
        match = _PART.match(part)
        if match is None:
            raise ConfigError(field, f"{spec!r} is malformed at {part!r}; expected {ACCEPTED}")
        low = _number(match.group(1), spec, field)
        high = _number(match.group(2), spec, field) if match.group(2) is not None else low
        if low < 1 or high < 1:
            raise ConfigError(field, f"{spec!r}: angles start at 1; expected {ACCEPTED}")
        if high < low:
            raise ConfigError(
                field, f"{spec!r}: range {low}-{high} is reversed; write {high}-{low}"
            )
        if high > MAX_ANGLE:
            raise ConfigError(field, f"{spec!r}: angle {high} is above {MAX_ANGLE}")
        angles.update(range(low, high + 1))
    return tuple(sorted(angles))
