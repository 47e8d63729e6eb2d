"""The simulator itself: an aiohttp server on a real socket that serves the endpoint families.

Each family is a module (`pull`, `info`) that contributes its routes to `_make_app`; this
module owns what they share: the lock behind every observation, change notification, the stop
signal, and the lifecycle (`start`/`stop` in a loop, or `running()` in a thread of its own).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import signal
import threading
import time
import typing

from aiohttp import web

from ollama_sim import info
from ollama_sim.pull import PullEndpoint
from ollama_sim.scenario import Scenario, not_found
from ollama_sim.serving import serve
from ollama_sim.steps import check
from ollama_sim.tags import TagsEndpoint
from ollama_sim.wire import OLLAMA_VERSION

if typing.TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from ollama_sim.record import RequestRecord
    from ollama_sim.registry import CannedAnswer, RegistrySimulator
    from ollama_sim.tags import HeldModel


class OllamaSimulator:
    """A simulated Ollama server. See the module docstring for the protocol it follows.

    `scenarios` maps model names to runs: request k for a model plays runs[min(k, len - 1)].
    Models are matched in Ollama's short form (`canonical_model`). A model with no runs plays
    `unknown` (default: `not_found()`). Delays are multiplied by `time_scale`. With `loop`,
    request k plays runs[k % len] instead, so a list of runs repeats forever.
    """

    def __init__(
        self,
        scenarios: Mapping[str, Sequence[Scenario]] | None = None,
        *,
        time_scale: float = 1.0,
        unknown: Scenario | None = None,
        version: str = OLLAMA_VERSION,
        loop: bool = False,
        on_finish: Callable[[RequestRecord], None] | None = None,
        registry: RegistrySimulator | None = None,
    ) -> None:
        check(time_scale >= 0 and math.isfinite(time_scale), "time_scale must be >= 0")
        self.time_scale = time_scale
        self.unknown = unknown or not_found()
        self.version = version
        self.loop = loop
        self._on_finish = on_finish
        self._lock = threading.Condition()
        self.pull = PullEndpoint(self)
        self.tags = TagsEndpoint(self, registry)
        """`/api/tags` and the simulated disk; successful pulls take `registry`'s digests."""
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
        self.pull.set_runs(model, runs)

    def run_count(self, model: str) -> int:
        """Number of runs started for `model` since `set_runs`."""
        return self.pull.run_count(model)

    @property
    def requests(self) -> list[RequestRecord]:
        """Every `POST /api/pull` so far, oldest first (a copy of the list)."""
        return self.pull.requests

    @property
    def active(self) -> dict[str, int]:
        """Pull streams open now, per model as requested."""
        return self.pull.active

    @property
    def max_concurrent(self) -> dict[str, int]:
        """Most pull streams open at once, per model as requested."""
        return self.pull.max_concurrent

    @property
    def active_overall(self) -> int:
        """Pull streams open now, all models."""
        return self.pull.active_overall

    @property
    def max_concurrent_overall(self) -> int:
        """Most pull streams open at once, all models."""
        return self.pull.max_concurrent_overall

    def hold(self, model: str, digest: str | None = None, size: int = 1000) -> str:
        """Put `model` on the simulated disk (as a pull would); return its digest."""
        return self.tags.hold(model, digest, size)

    def drop(self, model: str) -> None:
        """Remove `model` from the simulated disk (`ollama rm`)."""
        self.tags.drop(model)

    @property
    def held(self) -> dict[str, HeldModel]:
        """What `/api/tags` lists, by short name."""
        return self.tags.held

    @property
    def tags_requests(self) -> int:
        """`GET /api/tags` requests so far."""
        return self.tags.requests

    def answer_tags_with(self, answer: CannedAnswer | None) -> None:
        """Answer `/api/tags` with `answer` (bad input for tests); None: the real answer."""
        self.tags.answer_with(answer)

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

    # ---- what endpoint families share

    @property
    def lock(self) -> threading.Condition:
        """Guards every observation; notified (via `changed`) whenever one changes."""
        return self._lock

    @property
    def stopping(self) -> asyncio.Future[None]:
        """Done once `stop` began: players end their streams at their next wait."""
        if self._stopping is None:
            raise RuntimeError("simulator not started")
        return self._stopping

    def changed(self) -> None:
        """Wake `wait_for` and `until` callers: an observation changed."""
        with self._lock:
            self._lock.notify_all()
        for waiter in list(self._waiters):
            if not waiter.done():
                waiter.set_result(None)

    def finished(self, record: RequestRecord) -> None:
        """Hand an ended request to the `on_finish` hook, if any."""
        if self._on_finish is not None:
            self._on_finish(record)

    # ---- lifecycle

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.add_routes(self.pull.routes())
        app.add_routes(info.routes(self))
        app.add_routes(self.tags.routes())
        return app

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None
    ) -> str:
        """Serve on `host:port` (0: a free port) in the running loop; return the base URL.

        With `sock`, serve on that bound socket instead (its address is known before the loop
        runs: the exporter's `--demo` builds its config from it).
        """
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        self._loop = asyncio.get_running_loop()
        self._stopping = self._loop.create_future()
        self._runner, bound_host, bound_port = await serve(
            self._make_app(), host, port, handler_cancellation=True, sock=sock
        )
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
        await self.pull.close_streams()
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
