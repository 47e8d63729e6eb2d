"""The simulator itself: an aiohttp server on a real socket that plays scenarios."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import math
import signal
import socket
import struct
import threading
import time
import typing
from collections.abc import Mapping  # noqa: TC003 - typing.get_type_hints resolves it at runtime
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ollama_sim.names import canonical_model, model_name_error
from ollama_sim.record import (
    OUTCOME_BAD_REQUEST,
    OUTCOME_CLIENT_DISCONNECTED,
    OUTCOME_COMPLETED,
    OUTCOME_HTTP_ERROR,
    OUTCOME_OPEN,
    OUTCOME_SERVER_DISCONNECTED,
    OUTCOME_STOPPED,
    RequestRecord,
)
from ollama_sim.request import decode_pull_request
from ollama_sim.scenario import Scenario, not_found
from ollama_sim.steps import Emit, Respond, Wait, WaitForever, check
from ollama_sim.wire import JSON_UTF8, NDJSON, go_json, progress_line

if typing.TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence


class _StoppedError(Exception):
    """The simulator is stopping: end the stream at once."""


@dataclass(slots=True)
class _Stream:
    """The live side of one request: where it writes and what it has sent."""

    request: web.Request
    record: RequestRecord
    response: web.StreamResponse | None = None
    buffered: list[bytes] = field(default_factory=list)


class OllamaSimulator:
    """A simulated Ollama server. See the module docstring for the protocol it follows.

    `scenarios` maps model names to runs: request k for a model plays runs[min(k, len - 1)].
    Models are matched in Ollama's short form (`canonical_model`). A model with no runs plays
    `unknown` (default: `not_found()`). Delays are multiplied by `time_scale`.
    """

    def __init__(
        self,
        scenarios: Mapping[str, Sequence[Scenario]] | None = None,
        *,
        time_scale: float = 1.0,
        unknown: Scenario | None = None,
        version: str = "0.33.0",
        on_finish: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        check(time_scale >= 0 and math.isfinite(time_scale), "time_scale must be >= 0")
        self.time_scale = time_scale
        self.unknown = unknown or not_found()
        self.version = version
        self._on_finish = on_finish
        self._runs: dict[str, list[Scenario]] = {}
        self._run_counts: dict[str, int] = {}
        self._requests: list[RequestRecord] = []
        self._active: dict[str, int] = {}
        self._max_concurrent: dict[str, int] = {}
        self._active_overall = 0
        self._max_concurrent_overall = 0
        self._lock = threading.Condition()
        self._streams: dict[asyncio.Task[Any], _Stream] = {}
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Future[None] | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_stop: asyncio.Event | None = None
        self.url: str | None = None
        for model, runs in (scenarios or {}).items():
            self.set_runs(model, runs)

    # ---- configuration and observations, all thread-safe

    def set_runs(self, model: str, runs: Sequence[Scenario]) -> None:
        """Set the runs for `model` and reset its request counter."""
        check(bool(runs), "set_runs needs at least one scenario")
        with self._lock:
            key = canonical_model(model)
            self._runs[key] = list(runs)
            self._run_counts[key] = 0

    def run_count(self, model: str) -> int:
        """Number of runs started for `model` since `set_runs`."""
        with self._lock:
            return self._run_counts.get(canonical_model(model), 0)

    @property
    def requests(self) -> list[RequestRecord]:
        """Every `POST /api/pull` so far, oldest first (a copy of the list)."""
        with self._lock:
            return list(self._requests)

    @property
    def active(self) -> dict[str, int]:
        """Streams open now, per model as requested."""
        with self._lock:
            return {k: v for k, v in self._active.items() if v}

    @property
    def max_concurrent(self) -> dict[str, int]:
        """Most streams open at once, per model as requested."""
        with self._lock:
            return dict(self._max_concurrent)

    @property
    def active_overall(self) -> int:
        """Streams open now, all models."""
        with self._lock:
            return self._active_overall

    @property
    def max_concurrent_overall(self) -> int:
        """Most streams open at once, all models."""
        with self._lock:
            return self._max_concurrent_overall

    def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        """Block until `predicate()` holds (checked after every change); TimeoutError if not.

        For tests that run the simulator in its thread (`running()`); from the simulator's own
        loop use `until`.
        """
        deadline = time.monotonic() + within
        with self._lock:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("condition not reached")
                self._lock.wait(remaining)

    async def until(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        """Wait in the simulator's loop until `predicate()` holds; TimeoutError if not."""
        async with asyncio.timeout(within):
            while not predicate():
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.add(waiter)
                try:
                    await waiter
                finally:
                    self._waiters.discard(waiter)

    def _changed(self) -> None:
        with self._lock:
            self._lock.notify_all()
        for waiter in list(self._waiters):
            if not waiter.done():
                waiter.set_result(None)

    # ---- lifecycle

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/api/pull", self._handle_pull)
        app.router.add_get("/api/version", self._handle_version)
        app.router.add_get("/", self._handle_root)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on `host:port` (0: a free port) in the running loop; return the base URL."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        self._loop = asyncio.get_running_loop()
        self._stopping = self._loop.create_future()
        runner = web.AppRunner(
            self._make_app(), handler_cancellation=True, shutdown_timeout=0.5, access_log=None
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        """Close every open stream and the server; bounded (about 1 s at most)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        assert self._stopping is not None
        if not self._stopping.done():
            self._stopping.set_result(None)
        tasks = set(self._streams)
        if tasks:
            # Players notice the stop at their next wait; writers blocked on a reader that
            # does not read are cut off after a short grace period.
            await asyncio.wait(tasks, timeout=0.5)
            for task, stream in list(self._streams.items()):
                if not task.done() and stream.request.transport is not None:
                    stream.request.transport.abort()
        await runner.cleanup()
        self.url = None

    @contextlib.contextmanager
    def running(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve from a background thread with its own loop; yield the base URL.

        On exit every stream is closed and the thread is joined (bounded).
        """
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()
        thread = threading.Thread(
            target=lambda: asyncio.run(self._serve_in_thread(host, port, ready)),
            name="ollama-sim",
            daemon=True,
        )
        thread.start()
        try:
            url = ready.result(timeout=10)
        except BaseException:
            thread.join(timeout=5)
            raise
        try:
            yield url
        finally:
            loop, stop = self._loop, self._thread_stop
            assert loop is not None
            assert stop is not None
            loop.call_soon_threadsafe(stop.set)
            thread.join(timeout=5)
            if thread.is_alive():
                raise RuntimeError("simulator thread did not stop within 5 s")

    async def _serve_in_thread(
        self, host: str, port: int, ready: concurrent.futures.Future[str]
    ) -> None:
        self._thread_stop = asyncio.Event()
        try:
            url = await self.start(host, port)
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            ready.set_exception(exc)
            return
        ready.set_result(url)
        try:
            await self._thread_stop.wait()
        finally:
            await self.stop()

    # ---- handlers

    async def _handle_root(self, request: web.Request) -> web.Response:
        del request
        return web.Response(body=b"Ollama is running", content_type="text/plain", charset="utf-8")

    async def _handle_version(self, request: web.Request) -> web.Response:
        del request
        return _response(200, go_json({"version": self.version}), JSON_UTF8)

    async def _handle_pull(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return _response(405, b"405 method not allowed", "text/plain")
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
        return _response(400, go_json({"error": text}), JSON_UTF8)

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)
        self._changed()
        if record.ended is not None and self._on_finish is not None:
            self._on_finish(record)

    def _next_run(self, record: RequestRecord) -> Scenario:
        assert record.model is not None
        key = canonical_model(record.model)
        with self._lock:
            runs = self._runs.get(key)
            if runs is None:
                return self.unknown
            index = self._run_counts[key]
            self._run_counts[key] = index + 1
            record.run_index = index
            return runs[min(index, len(runs) - 1)]

    def _open(self, model: str, delta: int) -> None:
        with self._lock:
            self._active[model] = self._active.get(model, 0) + delta
            self._active_overall += delta
            self._max_concurrent[model] = max(
                self._max_concurrent.get(model, 0), self._active[model]
            )
            self._max_concurrent_overall = max(self._max_concurrent_overall, self._active_overall)
        self._changed()

    def _finish(self, record: RequestRecord, outcome: str) -> None:
        if record.outcome == OUTCOME_OPEN:
            record.outcome, record.ended = outcome, time.monotonic()

    async def _serve_run(
        self, request: web.Request, record: RequestRecord, scenario: Scenario
    ) -> web.StreamResponse:
        assert record.model is not None
        task = asyncio.current_task()
        assert task is not None
        stream = _Stream(request, record)
        self._streams[task] = stream
        self._record(record)
        self._open(record.model, +1)
        try:
            return await self._play(stream, scenario)
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the connection is lost (handler_cancellation).
            self._finish(record, self._cancel_outcome())
            raise
        finally:
            del self._streams[task]
            self._open(record.model, -1)
            if self._on_finish is not None:
                self._on_finish(record)

    def _cancel_outcome(self) -> str:
        stopping = self._stopping is not None and self._stopping.done()
        return OUTCOME_STOPPED if stopping else OUTCOME_CLIENT_DISCONNECTED

    async def _play(self, stream: _Stream, scenario: Scenario) -> web.StreamResponse:
        record = stream.record
        assert record.model is not None
        loop = asyncio.get_running_loop()
        start, virtual = loop.time(), 0.0
        try:
            for action in scenario.actions(record.model):
                if isinstance(action, Wait):
                    virtual += action.seconds
                    await self._sleep_until(start + virtual * self.time_scale)
                elif isinstance(action, WaitForever):
                    await self._sleep_until(math.inf)
                elif isinstance(action, Emit):
                    await self._emit(stream, action.data)
                elif isinstance(action, Respond):
                    record.status = action.status
                    self._finish(record, OUTCOME_HTTP_ERROR)
                    return _response(
                        action.status, action.body, action.content_type, action.location
                    )
                else:
                    return self._abort(
                        stream, reset=action.reset, outcome=OUTCOME_SERVER_DISCONNECTED
                    )
        except _StoppedError:
            return self._abort(stream, reset=False, outcome=OUTCOME_STOPPED)
        except ConnectionError:
            self._finish(record, self._cancel_outcome())
            return stream.response or web.Response()
        if stream.response is None:  # stream: false, or no line at all
            return self._finish_unstreamed(stream)
        self._finish(record, OUTCOME_COMPLETED)
        return stream.response

    async def _sleep_until(self, deadline: float) -> None:
        assert self._stopping is not None
        loop = asyncio.get_running_loop()
        delay = deadline - loop.time()
        if self._stopping.done():
            raise _StoppedError
        if delay <= 0:
            await asyncio.sleep(0)
            return
        await asyncio.wait({self._stopping}, timeout=None if math.isinf(delay) else delay)
        if self._stopping.done():
            raise _StoppedError

    async def _emit(self, stream: _Stream, data: bytes) -> None:
        record = stream.record
        if not record.stream:
            stream.buffered.append(data)
            return
        if stream.response is None:
            response = web.StreamResponse(status=200)
            response.headers["Content-Type"] = NDJSON
            response.enable_chunked_encoding()
            await response.prepare(stream.request)
            stream.response, record.status = response, 200
        await stream.response.write(data)
        record.lines_sent += data.count(b"\n")
        record.bytes_sent += len(data)

    def _abort(self, stream: _Stream, *, reset: bool, outcome: str) -> web.StreamResponse:
        self._finish(stream.record, outcome)
        transport = stream.request.transport
        if transport is not None:
            if reset:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            else:
                transport.close()
        return stream.response or web.Response()

    def _finish_unstreamed(self, stream: _Stream) -> web.Response:
        """Answer like `waitForStream` (§5): the last progress line, or 500 on an error."""
        record = stream.record
        self._finish(record, OUTCOME_COMPLETED)
        if record.stream:  # a streaming run that sent no line at all
            record.status = 200
            return _response(200, b"", NDJSON)
        latest: dict[str, object] = {"status": ""}
        for line in b"".join(stream.buffered).splitlines():
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict) and "error" in value:
                    record.status = 500
                    return _response(500, go_json({"error": value["error"]}), "application/json")
                if isinstance(value, dict):
                    latest = value
        record.status = 200
        return _response(
            200, progress_line(**_progress_args(latest)).rstrip(b"\n"), "application/json"
        )


def _progress_args(value: Mapping[str, object]) -> dict[str, Any]:
    return {
        "status": str(value.get("status", "")),
        "digest": str(value.get("digest", "")),
        "total": int(str(value.get("total", 0))),
        "completed": int(str(value.get("completed", 0))),
    }


def _response(
    status: int, body: bytes, content_type: str | None, location: str | None = None
) -> web.Response:
    response = web.Response(status=status, body=body)
    if content_type is not None:
        response.headers["Content-Type"] = content_type
    if location is not None:
        response.headers["Location"] = location
    return response


async def serve_until_signal(sim: OllamaSimulator, host: str, port: int) -> None:
    """Serve `sim` as a process of its own: print the URL, stop on SIGINT or SIGTERM."""
    url = await sim.start(host, port)
    print(f"listening on {url}", flush=True)  # noqa: T201 - the line callers wait for
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()
