"""The HTTP side: `/metrics`, a status page at `/`, `/-/healthy` and `/-/ready`.

The app owns the lifecycle: the one `ClientSession` and the scheduler (`Runtime.running`)
start in a cleanup context and are cancelled and awaited when the server stops.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from aiohttp import web

from exporter.app.runtime import Runtime
from exporter.clients.pull import make_session
from exporter.metrics.scrape import make_metrics_handler
from exporter.web import api, crossorigin, hosts, page
from exporter.web.auth import install

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from exporter.config.webconfig import WebConfig
    from exporter.metrics.families import PullRegistry

log = logging.getLogger("exporter.web")


RUNTIME_KEY: Final = web.AppKey("runtime", Runtime)


def make_app(
    runtime: Runtime,
    registry: PullRegistry,
    web_config: WebConfig | None = None,
    allowed_hosts: hosts.AllowedHosts | None = None,
) -> web.Application:
    """Build the application; the scheduler starts when the app starts.

    `web_config` (`--web.config.file`) adds basic auth and response headers to every route;
    `allowed_hosts` (`--web.allowed-hosts`) the names besides localhost and addresses.
    """
    app = web.Application()
    if web_config is not None:
        install(app, web_config)
    hosts.install(app, allowed_hosts or hosts.AllowedHosts())  # first: before basic auth
    crossorigin.install(app)  # after basic auth: a POST from another site's page gets 403
    app[RUNTIME_KEY] = runtime
    app.cleanup_ctx.append(_run_scheduler)
    app.router.add_get("/metrics", make_metrics_handler(registry))
    app.router.add_get("/-/healthy", _healthy)
    app.router.add_get("/-/ready", _ready)
    app.router.add_post("/-/reload", _reload)
    api.install(app, runtime)
    page.install(app)  # `/`, `/history`, `/runs/{id}`, `/static/`
    return app


async def _run_scheduler(app: web.Application) -> AsyncIterator[None]:
    async with make_session() as session, app[RUNTIME_KEY].running(session):
        yield


async def _reload(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    if not runtime.enable_lifecycle:
        return web.Response(status=403, text="Lifecycle API is not enabled.\n")
    errors = await runtime.reload()
    if errors:
        return web.Response(
            status=500, text="\n".join(("failed to reload config:", *errors)) + "\n"
        )
    return web.Response(text="OK\n")


async def _healthy(_: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def _ready(request: web.Request) -> web.Response:
    if request.app[RUNTIME_KEY].state.ready:
        return web.Response(text="Ready\n")
    return web.Response(status=503, text="Not ready\n")
