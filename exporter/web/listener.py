"""The listening side of the HTTP server: bind, limits per connection and in total.

`web.run_app` binds late (after the app, and so the scheduler, started), gives a traceback
for a port in use, and has no protection against slow clients: a connection that never
finishes its request holds a file descriptor, and about 1,000 of them take every descriptor
of a default 1024-fd process, so the pulls' own sockets fail; a client that asks for
`/metrics` and never reads holds a copy of the answer. Here:

- `bind` opens the listening sockets first; any problem is one `ListenError` line, and
  `raise_fd_limit` lifts the soft `RLIMIT_NOFILE` to the hard limit (`exporter.web.binding`).
- `ConnectionGuard` caps open server connections below the fd limit, leaving room for the
  pulls (`connection_cap`), and fits the cap again whenever the pairs in force change (a
  reload, discovery: `ConnectionGuard.fit`). At the cap the connection that has waited
  longest (since it was accepted, its request began or its last answer ended), whatever it
  waits for, is closed to make room, so a real scrape always gets in.
- Every request, head and body, must arrive within `REQUEST_TIMEOUT` of its first byte (the
  first request: of the accept, the TLS handshake included, see `TLSGate`); a body is
  awaited whole before its handler runs.
- Handlers start one per turn of the event loop (`Pacer`; the health checks skip it), so
  that a burst of expensive answers cannot keep the loop from its sockets.
- Answers are written in slices (`exporter.web.answers`) within `ANSWER_TIMEOUT`; a
  connection whose writing stays paused (the client reads nothing) for `WRITE_TIMEOUT` is
  closed, and when the bytes held for such stalled readers pass `MAX_BUFFERED`, the one
  stalled longest is closed first.
- Socket errors and malformed requests are short lines (`exporter.web.quiet`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections import deque
from typing import TYPE_CHECKING, Any, Final, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from exporter.core.ratelog import RateLimitedLog
from exporter.web.answers import SLICE, Holding, Pacer, SlicedBody
from exporter.web.binding import (
    BACKLOG,
    ListenError,
    bind,
    bound_addresses,
    format_address,
    raise_fd_limit,
)
from exporter.web.quiet import QuietErrors
from exporter.web.tlsgate import TLSGate, abort

if TYPE_CHECKING:
    import socket
    import ssl
    from collections.abc import AsyncIterator, Callable, Mapping

    from aiohttp.streams import StreamReader
    from aiohttp.typedefs import Handler

__all__ = [
    "ConnectionGuard",
    "ListenError",
    "QuietErrors",
    "bind",
    "bound_addresses",
    "connection_cap",
    "format_address",
    "raise_fd_limit",
    "serve",
    "start",
]

log = logging.getLogger("exporter.listener")

REQUEST_TIMEOUT: Final = 10.0
"""Seconds a request has, head and body, from its first byte (Go's ReadTimeout)."""
WRITE_TIMEOUT: Final = 10.0
"""Seconds an answer may stay unread (the transport over its high-water mark)."""
ANSWER_TIMEOUT: Final = 60.0
"""Seconds to write one answer larger than a slice, however slowly it is read."""
MAX_BODY: Final = 64 * 1024
"""A body is awaited whole before its handler runs when it declares at most this much
(the API's own limit: larger ones are answered 413 by their handler, unread)."""
FREE_PATHS: Final = frozenset({"/-/healthy", "/-/ready"})
"""Paths answered without waiting for their turn (`Pacer`): cheap, and they must answer
under any load."""
MAX_BUFFERED: Final = 64 * 1024 * 1024
"""Bytes held in all for answers to stalled readers (their buffers and their bodies)."""
KEEPALIVE_TIMEOUT: Final = 60.0
"""Seconds an idle keep-alive connection stays open (Prometheus scrapes every 15-60 s)."""
SHUTDOWN_TIMEOUT: Final = 2.0
"""Seconds open HTTP requests get on exit; pulls are cancelled at once."""
RESERVED_FDS: Final = 128
"""Descriptors never given to HTTP clients: logs, the state file, DNS, the loop itself."""
FDS_PER_PAIR: Final = 2
"""Kept free per configured (server, model) pair: its pull's socket, and one spare."""
MAX_CONNECTIONS: Final = 1024
"""Open HTTP connections at most, however high the fd limit."""
MIN_CONNECTIONS: Final = 16


def connection_cap(fd_limit: int, pairs: int) -> int:
    """Open HTTP connections allowed, leaving the pulls and the process their descriptors."""
    spare = fd_limit - RESERVED_FDS - FDS_PER_PAIR * pairs
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, spare))


