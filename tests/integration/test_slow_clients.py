"""Slow clients against the listener over real sockets: every wait is bounded, every byte held.

An in-process server (the listener's `start`, a `ConnectionGuard` with short limits) and raw
client sockets on 127.0.0.1 that ask and never read, send a body one byte at a time, start a
second request and never finish it, or fill the connection cap with any of these. Each test
pushes past one limit and checks that the server lets go, and that `/-/healthy` answers.
The in-process tests run on virtual time (tests/virtual_time.py): the guard's deadlines
pass without real waiting.

The tests that start processes are in tests/e2e/test_slow_clients_process.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
import tracemalloc
import zlib
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from exporter.config.loader import parse_config
from exporter.metrics.families import build_registry
from exporter.metrics.scrape import make_metrics_handler
from exporter.state.pairs import ExporterState
from exporter.web import listener
from exporter.web.listener import ConnectionGuard, connection_cap
from tests.harness import self_signed
from tests.integration.test_memory_budgets import fleet_config
from tests.virtual_time import run_virtual

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine
    from pathlib import Path

RENDERS = web.AppKey("renders", list[int])
RENDERED = web.AppKey("rendered", asyncio.Event)
"""Set by the first render."""
BIG = b"x" * (8 * 1024 * 1024)
"""Larger than the kernel takes into a socket's send buffer (tcp_wmem's 4 MiB at most)."""
READERS = 40
MiB = 1024 * 1024


def _app() -> web.Application:
    async def big(_: web.Request) -> web.Response:
        return web.Response(body=BIG, content_type="text/plain")

    async def healthy(_: web.Request) -> web.Response:
        return web.Response(text="OK\n")

    async def body(request: web.Request) -> web.Response:
        data = await request.read()
        return web.Response(text=f"{len(data)}\n")

    async def render(request: web.Request) -> web.Response:
        renders = request.app[RENDERS]
        zlib.compress(BIG[: 256 * 1024])  # a render: CPU the loop cannot interleave
        renders.append(len(renders))
        request.app[RENDERED].set()
        return web.Response(text="rendered\n")

    app = web.Application()
    app[RENDERS] = []
    app[RENDERED] = asyncio.Event()
    app.router.add_get("/render", render)
    app.router.add_get("/big", big)
    app.router.add_get("/-/healthy", healthy)
    app.router.add_post("/body", body)
    return app


@contextlib.asynccontextmanager
async def _server(
    guard: ConnectionGuard,
    app: web.Application | None = None,
    context: ssl.SSLContext | None = None,
) -> AsyncIterator[int]:
    sockets = listener.bind("127.0.0.1", 0)
    try:
        async with listener.start(app or _app(), sockets, ssl_context=context, guard=guard):
            yield int(sockets[0].getsockname()[1])
    finally:
        for sock in sockets:
            sock.close()


def _run(coro: Coroutine[Any, Any, None]) -> None:
    """Run `coro` on virtual time: the guard's deadlines (`call_later`) cost no real time."""
    run_virtual(coro)


async def _connect(port: int) -> socket.socket:
    """A non-blocking client socket with a tiny receive buffer (a reader that stops soon)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def _healthy(port: int) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.get(
            f"http://127.0.0.1:{port}/-/healthy", timeout=aiohttp.ClientTimeout(total=10)
        ) as response,
    ):
        return response.status


async def _until(check: Callable[[], object], seconds: float, what: str) -> None:
    """Poll `check` (state of the server in this loop) until it holds; fail naming `what`."""
    try:
        async with asyncio.timeout(seconds):
            while not check():  # noqa: ASYNC110 - the guard has no event to wait on
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {seconds}s waiting for {what}") from None


def _server_buffers(guard: ConnectionGuard) -> int:
    """Bytes the server's transports hold for their clients now."""
    return sum(
        transport.get_write_buffer_size()  # type: ignore[attr-defined]
        for transport in guard._open.values()
    )


