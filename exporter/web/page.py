"""The operator's pages: the live fleet page at `/`, a pair's history, a run's transcript.

Every page is complete HTML rendered on the server from the same views the JSON API answers
with, so it works with JavaScript off (a table, links, a filter form that submits). With
JavaScript on, `static/page.js` polls `/api/v1/status` every second and updates the rows in
place (progress bars, throughput, ETA), filters without a reload, and sends "pull now" by
fetch. Without it "pull now" is a form that posts to `/pull-now` and is answered 303 to the
pair's history (cross-site posts never get here: `exporter.web.crossorigin`). Assets are served
by the exporter itself: nothing is loaded from anywhere else (the Content-Security-Policy says
so to the browser too).
"""

from __future__ import annotations

import datetime as dt
import functools
import html
import json
import time
from importlib import resources
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlencode

from aiohttp import web

from exporter import __version__
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
    from collections.abc import Iterable

    from exporter.web.api import Json, Operator

STATES: Final = (
    ("pulling", "Pulling"),
    ("failing", "Failing"),
    ("ok", "Up to date"),
    ("pending", "Never run"),
)
_CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
_ASSETS: Final = {"page.js": "text/javascript", "page.css": "text/css"}
PULL_NOW: Final = "/pull-now"
"""Where the "pull now" form posts (`server`, `model`, form-encoded); 303 to the history."""
_FORM: Final = "application/x-www-form-urlencoded"


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


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _bytes(count: float) -> str:
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # pragma: no cover - the loop returns


def _span(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m {seconds % 60:02.0f}s"
    if seconds < 86400:
        return f"{seconds // 3600:.0f}h {seconds % 3600 // 60:02.0f}m"
    return f"{seconds / 86400:.1f}d"


def _when(at: float | None) -> str:
    if at is None:
        return "&ndash;"
    stamp = dt.datetime.fromtimestamp(at, dt.UTC)
    return f'<time datetime="{stamp.isoformat()}">{stamp:%Y-%m-%d %H:%M:%S}Z</time>'


def _relative(at: float | None, now: float) -> str:
    if at is None:
        return "&ndash;"
    stamp = dt.datetime.fromtimestamp(at, dt.UTC).isoformat()
    text = f"in {_span(at - now)}" if at > now else f"{_span(now - at)} ago"
    return f'<time datetime="{stamp}" data-at="{at:.3f}">{text}</time>'


def _page(title: str, body: str, *, refresh: int | None = None, script: bool = False) -> str:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    js = '<script src="/static/page.js" defer></script>' if script else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title>{meta}"
        f'<link rel="stylesheet" href="/static/page.css">{js}</head><body>'
        '<header><p class="brand"><a href="/">Ollama pull exporter</a></p>'
        '<nav aria-label="Endpoints">'
        '<a href="/metrics">Metrics</a> <a href="/api/v1/openapi.json">API</a> '
        '<a href="/-/healthy">Health</a> <a href="/-/ready">Readiness</a></nav></header>'
        f"<main>{body}</main><footer>Version {_e(__version__)}</footer></body></html>\n"
    )


def _html(text: str, status: int = 200) -> web.Response:
    response = web.Response(text=text, status=status, content_type="text/html")
    response.headers["Content-Security-Policy"] = _CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def _history_href(server: str, model: str) -> str:
    return "/history?" + urlencode({"server": server, "model": model})


def _last_cell(last: Json | None, now: float) -> str:
    if last is None:
        return "never run"
    if last["result"] == "success":
        text = '<span class="ok">success</span>'
    else:
        text = f'<span class="fail">failed: {_e(last["reason"])}</span>'
    if last["id"] is not None:
        text = f'<a href="/runs/{last["id"]}">{text}</a>'
    return f"{text} {_relative(last['ended_at'], now)}"


def _progress_cell(pair: Json) -> str:
    expected, completed = pair["expected_bytes"], pair["completed_bytes"]
    share = min(100.0, 100.0 * completed / expected) if expected else 0.0
    label = f"Download of {pair['model']} on {pair['server']}"
    return (
        f'<progress max="100" value="{share:.1f}" aria-label="{_e(label)}">{share:.0f}%</progress>'
        f'<span class="bytes">{_bytes(completed)} / {_bytes(expected)}</span> '
        f'<span class="layers">{pair["layers_completed"]}/{pair["layers"]} layers</span>'
    )


