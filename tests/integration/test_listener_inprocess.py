"""The listening side in process: binding, TLS from accept, large answers in slices, quiet errors.

Real sockets on 127.0.0.1 served by `exporter.web.listener.start` in the test's own loop, the
way the process serves them (`exporter.app.assemble.serve`), minus signals; a real aiohttp
client talks to them. The certificates are made by the openssl command (testkit/tls.py).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import socket
import ssl
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web

from exporter.web import listener
from exporter.web.answers import SLICE, Pacer
from exporter.web.binding import (
    ListenError,
    bind,
    bound_addresses,
    format_address,
    raise_fd_limit,
)
from exporter.web.quiet import QuietErrors
from testkit.tls import self_signed

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine
    from pathlib import Path

BIG = bytes(range(256)) * (3 * SLICE // 256 + 7)
"""An answer of a bit more than three slices."""


def run(test: Coroutine[object, object, None]) -> None:
    """Run a test coroutine in a fresh loop, bounded so that a hang fails."""

    async def bounded() -> None:
        await asyncio.wait_for(test, timeout=30)

    asyncio.run(bounded())


def small_app() -> web.Application:
    """An app with a health check and a large answer, as `/metrics` of a big fleet is."""

    async def healthy(_: web.Request) -> web.Response:
        return web.Response(text="OK\n")

    async def big(_: web.Request) -> web.Response:
        return web.Response(body=BIG, content_type="application/octet-stream")

    app = web.Application()
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/big", big)
    return app


# ------------------------------------------------------------------ binding


def test_bind_to_port_zero_reports_the_real_port() -> None:
    sockets = bind("127.0.0.1", 0)
    try:
        [address] = bound_addresses(sockets)
        host, port = address.rsplit(":", 1)
        assert host == "127.0.0.1"
        assert int(port) > 0
        with socket.create_connection(("127.0.0.1", int(port)), timeout=5):
            pass  # it listens already, before any server runs
    finally:
        for sock in sockets:
            sock.close()


def test_an_address_in_use_is_one_clear_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with pytest.raises(ListenError) as caught:
            bind("127.0.0.1", port)
    assert str(caught.value) == f"cannot listen on 127.0.0.1:{port}: Address already in use"


def test_a_host_that_cannot_be_a_name_is_an_unknown_host() -> None:
    host = "x" * 64 + ".example"  # a label over 63 bytes: refused before any lookup
    with pytest.raises(ListenError, match=r"^cannot listen on x+\.example:0: unknown host \("):
        bind(host, 0)


def test_ipv6_addresses_are_bracketed() -> None:
    assert format_address("::1", 11435) == "[::1]:11435"
    assert format_address("", 9090) == ":9090"


# ------------------------------------------------------------------ serving


def test_a_large_answer_arrives_whole_and_the_guard_lets_the_connection_go() -> None:
    async def test() -> None:
        sockets = bind("127.0.0.1", 0)
        guard = listener.ConnectionGuard(fd_limit=1024, pairs=1)
        async with listener.start(small_app(), sockets, ssl_context=None, guard=guard):
            url = f"http://{bound_addresses(sockets)[0]}"
            async with aiohttp.ClientSession() as session:
                async with session.get(url + "/big") as answer:
                    assert answer.status == 200
                    assert answer.headers["Content-Length"] == str(len(BIG))
                    assert await answer.read() == BIG
                async with session.head(url + "/big") as answer:
                    assert answer.status == 200
                    assert await answer.read() == b""
                async with session.get(url + "/-/healthy") as answer:
                    assert await answer.text() == "OK\n"
            assert guard.buffered == 0  # nobody stalled: no bytes held for a slow reader
        for sock in sockets:
            sock.close()

    run(test())


def test_pipelined_requests_are_answered_in_order_past_the_queue_limit() -> None:
    """The connection's request queue is a list (`_Queue`), not aiohttp's deque: 40
    pipelined requests (aiohttp pauses reading at 32 queued) come back whole and in order."""

    async def echo(request: web.Request) -> web.Response:
        return web.Response(text=request.match_info["n"])

    async def test() -> None:
        app = web.Application()
        app.router.add_get("/echo/{n}", echo)
        sockets = bind("127.0.0.1", 0)
        guard = listener.ConnectionGuard(fd_limit=1024, pairs=1)
        async with listener.start(app, sockets, ssl_context=None, guard=guard):
            host, port = bound_addresses(sockets)[0].rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            heads = b"".join(b"GET /echo/%d HTTP/1.1\r\nHost: h\r\n\r\n" % n for n in range(40))
            writer.write(heads)
            bodies = []
            for _ in range(40):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                bodies.append(int(await reader.readexactly(length)))
            assert bodies == list(range(40))
            assert guard.count == 1
            writer.close()
            await writer.wait_closed()
        for sock in sockets:
            sock.close()

    run(test())


def test_tls_is_served_from_the_gate_and_a_plain_client_is_turned_away(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    client_tls = ssl.create_default_context(cafile=str(tmp_path / "server.crt"))

    async def test() -> None:
        sockets = bind("127.0.0.1", 0)
        guard = listener.ConnectionGuard(fd_limit=1024, pairs=1)
        async with listener.start(small_app(), sockets, ssl_context=server_tls, guard=guard):
            address = bound_addresses(sockets)[0]
            connector = aiohttp.TCPConnector(ssl=client_tls, force_close=True)
            async with aiohttp.ClientSession(connector=connector) as session:
                async with session.get(f"https://{address}/-/healthy") as answer:
                    assert (answer.status, await answer.text()) == (200, "OK\n")
                async with session.get(f"https://{address}/big") as answer:
                    assert await answer.read() == BIG
            host, port = address.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")  # HTTP to a TLS port
            await writer.drain()
            assert await reader.read() == b""  # closed without an HTTP answer
            writer.close()
        for sock in sockets:
            sock.close()

    with caplog.at_level(logging.DEBUG, logger="exporter.listener"):
        run(test())
    failed = [r for r in caplog.records if r.getMessage() == "TLS handshake failed"]
    assert len(failed) == 1
    assert failed[0].error  # type: ignore[attr-defined] # the reason, one line


HUGE = bytes(8 * 1024 * 1024)
"""More than loopback's socket buffers hold for a reader whose window is small."""


