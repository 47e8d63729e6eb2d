"""`POST /api/pull`: picks each model's next run, plays its steps on the wire, records the request.

The runs, the request records and the open-stream counters live here, guarded by the
simulator's lock so tests can read them from another thread (`OllamaSimulator` delegates).
"""

from __future__ import annotations

import asyncio
import math
import time
import typing
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ollama_sim.names import canonical_model, model_name_error
from ollama_sim.record import (
    OUTCOME_BAD_REQUEST,
    OUTCOME_CLIENT_DISCONNECTED,
    OUTCOME_COMPLETED,
    OUTCOME_HTTP_ERROR,
    OUTCOME_SERVER_DISCONNECTED,
    OUTCOME_STOPPED,
    RequestRecord,
)
from ollama_sim.request import decode_pull_request
from ollama_sim.steps import Emit, Respond, Wait, WaitForever, check
from ollama_sim.stream import StoppedError, Stream, abort, emit, finish_unstreamed, response
from ollama_sim.wire import JSON_UTF8, go_json

if typing.TYPE_CHECKING:
    from collections.abc import Sequence

    from ollama_sim.scenario import Scenario
    from ollama_sim.server import OllamaSimulator


class PullEndpoint:
    """The `/api/pull` family: request k for a model plays runs[min(k, len - 1)] (or k mod len)."""

    def __init__(self, sim: OllamaSimulator) -> None:
        self._sim = sim
        self._runs: dict[str, list[Scenario]] = {}
        self._run_counts: dict[str, int] = {}
        self._requests: list[RequestRecord] = []
        self._active: dict[str, int] = {}
        self._max_concurrent: dict[str, int] = {}
        self._active_overall = 0
        self._max_concurrent_overall = 0
        self._streams: dict[asyncio.Task[Any], Stream] = {}

    def routes(self) -> list[web.RouteDef]:
        """The routes of this family (any method: Ollama answers 405 itself)."""
        return [web.route("*", "/api/pull", self.handle)]

    # ---- configuration and observations, all thread-safe

    def set_runs(self, model: str, runs: Sequence[Scenario]) -> None:
        """Set the runs for `model` and reset its request counter."""
        check(bool(runs), "set_runs needs at least one scenario")
        with self._sim.lock:
            key = canonical_model(model)
            self._runs[key] = list(runs)
            self._run_counts[key] = 0

    def run_count(self, model: str) -> int:
        """Number of runs started for `model` since `set_runs`."""
        with self._sim.lock:
            return self._run_counts.get(canonical_model(model), 0)

    @property
    def requests(self) -> list[RequestRecord]:
        """Every `POST /api/pull` so far, oldest first (a copy of the list)."""
        with self._sim.lock:
            return list(self._requests)

    @property
    def active(self) -> dict[str, int]:
        """Streams open now, per model as requested."""
        with self._sim.lock:
            return {k: v for k, v in self._active.items() if v}

    @property
    def max_concurrent(self) -> dict[str, int]:
        """Most streams open at once, per model as requested."""
        with self._sim.lock:
            return dict(self._max_concurrent)

    @property
    def active_overall(self) -> int:
        """Streams open now, all models."""
        with self._sim.lock:
            return self._active_overall

    @property
    def max_concurrent_overall(self) -> int:
        """Most streams open at once, all models."""
        with self._sim.lock:
            return self._max_concurrent_overall

    async def close_streams(self) -> None:
        """At stop: let players end at their next wait, then cut writers that are still stuck."""
        tasks = set(self._streams)
        if not tasks:
            return
        # Writers blocked on a reader that does not read are cut off after a short grace period.
        await asyncio.wait(tasks, timeout=0.5)
        for task, stream in list(self._streams.items()):
            if not task.done() and stream.request.transport is not None:
                stream.request.transport.abort()

    # ---- the handler

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one request: 405, 400 for a bad body or name, else play the model's next run."""
        if request.method != "POST":
            return response(405, b"405 method not allowed", "text/plain")
        raw = await request.read()
        decoded = decode_pull_request(raw)
        record = RequestRecord(
            body=None,
            raw_body=raw,
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            started=time.monotonic(),
        )
        if isinstance(decoded, str):
            return self._reject(record, decoded)
        record.body, params = decoded
        record.stream = params.stream
        name_error = model_name_error(params.model)
        if name_error is not None:
            return self._reject(record, name_error)
        record.model = params.model
        scenario = self._next_run(record)
        return await self._serve_run(request, record, scenario)

    def _reject(self, record: RequestRecord, text: str) -> web.Response:
        record.status, record.outcome, record.ended = 400, OUTCOME_BAD_REQUEST, time.monotonic()
        self._record(record)
        return response(400, go_json({"error": text}), JSON_UTF8)

    def _record(self, record: RequestRecord) -> None:
        with self._sim.lock:
            self._requests.append(record)
        self._sim.changed()
        if record.ended is not None:
            self._sim.finished(record)

    def _next_run(self, record: RequestRecord) -> Scenario:
        assert record.model is not None
        key = canonical_model(record.model)
        with self._sim.lock:
            runs = self._runs.get(key)
            if runs is None:
                return self._sim.unknown
            index = self._run_counts[key]
            self._run_counts[key] = index + 1
            record.run_index = index
            if self._sim.loop:
                return runs[index % len(runs)]
            return runs[min(index, len(runs) - 1)]

    def _open(self, model: str, delta: int) -> None:
        with self._sim.lock:
            self._active[model] = self._active.get(model, 0) + delta
            self._active_overall += delta
            self._max_concurrent[model] = max(
                self._max_concurrent.get(model, 0), self._active[model]
            )
            self._max_concurrent_overall = max(self._max_concurrent_overall, self._active_overall)
        self._sim.changed()

    async def _serve_run(
        self, request: web.Request, record: RequestRecord, scenario: Scenario
    ) -> web.StreamResponse:
        assert record.model is not None
        task = asyncio.current_task()
        assert task is not None
        stream = Stream(request, record)
        self._streams[task] = stream
        self._record(record)
        self._open(record.model, +1)
        try:
            return await self._play(stream, scenario)
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the connection is lost (handler_cancellation).
            record.finish(self._cancel_outcome())
            raise
        finally:
            del self._streams[task]
            self._open(record.model, -1)
            self._sim.finished(record)

    def _cancel_outcome(self) -> str:
        return OUTCOME_STOPPED if self._sim.stopping.done() else OUTCOME_CLIENT_DISCONNECTED

    async def _play(self, stream: Stream, scenario: Scenario) -> web.StreamResponse:
        record = stream.record
        assert record.model is not None
        loop = asyncio.get_running_loop()
        start, virtual = loop.time(), 0.0
        try:
            for action in scenario.actions(record.model):
                if isinstance(action, Wait):
                    virtual += action.seconds
                    await self._sleep_until(start + virtual * self._sim.time_scale)
                elif isinstance(action, WaitForever):
                    await self._sleep_until(math.inf)
                elif isinstance(action, Emit):
                    await emit(stream, action.data)
                    record.sent(action.data)
                    if action.data.startswith(b'{"status":"success"}'):
                        self._sim.tags.pulled(record.model, scenario)
                elif isinstance(action, Respond):
                    record.status = action.status
                    record.finish(OUTCOME_HTTP_ERROR)
                    return response(
                        action.status, action.body, action.content_type, action.location
                    )
                else:
                    return abort(stream, reset=action.reset, outcome=OUTCOME_SERVER_DISCONNECTED)
        except StoppedError:
            return abort(stream, reset=False, outcome=OUTCOME_STOPPED)
        except ConnectionError:
            record.finish(self._cancel_outcome())
            return stream.response or web.Response()
        if stream.response is None:  # stream: false, or no line at all
            return finish_unstreamed(stream)
        record.finish(OUTCOME_COMPLETED)
        return stream.response

    async def _sleep_until(self, deadline: float) -> None:
        stopping = self._sim.stopping
        delay = deadline - asyncio.get_running_loop().time()
        if stopping.done():
            raise StoppedError
        if delay <= 0:
            await asyncio.sleep(0)
            return
        await asyncio.wait({stopping}, timeout=None if math.isinf(delay) else delay)
        if stopping.done():
            raise StoppedError
