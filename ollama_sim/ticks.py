"""The `completed` values of a layer's lines as a few arithmetic runs, never one by one.

A layer of 10**12 bytes at 1 MB/s is 16.7 million lines. Building them as a list before the
first one is sent blocked the simulator's loop for seconds; `Ticks` holds the runs instead
(a constant latency run, a rising run, a rollback, the settling 100% lines), so its length,
any one value, a prefix and what a client counts from it (`climb`) cost the same at any
size. Iterating yields the values lazily, one per line sent.
"""

from __future__ import annotations

import itertools
import typing
from collections.abc import Sequence
from typing import overload

if typing.TYPE_CHECKING:
    from collections.abc import Iterable, Iterator


class Ticks(Sequence[int]):
    """Concatenated runs `(first, step, count)`: first, first + step, ... (`step >= 0`)."""

    __slots__ = ("_length", "runs")

    def __init__(self, runs: Iterable[tuple[int, int, int]] = ()) -> None:
        self.runs: tuple[tuple[int, int, int], ...] = tuple(run for run in runs if run[2] > 0)
        if any(step < 0 for _, step, _ in self.runs):
            raise ValueError("a run of ticks never goes down")
        self._length = sum(count for _, _, count in self.runs)

    def __len__(self) -> int:
        return self._length

    def __iter__(self) -> Iterator[int]:
        for first, step, count in self.runs:
            if step:
                yield from range(first, first + step * count, step)
            else:
                yield from itertools.repeat(first, count)

    @overload
    def __getitem__(self, index: int) -> int: ...

    @overload
    def __getitem__(self, index: slice) -> Ticks: ...

    def __getitem__(self, index: int | slice) -> int | Ticks:
        if isinstance(index, slice):
            start, stop, stride = index.indices(self._length)
            if stride != 1:
                return Ticks((self[i], 0, 1) for i in range(start, stop, stride))
            return self._between(start, max(start, stop))
        position = index + self._length if index < 0 else index
        if not 0 <= position < self._length:
            raise IndexError("tick index out of range")
        for first, step, count in self.runs:
            if position < count:
                return first + step * position
            position -= count
        raise AssertionError  # unreachable: position < length

    def _between(self, start: int, stop: int) -> Ticks:
        runs, offset = [], 0
        for first, step, count in self.runs:
            low, high = max(start - offset, 0), min(stop - offset, count)
            if low < high:
                runs.append((first + step * low, step, high - low))
            offset += count
        return Ticks(runs)

    def __add__(self, other: Ticks) -> Ticks:
        return Ticks(self.runs + other.runs)

    def __repr__(self) -> str:
        return f"Ticks({list(self.runs)!r})"

    def climb(self) -> tuple[int, int, int]:
        """(bytes gained, times it went down, last value), as a client folds the lines (§3)."""
        grown = regressions = 0
        previous: int | None = None
        for first, step, count in self.runs:
            if previous is not None:
                if first >= previous:
                    grown += first - previous
                else:
                    regressions += 1
            grown += step * (count - 1)
            previous = first + step * (count - 1)
        return grown, regressions, 0 if previous is None else previous


def climb(values: Sequence[int]) -> tuple[int, int, int]:
    """`Ticks.climb` for any sequence of `completed` values (one step at a time)."""
    if isinstance(values, Ticks):
        return values.climb()
    grown = regressions = 0
    for previous, value in itertools.pairwise(values):
        if value >= previous:
            grown += value - previous
        else:
            regressions += 1
    return grown, regressions, values[-1] if values else 0
