"""Serving an aiohttp app on a real socket: the simulator and the registry start the same way."""

from __future__ import annotations

import typing

from aiohttp import web

if typing.TYPE_CHECKING:
    import socket
    import ssl


async def serve(
    app: web.Application,
    host: str,
    port: int,
    *,
    handler_cancellation: bool = False,
    ssl_context: ssl.SSLContext | None = None,
    sock: socket.socket | None = None,
) -> tuple[web.AppRunner, str, int]:
    """Serve `app` on `host:port` (0: a free port); return the runner and the bound address.

    With `sock`, on that bound socket instead of `host:port`.

    TLS with `ssl_context`. Stopping is quick (`runner.cleanup()` waits 0.5 s at most for
    open handlers) and there is no access log. A bind that fails cleans the runner up before
    the error goes on.
    """
    runner = web.AppRunner(
        app, handler_cancellation=handler_cancellation, shutdown_timeout=0.5, access_log=None
    )
    await runner.setup()
    try:
        site: web.BaseSite = (
            web.TCPSite(runner, host, port, ssl_context=ssl_context)
            if sock is None
            else web.SockSite(runner, sock, ssl_context=ssl_context)
        )
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    return runner, bound_host, bound_port
