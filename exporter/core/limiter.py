"""A concurrency limit that can change while work waits on it.

`asyncio.Semaphore` cannot be resized, and replacing one on reload leaves the runs already
queued on the old one: two limits are then in force at once and their sum is what the server
sees. A `Limiter` is one object per limit for the life of the process; `resize` changes the
limit in place. Runs holding a slot keep it; waiters start only while fewer than `limit` slots
are held, in arrival order. `None` means unlimited.

Several limits nest by taking their slots one after another (always in the same order, e.g.
the server's and then the fleet-wide one), which cannot deadlock.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class Limiter:
    """At most `limit` holders at once (None: no limit); FIFO for the ones waiting."""

    def __init__(self, limit: int | None) -> None:
        _check(limit)
        self._limit = limit
        self._held = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    @property
    def limit(self) -> int | None:
        """The limit in force."""
        return self._limit

    @property
    def held(self) -> int:
        """Slots held right now (may exceed `limit` just after it was lowered)."""
        return self._held

    @property
    def waiting(self) -> int:
        """Holders queued for a slot."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    def resize(self, limit: int | None) -> None:
        """Change the limit; holders keep their slots, waiters start as room allows."""
        _check(limit)
        self._limit = limit
        self._wake()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold one slot for the body of the `async with`; waits while the limit is reached."""
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    def _has_room(self) -> bool:
        return self._limit is None or self._held < self._limit

    async def _acquire(self) -> None:
        if not self._waiters and self._has_room():
            self._held += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # granted and cancelled in the same turn: give it back
            else:
                self._waiters.remove(waiter)
                self._wake()
            raise

    def _release(self) -> None:
        self._held -= 1
        self._wake()

    def _wake(self) -> None:
        """Grant slots to the first waiters while there is room (a grant counts at once)."""
        while self._waiters and self._has_room():
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._held += 1
                waiter.set_result(None)


def _check(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ValueError(f"a limit must be at least 1, got {limit}")
