"""The listening side in process: binding, TLS from accept, large answers in slices, quiet errors.

Real sockets on 127.0.0.1 served by `exporter.web.listener.start` in the test's own loop, the
way the process serves them (`exporter.app.assemble.serve`), minus signals; a real aiohttp
client talks to them. The certificates are made by the openssl command (testkit/tls.py).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web

from exporter.web import listener
from exporter.web.answers import SLICE
from exporter.web.binding import ListenError, bind, bound_addresses, format_address
from exporter.web.quiet import QuietErrors
from testkit.tls import self_signed

if TYPE_CHECKING:
    from collections.abc import Coroutine
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
