"""`run_pull` in process: real aiohttp on both ends of a 127.0.0.1 socket, no subprocess.

Three kinds of servers:
- `Script` (an aiohttp app in `aiohttp.test_utils.TestServer`): the test writes the stream
  line by line while it moves a `FakeClock` by hand, so phase durations, stalls, timeouts
  and the read pacing are checked exactly, with no sleeping and no polling of `/metrics`;
- a `Timeline` at Ollama's own cadence, on virtual time (tests/virtual_time.py);
- a raw TCP server in its own process (tests/raw_http.py) for bytes that are not valid HTTP
  or that a polite server never sends (malformed chunks, a gzip body that was not asked for,
  a flood of newlines), so its own cost does not count against the loop under test.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from exporter import __version__
from exporter.clients.pacing import COALESCE_SECONDS
from exporter.clients.pull import make_session, run_pull
from exporter.clients.transport import MAX_FRAMING_LINE_BYTES, FramingGuard, framing_watched
from exporter.config.loader import parse_config
from exporter.ollama.protocol import Phase, Reason
from exporter.state.pairs import ExporterState, PairState, RunResult, sync_pairs
from ollama_sim import (
    go_json,
    progress_line,
)
from tests.raw_http import raw_http_server
from tests.virtual_time import run_virtual

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from exporter.config.types import ModelConfig, ServerConfig

MODEL = "m"
DIGEST = "sha256:" + "ab" * 32
START = 1000.0


def line(**fields: object) -> bytes:
    return go_json(fields) + b"\n"


def tick(completed: int, total: int) -> bytes:
    return progress_line(f"pulling {DIGEST[7:19]}", DIGEST, total, completed)


MANIFEST = line(status="pulling manifest")
VERIFY = line(status="verifying sha256 digest")
WRITE = line(status="writing manifest")
PRUNE = line(status="removing unused layers")
SUCCESS = line(status="success")


# --------------------------------------------------------------------------- a fake clock


class FakeClock:
    """`exporter.core.clock.Clock` whose time moves only in `advance`; sleepers wake in order."""

    def __init__(self) -> None:
        self.now = START
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return 1_700_000_000.0 + self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + seconds, next(self._order), future))
        await future

    def advance(self, seconds: float) -> None:
        """Move time on and wake every sleeper whose time has come."""
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    def pausing(self) -> bool:
        """A read pause is pending (the watchdogs sleep for much longer)."""
        return any(
            self.now < at <= self.now + COALESCE_SECONDS and not future.done()
            for at, _, future in self._sleepers
        )


# --------------------------------------------------------------------------- the pair


def _pair(
    url: str, defaults: str = "", model: str = MODEL
) -> tuple[ServerConfig, ModelConfig, ExporterState]:
    """The config of one pair; `defaults` like `, stall_timeout: 5s` overrides the settings."""
    settings = {"interval": "1h", "jitter": "0", "timeout": "1h", "stall_timeout": "10m"}
    for item in defaults.split(",")[1:]:
        key, value = item.split(":")
        settings[key.strip()] = value.strip()
    text = ", ".join(f"{key}: {value}" for key, value in settings.items())
    config = parse_config(
        f"defaults: {{{text}}}\nservers:\n  - name: s\n    url: {url}\n    models: [{model}]\n",
        "test.yaml",
    )
    state = ExporterState()
    sync_pairs(state, config)
    server = config.servers[0]
    return server, server.models[0], state


@dataclass
class Run:
    """One `run_pull` going on in the test's loop, and what its stream looked like."""

    state: ExporterState
    pair: PairState
    task: asyncio.Task[RunResult]
    chunks: list[tuple[bytes, float]] = field(default_factory=list)

    @property
    def received(self) -> int:
        return sum(len(chunk) for chunk, _ in self.chunks)


def start_run(
    url: str, defaults: str = "", clock: FakeClock | None = None, model: str = MODEL
) -> Run:
    server, config, state = _pair(url, defaults, model)
    pair = state.pairs[server.name, config.name]
    chunks: list[tuple[bytes, float]] = []
    session = make_session()

    async def go() -> RunResult:
        async with session:
            if clock is None:
                return await run_pull(session, server, config, state, pair)
            return await run_pull(
                session,
                server,
                config,
                state,
                pair,
                clock=clock,
                on_chunk=lambda chunk, at: chunks.append((chunk, at)),
            )

    return Run(state, pair, asyncio.create_task(go()), chunks)


