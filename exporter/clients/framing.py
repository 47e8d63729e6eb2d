"""A bound on the HTTP framing of a pull's body: no chunk-size line may run on unbounded.

aiohttp's C parser (llhttp) accepts a chunk-size line padded with any number of spaces, or a
chunk extension of any length, and its pure-Python parser buffers such a line until its
CRLF comes. Either way a server that sends one without end holds the run until its stall
timeout, and the Python parser holds the bytes in memory. So the raw bytes the socket hands
the parser are watched here, whatever the parser makes of them.

Where the raw stream's last newline fell is known from each read (`rfind`, from the end), and
so are the body bytes the parser passed on (`StreamReader.total_bytes`); bytes after the last
newline that are not body are framing. Every framing line ends in CRLF, so a run of framing
without a newline longer than `MAX_FRAMING_LINE_BYTES` is a line that long: a malformed body.
The body bytes of the read that held the newline are all counted as coming after it, so the
framing seen is a lower bound and a valid body never trips it. The cost is one `rfind` and a
few integer operations per read, none per byte or per chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Final, Self

import aiohttp

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aiohttp.connector import Connection

MAX_FRAMING_LINE_BYTES: Final = 4096
"""Longest chunk-size, extension or trailer line accepted. A real one is a few hex digits and
CRLF (Ollama, Go's net/http, sends no extensions); aiohttp's own line limit is 8190."""


class FramingError(aiohttp.ClientPayloadError):
    """A chunk-size, extension or trailer line of the body ran past the limit."""


class FramingGuard(asyncio.Protocol):
    """Stands between a connection's transport and aiohttp's protocol, counting what it reads.

    Installed before the response's headers are read (`GuardedResponse.start`), so bytes that
    came with the headers count too; watches the body once `watch` names it.
    """

    def __init__(self, inner: asyncio.Protocol, transport: asyncio.BaseTransport) -> None:
        self._inner = inner
        self._transport = transport
        self._content: aiohttp.StreamReader | None = None
        self._tail = 0
        """Raw bytes since the stream's last newline."""
        self._base = 0
        """The body's length before the read that held that newline."""

    @classmethod
    def install(cls, connection: Connection) -> Self | None:
        """Put a guard in front of the connection's protocol (None when there is no socket)."""
        transport = connection.transport
        inner = transport.get_protocol() if transport is not None else None
        if isinstance(inner, FramingGuard):
            # aiohttp pools a connection when its body ends, before the last run lets go.
            inner = inner._inner  # noqa: SLF001 (the same class)
        if transport is None or not isinstance(inner, asyncio.Protocol):
            return None
        guard = cls(inner, transport)
        transport.set_protocol(guard)
        return guard

    def watch(self, content: aiohttp.StreamReader) -> None:
        """Fail `content`'s reads once its framing runs over; checks what came already."""
        self._content = content
        self._check()

    def remove(self) -> None:
        """Hand the transport back to aiohttp's protocol (the connection may be reused)."""
        self._content = None
        if self._transport.get_protocol() is self:
            self._transport.set_protocol(self._inner)

    def data_received(self, data: bytes) -> None:
        """Hand the bytes to aiohttp's parser, then see how far the last newline is."""
        content = self._content
        before = content.total_bytes if content is not None else 0
        self._inner.data_received(data)
        newline = data.rfind(b"\n")
        if newline < 0:
            self._tail += len(data)
        else:
            self._tail = len(data) - newline - 1
            self._base = before
        if self._tail > MAX_FRAMING_LINE_BYTES:
            self._check()

    def _check(self) -> None:
        content = self._content
        if content is None or content.exception() is not None or content.is_eof():
            return
        body = content.total_bytes - self._base
        if self._tail - min(self._tail, body) > MAX_FRAMING_LINE_BYTES:
            content.set_exception(
                FramingError(
                    f"a chunk-size, extension or trailer line longer than"
                    f" {MAX_FRAMING_LINE_BYTES} bytes"
                )
            )
            self._transport.close()  # read no more of it

    def connection_lost(self, exc: Exception | None) -> None:
        """Forwarded; the body is no longer watched."""
        self._content = None
        self._inner.connection_lost(exc)

    def eof_received(self) -> bool | None:
        """Forwarded."""
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        """Forwarded."""
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        """Forwarded."""
        self._inner.resume_writing()


class GuardedResponse(aiohttp.ClientResponse):
    """A response whose connection is guarded from before its headers are read."""

    framing: FramingGuard | None = None

    async def start(self, connection: Connection) -> Self:
        """Install the guard, then read the headers as aiohttp does."""
        self.framing = FramingGuard.install(connection)
        await super().start(connection)
        return self


@contextlib.contextmanager
def framing_watched(response: aiohttp.ClientResponse) -> Iterator[None]:
    """Watch `response`'s body while the block reads it; then take the guard away."""
    guard = response.framing if isinstance(response, GuardedResponse) else None
    if guard is None:
        yield
        return
    guard.watch(response.content)
    try:
        yield
    finally:
        guard.remove()
