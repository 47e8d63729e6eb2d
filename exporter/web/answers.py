"""Answers written in slices, so that a client that does not read holds no copy of them.

aiohttp writes a `web.Response` body to the transport in one `write`: what the socket does
not take at once is copied into the transport's buffer, so every client that asks for a
5 MB `/metrics` and never reads holds 5 MB of the process (300 of them held 1.7 GiB). Here a
body larger than `SLICE` is written `SLICE` bytes at a time, each write waiting while the
transport's buffer is over its high-water mark (64 KiB): a reader that stops holds at most
two slices and the high-water mark, and the answer as a whole has `timeout` seconds.

`Pacer` lets answers start one per turn of the event loop, so that a burst of them (each
`/metrics` is rendered for its request) cannot keep the loop from its sockets.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any, Final, Protocol, runtime_checkable

import aiohttp

if TYPE_CHECKING:
    from collections.abc import Callable

    from aiohttp.abc import AbstractStreamWriter

SLICE: Final = 64 * 1024
"""Bytes per write to the transport; bodies up to this size are written as aiohttp does."""


@runtime_checkable
class Holding(Protocol):
    """An answer written in slices that tells what it keeps alive for its reader meanwhile.

    The listener counts it, with the transport's buffer, against its cap on the bytes held
    for stalled readers (`exporter.web.listener.MAX_BUFFERED`). `SlicedBody` is one; the
    `/metrics` answer written from the renderer's pieces (`exporter.metrics.scrape`) another.
    """

    @property
    def held(self) -> int:
        """Bytes kept alive by this answer alone (not the transport's), 0 once written."""


class SlicedBody(aiohttp.Payload):
    """A bytes body written `SLICE` bytes at a time within `timeout` seconds in all.

    Past the deadline `late` is called (it closes the connection) and the write fails with
    ConnectionResetError, which aiohttp takes as a client gone; `finished` is called at the
    end either way.
    """

    def __init__(
        self,
        value: bytes,
        timeout: float,
        late: Callable[[], None],
        finished: Callable[[], None],
        **kwargs: Any,  # noqa: ANN401 - aiohttp's payload options
    ) -> None:
        super().__init__(value, **kwargs)
        self._value: bytes = value
        self._size = len(value)
        self._timeout = timeout
        self._late = late
        self._finished = finished
        self.sent = 0
        """Bytes handed to the transport so far."""

    @property
    def held(self) -> int:
        """The whole body while it is written: what is left of it pins all of it."""
        return len(self._value)

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The body as text (aiohttp's `Response.text`)."""
        return self._value.decode(encoding, errors)

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        """The body (aiohttp's test client and `Response.body`)."""
        del encoding, errors
        return self._value

    async def write(self, writer: AbstractStreamWriter) -> None:
        """Write the body in slices, each waiting while the transport is over its high water.

        At the end, or when the connection goes, the body is let go at once: an error's
        traceback keeps this frame, and a cycle holding it waits for the garbage collector,
        which counts objects, not bytes (300 dropped readers held 260 MiB so).
        """
        view: memoryview | None = memoryview(self._value)
        piece: memoryview | None = None
        try:
            async with asyncio.timeout(self._timeout):
                while view is not None and self.sent < len(view):
                    piece = view[self.sent : self.sent + SLICE]
                    self.sent += len(piece)
                    await writer.write(piece)
        except TimeoutError:
            self._late()
            raise ConnectionResetError("the answer was not read in time") from None
        finally:
            piece = view = None
            self._value = b""
            self._finished()

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        """As `write`: the length is the body's own (aiohttp sets Content-Length from it)."""
        del content_length
        await self.write(writer)


class Pacer:
    """Answers start one per turn of the event loop, so that it reads its sockets in between.

    300 clients asking for a 3.4 MB `/metrics` at once had their 300 renders (20-40 ms each)
    run in one turn of the loop: `/-/healthy` waited seconds, and 300 bodies were alive
    before the first stalled reader could be let go. Here each request waits its turn
    (first come, first served): one is let go per turn, the next turn is armed with a
    timer, which the loop runs after it has polled its sockets.
    """

    def __init__(self) -> None:
        self._queue: deque[asyncio.Future[None]] = deque()
        self._armed = False

    @property
    def waiting(self) -> int:
        """Requests waiting for their turn."""
        return len(self._queue)

    async def turn(self) -> None:
        """Wait for this request's turn."""
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[None] = loop.create_future()
        self._queue.append(turn)
        if not self._armed:
            self._armed = True
            loop.call_soon(self._next)
        await turn

    def _next(self) -> None:
        while self._queue:
            turn = self._queue.popleft()
            if not turn.done():  # else its request was cancelled
                turn.set_result(None)
                break
        if self._queue:
            asyncio.get_running_loop().call_later(0, self._next)
        else:
            self._armed = False