def run_async(test: Callable[[], Coroutine[object, object, None]]) -> None:
    """Run one test coroutine in a fresh loop, bounded so a hang fails instead of blocking."""

    async def bounded() -> None:
        await asyncio.wait_for(test(), timeout=60)

    asyncio.run(bounded())


async def until(check: Callable[[], bool], what: str) -> None:
    """Yield to the loop until `check()` holds: in-process state, not a timed poll."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.001)


# --------------------------------------------------------------------------- a scripted stream


class Script:
    """An Ollama stand-in whose stream the test writes, line by line."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.headers: dict[str, str] = {}
        self.started = asyncio.Event()
        self.sent = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.headers = dict(request.headers)
        await request.read()
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        self.started.set()
        while (data := await self.queue.get()) is not None:
            await response.write(data)
        return response

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/api/pull", self.handle)
        return app


@dataclass
class Driver:
    """Moves the fake clock and writes the script, waiting until the reader has caught up."""

    clock: FakeClock
    script: Script
    run: Run

    async def send(self, data: bytes, after: float = 0.0) -> None:
        """`after` seconds later, send `data`; return once it is read or a pause holds it."""
        self.clock.advance(after)
        self.script.sent += len(data)
        await self.script.queue.put(data)
        await until(
            self._caught_up,
            "the reader to read the line or pause",
        )

    async def wait(self, seconds: float) -> None:
        """Let `seconds` pass with nothing sent; a pause that ends meanwhile reads on."""
        self.clock.advance(seconds)
        await until(
            self._caught_up,
            "the reader to catch up",
        )

    def _caught_up(self) -> bool:
        return self.run.received >= self.script.sent or self.clock.pausing() or self.run.task.done()


async def scripted(
    body: Callable[[Driver], Awaitable[None]], defaults: str = ""
) -> tuple[Run, RunResult, Script]:
    script = Script()
    clock = FakeClock()
    async with TestServer(script.app(), host="127.0.0.1") as server:
        run = start_run(str(server.make_url("")).rstrip("/"), defaults, clock)
        await until(script.started.is_set, "the request")
        await body(Driver(clock, script, run))
        if not run.task.done():
            await script.queue.put(None)
        result = await run.task
    return run, result, script


# --------------------------------------------------------------------------- fake-clock tests


def test_phase_durations_are_exact_and_the_download_is_read_in_batches() -> None:
    total, step = 16_000_000, 100_000  # 160 ticks of 60 ms: 9.6 s

    async def body(drive: Driver) -> None:
        await drive.send(MANIFEST, after=0.5)
        for completed in range(0, total, step):
            await drive.send(tick(completed, total), after=0.06)
        await drive.send(VERIFY, after=0.03)  # the blob finished between two ticks
        await drive.send(WRITE, after=0.3)
        await drive.send(PRUNE, after=0.01)
        await drive.send(SUCCESS, after=0.2)

    async def test() -> None:
        run, result, _ = await scripted(body)
        assert result == RunResult(None)
        last = run.pair.last
        assert last is not None
        ticks = total // step
        assert last.phase_durations == pytest.approx(
            {
                Phase.MANIFEST: 0.56,
                Phase.DOWNLOAD: (ticks - 1) * 0.06 + 0.03,
                Phase.VERIFY: 0.3,
                Phase.WRITE: 0.01,
                Phase.PRUNE: 0.2,
            },
            abs=1e-9,
        )
        assert last.downloaded_bytes == total
        # The ticks were read about four at a time while the download had far to go...
        reads = [chunk for chunk, _ in run.chunks if chunk]
        assert len(reads) < ticks * 0.5
        # ...and one by one in its last ticks, so the end of the download was not late.
        last_ticks = [chunk.count(b"\n") for chunk, _ in run.chunks if DIGEST.encode() in chunk]
        assert last_ticks[-2:] == [1, 1]

    run_async(test)


