"""The clock a run reads and sleeps on, so tests can drive time by hand.

`SYSTEM_CLOCK` is the real one. Tests pass their own (see tests/integration/test_pull.py) to run a
pull in process with exact phase durations, stalls and timeouts, and no waiting.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds for durations and deadlines, Unix time for timestamps, and sleep."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    def time(self) -> float:
        """Unix time."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once `seconds` of `monotonic` time have passed."""
        ...


class SystemClock:
    """`time.monotonic`, `time.time` and `asyncio.sleep`."""

    __slots__ = ()

    def monotonic(self) -> float:
        """`time.monotonic()`."""
        return time.monotonic()

    def time(self) -> float:
        """`time.time()`."""
        return time.time()

    async def sleep(self, seconds: float) -> None:
        """`asyncio.sleep(seconds)`."""
        await asyncio.sleep(seconds)


SYSTEM_CLOCK: SystemClock = SystemClock()
