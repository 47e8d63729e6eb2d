"""The operator's pages: the live fleet page at `/`, a pair's history, a run's transcript.

Every page is complete HTML rendered on the server from the same views the JSON API answers
with, so it works with JavaScript off (a table, links, a filter form that submits). With
JavaScript on, `static/page.js` polls `/api/v1/status` every second and updates the rows in
place (progress bars, throughput, ETA), filters without a reload, and sends "pull now" by
fetch. Without it "pull now" is a form that posts to `/pull-now` and is answered 303 to the
pair's history (cross-site posts never get here: `exporter.web.crossorigin`). Assets are served
by the exporter itself: nothing is loaded from anywhere else (the Content-Security-Policy says
so to the browser too).

The HTML is in `templates/`, rendered by Jinja2 with autoescaping on: every value is escaped
unless a template says otherwise, so a name or an error text from outside cannot become markup
by a forgotten call. This module decides what a page shows (views, filters, states); the
templates only say how. They are read and compiled once, on the first page asked for: Jinja2,
the compiled templates and the charts are about 3.5 MiB of a process of 50, which an exporter
that only Prometheus talks to never needs (`_templates`, and `charts` where a page draws).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import re
from importlib import resources
from typing import TYPE_CHECKING, Final
from urllib.parse import parse_qs, urlencode

import msgspec
from aiohttp import web

from exporter import __version__
from exporter.core.clock import SYSTEM_CLOCK
from exporter.state.history import ActiveRun
from exporter.web.api import (
    OPERATOR_KEY,
    ApiError,
    pair_views,
    parse_run_id,
    read_body,
    require_admin,
    run_detail,
    run_view,
    server_views,
    start_pull,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    import jinja2

    from exporter.web.api import Json

STATES: Final = (
    ("pulling", "Pulling"),
    ("failing", "Failing"),
    ("ok", "Up to date"),
    ("pending", "Never run"),
)
_COUNTS: Final = (*STATES, ("servers_down", "Servers down"))
_COLUMNS: Final = ("Server", "Model", "Phase", "Progress", "Throughput", "ETA", "Last result",
                   "Next run", "Actions")  # fmt: skip
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_ASSETS: Final = {"page.js": "text/javascript", "page.css": "text/css"}
PULL_NOW: Final = "/pull-now"
"""Where the "pull now" form posts (`server`, `model`, form-encoded); 303 to the history."""
_FORM: Final = "application/x-www-form-urlencoded"
TRANSCRIPT_HEAD: Final = 200
"""Lines kept from a transcript's start; `… N lines left out …` follows them when cut."""


def install(app: web.Application) -> None:
    """Add the pages and their assets (`exporter.web.api.install` must have run)."""
    app.router.add_get("/", _index)
    app.router.add_get("/history", _history)
    app.router.add_get("/runs/{id}", _run)
    app.router.add_get("/static/{name}", _asset)
    app.router.add_post(PULL_NOW, _pull_now)


def pair_state(pair: Json) -> str:
    """The filter state of a pair view: pulling, failing, ok or pending."""
    if pair["in_progress"]:
        return "pulling"
    last = pair["last"]
    if last is None:
        return "pending"
    return "ok" if last["result"] == "success" else "failing"


def bytes_text(count: float) -> str:
    """A byte count as the page shows it: `512 B`, `1.5 MiB` (page.js has the same)."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - the loop returns


def span(seconds: float) -> str:
    """A duration as the page shows it: `59s`, `2m 00s`, `1h 05m`, `1.5d`.

    Rounded once to the unit shown, half up, then split (rounding each part on its own showed
    119.6 s as "1m 60s"). `static/page.js` has the same function; the tests hold them equal.
    """
    seconds = max(0.0, seconds) if math.isfinite(seconds) else 0.0
    whole = math.floor(seconds + 0.5)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    minutes = math.floor(seconds / 60 + 0.5)
    if minutes < 1440:
        return f"{minutes // 60}h {minutes % 60:02d}m"
    tenths = math.floor(seconds / 8640 + 0.5)
    return f"{tenths // 10}.{tenths % 10}d"


def _utc(at: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(at, dt.UTC)


def _relative(at: float, now: float) -> str:
    return f"in {span(at - now)}" if at > now else f"{span(now - at)} ago"


def _history_href(server: str, model: str) -> str:
    return "/history?" + urlencode({"server": server, "model": model})


def _pair_key(pair: Json) -> str:
    """A row's `data-key`: page.js matches status API pairs to rows by it."""
    return json.dumps([pair["server"], pair["model"]], ensure_ascii=False, separators=(",", ":"))