@pytest.mark.parametrize(
    ("limit", "options", "line"),
    [
        (
            "answer_timeout",
            {"answer_timeout": 0.05},
            "closing connections that do not read the answer",
        ),
        (
            "write_timeout",
            {"write_timeout": 0.05},
            "closing connections that do not read the answer",
        ),
        ("buffered", {"max_buffered": 1}, "too many bytes held for slow readers, closing"),
    ],
)
def test_a_client_that_stops_reading_is_let_go(
    limit: str, options: dict[str, Any], line: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Each limit closes a connection whose client asked for a large answer and reads none."""

    async def huge(_: web.Request) -> web.Response:
        return web.Response(body=HUGE, content_type="application/octet-stream")

    async def test() -> None:
        app = small_app()
        app.router.add_get("/huge", huge)
        sockets = bind("127.0.0.1", 0)
        guard = listener.ConnectionGuard(fd_limit=1024, pairs=1, **options)
        loop = asyncio.get_running_loop()
        async with listener.start(app, sockets, ssl_context=None, guard=guard):
            host, port = bound_addresses(sockets)[0].rsplit(":", 1)
            with socket.socket() as reader:
                reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                reader.setblocking(False)
                await loop.sock_connect(reader, (host, int(port)))
                await loop.sock_sendall(reader, b"GET /huge HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                for _ in range(3000):  # an event, bounded: the guard closes the connection
                    if guard.closed_counts[limit]:
                        break
                    await asyncio.sleep(0.005)
                assert guard.closed_counts[limit] == 1, guard.closed_counts
                assert guard.count == 0
                assert guard.buffered == 0
        for sock in sockets:
            sock.close()

    with caplog.at_level(logging.WARNING, logger="exporter.listener"):
        run(test())
    assert line in [r.getMessage() for r in caplog.records]


async def until(done: Callable[[], bool], what: str) -> None:
    """Wait for `done` with a generous bound, a turn of the loop at a time."""
    for _ in range(4000):
        if done():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"waited for {what}")


def test_a_stalled_tls_handshake_counts_and_makes_room(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that connects and never says hello holds a slot: at the cap it is closed."""
    self_signed(tmp_path)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(tmp_path / "server.crt", tmp_path / "server.key")
    client_tls = ssl.create_default_context(cafile=str(tmp_path / "server.crt"))

    async def test() -> None:
        sockets = bind("127.0.0.1", 0)
        guard = listener.ConnectionGuard(fd_limit=1024, pairs=1)
        guard.cap = 1
        async with listener.start(small_app(), sockets, ssl_context=server_tls, guard=guard):
            host, port = bound_addresses(sockets)[0].rsplit(":", 1)
            silent, silent_writer = await asyncio.open_connection(host, int(port))
            await until(lambda: guard.count == 1, "the silent client counted from accept")
            connector = aiohttp.TCPConnector(ssl=client_tls, force_close=True)
            async with (
                aiohttp.ClientSession(connector=connector) as session,
                session.get(f"https://{host}:{port}/-/healthy") as answer,
            ):
                assert (answer.status, await answer.text()) == (200, "OK\n")
            assert await silent.read() == b""  # closed to make room, before any handshake
            silent_writer.close()
            assert guard.closed_counts["cap"] == 1
        for sock in sockets:
            sock.close()

    with caplog.at_level(logging.WARNING, logger="exporter.listener"):
        run(test())
    assert "connection limit reached, closing connections" in [
        r.getMessage() for r in caplog.records
    ]


# ------------------------------------------------------------------ quiet errors


def test_socket_errors_of_the_loop_are_one_rate_limited_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        quiet = QuietErrors()
        loop.set_exception_handler(quiet)
        exc = OSError(24, "Too many open files")
        for _ in range(5):
            loop.call_exception_handler(
                {"message": "socket.accept() out of resources", "exception": exc}
            )
        loop.call_exception_handler(
            {"message": "", "exception": ConnectionResetError(104, "Connection reset by peer")}
        )
        loop.call_exception_handler(
            {"message": "Task exception was never retrieved", "exception": exc}
        )
        loop.call_exception_handler(
            {"message": "something else", "exception": ValueError("no socket")}
        )
        loop.set_exception_handler(None)

    with caplog.at_level(logging.WARNING):
        run(test())
    quiet = [(r.getMessage(), r.error) for r in caplog.records if r.name == "exporter.listener"]  # type: ignore[attr-defined]
    assert quiet == [
        ("socket.accept() out of resources", "Too many open files"),
        ("socket error", "Connection reset by peer"),
    ]
    loud = [r for r in caplog.records if r.name == "asyncio"]
    assert [r.getMessage().splitlines()[0] for r in loud] == [
        "Task exception was never retrieved",
        "something else",
    ]
    assert all(r.levelno == logging.ERROR for r in loud)


def test_many_kinds_of_socket_error_stay_bounded(caplog: pytest.LogCaptureFixture) -> None:
    """Past 64 kinds the limiters start afresh: each kind still logs, memory stays bounded."""

    async def test() -> None:
        loop = asyncio.get_running_loop()
        quiet = QuietErrors()
        for kind in range(70):
            quiet(loop, {"message": f"kind {kind}", "exception": OSError(kind, "")})
        quiet(loop, {"message": "kind 0", "exception": OSError(0, "")})

    with caplog.at_level(logging.WARNING, logger="exporter.listener"):
        run(test())
    lines = [r.getMessage() for r in caplog.records if r.name == "exporter.listener"]
    assert lines[:70] == [f"kind {kind}" for kind in range(70)]
    assert lines[70:] == ["kind 0"]  # its limiter was let go with the others


# ------------------------------------------------------------------ the pacer, the fd limit


def test_answers_start_one_per_turn_first_come_first_served() -> None:
    """A burst of requests is let go in order, one per turn; a cancelled one is skipped."""

    async def test() -> None:
        pacer = Pacer()
        order: list[int] = []

        async def request(number: int) -> None:
            await pacer.turn()
            order.append(number)

        tasks = [asyncio.create_task(request(number)) for number in range(4)]
        await asyncio.sleep(0)  # every request is queued
        assert pacer.waiting == 4
        tasks[1].cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        assert order == [0, 2, 3]
        assert pacer.waiting == 0
        await asyncio.wait_for(pacer.turn(), timeout=5)  # idle again: the next one goes at once

    run(test())


def test_the_open_file_limit_is_raised_to_the_hard_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A soft limit below the hard one is lifted to it (the process does so at start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        pytest.skip("no hard limit on open files here")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard - 1, hard))
    try:
        with caplog.at_level(logging.DEBUG, logger="exporter.listener"):
            assert raise_fd_limit() == hard
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
        assert "open file limit raised" in [r.getMessage() for r in caplog.records]
        assert raise_fd_limit() == hard  # at the hard limit already: nothing to do
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_lower_cap_closes_the_connections_over_it_oldest_first(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """More pairs leave fewer descriptors to HTTP clients: the longest waiting ones go."""

    async def test() -> None:
        sockets = bind("127.0.0.1", 0)
        guard = listener.ConnectionGuard(fd_limit=1024, pairs=1)
        async with listener.start(small_app(), sockets, ssl_context=None, guard=guard):
            host, port = bound_addresses(sockets)[0].rsplit(":", 1)
            clients: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
            for _ in range(listener.MIN_CONNECTIONS + 2):
                clients.append(await asyncio.open_connection(host, int(port)))
                await until(lambda: guard.count == len(clients), "each client counted")
            guard.fit(1)  # the same cap: nothing changes
            assert guard.count == listener.MIN_CONNECTIONS + 2
            guard.fit(10_000)
            assert guard.cap == listener.MIN_CONNECTIONS
            assert guard.count == listener.MIN_CONNECTIONS
            assert guard.closed_counts["cap"] == 2
            for reader, _ in clients[:2]:
                assert await reader.read() == b""  # the two oldest were closed
            for _, writer in clients:
                writer.close()
        for sock in sockets:
            sock.close()

    with caplog.at_level(logging.INFO, logger="exporter.listener"):
        run(test())
    changed = [r for r in caplog.records if r.getMessage() == "connection cap changed"]
    assert len(changed) == 1
    assert changed[0].max_connections == listener.MIN_CONNECTIONS  # type: ignore[attr-defined]


def test_ipv6_loopback_is_bound_bracketed() -> None:
    try:
        sockets = bind("::1", 0)
    except ListenError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    try:
        [address] = bound_addresses(sockets)
        assert address.startswith("[::1]:")
        assert sockets[0].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        for sock in sockets:
            sock.close()
