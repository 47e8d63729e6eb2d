"""The operator's JSON API under `/api/v1/` (contract §7), documented in `exporter.web.openapi`.

Every answer is `application/json`; every error is `{"error": "message"}`, including the 404
and 405 answers of the router under `/api/`. A pair's view (`pair_view`) is a plain dict built
from the state; a run's (`run_view`, `run_detail`) is the typed `exporter.state.runs.Run`,
encoded as it is. Both are built on the event loop, and the live page renders from exactly
what the API shows. Nothing here can reach a secret: views hold names, numbers, and
error texts and transcripts that `exporter.state.history` redacted before storing them.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import msgspec
from aiohttp import web

from exporter.clients.pacing import COALESCE_SECONDS
from exporter.core.clock import SYSTEM_CLOCK
from exporter.ollama.protocol import Phase
from exporter.schedule.scheduler import NoHistoryError, PairBusyError
from exporter.state import runs
from exporter.state.rates import STEP, RateTracker
from exporter.state.runs import ActiveRun, RunDetail, RunList, RunRecord
from exporter.web.openapi import RUNS_DEFAULT, RUNS_MAX, document

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from exporter.state.history import History
    from exporter.state.pairs import PairState, ServerStatus
    from exporter.state.runs import Run
    from exporter.web.site import PullStarter, Site

Json = dict[str, Any]
BODY_LIMIT: Final = 64 * 1024
_encoder: Final = msgspec.json.Encoder()
STALL_SHOWN: Final = {Phase.MANIFEST: 10.0, Phase.DOWNLOAD: 0.75 + COALESCE_SECONDS}
"""Seconds without new bytes after which a phase counts as stalled on the page and here.

Ollama sends a line every 60 ms with new bytes while it downloads a layer (the recorded
0.17.4 transcripts: never more than 0.07 s apart), so 0.75 s without any is a stall; the
reader sees lines up to `COALESCE_SECONDS` late (exporter/clients/pacing.py), so that much
more. The page (polling every second) shows it within 3 s; the manifest phase waits on the
registry, which may take a few seconds. Verify, write and prune move no bytes.
"""
STALL_SHOWN_BETWEEN_LAYERS: Final = 5.0
"""The same while every layer seen is complete: Ollama 0.17.4 ticks about 1 s at 100% after
a blob's last byte before the next blob's first line, which is no stall."""


@dataclass(slots=True)
class Operator:
    """What the API and the page share: what they may see and do, and the throughput sampler."""

    site: Site
    rates: RateTracker = field(default_factory=RateTracker)


OPERATOR_KEY: Final = web.AppKey("operator", Operator)


def json_response(body: object, status: int = 200) -> web.Response:
    """An `application/json` answer, encoded once by msgspec."""
    return web.Response(body=_encoder.encode(body), status=status, content_type="application/json")


def error(status: int, message: str) -> web.Response:
    """The contract's error shape."""
    return json_response({"error": message}, status)


def install(app: web.Application, site: Site) -> None:
    """Add the API routes, its error middleware and the throughput sampler to `app`."""
    app[OPERATOR_KEY] = Operator(site)
    app.middlewares.append(_json_errors)
    app.cleanup_ctx.append(_sample_rates)
    app.router.add_get("/api/v1/status", _status)
    app.router.add_get("/api/v1/runs", _runs)
    app.router.add_get("/api/v1/runs/{id}", _run)
    app.router.add_post("/api/v1/pulls", _pull)
    app.router.add_get("/api/v1/openapi.json", _openapi)


@web.middleware
async def _json_errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Under `/api/`, the router's own errors (404, 405, 413) answer in JSON as well."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if not request.path.startswith("/api/") or exc.status < 400:
            raise
        response = error(exc.status, exc.reason)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response


async def _sample_rates(app: web.Application) -> AsyncIterator[None]:
    operator = app[OPERATOR_KEY]

    async def sample() -> None:
        while True:
            operator.rates.sample(operator.site.state, SYSTEM_CLOCK.monotonic())
            await asyncio.sleep(STEP)

    task = asyncio.create_task(sample(), name="rate sampler")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# --------------------------------------------------------------------------- views


def pair_views(operator: Operator) -> list[Json]:
    """`/api/v1/status` pairs, in config order."""
    site = operator.site
    history = site.history
    running: dict[tuple[str, str], ActiveRun] = {}
    for active in history.active.values():
        if active.progress is not None:
            running[active.server, active.model] = active
    now = SYSTEM_CLOCK.monotonic()
    server_up = site.state.server_up
    servers = site.state.servers
    return [
        pair_view(
            pair,
            rates=operator.rates,
            history=history,
            active=running.get(key),
            server_up=server_up.get(pair.server),
            server=servers.get(pair.server),
            now=now,
        )
        for key, pair in site.state.pairs.items()
    ]


