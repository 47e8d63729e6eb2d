"""Every client-side hook below aiohttp's public API, in one place.

aiohttp's documented client API (`ClientSession`, `ClientResponse`, its `content`) says nothing
about the socket under a response; the stream path needs four things from there, and they all
live here so that an aiohttp release that moves them breaks one module, which its tests cover:

- a bound on the HTTP framing of a pull's body (`FramingGuard`, below);
- the parser's own error when it rejects a body (`parser_failure`, `watch_malformed_body`),
  which aiohttp records on the connection's protocol without waking a waiting reader;
- pausing the socket between reads (`ReadPause`), which aiohttp's protocol-level pause does
  not allow from outside its parser;
- the proxy aiohttp's `trust_env` would pick for a URL (`env_proxy_for_url`).

Nothing else under exporter/ imports an aiohttp module other than `aiohttp`, `aiohttp.web`,
`aiohttp.abc`, `aiohttp.test_utils`, `aiohttp.hdrs` and (for types) `aiohttp.typedefs`, and
nothing else touches a connection, a protocol or a transport;
tests/unit/repo/test_aiohttp_internals.py keeps it so. The server side keeps its one hook in
exporter/web/listener.py.

The framing bound: no chunk-size line may run on unbounded.

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
from aiohttp.helpers import get_env_proxy_for_url
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from aiohttp.connector import Connection
    from yarl import URL

    from exporter.core.clock import Clock

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


# --------------------------------------------------------------------------- the parser's errors


class MalformedBodyError(aiohttp.ClientPayloadError):
    """aiohttp's parser rejected the body (a bad chunk) after the headers."""


def parser_failure(response: aiohttp.ClientResponse) -> str | None:
    """The HTTP parser's error on this response's connection, if it rejected the bytes."""
    connection = response.connection
    protocol = connection.protocol if connection is not None else None
    failure = protocol.exception() if protocol is not None else None
    return failure.message if isinstance(failure, HttpProcessingError) else None


def overlong_line(exc: BaseException) -> str | None:
    """The message of the over-long line aiohttp's Python parser raised `exc` from, if so."""
    cause = exc.__cause__
    return cause.message if isinstance(cause, LineTooLong) else None


def connection_gone(response: aiohttp.ClientResponse) -> bool:
    """Whether the connection under `response` is closed (or was never there)."""
    connection = response.connection
    return connection is None or connection.closed


def watch_malformed_body(response: aiohttp.ClientResponse) -> Callable[[], None]:
    """Make a read fail at once when aiohttp's parser rejects the body; return the undo.

    When the parser rejects a chunk it closes the connection and records the error on the
    connection's protocol, but a reader already waiting for the body is never woken: it
    would wait for the stall timeout. So the error is handed to the body when the
    connection closes.
    """
    connection = response.connection
    protocol = connection.protocol if connection is not None else None
    closed: asyncio.Future[None] | None = getattr(protocol, "closed", None)
    if closed is None:
        return _nothing
    content = response.content
    watching = [True]

    def on_closed(future: asyncio.Future[None]) -> None:
        # Retrieve the outcome (a reset sets an exception), or asyncio logs it at exit.
        if not future.cancelled():
            future.exception()
        if not watching[0]:
            return
        failure = parser_failure(response)
        if failure is not None and content.exception() is None and not content.is_eof():
            content.set_exception(MalformedBodyError(failure))

    closed.add_done_callback(on_closed)

    def unwatch() -> None:
        watching[0] = False

    return unwatch


def _nothing() -> None:
    return None


# --------------------------------------------------------------------------- pausing the socket


class ReadPause:
    """Holds the socket under a response paused for a while (see exporter/clients/pacing.py).

    The transport is paused directly: aiohttp's protocol-level pause asserts inside its parser.
    """

    __slots__ = ("_transport",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        connection = response.connection
        transport = connection.transport if connection is not None else None
        self._transport = transport if isinstance(transport, asyncio.ReadTransport) else None

    @property
    def possible(self) -> bool:
        """Whether there is a socket to pause."""
        return self._transport is not None

    async def hold(self, seconds: float, clock: Clock) -> None:
        """Let the next bytes pile up in the socket for `seconds`, then read on."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        transport.pause_reading()
        try:
            await clock.sleep(seconds)
        finally:
            if not transport.is_closing():
                transport.resume_reading()


# --------------------------------------------------------------------------- proxies


def env_proxy_for_url(url: URL) -> tuple[URL, aiohttp.BasicAuth | None]:
    """The proxy and its credentials `HTTPS_PROXY`/`HTTP_PROXY` give `url` (`NO_PROXY` honoured).

    aiohttp's own lookup, the one `trust_env` uses, so both agree; raises LookupError when no
    proxy applies. It reads the environment and maybe a netrc file: call it off the loop.
    """
    return get_env_proxy_for_url(url)