def _pull_form(pair: Json) -> str:
    """The "pull now" button: a form that posts without JavaScript (`page.js` uses fetch)."""
    busy = " disabled" if pair["in_progress"] else ""
    return (
        f'<form class="pull-now-form" method="post" action="{PULL_NOW}">'
        f'<input type="hidden" name="server" value="{_e(pair["server"])}">'
        f'<input type="hidden" name="model" value="{_e(pair["model"])}">'
        f'<button type="submit" class="pull-now"{busy}>Pull now<span class="visually-hidden">'
        f": {_e(pair['model'])} on {_e(pair['server'])}</span></button></form>"
    )


def _server_down(pair: Json, now: float) -> str:
    """Under the server's name while it does not answer: since when, and why."""
    if pair["server_up"] is not False:
        return ""
    since = _relative(pair["server_down_since"], now)
    why = _e(pair["server_problem"] or "")
    return f' <span class="server-down">down since {since}: {why}</span>'


def _throughput(pair: Json) -> str:
    """The rate, and "no progress for N s" under it while the pull is stalled."""
    rate = pair["bytes_per_second"]
    text = f"{_bytes(rate)}/s" if rate is not None else "&ndash;"
    if pair["stalled"]:
        text += f' <span class="stall">no progress for {pair["no_progress_seconds"]:.0f} s</span>'
    return text


def _row(pair: Json, now: float, *, visible: bool, admin: bool) -> str:
    state = pair_state(pair)
    key = json.dumps([pair["server"], pair["model"]], ensure_ascii=False, separators=(",", ":"))
    eta = pair["eta_seconds"]
    phase = pair["phase"]
    phase_text = f'<span class="run">{_e(phase)}</span>' if pair["in_progress"] else _e(phase)
    href = _e(_history_href(pair["server"], pair["model"]))
    button = _pull_form(pair) if admin else ""
    actions = f'<a href="{href}">history</a>{button}<span class="note" aria-live="polite"></span>'
    cells = (
        ("Server", _e(pair["server"]) + _server_down(pair, now)),
        ("Model", _e(pair["model"])),
        ("Phase", phase_text),
        ("Progress", _progress_cell(pair)),
        ("Throughput", _throughput(pair)),
        ("ETA", _span(eta) if eta is not None else "&ndash;"),
        ("Last result", _last_cell(pair["last"], now)),
        ("Next run", _relative(pair["next_run_at"], now)),
        (
            "Actions",
            actions,
        ),
    )
    tds = "".join(f'<td data-label="{name}" class="c-{name.lower().replace(" ", "-")}">{value}</td>'
                  for name, value in cells)  # fmt: skip
    hidden = "" if visible else " hidden"
    attributes = f'class="pair state-{state}" data-key="{_e(key)}" data-state="{state}"{hidden}'
    return f"<tr {attributes}>{tds}</tr>"


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


def _summary_html(counts: dict[str, int]) -> str:
    items = [
        ("pulling", "Pulling"),
        ("failing", "Failing"),
        ("ok", "Up to date"),
        ("pending", "Never run"),
        ("servers_down", "Servers down"),
    ]
    cells = "".join(
        f'<div class="count count-{name}"><dt>{label}</dt>'
        f'<dd data-count="{name}">{counts[name]}</dd></div>'
        for name, label in items
    )
    return (
        '<section aria-labelledby="fleet-title"><h2 id="fleet-title">Fleet</h2>'
        f'<dl class="summary">{cells}</dl></section>'
    )


def _filters(servers: Iterable[str], server: str, model: str, state: str) -> str:
    options = ['<option value="">all servers</option>']
    options += [
        f'<option value="{_e(name)}"{" selected" if name == server else ""}>{_e(name)}</option>'
        for name in servers
    ]
    states = ['<option value="">all states</option>']
    states += [
        f'<option value="{value}"{" selected" if value == state else ""}>{label}</option>'
        for value, label in STATES
    ]
    return (
        '<form class="filters" method="get" action="/" role="search" aria-label="Filter pairs">'
        f'<label>Server <select name="server">{"".join(options)}</select></label>'
        f'<label>Model <input name="model" type="search" value="{_e(model)}" '
        'placeholder="part of a name" autocomplete="off"></label>'
        f'<label>State <select name="state">{"".join(states)}</select></label>'
        '<button type="submit">Filter</button></form>'
    )