def server_views(operator: Operator) -> list[Json]:
    """`/api/v1/status` servers, in config order: up or down since when, and why."""
    state = operator.site.state
    history = operator.site.history
    views = []
    for name, status in state.servers.items():
        up = state.server_up.get(name)
        down = up is not None and not up
        problem = status.problem if down else None
        if problem is not None:
            problem = history.redact(problem)
        views.append(
            {
                "name": name,
                "up": None if up is None else bool(up),
                "down_since": status.down_since if down else None,
                "problem": problem,
                "version": None if down else status.version,
                # What the fleet page's sparkline draws, so that it moves while the page is open.
                "throughput": [round(rate) for rate in operator.rates.throughput(name)],
            }
        )
    return views


def pair_view(
    pair: PairState,
    *,
    rates: RateTracker,
    history: History,
    active: ActiveRun | None,
    server_up: float | None,
    now: float,
    server: ServerStatus | None = None,
) -> Json:
    """One pair as the status API shows it."""
    run = pair.current
    source = run if run is not None else pair.last
    rate = eta = quiet = None
    stalled = False
    if run is not None:
        quiet = max(0.0, now - run.last_progress_at)
        shown = STALL_SHOWN.get(run.phase)
        if run.phase is Phase.DOWNLOAD and run.layers_completed == run.layers:
            shown = STALL_SHOWN_BETWEEN_LAYERS
        stalled = shown is not None and quiet >= shown
        # A stall shows at once: the 10 s rate would take that long to fall to 0.
        rate = 0.0 if stalled else rates.rate((pair.server, pair.model), run, now)
        remaining = run.expected_bytes - run.completed_bytes
        if rate and remaining > 0 and run.phase is Phase.DOWNLOAD:
            eta = round(remaining / rate, 1)
    holding = pair.holding
    update = holding.update_available
    last = pair.last
    last_view = None
    if last is not None:
        record = history.last_record(pair.server, pair.model)
        same = record is not None and abs(record.ended_at - last.ended_at) < 1e-3
        last_view = {
            "id": record.id if same and record is not None else None,
            "result": "success" if last.success else "failure",
            "reason": None if last.reason is None else last.reason.value,
            "error": record.error or None if same and record is not None else None,
            "ended_at": last.ended_at,
            "duration_seconds": round(last.duration, 3),
            "downloaded_bytes": last.downloaded_bytes,
        }
    return {
        "server": pair.server,
        "model": pair.model,
        "phase": pair.phase.value,
        "in_progress": run is not None,
        "completed_bytes": source.completed_bytes if source is not None else 0,
        "expected_bytes": source.expected_bytes if source is not None else 0,
        "layers": source.layers if source is not None else 0,
        "layers_completed": source.layers_completed if source is not None else 0,
        "bytes_per_second": None if rate is None else round(rate, 1),
        "eta_seconds": eta,
        "last": last_view,
        "next_run_at": pair.next_run_at,
        "mode": mode(pair),
        "digest": holding.digest,
        "update_available": None if update is None else bool(update),
        "run_id": active.id if active is not None and run is not None else None,
        "last_progress_at": None if run is None else round(run.last_progress_wall, 3),
        "no_progress_seconds": None if quiet is None else round(quiet, 1),
        "stalled": stalled,
        "server_up": None if server_up is None else bool(server_up),
        **_server_down(server_up, server, history),
    }


def _server_down(server_up: float | None, server: ServerStatus | None, history: History) -> Json:
    """`server_down_since` and `server_problem` of a pair view (null while up)."""
    if server is None or server_up is None or server_up:
        return {"server_down_since": None, "server_problem": None}
    problem = server.problem
    if problem is not None:
        problem = history.redact(problem)
    return {"server_down_since": server.down_since, "server_problem": problem}


def run_view(run: RunRecord | ActiveRun) -> Run:
    """One run as `/api/v1/runs` shows it (no transcript); encoded as it is."""
    return runs.run_view(run, SYSTEM_CLOCK.monotonic())


def run_detail(run: RunRecord | ActiveRun, history: History) -> RunDetail:
    """One run with its transcript (an active run's redacted with the history's secrets)."""
    return runs.run_detail(run, history.redact, SYSTEM_CLOCK.monotonic())


# --------------------------------------------------------------------------- handlers


async def _status(request: web.Request) -> web.Response:
    operator = request.app[OPERATOR_KEY]
    return json_response({"pairs": pair_views(operator), "servers": server_views(operator)})


