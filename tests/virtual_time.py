"""An event loop whose clock is virtual: when it would wait, its time jumps to the next timer.

`run_virtual(coro)` runs a test coroutine on it, as `asyncio.run` does. Everything that reads
the loop's time follows: `asyncio.sleep`, `call_later` (the listener's deadlines), aiohttp's
timeouts, the simulator's ticks, and the exporter's own clock (`exporter.core.clock`, which
reads the running loop's time). A 60 ms tick, a 10 s stall, an hour's interval cost no real
time; the order of events is the one the real clock would give.

Time only jumps when the loop has nothing else to do: no callback ready, no socket readable
after a short real look (data between two sockets of this loop is in the peer's buffer by the
time `send` returns), and no job in the executor (a thread's bcrypt or `getaddrinfo`: while
one runs, time flows as really as it does for the thread). Sockets served by other threads or
processes are not followed: tests that talk to those run on the real loop.
"""

from __future__ import annotations

import asyncio
import selectors
import time
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

T = TypeVar("T")

START = 1_000.0
"""The virtual monotonic time a loop starts at."""
UNIX_START = 1_700_000_000.0
"""The Unix time at START."""
SETTLE_SECONDS = 0.0005
"""The real look for socket events before time jumps."""


class _JumpingSelector(selectors.DefaultSelector):
    """Select as usual; when nothing is ready and only timers wait, jump to the first one."""

    def __init__(self, loop: VirtualTimeLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self._loop
        if timeout is not None and timeout <= 0:
            return super().select(0)
        if loop.busy_threads:  # a thread works: time flows for real until it is done
            started = time.monotonic()
            ready = super().select(timeout)
            loop.now += time.monotonic() - started
            return ready
        ready = super().select(SETTLE_SECONDS if timeout is None else min(timeout, SETTLE_SECONDS))
        if ready or timeout is None:
            return ready or super().select(None)
        loop.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector loop on virtual time (see the module)."""

    def __init__(self) -> None:
        self.now = START
        self.busy_threads = 0
        super().__init__(_JumpingSelector(self))

    def time(self) -> float:
        return self.now

    def unix_time(self) -> float:
        """The Unix time that goes with `time()`: `exporter.core.clock` reads it."""
        return UNIX_START + (self.now - START)

    def run_in_executor(  # type: ignore[override]
        self, executor: Any, func: Callable[..., T], *args: Any
    ) -> asyncio.Future[T]:
        future = super().run_in_executor(executor, func, *args)
        self.busy_threads += 1

        def done(_: asyncio.Future[T]) -> None:
            self.busy_threads -= 1

        future.add_done_callback(done)
        return future


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)` on a `VirtualTimeLoop`."""
    with asyncio.Runner(loop_factory=VirtualTimeLoop) as runner:
        return runner.run(coro)
