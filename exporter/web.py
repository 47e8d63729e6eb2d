"""The HTTP side: `/metrics`, a status page at `/`, `/-/healthy` and `/-/ready`.

The app owns the lifecycle: the one `ClientSession` and the scheduler (`Runtime.running`)
start in a cleanup context and are cancelled and awaited when the server stops.
"""

from __future__ import annotations

import html
import logging
import time
from typing import TYPE_CHECKING, Final

from aiohttp import web

from exporter import __version__
from exporter.pull import make_session
from exporter.runtime import Runtime
from exporter.scrape import make_metrics_handler
from exporter.webauth import install

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from exporter.metrics import PullRegistry
    from exporter.state import ExporterState, PairState
    from exporter.webconfig import WebConfig

log = logging.getLogger("exporter.web")


RUNTIME_KEY: Final = web.AppKey("runtime", Runtime)


def make_app(
    runtime: Runtime, registry: PullRegistry, web_config: WebConfig | None = None
) -> web.Application:
    """Build the application; the scheduler starts when the app starts.

    `web_config` (`--web.config.file`) adds basic auth and response headers to every route.
    """
    app = web.Application()
    if web_config is not None:
        install(app, web_config)
    app[RUNTIME_KEY] = runtime
    app.cleanup_ctx.append(_run_scheduler)
    app.router.add_get("/metrics", make_metrics_handler(registry))
    app.router.add_get("/", _index)
    app.router.add_get("/-/healthy", _healthy)
    app.router.add_get("/-/ready", _ready)
    app.router.add_post("/-/reload", _reload)
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


_PAGE_HEAD: Final = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Ollama pull exporter</title>
<style>
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse}
th,td{padding:.35em .8em;border-bottom:1px solid #ddd;text-align:left}
th{background:#f4f4f4}.ok{color:#1a7f37}.fail{color:#cf222e}.run{color:#0969da}
</style></head><body>
"""


async def _index(request: web.Request) -> web.Response:
    state = request.app[RUNTIME_KEY].state
    now = time.time()
    rows = "".join(_row(pair, now) for pair in state.pairs.values())
    body = (
        f"{_PAGE_HEAD}<h1>Ollama pull exporter</h1>"
        f"<p>Version {html.escape(__version__)} &middot; "
        '<a href="/metrics">Metrics</a> &middot; <a href="/-/healthy">Health</a> &middot; '
        '<a href="/-/ready">Readiness</a></p>'
        "<table><thead><tr><th>Server</th><th>Model</th><th>Phase</th><th>Progress</th>"
        "<th>Layers</th><th>Last result</th><th>Last duration</th><th>Last success</th>"
        "<th>Next run</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>{_servers(state)}</body></html>\n"
    )
    return web.Response(text=body, content_type="text/html")


def _servers(state: ExporterState) -> str:
    """One row per server: whether it answered, its Ollama version, or what went wrong."""
    rows = []
    for name, status in state.servers.items():
        up = state.server_up.get(name)
        if up is None:
            seen = "not asked yet"
        elif up:
            seen = '<span class="ok">up</span>'
        else:
            seen = '<span class="fail">down</span>'
        cells = (html.escape(name), seen, html.escape(status.version or status.problem or ""))
        rows.append('<tr class="server">' + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return (
        '<h2>Servers</h2><table><thead><tr class="server"><th>Server</th>'
        "<th>State</th><th>Version or problem"
        f"</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _row(pair: PairState, now: float) -> str:
    run = pair.current
    source = run if run is not None else pair.last
    if source is not None and source.expected_bytes:
        share = 100 * source.completed_bytes / source.expected_bytes
        progress = (
            f"{_bytes(source.completed_bytes)} / {_bytes(source.expected_bytes)} ({share:.0f}%)"
        )
        layers = f"{source.layers_completed} / {source.layers}"
    else:
        progress = layers = "&ndash;"
    last = pair.last
    if last is None:
        result, duration = "&ndash;", "&ndash;"
    elif last.success:
        result, duration = '<span class="ok">success</span>', f"{last.duration:.1f}s"
    else:
        reason = last.reason.value if last.reason is not None else "unknown"
        result = f'<span class="fail">failed: {html.escape(reason)}</span>'
        duration = f"{last.duration:.1f}s"
    phase = pair.phase.value
    phase_cell = f'<span class="run">{phase}</span>' if run is not None else phase
    cells = (
        html.escape(pair.server),
        html.escape(pair.model),
        phase_cell,
        progress,
        layers,
        result,
        duration,
        _ago(pair.last_success_at, now),
        _until(pair.next_run_at, now),
    )
    return "<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>"


def _bytes(count: int) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def _ago(at: float | None, now: float) -> str:
    return "never" if at is None else f"{_span(now - at)} ago"


def _until(at: float | None, now: float) -> str:
    if at is None:
        return "&ndash;"
    return "now" if at <= now else f"in {_span(at - now)}"


def _span(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
