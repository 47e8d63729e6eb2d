"""The HTTP side: `/metrics`, a status page at `/`, `/-/healthy` and `/-/ready`.

The app is one component that `exporter.app.assemble` starts after the schedule and stops
before it; it owns nothing long-lived but its own routes. Handlers see a `Site`: the state and
run history to read, and only the actions the flags allow.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from aiohttp import web

from exporter.metrics.scrape import make_metrics_handler
from exporter.web import api, crossorigin, hosts, page
from exporter.web.site import Site

if TYPE_CHECKING:
    from exporter.config.webconfig import WebConfig
    from exporter.metrics.families import PullRegistry

log = logging.getLogger("exporter.web")


SITE_KEY: Final = web.AppKey("site", Site)


def make_app(
    site: Site,
    registry: PullRegistry,
    web_config: WebConfig | None = None,
    allowed_hosts: hosts.AllowedHosts | None = None,
) -> web.Application:
    """Build the application over what `site` lets it see and do.

    `web_config` (`--web.config.file`) adds basic auth and response headers to every route;
    `allowed_hosts` (`--web.allowed-hosts`) the names besides localhost and addresses.
    """
    app = web.Application()
    if web_config is not None:
        from exporter.web.auth import install  # noqa: PLC0415 - with --web.config.file only

        install(app, web_config)
    hosts.install(app, allowed_hosts or hosts.AllowedHosts())  # first: before basic auth
    crossorigin.install(app)  # after basic auth: a POST from another site's page gets 403
    app[SITE_KEY] = site
    app.router.add_get("/metrics", make_metrics_handler(registry))
    app.router.add_get("/-/healthy", _healthy)
    app.router.add_get("/-/ready", _ready)
    app.router.add_post("/-/reload", _reload)
    api.install(app, site)
    page.install(app)  # `/`, `/history`, `/runs/{id}`, `/static/`
    return app


async def _reload(request: web.Request) -> web.Response:
    reloads = request.app[SITE_KEY].reloads
    if reloads is None:
        return web.Response(status=403, text="Lifecycle API is not enabled.\n")
    errors = await reloads.reload()
    if errors:
        return web.Response(
            status=500, text="\n".join(("failed to reload config:", *errors)) + "\n"
        )
    return web.Response(text="OK\n")


async def _healthy(_: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def _ready(request: web.Request) -> web.Response:
    if request.app[SITE_KEY].state.ready:
        return web.Response(text="Ready\n")
    return web.Response(status=503, text="Not ready\n")
