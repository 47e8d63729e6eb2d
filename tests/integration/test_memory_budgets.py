"""Memory budgets: bytes per idle pair, live run, streaming run, kept run, idle connection.

Counted with tracemalloc in this process (allocations, not timings), so they do not flake
with the machine's load; each budget is written in docs/performance.md ("Budgets") and
asserted here, so a change that makes the exporter heavier at scale fails the day it is
made. Every figure is a delta over many objects (1,000 pairs, 200 runs, 50 connections)
divided by their number, after a garbage collection.
"""

from __future__ import annotations

import asyncio
import gc
import gzip
import itertools
import json
import socket
import tracemalloc
from typing import TYPE_CHECKING

from aiohttp import ClientSession, web
from aiohttp.test_utils import BaseTestServer, TestServer

from exporter.app import assemble
from exporter.config.loader import parse_config
from exporter.config.types import DEFAULT_HISTORY_LIMIT
from exporter.fleet.sharding import Shard
from exporter.metrics.families import build_registry
from exporter.metrics.scrape import make_metrics_handler
from exporter.ollama.progress import RunProgress
from exporter.ollama.protocol import LineDecoder
from exporter.ollama.tags import Held
from exporter.state.history import ActiveRun, History, Trigger
from exporter.state.pairs import ExporterState, PairState, RunResult
from exporter.state.transcript import HEAD_LINES, TAIL_LINES
from exporter.web import listener
from tests.harness import PROMETHEUS_ACCEPT

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# The budgets of docs/performance.md, in bytes.
IDLE_PAIR_BUDGET = 10_000
LIVE_RUN_BUDGET = 3_500
STREAMING_RUN_BUDGET = 16_000
KEPT_RUN_BUDGET = 1_700
CONNECTION_BUDGET = 8_000

PAIRS = 1_000
START = 1_000.0
"""The monotonic time runs start at: the figures do not depend on the clock."""
WALL = 1_700_000_000.0
"""The Unix time at START."""
SERVERS = 50
LAYERS = 8
PULL_TICKS = 500
"""A 30 s pull: Ollama sends a progress line every 60 ms."""


def fleet_config(pairs: int = PAIRS, servers: int = SERVERS) -> str:
    """A config of `pairs` pairs over `servers` servers, names as long as real ones."""
    lines = ["defaults: {interval: 24h, jitter: 0}", "servers:"]
    per_server = pairs // servers
    for server in range(servers):
        lines += [
            f"  - name: gpu-node-{server:03d}",
            f"    url: http://127.0.0.1:{20_000 + server}",
            "    models:",
            *(f"      - library-model-{model:04d}:8b-q4_K_M" for model in range(per_server)),
        ]
    return "\n".join(lines) + "\n"


def _line(**fields: object) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode() + b"\n"


PROGRESS = b'{"status":"pulling %s","digest":"%s","total":%d,"completed":%d}\n'
"""A progress line as `_line` writes it, formatted without json (60,000 of them a test)."""


def pull_stream(seed: int, *, layers: int = LAYERS, ticks: int = 50) -> Iterator[bytes]:
    """One pull as Ollama streams it, a line per chunk: manifest, `layers` layers, verify, write.

    The first layer is the weights (`ticks` progress lines), the others arrive in one line.
    """
    yield _line(status="pulling manifest")
    for layer in range(layers):
        digest = f"sha256:{seed:032x}{layer:032x}"
        total = 4_000_000_000 if layer == 0 else 1_000 * (layer + 1)
        steps = ticks if layer == 0 else 1
        for step in range(steps):
            done = total * (step + 1) // steps
            yield PROGRESS % (digest[7:19].encode(), digest.encode(), total, done)
    yield _line(status="verifying sha256 digest")
    yield _line(status="writing manifest")
    yield _line(status="success")


