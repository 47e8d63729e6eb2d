"""Reading rows back: one strictness for every table of the file.

A row is taken only when every field has the type and range we write; anything else (a value
edited by hand, a damaged page SQLite did not notice) is skipped, counted and logged once per
read. Nothing is coerced: "12" is not a number, 1.0 is not a count.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, TypeVar

from exporter.ollama.protocol import Reason

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

log = logging.getLogger("exporter.store")

_T = TypeVar("_T")
_REASONS = {reason.value: reason for reason in Reason}


class BadRowError(Exception):
    """A field that is not one we could have written."""


class Row:
    """One row's fields by column name, read with the checks below."""

    __slots__ = ("_fields",)

    def __init__(self, columns: Sequence[str], values: Sequence[object]) -> None:
        if len(columns) != len(values):
            raise BadRowError("column count")
        self._fields = dict(zip(columns, values, strict=True))

    def text(self, column: str) -> str:
        """A string."""
        value = self._fields[column]
        if not isinstance(value, str):
            raise BadRowError(column)
        return value

    def number(self, column: str) -> float:
        """A finite real (SQLite may hand back an integer for a REAL column)."""
        value = self._fields[column]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise BadRowError(column)
        if not math.isfinite(value):
            raise BadRowError(column)
        return float(value)

    def optional_number(self, column: str) -> float | None:
        """`number`, or None for NULL."""
        return None if self._fields[column] is None else self.number(column)

    def count(self, column: str) -> int:
        """A non-negative integer."""
        value = self._fields[column]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise BadRowError(column)
        return value

    def flag(self, column: str) -> bool:
        """0 or 1."""
        value = self._fields[column]
        if isinstance(value, bool) or value not in {0, 1}:
            raise BadRowError(column)
        return bool(value)

    def reason(self, column: str) -> Reason | None:
        """A failure reason we know, or None for NULL."""
        value = self._fields[column]
        if value is None:
            return None
        if not isinstance(value, str) or value not in _REASONS:
            raise BadRowError(column)
        return _REASONS[value]

    def blob(self, column: str) -> bytes | None:
        """Bytes, or None for NULL."""
        value = self._fields[column]
        if value is not None and not isinstance(value, bytes):
            raise BadRowError(column)
        return value


def decode_rows(
    columns: Sequence[str],
    rows: Iterable[Sequence[object]],
    decode: Callable[[Row], _T],
    *,
    table: str,
    path: str,
) -> list[_T]:
    """Every row `decode` accepts; the others are skipped with one warning."""
    decoded: list[_T] = []
    skipped = 0
    for values in rows:
        try:
            decoded.append(decode(Row(columns, values)))
        except BadRowError:
            skipped += 1
    if skipped:
        log.warning(
            "skipped stored rows that make no sense",
            extra={"path": path, "table": table, "rows": skipped},
        )
    return decoded
