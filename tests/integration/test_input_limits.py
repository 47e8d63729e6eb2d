"""Limits on what comes from outside, pushed past through the real pull path.

Each test starts a real aiohttp server on 127.0.0.1 in the test's own loop, pulls from it
with `run_pull` and the run history as the exporter wires them, and checks what the run
kept, what it showed and what it cost: tracemalloc's peak for memory, a probe task for how
long the event loop was away working between two of its ticks (what `/-/healthy` would wait
on an idle machine), in the loop thread's CPU time so that a loaded machine does not count.
"""

from __future__ import annotations

import asyncio
import base64
import time
import tracemalloc
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.test_utils import TestServer

from exporter.clients.inventory import Inventory
from exporter.clients.probe import probe_server
from exporter.clients.pull import make_session, run_pull
from exporter.config.loader import parse_config
from exporter.state.history import History, Trigger, unpack
from exporter.state.pairs import ExporterState, RunResult, sync_pairs
from exporter.state.transcript import Redactor
from ollama_sim import go_json, progress_line

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine

    import pytest

    from exporter.config.types import ServerConfig
    from exporter.state.history import RunRecord

DIGEST = "sha256:" + "cd" * 32
MANIFEST = go_json({"status": "pulling manifest"}) + b"\n"
SUCCESS = go_json({"status": "success"}) + b"\n"
MIB = 1 << 20
LOOP_AWAY_AT_MOST = 0.1
"""Seconds the event loop may be away at a stretch while a hostile stream is read."""


def run_async(test: Callable[[], Coroutine[object, object, None]]) -> None:
    """Run one test coroutine in a fresh loop, bounded so a hang fails instead of blocking."""

    async def bounded() -> None:
        await asyncio.wait_for(test(), timeout=100)

    asyncio.run(bounded())


@dataclass
class Pulled:
    """How one pull went: its result, its stored record, and what it cost."""

    result: RunResult
    record: RunRecord
    peak_bytes: int
    loop_away: float


async def pull(
    body: Callable[[], AsyncIterator[bytes]],
    *,
    url_prefix: str = "",
    headers: str = "",
    status: int = 200,
) -> Pulled:
    """Pull from a server that answers `/api/pull` with `body`; measure memory and the loop."""

    async def handle(request: web.Request) -> web.StreamResponse:
        await request.read()
        response = web.StreamResponse(
            status=status, headers={"Content-Type": "application/x-ndjson"}
        )
        await response.prepare(request)
        async for piece in body():
            await response.write(piece)
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_post("/api/pull", handle)
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("")).rstrip("/").replace("http://", f"http://{url_prefix}")
        config = parse_config(
            "defaults: {interval: 1h, jitter: 0, timeout: 1h, stall_timeout: 10m}\n"
            f"servers:\n  - name: s\n    url: {url}\n{headers}    models: [m]\n",
            "test.yaml",
        )
        state = ExporterState()
        sync_pairs(state, config)
        server_config = config.servers[0]
        model = server_config.models[0]
        pair = state.pairs["s", "m"]
        history = History()
        history.configure(config)
        active = history.reserve("s", "m", Trigger.API)
        gaps: list[float] = []
        stop = asyncio.Event()

        async def probe() -> None:  # CPU time, not wall time: a loaded machine's pauses
            last = time.thread_time()  # are not the loop's; its own work between two ticks is
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.thread_time()
                gaps.append(now - last)
                last = now

        prober = asyncio.create_task(probe())
        tracemalloc.start()
        try:
            async with make_session() as session:
                result = await run_pull(session, server_config, model, state, pair, active=active)
            record = history.finish(active, result, pair)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            stop.set()
            await prober
    assert record is not None
    return Pulled(result, record, peak, max(gaps))


def shown(record: RunRecord) -> tuple[list[str], int]:
    assert record.transcript is not None
    text = unpack(record.transcript)
    return [line.line for line in text.lines], text.omitted


# --------------------------------------------------------------------------- blank lines (N1)


def test_200_mb_of_blank_lines_are_counted_not_kept() -> None:
    """A stream of blank lines at full speed: memory stays flat, the loop never stalls.

    Before, every blank chunk was appended to one growing `bytes` (quadratic) and cut into
    lines at the end on the loop; 6 s of this reached 3.96 GiB.
    """
    block = b"\n" * MIB
    blocks = 200

    async def body() -> AsyncIterator[bytes]:
        yield MANIFEST
        for _ in range(blocks):
            yield block
        yield SUCCESS

    async def test() -> None:
        pulled = await pull(body)
        assert pulled.result.succeeded, pulled.result
        lines, omitted = shown(pulled.record)
        assert lines == [MANIFEST.decode().strip(), SUCCESS.decode().strip()]
        assert omitted == blocks * MIB  # every blank line counted
        assert pulled.peak_bytes < 32 * MIB, f"peak {pulled.peak_bytes / MIB:.1f} MiB"
        assert pulled.loop_away < LOOP_AWAY_AT_MOST, f"loop away {pulled.loop_away:.3f}s"

    run_async(test)