_LINE_BREAK: Final = re.compile(r"\n[ \t]*")


def _compact(source: str) -> str:
    """Drop every line break with the indentation after it: the HTML goes out in one piece.

    Templates are written one tag per line for people; a space that belongs between two
    lines is written out on one of them.
    """
    return _LINE_BREAK.sub("", source)


def _environment() -> jinja2.Environment:
    import jinja2  # noqa: PLC0415 - on the first page asked for, not at start (module doc)

    folder = resources.files("exporter.web").joinpath("templates")
    sources = {
        entry.name: _compact(entry.read_text("utf-8"))
        for entry in folder.iterdir()
        if entry.name.endswith(".html")
    }
    env = jinja2.Environment(
        loader=jinja2.DictLoader(sources),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a misspelt name fails loudly, not as ""
        auto_reload=False,
    )
    env.filters.update(
        bytes=bytes_text,
        span=span,
        iso=lambda at: _utc(at).isoformat(),
        stamp=lambda at: f"{_utc(at):%Y-%m-%d %H:%M:%S}",
        at=lambda at: f"{at:.3f}",
        relative=_relative,
        key=_pair_key,
        history_href=lambda view: _history_href(view["server"], view["model"]),
    )
    env.globals.update(version=__version__, pull_now=PULL_NOW, script=False, refresh=None)
    return env


@functools.cache
def _templates() -> dict[str, jinja2.Template]:
    """Every template, compiled on the first call (the first page asked for)."""
    env = _environment()
    return {name: env.get_template(name) for name in env.list_templates()}


def _render(name: str, context: Mapping[str, object], status: int = 200) -> web.Response:
    response = web.Response(
        text=_templates()[name].render(context), status=status, content_type="text/html"
    )
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _matches(pair: Json, server: str, model: str, state: str) -> bool:
    return (
        (not server or pair["server"] == server)
        and (not model or model.casefold() in pair["model"].casefold())
        and (not state or pair_state(pair) == state)
    )


def summary(pairs: Iterable[Json], server_up: dict[str, float | None]) -> dict[str, int]:
    """The fleet summary: how many pairs pull, fail, are up to date; servers down."""
    counts = dict.fromkeys((state for state, _ in STATES), 0)
    for pair in pairs:
        counts[pair_state(pair)] += 1
    counts["servers_down"] = sum(1 for up in server_up.values() if up == 0)
    return counts


async def _index(request: web.Request) -> web.Response:
    site, rates = request.app[OPERATOR_KEY].site, request.app[OPERATOR_KEY].rates
    query = request.query
    server, model, state = query.get("server", ""), query.get("model", ""), query.get("state", "")
    pairs = pair_views(request.app[OPERATOR_KEY])
    rows = []
    for pair in pairs:
        expected = pair["expected_bytes"]
        share = min(100.0, 100.0 * pair["completed_bytes"] / expected) if expected else 0.0
        percent = (f"{share:.1f}", f"{share:.0f}")
        rows.append((pair, pair_state(pair), _matches(pair, server, model, state), percent))
    server_up = site.state.server_up
    from exporter.web import charts  # noqa: PLC0415 - by the first page that draws (module doc)

    context: dict[str, object] = {
        "title": "Ollama pull exporter",
        "script": True,
        "now": SYSTEM_CLOCK.time(),
        "admin": site.pulls is not None,
        "counts": summary(pairs, server_up),
        "counts_shown": _COUNTS,
        "servers": site.state.servers,
        "states": STATES,
        "server": server,
        "model": model,
        "state": state,
        "columns": _COLUMNS,
        "rows": rows,
        "server_rows": server_views(request.app[OPERATOR_KEY]),
        "sparklines": {
            name: charts.sparkline(rates.throughput(name), server=name)
            for name in site.state.servers
        },
    }
    return _render("index.html", context)


