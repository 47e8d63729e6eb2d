"""The HTTP side: `/metrics`, a status page at `/`, `/-/healthy` and `/-/ready`.

The app owns the lifecycle: the one `ClientSession` and the scheduler start in a
cleanup context and are cancelled and awaited when the server stops.
"""

from __future__ import annotations

import asyncio
import html
import logging
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from aiohttp import web

from exporter import __version__
from exporter.config import Config, ConfigError, load_config
from exporter.metrics import make_metrics_handler
from exporter.pull import make_session
from exporter.scheduler import Scheduler
from exporter.state import ExporterState, sync_pairs
from exporter.webconfig import WebConfig, install

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from prometheus_client.registry import CollectorRegistry

    from exporter.state import PairState
    from exporter.store import Store

log = logging.getLogger("exporter.web")


@dataclass(slots=True)
class Runtime:
    """What the running app holds: the config in force and how to replace it."""

    config_path: str
    config: Config
    state: ExporterState
    enable_lifecycle: bool = False
    store: Store | None = None
    """Where finished runs are persisted (`--storage.path`)."""
    scheduler: Scheduler | None = None
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def reload(self) -> tuple[str, ...]:
        """Load the config file again; all or nothing. Returns the errors (empty: applied).

        Reloads are serialised: a second request waits for the first to finish.
        """
        async with self.reload_lock:
            try:
                config = await asyncio.to_thread(load_config, self.config_path)
            except ConfigError as exc:
                self.state.config_reload_successful = False
                log.error(  # noqa: TRY400 - the errors are the message, no traceback helps
                    "config reload failed, keeping the old config",
                    extra={"config": self.config_path, "errors": "; ".join(exc.errors)},
                )
                return exc.errors
            sync_pairs(self.state, config)
            if self.scheduler is not None:
                self.scheduler.apply(config)
            self.config = config
            self.state.config_reload_successful = True
            self.state.config_reload_success_at = time.time()
            log.info(
                "config reloaded",
                extra={"config": self.config_path, "pairs": config.model_count},
            )
            return ()


RUNTIME_KEY: Final = web.AppKey("runtime", Runtime)


def make_app(
    runtime: Runtime, registry: CollectorRegistry, web_config: WebConfig | None = None
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
    runtime = app[RUNTIME_KEY]
    state = runtime.state
    loop = asyncio.get_running_loop()
    pending: set[asyncio.Task[tuple[str, ...]]] = set()

    def on_sighup() -> None:
        task = loop.create_task(runtime.reload())
        pending.add(task)
        task.add_done_callback(pending.discard)

    async with make_session() as session:
        store = runtime.store
        runtime.scheduler = Scheduler(
            session, state, on_finished=store.save if store is not None else None
        )
        runtime.scheduler.start(runtime.config)
        loop.add_signal_handler(signal.SIGHUP, on_sighup)
        state.ready = True
        try:
            yield
        finally:
            state.ready = False
            loop.remove_signal_handler(signal.SIGHUP)
            for task in pending:
                task.cancel()
            await runtime.scheduler.stop()
            runtime.scheduler = None


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
        f"<tbody>{rows}</tbody></table></body></html>\n"
    )
    return web.Response(text=body, content_type="text/html")


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