def test_readers_that_never_read_hold_no_copy_and_are_closed() -> None:
    """Defect N2: every `GET` that never reads kept the whole answer in the transport buffer,
    with no write timeout (40 x 8 MiB here: over 150 MiB held, for ever)."""
    guard = ConnectionGuard(4096, 0, write_timeout=1.0, answer_timeout=30.0)

    async def scenario() -> None:
        async with _server(guard) as port:
            clients = [await _connect(port) for _ in range(READERS)]
            try:
                for sock in clients:
                    sock.send(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                await _until(lambda: guard._stalled or guard.count == 0, 10, "a stall")
                peak = _server_buffers(guard)
                assert await _healthy(port) == 200
                # Each is closed once its writing stayed paused for the write timeout.
                await _until(lambda: guard.count == 0, 15, "the readers to be closed")
                assert peak < 16 * MiB, f"{peak / MiB:.1f} MiB held for {READERS} readers"
                assert (
                    guard.closed_counts["write_timeout"] + guard.closed_counts["buffered"]
                    == READERS
                )
                assert await _healthy(port) == 200
            finally:
                for sock in clients:
                    sock.close()

    _run(scenario())


def test_readers_that_never_read_over_tls_are_closed_too(tmp_path: Path) -> None:
    """The same over TLS: the TLS layer's buffer is what pauses, and it is counted."""
    self_signed(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    client = ssl.create_default_context(cafile=tmp_path / "server.crt")
    guard = ConnectionGuard(4096, 0, write_timeout=1.0, answer_timeout=30.0)

    async def scenario() -> None:
        async with _server(guard, context=server) as port:
            writers = []
            try:
                for _ in range(10):
                    sock = await _connect(port)
                    _, writer = await asyncio.open_connection(
                        sock=sock, ssl=client, server_hostname="127.0.0.1", limit=1024
                    )
                    writers.append(writer)
                    writer.write(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                await _until(lambda: guard.count == 0, 20, "the TLS readers to be closed")
                assert guard.closed_counts["write_timeout"] + guard.closed_counts["buffered"] == 10
            finally:
                for writer in writers:
                    writer.transport.abort()

    _run(scenario())


def test_bytes_held_for_stalled_readers_are_capped() -> None:
    """Past `max_buffered` the reader stalled longest is closed at once, not at its timeout."""
    guard = ConnectionGuard(4096, 0, write_timeout=60.0, max_buffered=20 * MiB)

    async def scenario() -> None:
        async with _server(guard) as port:
            clients = [await _connect(port) for _ in range(10)]
            try:
                for sock in clients:
                    sock.send(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                await _until(lambda: guard.closed_counts["buffered"] >= 5, 10, "the cap to bite")
                assert guard.buffered <= 20 * MiB
                assert await _healthy(port) == 200
            finally:
                for sock in clients:
                    sock.close()

    _run(scenario())


def test_pieces_held_for_readers_of_metrics_that_never_read_are_capped() -> None:
    """Defect N2 again: an uncompressed `/metrics` is written from the renderer's pieces, and
    each reader that never read kept its own list of them (8 bytes a piece: 0.5 MB at 2,000
    pairs, 2.6-4.6 MB at 10,000), unseen by `max_buffered` (30 readers here held 19.3 MiB
    with a cap of 8). Measured with tracemalloc: lists and buffers stay within the cap."""
    budget = 8 * MiB
    readers = 30
    state = ExporterState()
    state.sync(parse_config(fleet_config(pairs=2_000), "pieces.yml"))  # a 9.9 MB body
    app = _app()
    app.router.add_get("/metrics", make_metrics_handler(build_registry(state)))
    guard = ConnectionGuard(4096, 0, write_timeout=60.0, max_buffered=budget)

    async def scenario() -> int:
        async with _server(guard, app) as port:
            async with (  # the renderer's cache, filled by a scrape read whole
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{port}/metrics") as response,
            ):
                assert len(await response.read()) > 8 * MiB
            gc.collect()
            before = tracemalloc.get_traced_memory()[0]
            clients = [await _connect(port) for _ in range(readers)]
            try:
                for sock in clients:
                    sock.send(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                await _until(
                    lambda: len(guard._stalled) + guard.closed_counts["buffered"] == readers,
                    30,
                    "every reader to stall or be closed",
                )
                gc.collect()
                held = tracemalloc.get_traced_memory()[0] - before
                assert guard.buffered <= budget
                assert await _healthy(port) == 200
            finally:
                for sock in clients:
                    sock.close()
        return held

    tracemalloc.start()
    try:
        held = run_virtual(scenario())
    finally:
        tracemalloc.stop()
    # Besides the cap: each connection's own objects (aiohttp's request, parser, buffers).
    assert held <= budget + readers * 64 * 1024, f"{held / MiB:.1f} MiB held by {readers}"
    assert guard.closed_counts["buffered"] > 0


def test_an_answer_read_too_slowly_is_cut_at_its_deadline() -> None:
    """A reader that takes a little now and then never stalls for long: the answer's own
    deadline ends it."""
    guard = ConnectionGuard(4096, 0, write_timeout=30.0, answer_timeout=1.0)

    async def scenario() -> None:
        async with _server(guard) as port:
            sock = await _connect(port)
            loop = asyncio.get_running_loop()
            try:
                sock.send(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                got = 0
                async with asyncio.timeout(20):
                    while chunk := await loop.sock_recv(sock, 4096):
                        got += len(chunk)
                        await asyncio.sleep(0.01)
                assert got < len(BIG)
                assert guard.closed_counts["answer_timeout"] == 1
            except ConnectionResetError:
                assert guard.closed_counts["answer_timeout"] == 1
            finally:
                sock.close()

    _run(scenario())


def test_a_body_sent_byte_by_byte_meets_the_request_deadline() -> None:
    """Defect N4: a request body had no time limit (1,000 of them took every scrape)."""
    guard = ConnectionGuard(4096, 0, request_timeout=1.0)

    async def scenario() -> None:
        async with _server(guard) as port:
            clients = [await _connect(port) for _ in range(20)]
            try:
                for sock in clients:
                    sock.send(
                        b"POST /body HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\nab"
                    )
                for _ in range(60):  # a byte each 0.1 s: for longer than the deadline
                    for sock in clients:
                        with contextlib.suppress(OSError):
                            sock.send(b"c")
                    if guard.count == 0:
                        break
                    await asyncio.sleep(0.1)
                assert guard.count == 0, f"{guard.count} slow bodies still open"
                assert guard.closed_counts["request_timeout"] == 20
                assert await _healthy(port) == 200
            finally:
                for sock in clients:
                    sock.close()

    _run(scenario())


def test_a_second_request_head_sent_slowly_meets_the_deadline() -> None:
    """After a first answer, the next request on the same connection has the deadline too."""
    guard = ConnectionGuard(4096, 0, request_timeout=1.0)

    async def scenario() -> None:
        async with _server(guard) as port:
            sock = await _connect(port)
            loop = asyncio.get_running_loop()
            try:
                sock.send(b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                answer = b""
                while not answer.endswith(b"OK\n"):
                    answer += await loop.sock_recv(sock, 4096)
                sock.send(b"GET /-/healthy HTTP/1.1\r\nX-Slow: ")
                for _ in range(60):
                    with contextlib.suppress(OSError):
                        sock.send(b"a")
                    if guard.count == 0:
                        break
                    await asyncio.sleep(0.1)
                assert guard.count == 0
                assert guard.closed_counts["request_timeout"] == 1
            finally:
                sock.close()

    _run(scenario())


def test_the_cap_evicts_any_connection_oldest_first() -> None:
    """Defect N2/N4: at the cap only connections without a whole request could be closed, so
    slow bodies and unread answers filled it and new scrapes were refused."""
    fd_limit = 200  # a cap of 72
    cap = connection_cap(fd_limit, 0)
    guard = ConnectionGuard(
        fd_limit, 0, request_timeout=60.0, write_timeout=60.0, max_buffered=1 << 40
    )

    async def scenario() -> None:
        async with _server(guard) as port:
            clients = []
            try:
                for index in range(cap):  # a whole request head, then a body that never comes
                    sock = await _connect(port)
                    clients.append(sock)
                    if index % 2:
                        sock.send(b"GET /big HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    else:
                        sock.send(
                            b"POST /body HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 9\r\n\r\n"
                        )
                await _until(lambda: guard.count == cap, 10, "the cap to fill")
                # A newcomer closes the oldest (a body that never came), then, each newcomer
                # gone, the next gets the room it left.
                statuses = [await _healthy(port) for _ in range(5)]
                assert statuses == [200] * 5
                assert guard.closed_counts["cap"] >= 1
                assert guard.count <= cap
                await asyncio.sleep(0.1)
                try:
                    oldest = clients[0].recv(4096)
                except ConnectionResetError:
                    oldest = b""
                assert oldest == b"", "the oldest connection should have been closed"
            finally:
                for sock in clients:
                    sock.close()

    _run(scenario())


def test_health_checks_answer_between_two_renders_of_a_burst() -> None:
    """Defect N2: 300 scrapes at once had their renders run in one turn of the loop, and
    `/-/healthy` waited for all of them (11.6 s). Answers now start one per turn."""
    app = _app()
    guard = ConnectionGuard(4096, 0)
    burst = 40

    async def scenario() -> None:
        async with _server(guard, app) as port:
            clients = [await _connect(port) for _ in range(burst)]
            healthy = await _connect(port)
            loop = asyncio.get_running_loop()
            try:
                for sock in clients:
                    sock.send(b"GET /render HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                async with asyncio.timeout(10):  # the first render, and no later
                    await app[RENDERED].wait()
                healthy.send(b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                before = len(app[RENDERS])
                answer = b""
                while not answer.endswith(b"OK\n"):
                    answer += await loop.sock_recv(healthy, 4096)
                # One render per turn of the loop; the answer takes a few turns (parse, handle,
                # and this client's own read in the same loop): a handful, not the burst.
                waited = len(app[RENDERS]) - before
                assert waited <= 6, f"/-/healthy waited for {waited} of {burst} renders"
                assert len(app[RENDERS]) < burst
                await _until(lambda: len(app[RENDERS]) == burst, 30, "every render")
            finally:
                for sock in (*clients, healthy):
                    sock.close()

    _run(scenario())