def test_a_stall_ends_the_run_exactly_at_stall_timeout() -> None:
    async def body(drive: Driver) -> None:
        await drive.send(MANIFEST, after=0.5)
        await drive.wait(9.999)
        assert not drive.run.task.done()
        drive.clock.advance(0.002)
        await until(drive.run.task.done, "the stall to end the run")

    async def test() -> None:
        run, result, _ = await scripted(body, defaults=", stall_timeout: 10s")
        assert result.reason is Reason.STALLED
        last = run.pair.last
        assert last is not None
        assert last.duration == pytest.approx(10.501, abs=1e-9)
        assert last.phase_durations[Phase.MANIFEST] == pytest.approx(10.501, abs=1e-9)

    run_async(test)


def test_blank_lines_are_not_progress() -> None:
    """A stream that keeps sending blank lines still stalls at `stall_timeout`."""

    async def body(drive: Driver) -> None:
        await drive.send(MANIFEST)
        while not drive.run.task.done():
            await drive.send(b"\n" * 1000 + b"  \r\n", after=0.5)

    async def test() -> None:
        run, result, _ = await scripted(body, defaults=", stall_timeout: 10s")
        assert result.reason is Reason.STALLED
        last = run.pair.last
        assert last is not None
        assert 10 <= last.duration <= 10.5 + COALESCE_SECONDS

    run_async(test)


def test_a_run_that_keeps_progressing_still_ends_at_its_timeout() -> None:
    async def body(drive: Driver) -> None:
        await drive.send(MANIFEST)
        completed = 0
        while not drive.run.task.done():
            completed += 1000
            await drive.send(tick(completed, 10**12), after=0.5)

    async def test() -> None:
        run, result, _ = await scripted(body, defaults=", timeout: 30s, stall_timeout: 5s")
        assert result.reason is Reason.TIMEOUT
        last = run.pair.last
        assert last is not None
        assert 30 <= last.duration <= 30 + COALESCE_SECONDS + 0.5

    run_async(test)


def test_the_chunk_hook_sees_every_byte_with_its_arrival_time() -> None:
    sent = [MANIFEST, tick(5, 10), VERIFY, WRITE, SUCCESS]

    async def body(drive: Driver) -> None:
        for index, data in enumerate(sent):
            await drive.send(data, after=1.0 + index)

    async def test() -> None:
        run, result, _ = await scripted(body)
        assert result.succeeded
        assert b"".join(chunk for chunk, _ in run.chunks) == b"".join(sent)
        assert [at - START for _, at in run.chunks] == [1.0, 3.0, 6.0, 10.0, 15.0]

    run_async(test)


def test_an_up_to_date_pull_is_read_without_a_pause() -> None:
    """Every layer is complete in its first line: no download to coalesce, no read pauses.

    (tests/e2e/test_integration.py pulls the same shape from the simulator; timing it there
    measured the machine as much as the reader.)
    """
    layers = [
        progress_line(f"pulling {digest[7:19]}", digest, size, size)
        for digest, size in ((DIGEST, 10_000_000), ("sha256:" + "cd" * 32, 3_000_000))
    ]
    sent = [MANIFEST, *layers, VERIFY, WRITE, SUCCESS]

    async def body(drive: Driver) -> None:
        for data in sent:
            await drive.send(data, after=0.06)
            assert not drive.clock.pausing(), data

    async def test() -> None:
        run, result, _ = await scripted(body)
        assert result.succeeded
        # Each line read alone, the moment it was sent: a pause would have merged or delayed.
        assert [chunk for chunk, _ in run.chunks if chunk] == sent
        assert [round(at - START, 9) for chunk, at in run.chunks if chunk] == [
            round(0.06 * k, 9) for k in range(1, len(sent) + 1)
        ]
        last = run.pair.last
        assert last is not None
        assert last.downloaded_bytes == 0

    run_async(test)