OURS = (
    tracemalloc.Filter(inclusive=True, filename_pattern="*/exporter/*", all_frames=True),
    tracemalloc.Filter(inclusive=True, filename_pattern=__file__, all_frames=True),
)
"""What `build` allocates has our code on its stack; what other threads of the test process
(a simulator, an executor left by an earlier test) allocate meanwhile does not count."""


def traced_delta(build: Callable[[], object]) -> tuple[int, object]:
    """Bytes still allocated after `build()` (what it returns is kept alive), and the result."""
    gc.collect()
    tracemalloc.start(4)
    try:
        before = tracemalloc.take_snapshot().filter_traces(OURS)
        kept = build()
        gc.collect()
        after = tracemalloc.take_snapshot().filter_traces(OURS)
        return sum(stat.size_diff for stat in after.compare_to(before, "filename")), kept
    finally:
        tracemalloc.stop()


def run_pair(pair: PairState, seed: int, history: History | None = None) -> None:
    """One finished run of `pair`, through the calls the scheduler and `run_pull` make."""
    active = None if history is None else history.reserve(pair.server, pair.model, Trigger.START)
    now = START
    progress = RunProgress(now, wall=WALL)
    pair.start_run(progress)
    transcript = None if active is None else active.begin(progress, WALL)
    decoder = LineDecoder()
    for index, chunk in enumerate(pull_stream(seed)):
        at = now + 0.06 * index
        if transcript is not None:
            transcript.feed(chunk, at)
        progress.apply_lines(decoder.feed(chunk), at)
    end = now + 10.0
    progress.finish(end, succeeded=True)
    run_id = None if active is None else active.id
    pair.finish_run(progress, RunResult(None), ended_at=WALL + 10.0, duration=10.0, run_id=run_id)
    if history is not None and active is not None:
        history.finish(active, RunResult(None), pair)


