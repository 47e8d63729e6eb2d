"""Sample values as prometheus_client writes them (Go's float format), the common ones fast.

`floatToGoString` turns every value into a float, checks it for infinities and NaN, and
writes its `repr`. A scrape writes hundreds of values, most of them counts and byte counts
(ints) or positive times: `go_float` writes those itself, the same bytes, and leaves the
rest to the library. tests/unit/metrics/test_gofloat.py compares the two on any float or
int (infinities, NaN, -0.0, subnormals, huge and tiny values).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from collections.abc import Callable

_library: Final[Callable[[float], str]] = floatToGoString
"""prometheus_client's own value formatting, typed."""

_SMALL: Final[tuple[str, ...]] = tuple(f"{number}.0" for number in range(1024))
"""Small counts, written once: 0, 1, layers, runs."""
_EXACT: Final = 2**53
"""Ints up to here are floats exactly: `repr(float(n))` is n's digits and `.0`."""
_EXPONENT: Final = 1_000_000
"""Go writes an exponent from 7 digits before the dot on (prometheus_client: a dot past 6)."""
_FIXED: Final = 1e16
"""`repr` writes floats below this without an exponent."""
_EXPONENTS: Final[tuple[str, ...]] = tuple(_library(10.0**power)[1:] for power in range(16))
"""The exponent the library writes for each power of ten below `_FIXED` (`e+06`, `e+10`),
taken from the library itself: 0.24 writes `e+010` where 0.26 writes `e+10`."""


def go_float(value: float) -> str:
    """`floatToGoString(value)`, the same text, without its detours for the common values."""
    kind = type(value)
    if kind is int:
        if 0 <= value < len(_SMALL):
            return _SMALL[int(value)]
        if 0 <= value <= _EXACT:
            if value < _EXPONENT:
                return f"{value}.0"
            digits = str(value)
            mantissa = f"{digits[0]}.{digits[1:]}".rstrip("0.")
            return mantissa + _EXPONENTS[len(digits) - 1]
    elif kind is float and 0.0 <= value < _FIXED:  # finite and not negative (-0.0 included)
        text = repr(value)
        dot = text.find(".")
        if dot > 6:  # as prometheus_client: Go writes an exponent sooner than Python
            mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1 :]}".rstrip("0.")
            return mantissa + _EXPONENTS[dot - 1]
        return text
    return _library(value)