def test_requests_name_the_exporter_and_ask_for_no_compression() -> None:
    async def test() -> None:
        script = Script()
        async with TestServer(script.app(), host="127.0.0.1") as server:
            run = start_run(str(server.make_url("")).rstrip("/"))
            await script.queue.put(MANIFEST + SUCCESS)
            await script.queue.put(None)
            result = await run.task
        assert result.succeeded
        assert script.headers["User-Agent"] == f"ollama-pull-exporter/{__version__}"
        assert script.headers["Accept-Encoding"] == "identity"

    run_async(test)


# --------------------------------------------------------------------------- Ollama's cadence


class Timeline:
    """An Ollama stand-in at Ollama's cadence: a layer at the 60 ms ticker, then a tail.

    Request `m<k>` gets a layer of `TICKS[k]` ticks. The tail is a list of (seconds to
    sleep, line) and the phase timed is the one the line `start` starts and the next line
    ends. Each send time is read right after the write, so the truth is what the socket
    saw. It runs on virtual time (tests/virtual_time.py), as the run's own clock and its read
    pauses do: the same order of events as on the real clock, without the waiting.
    """

    def __init__(self, tail: list[tuple[float, bytes]], start: bytes) -> None:
        self.tail = tail
        self.start = start
        self.truth: dict[str, float] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        model = str((await request.json())["model"])
        ticks = TICKS[int(model[1:])]
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(MANIFEST)
        total = ticks * 120_000
        for index in range(ticks):
            await asyncio.sleep(0.06)
            await response.write(tick(index * 120_000, total))
        started = 0.0
        for pause, data in self.tail:
            await asyncio.sleep(pause)
            await response.write(data)
            sent = asyncio.get_running_loop().time()
            if data == self.start:
                started = sent
            elif started and model not in self.truth:
                self.truth[model] = sent - started
        await response.write_eof()
        return response


def _phase_errors(tail: list[tuple[float, bytes]], start: bytes, phase: Phase) -> list[float]:
    """Pull `m0`... at once, each against its Timeline; per run, reported minus true seconds."""
    errors: list[float] = []
    timeline = Timeline(tail, start)

    async def one(url: str, model: str) -> float:
        run = start_run(url, model=model)
        result = await run.task
        assert result.succeeded, result
        last = run.pair.last
        assert last is not None
        return last.phase_durations[phase] - timeline.truth[model]

    async def test() -> None:
        app = web.Application()
        app.router.add_post("/api/pull", timeline.handle)
        async with TestServer(app, host="127.0.0.1") as server:
            url = str(server.make_url("")).rstrip("/")
            models = [f"m{index}" for index in range(len(TICKS))]
            errors.extend(await asyncio.gather(*(one(url, model) for model in models)))

    run_virtual(asyncio.wait_for(test(), timeout=60))
    return errors


# A boundary that arrives during a read pause is seen when the pause ends. The old pause
# (0.25 s after each small read of a layer) put it up to 0.25 s late, depending on where in
# the pause it fell. Layers of 25 to 29 ticks move the end of the download through every
# 60 ms of that pause; 0.1 s is far from 0.25 and from the loop's own latency.
TOLERANCE = 0.1
TICKS = (25, 26, 27, 28, 29)


def test_verify_after_a_download_is_timed_from_when_ollama_sent_it() -> None:
    tail = [(0.03, VERIFY), (0.4, WRITE), (0.0, SUCCESS)]
    errors = _phase_errors(tail, VERIFY, Phase.VERIFY)
    assert max(map(abs, errors)) < TOLERANCE, errors


def test_prune_right_after_a_download_is_timed_from_when_ollama_sent_it() -> None:
    tail = [(0.03, VERIFY), (0.0, WRITE), (0.0, PRUNE), (0.3, SUCCESS)]
    errors = _phase_errors(tail, PRUNE, Phase.PRUNE)
    assert max(map(abs, errors)) < TOLERANCE, errors


# --------------------------------------------------------------------------- raw, hostile bytes

HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n"
)


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


async def pull_from_raw(
    parts: list[bytes], *, close: bool = False, stall: str = "5s"
) -> tuple[RunResult, ExporterState]:
    with raw_http_server(parts, close=close) as url:
        run = start_run(url, defaults=f", stall_timeout: {stall}")
        result = await run.task
    return result, run.state