def test_progress_padded_with_blank_lines_keeps_the_lines_not_the_padding() -> None:
    """Each progress line followed by 64 KiB of blank lines: the head and tail hold lines."""
    total = 10_000
    ticks = 1600  # 100 MiB of padding

    async def body() -> AsyncIterator[bytes]:
        yield MANIFEST
        for k in range(1, ticks + 1):
            yield progress_line("pulling cdcdcdcdcdcd", DIGEST, total, k * total // ticks)
            yield b"\n" * (64 << 10)
        yield SUCCESS

    async def test() -> None:
        pulled = await pull(body)
        assert pulled.result.succeeded, pulled.result
        lines, omitted = shown(pulled.record)
        assert len(lines) == 400
        assert all(line.strip() for line in lines)
        assert lines[0] == MANIFEST.decode().strip()
        assert lines[-1] == SUCCESS.decode().strip()
        assert omitted >= (ticks + 2 - 400)  # the left-out ticks, and blank lines seen
        assert pulled.peak_bytes < 32 * MIB, f"peak {pulled.peak_bytes / MIB:.1f} MiB"
        assert pulled.loop_away < LOOP_AWAY_AT_MOST, f"loop away {pulled.loop_away:.3f}s"

    run_async(test)


# --------------------------------------------------------------------------- secrets (N5, N12)


def test_the_basic_form_of_url_credentials_never_shows() -> None:
    """aiohttp sends URL credentials as `Authorization: Basic base64(user:password)`; an
    upstream that echoes it (in an error line, past the 4,096-character cut) shows nothing."""
    user, password = "puller", "s3cr3t-pa55word"
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()

    async def body() -> AsyncIterator[bytes]:
        yield MANIFEST
        # The header as it came, straddling the line's cut at 4,096 characters.
        echo = "x" * (4096 - 10 - 16) + f"Basic {basic}"  # 10 of its characters before
        yield go_json({"error": echo}) + b"\n"

    async def test() -> None:
        pulled = await pull(body, url_prefix=f"{user}:{password}@")
        assert not pulled.result.succeeded, pulled.result
        lines, _ = shown(pulled.record)
        everything = "\n".join([*lines, pulled.record.error])
        for secret in (basic, basic[:10], password):
            assert secret not in everything
        assert "<redacted>" in everything

    run_async(test)


def test_an_error_body_is_masked_before_it_is_cut() -> None:
    """The error body's limit (4 KiB) falls inside an echoed token: none of it shows."""
    token = "tok-" + "9" * 24

    async def body() -> AsyncIterator[bytes]:
        yield b"x" * (4096 - 10) + f"{token} and more".encode()  # 10 of it before the cut

    async def test() -> None:
        pulled = await pull(body, status=500, headers=f"    headers: {{X-Token: Bearer {token}}}\n")
        assert not pulled.result.succeeded
        lines, _ = shown(pulled.record)
        everything = "\n".join([*lines, pulled.record.error])
        assert token[:6] not in everything

    run_async(test)


def test_the_redactor_covers_every_form_of_every_secret() -> None:
    config = parse_config(
        "servers:\n"
        "  - url: http://us%40er:p%3Ass-w0rd@h:1\n"
        "    models: [m]\n"
        "  - url: http://h:2\n"
        "    headers:\n"
        "      Authorization: 'Basic " + base64.b64encode(b"hdr-user:hdr-pass").decode() + "'\n"
        "      X-Token: 'Bearer tok<&>-123456'\n"
        "    models: [m]\n",
        "c.yaml",
    )
    redact = Redactor.for_config(config)
    secrets = [
        base64.b64encode(b"us@er:p:ss-w0rd").decode(),  # what aiohttp sends
        "p:ss-w0rd",
        "p%3Ass-w0rd",
        base64.b64encode(b"hdr-user:hdr-pass").decode(),
        "hdr-user:hdr-pass",
        "hdr-pass",
        "tok<&>-123456",
        "tok\\u003c\\u0026\\u003e-123456",  # as Go's JSON carries it
    ]
    for secret in secrets:
        assert secret not in redact(f'{{"error":"echo {secret} end"}}'), secret
    assert redact("https://a:b@host/x") == "https://<redacted>@host/x"


# --------------------------------------------------------------------------- other answers


async def _serving(
    path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]], headers: str = ""
) -> AsyncIterator[tuple[ServerConfig, ExporterState]]:
    """Serve `handler` at `path`; yield the config of a server there and a fresh state."""
    app = web.Application()
    app.router.add_get(path, handler)
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url("")).rstrip("/")
        config = parse_config(
            f"servers:\n  - name: s\n    url: {url}\n{headers}    models: [m]\n", "t.yaml"
        )
        state = ExporterState()
        sync_pairs(state, config)
        yield config.servers[0], state


async def _in_pieces(
    request: web.Request, body: bytes, pieces: int, status: int = 200
) -> web.StreamResponse:
    response = web.StreamResponse(status=status)
    response.content_length = len(body)
    await response.prepare(request)
    step = -(-len(body) // pieces)
    for start in range(0, len(body), step):
        await response.write(body[start : start + step])
        await asyncio.sleep(0.05)  # each piece its own segment, the reader waiting for more
    await response.write_eof()
    return response


def test_a_version_answer_in_pieces_is_read_whole() -> None:
    async def version(request: web.Request) -> web.StreamResponse:
        return await _in_pieces(request, b'{"version":"0.12.3"}', 3)

    async def test() -> None:
        async for server, state in _serving("/api/version", version):
            async with make_session() as session:
                await probe_server(session, server, state)
            assert state.servers["s"].version == "0.12.3"

    run_async(test)


def test_an_inventory_error_body_is_masked_before_it_is_cut(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A 401 from `/api/tags` that echoes the header across the detail's 300-byte cut."""
    token = "tok-" + "7" * 24

    async def tags(request: web.Request) -> web.StreamResponse:
        echo = b"x" * (300 - 10) + request.headers["X-Token"].encode()
        return await _in_pieces(request, echo, 1, status=401)

    async def test() -> None:
        headers = f"    headers: {{X-Token: {token}}}\n"
        async for server, state in _serving("/api/tags", tags, headers):
            async with make_session() as session:
                await Inventory(session, state).poll(server)
            problem = state.inventory["s"].problem
            assert problem is not None
            assert problem.startswith("HTTP 401: xxx")
            assert token[:6] not in problem
            assert token[:6] not in caplog.text

    run_async(test)