def _servers_html(operator: Operator, now: float) -> str:
    rows = []
    for server in server_views(operator):
        up = server["up"]
        if up is None:
            seen, detail = "not asked yet", ""
        elif up:
            seen = '<span class="ok">up</span>'
            detail = _e(f"Ollama {server['version']}" if server["version"] else "")
        else:  # down: since when and why, never the version it had while up
            seen = f'<span class="fail">down</span> since {_relative(server["down_since"], now)}'
            detail = f'<span class="fail">{_e(server["problem"] or "")}</span>'
        rows.append(
            f'<tr class="server" data-server="{_e(server["name"])}"><td>{_e(server["name"])}</td>'
            f'<td class="c-server-state">{seen}</td><td class="c-server-detail">{detail}</td></tr>'
        )
    return (
        '<section aria-labelledby="servers-title"><h2 id="servers-title">Servers</h2>'
        '<table class="servers"><thead><tr class="server"><th scope="col">Server</th>'
        '<th scope="col">State</th><th scope="col">Version or problem</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


async def _index(request: web.Request) -> web.Response:
    operator = request.app[OPERATOR_KEY]
    runtime = operator.runtime
    query = request.query
    server, model, state = query.get("server", ""), query.get("model", ""), query.get("state", "")
    pairs = pair_views(operator)
    now = time.time()
    admin = runtime.enable_admin_api
    rows = "".join(
        _row(pair, now, visible=_matches(pair, server, model, state), admin=admin) for pair in pairs
    )
    heads = "".join(
        f'<th scope="col">{name}</th>'
        for name in ("Server", "Model", "Phase", "Progress", "Throughput", "ETA",
                     "Last result", "Next run", "Actions")
    )  # fmt: skip
    body = (
        f"<h1>Pulls</h1>{_summary_html(summary(pairs, runtime.state.server_up))}"
        f"{_filters(runtime.state.servers, server, model, state)}"
        f'<div class="table-wrap"><table id="pairs" data-admin="{str(admin).lower()}">'
        "<caption>One row per server and model; updated every second with JavaScript on "
        "(reload the page otherwise).</caption>"
        f"<thead><tr>{heads}</tr></thead><tbody>{rows}</tbody></table></div>"
        f"{_servers_html(operator, now)}"
    )
    return _html(_page("Ollama pull exporter", body, script=True))


def _runs_table(runs: Iterable[Json], *, pair_columns: bool) -> str:
    rows = []
    for run in runs:
        result = run["result"]
        if result is None:
            result_html = f'<span class="run">{_e(run["state"])}</span>'
        elif result == "success":
            result_html = '<span class="ok">success</span>'
        else:
            result_html = f'<span class="fail">failed: {_e(run["reason"])}</span>'
        cells = [f'<td data-label="Run"><a href="/runs/{run["id"]}">#{run["id"]}</a></td>']
        if pair_columns:
            cells += [f'<td data-label="Server">{_e(run["server"])}</td>',
                      f'<td data-label="Model">{_e(run["model"])}</td>']  # fmt: skip
        duration = run["duration_seconds"]
        cells += [
            f'<td data-label="Started">{_when(run["started_at"])}</td>',
            f'<td data-label="Trigger">{_e(run["trigger"])}</td>',
            f'<td data-label="Duration">{"&ndash;" if duration is None else _span(duration)}</td>',
            f'<td data-label="Result">{result_html}</td>',
            f'<td data-label="Downloaded">{_bytes(run["downloaded_bytes"])}</td>',
            f'<td data-label="Error" class="error-text">{_e(run["error"] or "")}</td>',
        ]
        rows.append(f'<tr class="run-row" id="run-{run["id"]}">{"".join(cells)}</tr>')
    names = ["Run", *(["Server", "Model"] if pair_columns else []), "Started", "Trigger",
             "Duration", "Result", "Downloaded", "Error"]  # fmt: skip
    heads = "".join(f'<th scope="col">{name}</th>' for name in names)
    if not rows:
        return "<p>No runs yet.</p>"
    return (
        f'<div class="table-wrap"><table class="runs"><thead><tr>{heads}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


async def _history(request: web.Request) -> web.Response:
    operator = request.app[OPERATOR_KEY]
    runtime = operator.runtime
    server, model = request.query.get("server", ""), request.query.get("model", "")
    history = runtime.history
    known = (server, model) in runtime.state.pairs
    runs = (
        history.runs(server=server or None, model=model or None, limit=history.limit)
        if history is not None
        else []
    )
    title = f"{model} on {server}" if server and model else "All runs"
    filters = {k: v for k, v in (("server", server), ("model", model)) if v}
    note = "" if known or not (server and model) else "<p>This pair is not configured now.</p>"
    body = (
        f"<h1>History: {_e(title)}</h1>{note}"
        f'<p><a href="/">Back to all pulls</a> &middot; as JSON: <a href="/api/v1/runs?'
        f'{_e(urlencode(filters))}">/api/v1/runs</a></p>'
        f"{_runs_table((run_view(run) for run in runs), pair_columns=not (server and model))}"
    )
    return _html(_page(f"History: {title}", body))


def _is_error_line(line: str) -> bool:
    try:
        value = json.loads(line)
    except ValueError:
        return False
    return isinstance(value, dict) and "error" in value


def _transcript_html(detail: Json) -> str:
    lines: list[Any] = detail["transcript"]
    if not lines:
        kept = detail["transcript_kept"]
        return "<p>No lines were received.</p>" if kept else "<p>The transcript was not kept.</p>"
    rows = []
    omitted = detail["transcript_omitted"]
    head = 200 if omitted else len(lines)
    for index, entry in enumerate(lines):
        if index == head:
            rows.append(
                '<tr class="omitted"><td></td>'
                f"<td>&hellip; {omitted} lines left out &hellip;</td></tr>"
            )
        cls = ' class="error-line"' if _is_error_line(entry["line"]) else ""
        cut = f' <span class="cut">(+{entry["cut"]} characters)</span>' if entry.get("cut") else ""
        rows.append(
            f'<tr{cls}><td class="t">{entry["t"]:.3f}</td>'
            f"<td><code>{_e(entry['line'])}</code>{cut}</td></tr>"
        )
    return (
        '<div class="table-wrap"><table class="transcript"><caption>The stream as received '
        '(seconds since the start, raw line)</caption><thead><tr><th scope="col">t (s)</th>'
        f'<th scope="col">Line</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>'
    )


async def _run(request: web.Request) -> web.Response:
    history = request.app[OPERATOR_KEY].runtime.history
    run_id = parse_run_id(request.match_info["id"])
    run = history.run(run_id) if history is not None and run_id is not None else None
    if run is None or history is None:
        body = (
            "<h1>No such run</h1><p>The history keeps the last runs of each pair. "
            '<a href="/">Back</a></p>'
        )
        return _html(_page("No such run", body), status=404)
    detail = run_detail(run, history)
    result = detail["result"]
    verdict = (
        f'<span class="run">{_e(detail["state"])}</span>' if result is None
        else '<span class="ok">success</span>' if result == "success"
        else f'<span class="fail">failed: {_e(detail["reason"])}</span>'
    )  # fmt: skip
    error = (
        f'<section class="error-box" aria-labelledby="error-title"><h2 id="error-title">Error</h2>'
        f"<pre>{_e(detail['error'])}</pre></section>"
        if detail["error"]
        else ""
    )
    phases = ", ".join(
        f"{name} {seconds:.1f}s" for name, seconds in detail["phase_seconds"].items()
    )
    duration = detail["duration_seconds"]
    facts = (
        ("Result", verdict),
        ("Server", _e(detail["server"])),
        ("Model", _e(detail["model"])),
        ("Trigger", _e(detail["trigger"])),
        ("Started", _when(detail["started_at"])),
        ("Ended", _when(detail["ended_at"])),
        ("Duration", _span(duration) if duration is not None else "&ndash;"),
        ("Downloaded", _bytes(detail["downloaded_bytes"])),
        ("Reused", _bytes(detail["reused_bytes"])),
        ("Phases", _e(phases)),
    )
    dl = "".join(f"<div><dt>{name}</dt><dd>{value}</dd></div>" for name, value in facts)
    history_link = _history_href(detail["server"], detail["model"])
    body = (
        f"<h1>Run #{detail['id']}</h1>"
        f'<p><a href="{_e(history_link)}">History of this pair</a> &middot; as JSON: '
        f'<a href="/api/v1/runs/{detail["id"]}">/api/v1/runs/{detail["id"]}</a></p>'
        f'<dl class="facts">{dl}</dl>{error}<h2>Transcript</h2>{_transcript_html(detail)}'
    )
    refresh = 2 if isinstance(run, ActiveRun) else None
    return _html(_page(f"Run #{detail['id']}", body, refresh=refresh))


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
    runtime = request.app[OPERATOR_KEY].runtime
    server = model = ""
    try:
        require_admin(runtime)
        server, model = await _form_pair(request)
        active = start_pull(runtime, server, model)
    except ApiError as exc:
        back = (
            f'<a href="{_e(_history_href(server, model))}">History of this pair</a> &middot; '
            if (server, model) in runtime.state.pairs
            else ""
        )
        body = (
            f"<h1>The pull was not started</h1><p>{_e(exc)}</p>"
            f'<p>{back}<a href="/">Back to all pulls</a></p>'
        )
        return _html(_page("The pull was not started", body), status=exc.status)
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
