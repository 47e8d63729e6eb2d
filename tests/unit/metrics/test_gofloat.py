"""`go_float` writes every value as prometheus_client's `floatToGoString` does."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from hypothesis import example, given
from hypothesis import strategies as st
from prometheus_client import utils

from exporter.metrics.gofloat import go_float

if TYPE_CHECKING:
    from collections.abc import Callable

floatToGoString: Final[Callable[[float], str]] = utils.floatToGoString  # noqa: N816 - its name

EDGES = (
    0,
    1,
    1023,
    1024,
    999_999,
    1_000_000,
    1_000_001,
    10**10,
    10**15,
    2**53 - 1,
    2**53,
    2**53 + 1,
    10**16,
    2**63,
    -1,
    -(2**53),
)


@given(st.floats())
@example(0.0)
@example(-0.0)
@example(float("inf"))
@example(float("-inf"))
@example(float("nan"))
@example(5e-324)  # the smallest subnormal
@example(1.7976931348623157e308)
@example(1e16)
@example(9999999999999998.0)
@example(1e-5)
@example(999_999.5)
@example(1_000_000.0)
@example(1_765_000_123.456)
@example(15_000_000_000.0)  # two digits: `e+10`, or `e+010` in 0.24
def test_floats_are_written_as_the_library_writes_them(value: float) -> None:
    assert go_float(value) == floatToGoString(value)


@given(st.one_of(st.integers(), st.integers(-(2**70), 2**70), st.sampled_from(EDGES)))
def test_ints_are_written_as_the_library_writes_them(value: int) -> None:
    try:
        expected = floatToGoString(value)
    except OverflowError:  # beyond any float: the library cannot write it either
        return
    assert go_float(value) == expected


@given(st.sampled_from(EDGES))
def test_integral_floats_and_bools_too(value: int) -> None:
    assert go_float(float(value)) == floatToGoString(float(value))
    assert go_float(value % 2 == 0) == floatToGoString(value % 2 == 0)