MALFORMED_CHUNKS = {
    "bad size with the headers": [HEAD + b"zz\r\n" + MANIFEST + b"\r\n"],
    "bad size later": [HEAD + chunk(MANIFEST), b"zz\r\nxx\r\n"],
    "data longer than its size": [HEAD + chunk(MANIFEST), b"5\r\nhello world\r\n"],
    "no CRLF after the data": [HEAD + chunk(MANIFEST), b"5\r\nhelloXX"],
    "size overflows": [HEAD + chunk(MANIFEST), b"ffffffffffffffffff\r\n"],
    "negative size": [HEAD + chunk(MANIFEST), b"-5\r\nhello\r\n"],
    "control bytes in an extension": [HEAD + chunk(MANIFEST), b"5;\x00\x01\r\nhello\r\n"],
}


def protocol_error_at_once(parts: list[bytes]) -> str:
    """Pull from a raw server that sends `parts`; the run's detail, once it ended as it must."""
    details: list[str] = []

    async def test() -> None:
        # The raw server holds the connection open: a run that did not see the error at once
        # would end at its stall timeout, as a stall.
        result, state = await pull_from_raw(parts, stall="30s")
        assert result.reason is Reason.PROTOCOL_ERROR, result
        assert state.server_up["s"] == 1  # the server did answer
        details.append(result.detail)

    run_async(test)
    return details[0]


@pytest.mark.parametrize("parts", MALFORMED_CHUNKS.values(), ids=MALFORMED_CHUNKS.keys())
def test_a_malformed_chunked_body_is_a_protocol_error_at_once(parts: list[bytes]) -> None:
    assert "malformed HTTP" in protocol_error_at_once(parts)


REST = VERIFY + WRITE + SUCCESS
REST_SIZE = b"%x" % len(REST)
PADDING = b" " * 100_000
# Each server sends the line and then holds the connection: nothing but the line's length
# can end the run before the stall timeout. aiohttp's C parser takes each of these in its
# stride (no error, no end); its Python parser buffers the line until a CRLF that never comes.
OVERLONG_FRAMING = {
    "size padded with spaces": [HEAD + chunk(MANIFEST), REST_SIZE + PADDING],
    "size padded, with the headers": [HEAD + chunk(MANIFEST) + REST_SIZE + PADDING],
    "size padded a little at a time": [HEAD + chunk(MANIFEST), REST_SIZE] + [b" " * 1000] * 8,
    "long extension": [HEAD + chunk(MANIFEST), REST_SIZE + b";name=" + b"v" * 100_000],
    "long trailer": [HEAD + chunk(MANIFEST) + b"0\r\n", b"X-Trailer: " + b"t" * 100_000],
    "a flood of spaces": [HEAD + chunk(MANIFEST), REST_SIZE + b" " * (64 << 20)],
}


@pytest.mark.parametrize("parts", OVERLONG_FRAMING.values(), ids=OVERLONG_FRAMING.keys())
def test_an_overlong_framing_line_is_a_protocol_error_at_once(parts: list[bytes]) -> None:
    assert protocol_error_at_once(parts) == (
        "malformed HTTP body: a chunk-size, extension or trailer line longer than"
        f" {MAX_FRAMING_LINE_BYTES} bytes"
    )


def test_long_body_lines_and_padded_framing_within_the_limit_are_no_framing_error() -> None:
    """Only framing counts against the limit: a body line is bounded by the line decoder."""
    long_line = line(status="pulling manifest", note="n" * 200_000)
    parts = [
        HEAD + b"%x\r\n" % len(long_line) + long_line[:100_000],
        long_line[100_000:] + b"\r\n" + REST_SIZE + b" " * 3000,
        b";ext=" + b"e" * 1000 + b"\r\n" + REST + b"\r\n0\r\n\r\n",
    ]

    async def test() -> None:
        result, _ = await pull_from_raw(parts)
        assert result.succeeded, result

    run_async(test)


