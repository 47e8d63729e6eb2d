"""TLS connections counted from accept: the handshake is under the connection guard too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar, cast

from exporter.web.quiet import reason

if TYPE_CHECKING:
    import ssl

log = logging.getLogger("exporter.listener")


class Counted(Protocol):
    """The listener's connection, as the gate hands it on: counted once the gate counts it."""

    counted: bool

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """The TLS transport, once the handshake is done."""


C = TypeVar("C", bound=Counted)
C_contra = TypeVar("C_contra", bound=Counted, contravariant=True)


class Guard(Protocol[C_contra]):
    """The listener's connection guard, as far as the gate needs it.

    The listener imports this module, so the gate names what it uses instead of importing it.
    """

    request_timeout: float

    def opened(self, connection: C_contra, transport: asyncio.BaseTransport) -> None:
        """`connection` is open, on `transport`."""

    def closed(self, connection: C_contra) -> None:
        """`connection` is gone."""


class TLSGate(asyncio.Protocol, Generic[C]):
    """The TCP side of a TLS connection: counted from accept, then upgraded, then handed on.

    With `create_server(ssl=...)` a connection is invisible until its handshake is done, so
    stalled handshakes could hold every descriptor; here they count towards the cap, may be
    closed to make room, and share the request deadline.
    """

    def __init__(self, connection: C, context: ssl.SSLContext, guard: Guard[C]) -> None:
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
                cast("asyncio.BaseProtocol", self._connection),  # the listener's: an aiohttp one
                self._context,
                server_side=True,
                ssl_handshake_timeout=self._guard.request_timeout,
            )
        except (OSError, TimeoutError, ConnectionError) as exc:  # ssl.SSLError is an OSError
            log.debug("TLS handshake failed", extra={"error": reason(exc)})
            abort(tcp)  # the connection's connection_lost counts it out
            return
        if tls is not None:
            self._connection.connection_made(tls)

    def connection_lost(self, exc: BaseException | None) -> None:
        """Gone before the handshake started."""
        del exc
        self._guard.closed(self._connection)
        if self._upgrade is not None:
            self._upgrade.cancel()


def abort(transport: asyncio.BaseTransport) -> None:
    """Close at once, without flushing: the fd is free on the next loop iteration."""
    with contextlib.suppress(Exception):
        cast("asyncio.Transport", transport).abort()