class _Queue(list[Any]):
    """aiohttp's `_messages` in a list: its deque is 760 bytes even empty, on every connection.

    At most 32 requests wait in it (pipelined), none while the connection idles.
    """

    __slots__ = ()

    def popleft(self) -> Any:  # noqa: ANN401 - aiohttp's (message, payload) pair
        """The oldest request."""
        return self.pop(0)


class _Connection(RequestHandler):
    """aiohttp's connection handler, registered with the guard while open.

    Slotted, with a lighter queue: an idle one holds no attribute dict and no empty deque.
    """

    __slots__ = ("answer", "body", "busy", "counted", "deadline", "guard", "requests")

    def __init__(
        self, server: web.Server, guard: ConnectionGuard, options: Mapping[str, Any]
    ) -> None:
        super().__init__(server, loop=asyncio.get_running_loop(), **options)
        if isinstance(self._messages, deque) and not self._messages:  # aiohttp's, as expected
            self._messages = cast("deque[Any]", _Queue())  # the four deque operations it uses
        self.guard = guard
        self.requests = 0
        """Requests that reached the app on this connection."""
        self.busy = 0
        """Requests being answered now (their head arrived)."""
        self.deadline: asyncio.TimerHandle | None = None
        """The request deadline: runs from a request's first byte until it is whole."""
        self.body: StreamReader | None = None
        """The body of the request being answered (whole when it is at EOF)."""
        self.answer: Holding | None = None
        """The answer written in slices now or last, if any."""
        self.counted = False
        """Counted in at accept already (TLS: by its `TLSGate`, before the handshake)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the connection in, maybe making room; start the request deadline."""
        super().connection_made(transport)
        if not self.counted:
            self.guard.opened(self, transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Count the connection out."""
        self.guard.closed(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """The first byte of a request starts its deadline."""
        if self.deadline is None and not self.busy:
            self.guard.request_started(self)
        super().data_received(data)

    def pause_writing(self) -> None:
        """The client does not read fast enough: the write timeout runs."""
        super().pause_writing()
        self.guard.stalled(self)

    def resume_writing(self) -> None:
        """The client reads again."""
        super().resume_writing()
        self.guard.unstalled(self)


class ConnectionGuard:
    """The open server connections: at most `cap`, each bounded in time and in bytes held."""

    def __init__(
        self,
        fd_limit: int,
        pairs: int,
        request_timeout: float = REQUEST_TIMEOUT,
        *,
        write_timeout: float = WRITE_TIMEOUT,
        answer_timeout: float = ANSWER_TIMEOUT,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self.fd_limit = fd_limit
        self.cap = connection_cap(fd_limit, pairs)
        self.request_timeout = request_timeout
        self.write_timeout = write_timeout
        self.answer_timeout = answer_timeout
        self.max_buffered = max_buffered
        self.pacer = Pacer()
        self._open: dict[_Connection, asyncio.BaseTransport] = {}
        """Oldest first: by accept, or by the start of their request or the end of their
        last answer, whichever is latest."""
        self._stalled: dict[_Connection, asyncio.TimerHandle] = {}
        """Connections whose writing is paused, the one stalled longest first."""
        self._refused = RateLimitedLog(log, "connection limit reached, closing connections")
        self._late_log = RateLimitedLog(log, "closing connections whose request was too slow")
        self._stuck_log = RateLimitedLog(log, "closing connections that do not read the answer")
        self._over_log = RateLimitedLog(log, "too many bytes held for slow readers, closing")
        self.closed_counts: dict[str, int] = dict.fromkeys(
            ("cap", "request_timeout", "write_timeout", "answer_timeout", "buffered"), 0
        )
        """Connections closed by each limit since start, for tests and the operator."""

    def fit(self, pairs: int) -> None:
        """Recompute the cap for the `pairs` now in force (each reload and discovery change).

        A lower cap holds at once: connections over it are closed (the ones that waited
        longest first), since the new pairs' pulls need those descriptors.
        """
        cap = connection_cap(self.fd_limit, pairs)
        if cap == self.cap:
            return
        log.info(
            "connection cap changed",
            extra={
                "max_connections": cap,
                "was": self.cap,
                "pairs": pairs,
                "fd_limit": self.fd_limit,
            },
        )
        self.cap = cap
        while len(self._open) > cap and self._make_room():
            pass

    @property
    def count(self) -> int:
        """Connections open now."""
        return len(self._open)

    @property
    def buffered(self) -> int:
        """Bytes held now for stalled readers: their transports' buffers and their bodies."""
        return sum(self._held(connection) for connection in self._stalled)

    def protocol_factory(
        self, server: web.Server, ssl_context: ssl.SSLContext | None = None
    ) -> Callable[[], asyncio.BaseProtocol]:
        """What `loop.create_server` calls per accepted connection.

        aiohttp's own handler, behind a `TLSGate` when there is an `ssl_context`.
        """
        options: Mapping[str, Any] = server._kwargs  # noqa: SLF001 - the runner's handler options

        def make() -> asyncio.BaseProtocol:
            connection = _Connection(server, self, options)
            if ssl_context is None:
                return connection
            return TLSGate(connection, ssl_context, self)

        return make

    def opened(self, connection: _Connection, transport: asyncio.BaseTransport) -> None:
        """A connection came in: make room if at the cap; its first request's deadline runs."""
        if len(self._open) >= self.cap and not self._make_room():
            self._refused.log(open=len(self._open), cap=self.cap)
            abort(transport)
            return
        self._open[connection] = transport
        self.request_started(connection)

    def closed(self, connection: _Connection) -> None:
        """The connection is gone."""
        self._open.pop(connection, None)
        self._stop_timers(connection)

    def request_started(self, connection: _Connection) -> None:
        """A request's first byte (or the accept): its deadline runs; it counts as new."""
        if connection not in self._open:
            return
        self._touch(connection)
        if connection.deadline is None:
            loop = asyncio.get_running_loop()
            connection.deadline = loop.call_later(self.request_timeout, self._late, connection)

    def stalled(self, connection: _Connection) -> None:
        """Writing to `connection` paused: close it if it stays so; keep the bytes bounded."""
        if connection not in self._open or connection in self._stalled:
            return
        loop = asyncio.get_running_loop()
        self._stalled[connection] = loop.call_later(self.write_timeout, self._stuck, connection)
        total = self.buffered
        while total > self.max_buffered and self._stalled:
            victim = next(iter(self._stalled))
            total -= self._held(victim)
            self._over_log.log(held=total, max_buffered=self.max_buffered)
            self._close(victim, "buffered")

    def unstalled(self, connection: _Connection) -> None:
        """Writing to `connection` goes on."""
        timer = self._stalled.pop(connection, None)
        if timer is not None:
            timer.cancel()

    def _held(self, connection: _Connection) -> int:
        transport = self._open.get(connection)
        held = connection.answer.held if connection.answer is not None else 0
        if transport is not None:
            with contextlib.suppress(Exception):
                held += cast("asyncio.WriteTransport", transport).get_write_buffer_size()
        return held

    def _touch(self, connection: _Connection) -> None:
        transport = self._open.pop(connection, None)
        if transport is not None:
            self._open[connection] = transport

    def _stop_timers(self, connection: _Connection) -> None:
        if connection.deadline is not None:
            connection.deadline.cancel()
            connection.deadline = None
        self.unstalled(connection)

    def _close(self, connection: _Connection, why: str) -> None:
        transport = self._open.pop(connection, None)
        self._stop_timers(connection)
        if transport is not None:
            self.closed_counts[why] += 1
            abort(transport)

    def _make_room(self) -> bool:
        """Close the connection that has waited longest, whatever it waits for."""
        victim = next(iter(self._open), None)
        if victim is None:
            return False
        self._refused.log(open=len(self._open), cap=self.cap)
        self._close(victim, "cap")
        return True

    def _late(self, connection: _Connection) -> None:
        connection.deadline = None
        if connection not in self._open:
            return
        if connection.busy and (connection.body is None or connection.body.is_eof()):
            return  # the request is whole: it is being answered
        self._late_log.log(timeout=self.request_timeout)
        self._close(connection, "request_timeout")

    def _stuck(self, connection: _Connection) -> None:
        self._stalled.pop(connection, None)
        if connection in self._open:
            self._stuck_log.log(timeout=self.write_timeout)
            self._close(connection, "write_timeout")

    def _answer_late(self, connection: _Connection) -> None:
        if connection in self._open:
            self._stuck_log.log(timeout=self.answer_timeout)
            self._close(connection, "answer_timeout")

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Wait for the whole request, then for its turn; slice its answer."""
        connection = request.protocol
        if not isinstance(connection, _Connection):
            return await handler(request)
        self.request_started(connection)  # pipelined: its bytes came during the last answer
        connection.requests += 1
        connection.busy += 1
        connection.body = request.content
        try:
            if (request.content_length or 0) <= MAX_BODY:  # larger: the handler says 413
                await request.content.wait_eof()  # under the request deadline
                _stop_deadline(connection)
            if request.path not in FREE_PATHS:
                await self.pacer.turn()
                if request.transport is None or request.transport.is_closing():
                    return web.Response(status=408)  # closed while it waited: nobody reads
            response = await handler(request)
        except ConnectionError:
            transport = request.transport
            if transport is None or transport.is_closing():  # closed here: the body was late
                return web.Response(status=408)  # nobody reads it; aiohttp logs nothing
            raise
        finally:
            connection.busy -= 1
            connection.body = None
            _stop_deadline(connection)
        return self._sliced(connection, request, response)

    def _sliced(
        self, connection: _Connection, request: web.Request, response: web.StreamResponse
    ) -> web.StreamResponse:
        """Give a large bytes body to `SlicedBody`, so a slow reader holds no copy of it."""
        if not isinstance(response, web.Response) or request.method == "HEAD":
            return response
        body = response.body
        if isinstance(body, Holding):  # it slices itself (`/metrics`): what it holds counts
            connection.answer = body
        if not isinstance(body, bytes) or len(body) <= SLICE:
            return response

        def finished() -> None:
            if connection.answer is sliced:
                connection.answer = None
            self._touch(connection)  # it waits for its next request from now

        sliced = SlicedBody(
            body, self.answer_timeout, lambda: self._answer_late(connection), finished
        )
        connection.answer = sliced
        response.body = sliced
        return response


def _stop_deadline(connection: _Connection) -> None:
    if connection.deadline is not None:
        connection.deadline.cancel()
        connection.deadline = None


@contextlib.asynccontextmanager
async def start(
    app: web.Application,
    sockets: list[socket.socket],
    *,
    ssl_context: ssl.SSLContext | None,
    guard: ConnectionGuard,
) -> AsyncIterator[web.AppRunner]:
    """Serve `app` on the bound `sockets` behind `guard` while the block runs."""
    loop = asyncio.get_running_loop()
    app.middlewares.insert(0, guard.middleware)
    runner = web.AppRunner(
        app,
        access_log=None,
        logger=request_error_log(),
        keepalive_timeout=KEEPALIVE_TIMEOUT,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
    )
    await runner.setup()
    servers: list[asyncio.Server] = []
    try:
        assert runner.server is not None
        factory = guard.protocol_factory(runner.server, ssl_context)
        servers.extend(
            [await loop.create_server(factory, sock=sock, backlog=BACKLOG) for sock in sockets]
        )
        yield runner
    finally:
        for server in servers:
            server.close()
        await runner.cleanup()


async def serve(
    app: web.Application,
    sockets: list[socket.socket],
    *,
    ssl_context: ssl.SSLContext | None,
    guard: ConnectionGuard,
) -> None:
    """Serve `app` on the bound `sockets` until SIGTERM or SIGINT, then shut down in bounds."""
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(QuietErrors())
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The signal handlers stay until the loop closes: a second SIGTERM changes nothing.
    async with start(app, sockets, ssl_context=ssl_context, guard=guard):
        await stop.wait()


class _BadRequestsQuiet(logging.Filter):
    """aiohttp's server log: a malformed request is one debug line, not an error traceback.

    aiohttp logs every unparsable request with `logger.exception` (about 750 bytes each);
    errors of our own handlers (500s) still go out at error level with their traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Turn a bad-request record into one debug line; drop it below debug."""
        exc = record.exc_info[1] if record.exc_info else None
        if not isinstance(exc, HttpProcessingError):
            return True
        if not logging.getLogger("exporter").isEnabledFor(logging.DEBUG):
            return False
        text = exc.message if isinstance(exc.message, str) and exc.message else str(exc)
        record.msg = "bad request: " + record.getMessage()
        record.args = ()
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info, record.exc_text = None, None
        record.error = text.splitlines()[0][:200] if text else type(exc).__name__
        return True


def request_error_log() -> logging.Logger:
    """The logger aiohttp's connection handlers report request errors to."""
    logger = logging.getLogger("exporter.http")
    if not any(isinstance(each, _BadRequestsQuiet) for each in logger.filters):
        logger.addFilter(_BadRequestsQuiet())
    return logger