def test_the_framing_guard_hands_a_kept_alive_connection_back() -> None:
    """Also when the body ended (and aiohttp pooled the connection) before the run let go."""
    gates: list[asyncio.Event] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        gate = asyncio.Event()
        gates.append(gate)
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(MANIFEST)
        await gate.wait()
        await response.write(REST)
        await response.write_eof()
        return response

    async def test() -> None:
        app = web.Application()
        app.router.add_post("/api/pull", handle)
        async with TestServer(app, host="127.0.0.1") as server, make_session() as session:
            url = server.make_url("/api/pull")
            first = await session.post(url)
            assert first.connection is not None
            transport = first.connection.transport
            assert transport is not None
            watched_first = framing_watched(first)
            watched_first.__enter__()
            assert isinstance(transport.get_protocol(), FramingGuard)
            gates[0].set()
            assert await first.read() == MANIFEST + REST  # the connection is back in the pool
            second = await session.post(url)  # and serves the next request, still guarded
            assert second.connection is not None
            assert second.connection.transport is transport, "the connection was not reused"
            with framing_watched(second):
                watched_first.__exit__(None, None, None)  # the first run lets go after that
                gates[1].set()
                assert await second.read() == MANIFEST + REST
            assert not isinstance(transport.get_protocol(), FramingGuard)
            first.release()
            second.release()

    run_async(test)


def test_a_chunked_body_cut_mid_chunk_is_an_interrupted_stream() -> None:
    async def test() -> None:
        result, state = await pull_from_raw([HEAD + chunk(MANIFEST), b"50\r\nabc"], close=True)
        assert result.reason is Reason.STREAM_INTERRUPTED, result
        assert state.server_up["s"] == 1

    run_async(test)


BLOCKED_AT_MOST = 0.25
"""CPU seconds the loop's thread may spend between two turns of a probe while a hostile stream
is read. Measured with `time.thread_time`, the CPU clock of that thread alone, so what other
processes do to a busy host does not count (no wall clock). The exporter of 1e4c640 was away
5.5 s on the gzip test; now it is a few ms (gzip) and tens of ms (newline flood)."""


def _gzip_bomb(expanded: int) -> bytes:
    """A gzip body that inflates to `expanded` bytes of newlines (1000x and more)."""
    compressor = zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = b"\n" * (1 << 20)
    parts = [compressor.compress(block) for _ in range(expanded >> 20)]
    return b"".join([*parts, compressor.flush()])


def test_a_gzip_body_that_was_not_asked_for_is_refused_and_the_loop_stays_responsive() -> None:
    bomb = _gzip_bomb(64 << 20)
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(bomb)
    )
    result, state, blocked = loop_blocked_while_pulling([head + bomb[:1000], bomb[1000:]])
    assert blocked < BLOCKED_AT_MOST, f"the event loop worked {blocked:.2f} s of CPU in one go"
    assert result.reason is Reason.PROTOCOL_ERROR, result
    assert "gzip" in result.detail
    assert state.server_up["s"] == 1


def test_a_flood_of_blank_lines_keeps_the_loop_responsive() -> None:
    flood = b"\n" * (64 << 20)
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (len(MANIFEST) + len(flood))
    result, _, blocked = loop_blocked_while_pulling([head + MANIFEST + flood], close=True)
    assert blocked < BLOCKED_AT_MOST, f"the event loop worked {blocked:.2f} s of CPU in one go"
    assert result.reason is Reason.STREAM_INTERRUPTED, result


def loop_blocked_while_pulling(
    parts: list[bytes], *, close: bool = False
) -> tuple[RunResult, ExporterState, float]:
    """Pull from a raw server; also the most CPU the loop's thread spent between two turns of
    a probe meanwhile (`time.thread_time`: this thread's CPU, not the wall)."""
    outcome: list[tuple[RunResult, ExporterState, float]] = []

    async def test() -> None:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def probe() -> None:  # what `/-/healthy` would see: how long the loop was busy
            last = time.thread_time()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.thread_time()
                gaps.append(now - last)
                last = now

        with raw_http_server(parts, close=close) as url:  # started before the probe runs
            prober = asyncio.create_task(probe())
            try:
                run = start_run(url, defaults=", stall_timeout: 30s")
                result = await run.task
            finally:
                stop.set()
                await prober
        outcome.append((result, run.state, max(gaps)))

    run_async(test)
    return outcome[0]