def idle_pair_bytes() -> float:
    """State and `/metrics` caches per pair: 1,000 pairs after a run each and a few scrapes.

    Prometheus scrapes (OpenMetrics, gzip) and a person reads the text format; the handler's
    caches (rendered lines, the gzip of the last body) count, the transient body does not.
    """
    config = parse_config(fleet_config(), "budget.yml")
    state = ExporterState()
    app = web.Application()
    app.router.add_get("/metrics", make_metrics_handler(build_registry(state)))
    requests = ({"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}, {"Accept": "text/plain"})

    async def scrape(session: ClientSession, server: BaseTestServer) -> None:
        for headers in requests:
            async with session.get(server.make_url("/metrics"), headers=headers) as response:
                assert response.status == 200
                await response.read()

    async def measure() -> int:
        async with TestServer(app) as server, ClientSession() as session:
            await scrape(session, server)  # the empty exposition: the fixed costs go first

            async def fill() -> None:
                state.sync(config)
                for seed, pair in enumerate(state.pairs.values()):
                    run_pair(pair, seed)
                    pair.schedule(WALL + 86_400)
                for _ in range(3):
                    await scrape(session, server)

            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            await fill()
            gc.collect()
            return tracemalloc.get_traced_memory()[0] - before

    tracemalloc.start()
    try:
        growth = asyncio.run(measure())
    finally:
        tracemalloc.stop()
    assert len(state.pairs) == PAIRS
    return growth / PAIRS


def live_run_bytes(runs: int = 200) -> float:
    """A `RunProgress` in the download phase after the lines of `LAYERS` layers."""

    def build() -> list[RunProgress]:
        kept = []
        for seed in range(runs):
            progress = RunProgress(START)
            decoder = LineDecoder()
            downloading = itertools.takewhile(lambda c: b"verifying" not in c, pull_stream(seed))
            for index, chunk in enumerate(downloading):
                progress.apply_lines(decoder.feed(chunk), START + 0.06 * index)
            kept.append(progress)
        return kept

    growth, kept = traced_delta(build)
    assert isinstance(kept, list)
    assert all(progress.layers == LAYERS for progress in kept)
    return growth / runs


def streaming_run_bytes(runs: int = 200) -> float:
    """A run streaming a 30 s pull, with its transcript, fed as `run_pull` feeds them.

    Ollama writes a line every 60 ms; a reader that keeps up gets each in a chunk of its own,
    the most chunks a pull can come in. The runs are counted after the last progress line
    (verifying): the transcript's head is full and its tail holds the last 200 lines.
    """

    def build() -> list[ActiveRun]:
        kept = []
        for seed in range(runs):
            server, model = f"gpu-node-{seed % SERVERS:03d}", f"library-model-{seed:04d}"
            active = ActiveRun(seed + 1, server, model, Trigger.START, WALL)
            now = START
            progress = RunProgress(now, wall=WALL)
            transcript = active.begin(progress, WALL)
            decoder = LineDecoder()
            stream = pull_stream(seed, ticks=PULL_TICKS)
            for index, chunk in enumerate(
                itertools.takewhile(lambda c: b"writing" not in c, stream)
            ):
                at = now + 0.06 * index
                transcript.feed(chunk, at)
                lines = decoder.feed(chunk)
                transcript.counted(len(lines))
                progress.apply_lines(lines, at)
            kept.append(active)
        return kept

    growth, kept = traced_delta(build)
    assert isinstance(kept, list)
    for active in kept[:3]:  # every line is still there to show
        assert active.transcript is not None
        text = active.transcript.text()
        assert len(text.lines) == HEAD_LINES + TAIL_LINES
        streamed = 1 + PULL_TICKS + (LAYERS - 1) + 1  # manifest, the layers, verifying
        assert text.omitted == streamed - HEAD_LINES - TAIL_LINES
        assert "verifying" in text.lines[-1].line
    return growth / runs


def kept_run_bytes(pairs: int = 100, limit: int = DEFAULT_HISTORY_LIMIT, rounds: int = 2) -> float:
    """Finished runs kept in memory, each with its compressed transcript.

    Two runs a pair under the default `history_limit`: a fleet of daily pulls, two days in.
    """

    def build() -> History:
        history = History(limit=limit)
        for index in range(pairs):
            pair = PairState(f"gpu-node-{index % SERVERS:03d}", f"library-model-{index:04d}", 60.0)
            for round_ in range(rounds):
                run_pair(pair, index * rounds + round_, history)
        return history

    growth, history = traced_delta(build)
    assert isinstance(history, History)
    listed = asyncio.run(history.runs(limit=pairs * rounds + 1))
    kept = pairs * min(limit, rounds)
    assert len(listed) == kept
    return growth / kept


def connection_bytes(connections: int = 50) -> float:
    """An idle keep-alive connection to the real app, after one request on it.

    Served as the process serves it (`exporter.app.assemble.serve`): the app of the running
    schedule behind the listener and its `ConnectionGuard`, not aiohttp's test server.
    """
    request = b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    config_text = (
        "inventory_interval: 0s\nservers:\n"
        "  - {name: a, url: 'http://127.0.0.1:9', models: [{name: m, run_on_start: false}]}\n"
    )
    config = parse_config(config_text, "budget.yml")
    options = assemble.Options(config_path="budget.yml", shard=Shard())

    async def measure(listening: socket.socket) -> int:
        guard = listener.ConnectionGuard(1024, config.model_count)
        loop = asyncio.get_running_loop()
        socks: list[socket.socket] = []

        async def one() -> socket.socket:
            sock = socket.socket()
            sock.setblocking(False)
            await loop.sock_connect(sock, listening.getsockname())
            await loop.sock_sendall(sock, request)
            answer = await loop.sock_recv(sock, 4096)
            assert answer.startswith(b"HTTP/1.1 200")
            return sock

        with assemble.open_program(options, config) as program:
            async with assemble.scheduling(program, guard) as running:
                app = assemble.web_app(program, running)
                async with listener.start(app, [listening], ssl_context=None, guard=guard):
                    try:
                        socks.append(await one())  # the first request's one-off costs
                        gc.collect()
                        before = tracemalloc.get_traced_memory()[0]
                        socks += [await one() for _ in range(connections)]
                        await asyncio.sleep(0)
                        gc.collect()
                        growth = tracemalloc.get_traced_memory()[0] - before
                        assert guard.count == connections + 1
                        return growth
                    finally:
                        for sock in socks:
                            sock.close()

    listening = socket.socket()
    tracemalloc.start()
    try:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        listening.setblocking(False)
        growth = asyncio.run(measure(listening))
    finally:
        tracemalloc.stop()
        listening.close()
    return growth / connections


def test_idle_pair_stays_within_its_budget() -> None:
    """Defect: the handler kept each format's whole last body (6 KB a pair) next to its gzip."""
    per_pair = idle_pair_bytes()
    assert per_pair <= IDLE_PAIR_BUDGET, f"{per_pair:.0f} bytes per idle pair"


def test_live_run_stays_within_its_budget() -> None:
    per_run = live_run_bytes()
    assert per_run <= LIVE_RUN_BUDGET, f"{per_run:.0f} bytes per live run"


def test_streaming_run_stays_within_its_budget() -> None:
    """Defect: a live transcript kept its chunks as they came, about 80 KB for a 30 s pull."""
    per_run = streaming_run_bytes()
    assert per_run <= STREAMING_RUN_BUDGET, f"{per_run:.0f} bytes per streaming run"


def test_kept_run_stays_within_its_budget() -> None:
    """Defect: each pair's history was a deque (600 bytes empty) for its few records."""
    per_run = kept_run_bytes()
    assert per_run <= KEPT_RUN_BUDGET, f"{per_run:.0f} bytes per kept run and transcript"


def _without_tasks(body: bytes) -> bytes:
    """The exposition without the asyncio task gauge, which may differ between requests."""
    return b"".join(line for line in body.splitlines(keepends=True) if b"asyncio_tasks" not in line)


def test_the_kept_gzip_is_never_a_stale_body() -> None:
    """The handler keeps a change count instead of the body: every change must still show.

    After each kind of change (a pair's value, a histogram's exemplar, a server's gauge, a
    pair leaving and coming back, the held digest), the gzip answer is the plain answer.
    """
    config = parse_config(fleet_config(pairs=4, servers=2), "budget.yml")
    state = ExporterState()
    state.sync(config)
    state.config_loaded(1.7e9)
    app = web.Application()
    app.router.add_get("/metrics", make_metrics_handler(build_registry(state)))
    keys = list(state.pairs)
    first = state.pairs[keys[0]]

    def hold() -> None:
        first.holding.observe(Held("b" * 64, 1_000), 1.7e9)

    def leave_and_return() -> None:
        del state.pairs[keys[1]]
        state.pairs[keys[1]] = PairState(*keys[1], 60.0)

    changes: list[Callable[[], object]] = [
        lambda: None,
        first.skip,
        lambda: run_pair(first, 1),  # a duration observation with an exemplar (run_id)
        lambda: state.server_answered(keys[0][0], "0.19.0"),
        lambda: state.server_unreachable(keys[0][0], "refused"),
        leave_and_return,
        hold,
        lambda: first.schedule(1.8e9),
        state.storage_failed,
    ]

    async def check() -> int:
        served = 0
        async with TestServer(app) as server, ClientSession(auto_decompress=False) as session:
            url = server.make_url("/metrics")
            for change in changes:
                change()
                for accept in (PROMETHEUS_ACCEPT, "text/plain"):
                    answers = []
                    for encoding in ("gzip", "gzip", "identity"):
                        headers = {"Accept": accept, "Accept-Encoding": encoding}
                        async with session.get(url, headers=headers) as response:
                            body = await response.read()
                            if encoding == "gzip":
                                body = gzip.decompress(body)
                            answers.append(_without_tasks(body))
                    assert answers[0] == answers[1] == answers[2], change
                    served += 1
        return served

    assert asyncio.run(check()) == len(changes) * 2