async def _history(request: web.Request) -> web.Response:
    site = request.app[OPERATOR_KEY].site
    server, model = request.query.get("server", ""), request.query.get("model", "")
    history = site.history
    runs = await history.runs(server=server or None, model=model or None, limit=history.limit)
    heading = f"{model} on {server}" if server and model else "All runs"
    filters = {k: v for k, v in (("server", server), ("model", model)) if v}
    pair_columns = not (server and model)
    columns = ["Run", *(["Server", "Model"] if pair_columns else []), "Started", "Trigger",
               "Duration", "Result", "Downloaded", "Error"]  # fmt: skip
    context: dict[str, object] = {
        "title": f"History: {heading}",
        "heading": heading,
        "known": pair_columns or (server, model) in site.state.pairs,
        "json_query": urlencode(filters),
        "runs": [msgspec.to_builtins(run_view(run)) for run in runs],  # what the API answers
        "pair_columns": pair_columns,
        "columns": columns,
    }
    return _render("history.html", context)


async def _run(request: web.Request) -> web.Response:
    history = request.app[OPERATOR_KEY].site.history
    run_id = parse_run_id(request.match_info["id"])
    run = await history.run(run_id) if run_id is not None else None
    if run is None:
        missing = {"title": "No such run", "message": None, "history": None, "back": None}
        return _render("message.html", missing, status=404)
    detail: Json = msgspec.to_builtins(run_detail(run, history))
    lines = [(entry["t"], entry["line"], entry.get("cut", 0)) for entry in detail["transcript"]]
    omitted = detail["transcript_omitted"]
    omitted_at = TRANSCRIPT_HEAD if omitted else len(lines)
    from exporter.web import charts  # noqa: PLC0415 - by the first page that draws (module doc)

    series = charts.run_series(
        ((t, line) for t, line, _ in lines),
        duration=detail["duration_seconds"],
        gap_at=omitted_at,
        omitted=omitted,
    )
    title = f"Bytes of {detail['model']} on {detail['server']} over time"
    context: dict[str, object] = {
        "title": f"Run #{detail['id']}",
        "refresh": 2 if isinstance(run, ActiveRun) else None,
        "run": detail,
        "phases": ", ".join(
            f"{name} {seconds:.1f}s" for name, seconds in detail["phase_seconds"].items()
        ),
        "chart": charts.run_chart(series, title=title) if series.drawable else None,
        "chart_note": charts.chart_note(
            series, kept=detail["transcript_kept"], running=isinstance(run, ActiveRun)
        ),
        "rows": charts.transcript_rows(lines, omitted_at=omitted_at),
        "legend": charts.legend(series),
        "silence_seconds": f"{charts.SILENCE_SECONDS:g}",
    }
    return _render("run.html", context)


async def _form_pair(request: web.Request) -> tuple[str, str]:
    """`server` and `model` of the "pull now" form; raises ApiError."""
    body = await read_body(request, _FORM)
    try:
        fields = parse_qs(
            body.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=bool(body),
            errors="strict",
            max_num_fields=8,
        )
    except (UnicodeDecodeError, ValueError):
        raise ApiError(400, "the form is malformed") from None
    servers, models = fields.get("server", []), fields.get("model", [])
    if len(servers) != 1 or len(models) != 1:
        raise ApiError(400, "the form needs one server and one model")
    return servers[0], models[0]


async def _pull_now(request: web.Request) -> web.Response:
    """The "pull now" form's target: start the run, then 303 to the pair's history."""
    site = request.app[OPERATOR_KEY].site
    server = model = ""
    try:
        require_admin(site)
        server, model = await _form_pair(request)
        active = start_pull(site, server, model)
    except ApiError as exc:
        known = (server, model) in site.state.pairs
        context: dict[str, object] = {
            "title": "The pull was not started",
            "message": str(exc),
            "history": _history_href(server, model) if known else None,
            "back": "Back to all pulls",
        }
        return _render("message.html", context, status=exc.status)
    location = f"{_history_href(server, model)}#run-{active.id}"
    return web.Response(status=303, headers={"Location": location})


async def _asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = _ASSETS.get(name)
    if content_type is None:
        raise web.HTTPNotFound
    data = _read_asset(name)
    response = web.Response(body=data, content_type=content_type, charset="utf-8")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


@functools.cache
def _read_asset(name: str) -> bytes:
    return resources.files("exporter.web").joinpath("static", name).read_bytes()
