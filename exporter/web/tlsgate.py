"""TLS connections counted from accept: the handshake is under the connection guard too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, cast

from exporter.web.quiet import reason

if TYPE_CHECKING:
    import ssl

    from exporter.web.listener import ConnectionGuard, _Connection

log = logging.getLogger("exporter.listener")


class TLSGate(asyncio.Protocol):
    """The TCP side of a TLS connection: counted from accept, then upgraded, then handed on.

    With `create_server(ssl=...)` a connection is invisible until its handshake is done, so
    stalled handshakes could hold every descriptor; here they count towards the cap, may be
    closed to make room, and share the request deadline.
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
