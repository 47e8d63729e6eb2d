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
    """The running event loop's time (`time.monotonic`), `time.time` and `asyncio.sleep`.

    In a loop, monotonic time is the loop's own `time()`: the same number `time.monotonic()`
    gives for asyncio's loops, and the one its timers and sleeps follow, so a test's loop on
    virtual time (tests/virtual_time.py) moves this clock too. Such a loop tells its Unix time
    with `unix_time()`.
    """

    __slots__ = ()

    def monotonic(self) -> float:
        """The running loop's `time()`; `time.monotonic()` outside a loop."""
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    def time(self) -> float:
        """`time.time()`, or the running loop's `unix_time()` when it has one."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return time.time()
        unix_time = getattr(loop, "unix_time", None)
        return float(unix_time()) if unix_time is not None else time.time()

    async def sleep(self, seconds: float) -> None:
        """`asyncio.sleep(seconds)`."""
        await asyncio.sleep(seconds)


SYSTEM_CLOCK: SystemClock = SystemClock()
