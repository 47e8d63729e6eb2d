"""The listening side of the HTTP server: bind, limits per connection and in total, quiet errors.

`web.run_app` binds late (after the app, and so the scheduler, started), gives a traceback
for a port in use, and has no protection against slow clients: a connection that never
finishes its request head holds a file descriptor for aiohttp's 75 s keep-alive timeout, and
about 1,000 of them take every descriptor of a default 1024-fd process, so the pulls'
own sockets fail. Here:

- `bind` opens the listening sockets first; any problem is one `ListenError` line.
- `raise_fd_limit` lifts the soft `RLIMIT_NOFILE` to the hard limit at start-up.
- `ConnectionGuard` caps open server connections below the fd limit, leaving room for the
  pulls (`connection_cap`), and fits the cap again whenever the pairs in force change (a
  reload, discovery: `ConnectionGuard.fit`). At the cap the oldest connection that is not
  being answered (one that never sent a whole request first) is closed to make room, so a
  real scrape still gets in. A connection must send a complete request head within
  `HEADER_TIMEOUT` (with TLS, the handshake included: TLS connections are counted from
  accept, see `_TLSGate`).
- Malformed requests are one debug line (`request_error_log`), and socket errors that asyncio
  reports (`accept()` out of descriptors, TLS handshakes of strangers) are one warning line
  at most every 10 s (`exporter.core.ratelog`) with a count of the ones left out (`QuietErrors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
import socket
from typing import TYPE_CHECKING, Any, Final, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler

from exporter.core.ratelog import RateLimitedLog

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Mapping

    from aiohttp.typedefs import Handler

log = logging.getLogger("exporter.listener")

HEADER_TIMEOUT: Final = 10.0
"""Seconds a new connection has to send a complete request head (Go's ReadHeaderTimeout)."""
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
_BACKLOG: Final = 128


class ListenError(Exception):
    """The address cannot be listened on; the message is one line for the operator."""


def format_address(host: str, port: int) -> str:
    """`host:port`, with IPv6 hosts in brackets (`[::1]:11435`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(host: str | None, port: int) -> list[socket.socket]:
    """Listening sockets for `host:port` (all interfaces when `host` is None).

    Raises ListenError naming the address and the reason (in use, unknown host, ...).
    """
    shown = format_address(host or "", port)
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise ListenError(f"cannot listen on {shown}: unknown host ({_reason(exc)})") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # one socket per family, as asyncio does
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(_BACKLOG)
            sock.setblocking(False)  # noqa: FBT003 - the socket API
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(f"cannot listen on {shown}: {_reason(exc)}") from None
    return sockets


def _reason(exc: BaseException) -> str:
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return text.replace("\n", " ")


def bound_addresses(sockets: list[socket.socket]) -> list[str]:
    """What the sockets really listen on (the real port of `:0`)."""
    return [format_address(*sock.getsockname()[:2]) for sock in sockets]


def raise_fd_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open file limit", extra={"error": _reason(exc)})
        else:
            log.debug("open file limit raised", extra={"from": soft, "to": wanted})
            soft = wanted
    return soft


def connection_cap(fd_limit: int, pairs: int) -> int:
    """Open HTTP connections allowed, leaving the pulls and the process their descriptors."""
    spare = fd_limit - RESERVED_FDS - FDS_PER_PAIR * pairs
    return max(MIN_CONNECTIONS, min(MAX_CONNECTIONS, spare))


class _Connection(RequestHandler):
    """aiohttp's connection handler, registered with the guard while open."""

    guard: ConnectionGuard
    requests = 0
    """Requests that reached the app on this connection."""
    busy = 0
    """Requests being answered now."""
    header_timer: asyncio.TimerHandle | None = None

    counted = False
    """Counted in at accept already (TLS: by its `_TLSGate`, before the handshake)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the connection in, maybe making room; start the header timer."""
        super().connection_made(transport)
        if not self.counted:
            self.guard.opened(self, transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Count the connection out."""
        self.guard.closed(self)
        super().connection_lost(exc)


class _TLSGate(asyncio.Protocol):
    """The TCP side of a TLS connection: counted from accept, then upgraded, then handed on.

    With `create_server(ssl=...)` a connection is invisible until its handshake is done, so
    stalled handshakes could hold every descriptor; here they count towards the cap, may be
    closed to make room, and share the header timeout.
    """

    def __init__(
        self, connection: _Connection, context: ssl.SSLContext, guard: ConnectionGuard
    ) -> None:
        self._connection = connection
        self._context = context
        self._guard = guard
        self._upgrade: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Count the connection in and start the handshake."""
        tcp = cast("asyncio.Transport", transport)
        tcp.pause_reading()  # the ClientHello is for the TLS layer, not for this protocol
        self._connection.counted = True
        self._guard.opened(self._connection, tcp)
        if not tcp.is_closing():
            self._upgrade = asyncio.get_running_loop().create_task(self._handshake(tcp))

    async def _handshake(self, tcp: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        try:
            tls = await loop.start_tls(
                tcp,
                self._connection,
                self._context,
                server_side=True,
                ssl_handshake_timeout=self._guard.header_timeout,
            )
        except (OSError, TimeoutError, ConnectionError) as exc:  # ssl.SSLError is an OSError
            log.debug("TLS handshake failed", extra={"error": _reason(exc)})
            _abort(tcp)  # the connection's connection_lost counts it out
            return
        if tls is not None:
            self._connection.connection_made(tls)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Gone before the handshake started."""
        del exc
        self._guard.closed(self._connection)
        if self._upgrade is not None:
            self._upgrade.cancel()


class ConnectionGuard:
    """The open server connections: at most `cap`, each with a deadline for its first request."""

    def __init__(self, fd_limit: int, pairs: int, header_timeout: float = HEADER_TIMEOUT) -> None:
        self.fd_limit = fd_limit
        self.cap = connection_cap(fd_limit, pairs)
        self.header_timeout = header_timeout
        self._open: dict[_Connection, asyncio.BaseTransport] = {}
        """In accept order: the oldest first."""
        self._refused = RateLimitedLog(log, "connection limit reached, closing connections")

    def fit(self, pairs: int) -> None:
        """Recompute the cap for the `pairs` now in force (each reload and discovery change).

        A lower cap holds at once: idle connections over it are closed (oldest, never-used
        first), since the new pairs' pulls need those descriptors; busy ones finish.
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

    def protocol_factory(
        self, server: web.Server, ssl_context: ssl.SSLContext | None = None
    ) -> Callable[[], asyncio.BaseProtocol]:
        """What `loop.create_server` calls per accepted connection.

        aiohttp's own handler, behind a `_TLSGate` when there is an `ssl_context`.
        """
        options: Mapping[str, Any] = server._kwargs  # noqa: SLF001 - the runner's handler options

        def make() -> asyncio.BaseProtocol:
            connection = _Connection(server, loop=asyncio.get_running_loop(), **options)
            connection.guard = self
            if ssl_context is None:
                return connection
            return _TLSGate(connection, ssl_context, self)

        return make

    def opened(self, connection: _Connection, transport: asyncio.BaseTransport) -> None:
        """A connection came in: make room if at the cap, and give it `header_timeout`."""
        if len(self._open) >= self.cap and not self._make_room():
            self._refused.log(open=len(self._open), cap=self.cap)
            _abort(transport)
            return
        self._open[connection] = transport
        loop = asyncio.get_running_loop()
        connection.header_timer = loop.call_later(self.header_timeout, self._late, connection)

    def closed(self, connection: _Connection) -> None:
        """The connection is gone."""
        self._open.pop(connection, None)
        if connection.header_timer is not None:
            connection.header_timer.cancel()

    def _make_room(self) -> bool:
        """Close the oldest idle connection, preferring ones that never sent a request."""
        idle = [conn for conn in self._open if not conn.busy]
        victim = next((conn for conn in idle if not conn.requests), idle[0] if idle else None)
        if victim is None:
            return False
        self._refused.log(open=len(self._open), cap=self.cap)
        _abort(self._open.pop(victim))
        return True

    def _late(self, connection: _Connection) -> None:
        connection.header_timer = None
        transport = self._open.get(connection)
        if transport is not None and not connection.requests:
            log.debug("closing a connection that sent no request in time")
            _abort(transport)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Mark the connection busy while its request is answered; its head arrived."""
        connection = request.protocol
        if not isinstance(connection, _Connection):
            return await handler(request)
        connection.requests += 1
        connection.busy += 1
        if connection.header_timer is not None:
            connection.header_timer.cancel()
            connection.header_timer = None
        try:
            return await handler(request)
        finally:
            connection.busy -= 1


def _abort(transport: asyncio.BaseTransport) -> None:
    """Close at once, without flushing: the fd is free on the next loop iteration."""
    with contextlib.suppress(Exception):
        cast("asyncio.Transport", transport).abort()


class QuietErrors:
    """A loop exception handler: socket errors are rate-limited one-liners, the rest as usual."""

    def __init__(self) -> None:
        self._logs: dict[str, RateLimitedLog] = {}

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Handle one error report of the loop."""
        exc = context.get("exception")
        message = str(context.get("message", ""))
        if not isinstance(exc, OSError) or message.startswith(
            ("Task exception", "Future exception", "Exception in callback", "Unhandled error")
        ):
            loop.default_exception_handler(context)
            return
        key = f"{message}: {type(exc).__name__}"
        limiter = self._logs.get(key)
        if limiter is None:
            if len(self._logs) > 64:  # bounded however many kinds of error there are
                self._logs.clear()
            limiter = self._logs[key] = RateLimitedLog(log, message or "socket error")
        limiter.log(error=_reason(exc))


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
        reason = exc.message if isinstance(exc.message, str) and exc.message else str(exc)
        record.msg = "bad request: " + record.getMessage()
        record.args = ()
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        record.exc_info, record.exc_text = None, None
        record.error = reason.splitlines()[0][:200] if reason else type(exc).__name__
        return True


def request_error_log() -> logging.Logger:
    """The logger aiohttp's connection handlers report request errors to."""
    logger = logging.getLogger("exporter.http")
    if not any(isinstance(each, _BadRequestsQuiet) for each in logger.filters):
        logger.addFilter(_BadRequestsQuiet())
    return logger


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
            [await loop.create_server(factory, sock=sock, backlog=_BACKLOG) for sock in sockets]
        )
        await stop.wait()
    finally:  # the signal handlers stay until the loop closes: a second SIGTERM changes nothing
        for server in servers:
            server.close()
        await runner.cleanup()
