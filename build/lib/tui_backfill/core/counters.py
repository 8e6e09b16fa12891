"""Counters of a run: those every pipeline has, and the base a pipeline declares its own on.

A pipeline subclasses `CounterSet` with one int field per counter it keeps (the image job's
`scanned_skus`, `uploaded`, ...), names which field counts scanned groups and which counts
bytes, and the engine adds to them by name. Mutable inside the engine; committed with the
checkpoint as JSON (field names as keys) and copied into every snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self


@dataclass(slots=True, kw_only=True)
class CounterSet:
    """Failed items, errors by code and the carryover of earlier runs' failed items."""

    GROUPS: ClassVar[str] = ""  # the field counting groups scanned (SKUs, objects)
    BYTES: ClassVar[str] = ""  # the field counting bytes moved ("" when none)

    failed_items: int = 0
    errors_by_code: dict[str, int] = field(default_factory=dict)
    carryover_planned: int = 0  # failed items of earlier runs retried first
    carryover_done: int = 0
    carryover_failed: int = 0

    @property
    def errors_total(self) -> int:
        return sum(self.errors_by_code.values())

    @property
    def groups(self) -> int:
        return int(getattr(self, self.GROUPS)) if self.GROUPS else 0

    def count_error(self, code: str) -> None:
        self.errors_by_code[code] = self.errors_by_code.get(code, 0) + 1

    def add(self, name: str, amount: int = 1) -> None:
        setattr(self, name, getattr(self, name) + amount)

    def copy(self) -> Self:
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["errors_by_code"] = dict(self.errors_by_code)
        return type(self)(**data)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Self:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