class QueryError(ValueError):
    """A query parameter is malformed; the message says which and why."""


def run_filters(query: Any) -> tuple[str | None, str | None, bool | None, int]:  # noqa: ANN401 - a MultiDictProxy
    """`server`, `model`, `result` and `limit` from a query; raises QueryError."""
    result = query.get("result")
    if result not in {None, "success", "failure"}:
        raise QueryError('result must be "success" or "failure"')
    text = query.get("limit")
    limit = RUNS_DEFAULT
    if text is not None:
        if not text.isascii() or not text.isdigit() or not 1 <= int(text) <= RUNS_MAX:
            raise QueryError(f"limit must be an integer from 1 to {RUNS_MAX}")
        limit = int(text)
    success = None if result is None else result == "success"
    return query.get("server"), query.get("model"), success, limit


async def _runs(request: web.Request) -> web.Response:
    history = request.app[OPERATOR_KEY].site.history
    try:
        server, model, success, limit = run_filters(request.query)
    except QueryError as exc:
        return error(400, str(exc))
    found = await history.runs(server=server, model=model, success=success, limit=limit)
    return json_response(RunList([run_view(run) for run in found]))


def parse_run_id(text: str) -> int | None:
    """A run id from a path, None when it cannot be one."""
    if not text.isascii() or not text.isdigit() or len(text) > 18:
        return None
    return int(text)


async def _run(request: web.Request) -> web.Response:
    history = request.app[OPERATOR_KEY].site.history
    run_id = parse_run_id(request.match_info["id"])
    run = await history.run(run_id) if run_id is not None else None
    if run is None:
        return error(404, "no such run (the history keeps the last runs of each pair)")
    return json_response(run_detail(run, history))


class _PullRequest(msgspec.Struct, forbid_unknown_fields=True):
    server: str
    model: str


_pull_decoder: Final = msgspec.json.Decoder(_PullRequest)


class ApiError(Exception):
    """An answer `{"error": message}` with `status`, raised from deep inside a handler."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def read_body(request: web.Request, content_type: str) -> bytes:
    """The whole body, of `content_type` and at most BODY_LIMIT bytes; raises ApiError."""
    if request.content_type != content_type:
        raise ApiError(415, f"send the body as {content_type}")
    too_large = ApiError(413, f"the body is larger than {BODY_LIMIT} bytes")
    if request.content_length is not None and request.content_length > BODY_LIMIT:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while size <= BODY_LIMIT:  # one read returns what has arrived, maybe a part of the body
        chunk = await request.content.read(BODY_LIMIT + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > BODY_LIMIT:
        raise too_large
    return b"".join(chunks)


async def _pull_request(request: web.Request) -> _PullRequest:
    body = await read_body(request, "application/json")
    try:
        return _pull_decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise ApiError(400, f'want {{"server": S, "model": M}}: {exc}') from None


def require_admin(site: Site) -> PullStarter:
    """What starts pulls; raise ApiError 403 unless `--web.enable-admin-api` is on."""
    if site.pulls is None:
        raise ApiError(403, "the admin API is not enabled (start with --web.enable-admin-api)")
    return site.pulls


def mode(pair: PairState) -> str:
    """`check` for a pair in check mode (it is never pulled), else `pull`."""
    return "check" if pair.holding.checks is not None else "pull"


def start_pull(site: Site, server: str, model: str) -> ActiveRun:
    """Start the pair's run now (the API's and the page's "pull now"); raises ApiError.

    Every refusal comes before the scheduler is asked: once it is, the pull is under way.
    """
    pulls = require_admin(site)
    pair = site.state.pairs.get((server, model))
    if pair is not None and mode(pair) == "check":
        raise ApiError(
            409,
            f"{server}/{model} is a mode: check pair: it is never pulled, only checked "
            "against its registry every interval",
        )
    try:
        return pulls.pull_now(server, model)
    except KeyError:
        raise ApiError(404, f"no configured pair server={server!r} model={model!r}") from None
    except PairBusyError as exc:
        raise ApiError(409, str(exc)) from None
    except NoHistoryError as exc:
        raise ApiError(503, str(exc)) from None


async def _pull(request: web.Request) -> web.Response:
    site = request.app[OPERATOR_KEY].site
    try:
        require_admin(site)  # before reading the body
        wanted = await _pull_request(request)
        active = start_pull(site, wanted.server, wanted.model)
    except ApiError as exc:
        return error(exc.status, str(exc))
    response = json_response({"id": active.id}, 202)
    response.headers["Location"] = f"/api/v1/runs/{active.id}"
    return response


async def _openapi(_: web.Request) -> web.Response:
    return json_response(document())
