"""Down servers: shown as down, since when, and why in plain words, never with a stale version.

In process: the real exporter app with its scheduler, against the simulator in the same loop;
a server with nothing listening, and one that answers, then stops, then comes back. Plus the
latent bug of issue 16: a server that answered (even with bytes that are not HTTP) kept the
problem recorded when it was down.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
from typing import TYPE_CHECKING, Any

from exporter.clients.problems import plain_problem
from exporter.core.clock import SYSTEM_CLOCK
from exporter.ollama.protocol import Reason
from ollama_sim import OllamaSimulator, fresh_pull
from tests.inprocess import Client, exporter_in_process
from tests.integration.test_pull import run_async, start_run
from tests.raw_http import raw_http_server
from tests.virtual_time import run_virtual

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


def free_port() -> int:
    """A port with nothing listening on it (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_an_answer_that_is_not_http_clears_the_recorded_problem() -> None:
    """The server answered, so it is up: its old problem and down-since must go."""

    async def test() -> None:
        with raw_http_server([b"NOT HTTP AT ALL\r\n\r\n"], close=True) as url:
            run = start_run(url)
            run.state.server_unreachable("s", "connection refused", at=1.0)
            result = await run.task
        assert result.reason is Reason.PROTOCOL_ERROR
        assert run.state.server_up["s"] == 1
        status = run.state.servers["s"]
        assert status.problem is None
        assert status.down_since is None

    run_async(test)


def test_problems_are_plain_words() -> None:
    async def refused() -> BaseException:
        try:
            await asyncio.open_connection("127.0.0.1", free_port())
        except OSError as exc:
            return exc
        raise AssertionError("something listens")

    assert plain_problem(asyncio.run(refused())).startswith("connection refused")
    assert plain_problem(TimeoutError()).startswith("no answer in time")


def config_text(url: str, dead: str) -> str:
    return (
        "defaults: {interval: 1h, jitter: 0, timeout: 1h, stall_timeout: 10m}\n"
        "servers:\n"
        f"  - name: flaky\n    url: {url}\n    models: [{{name: small, run_on_start: false}}]\n"
        f"  - name: dead\n    url: {dead}\n    models: [{{name: small, run_on_start: false}}]\n"
    )


@contextlib.asynccontextmanager
async def exporter(url: str, dead: str) -> AsyncIterator[Client]:
    async with exporter_in_process(config_text(url, dead), admin=True) as (client, _):
        yield client


async def status(client: Client) -> Any:
    async with client.get("/api/v1/status") as response:
        assert response.status == 200
        return await response.json()


async def until(client: Client, ok: Any, what: str) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        body = await status(client)
        servers = {s["name"]: s for s in body["servers"]}
        pairs = {p["server"]: p for p in body["pairs"]}
        if ok(servers, pairs):
            return servers, pairs
        if loop.time() > deadline:
            raise AssertionError(f"waited for {what}; last: {body!r}")
        await asyncio.sleep(0.05)


async def pull_now(client: Client, server: str) -> None:
    async with client.post("/api/v1/pulls", json={"server": server, "model": "small"}) as answer:
        assert answer.status == 202, await answer.text()


async def page(client: Client) -> str:
    async with client.get("/") as response:
        return await response.text()


def server_row(html: str, name: str) -> str:
    found = re.search(rf'<tr class="server" data-server="{name}">.*?</tr>', html)
    assert found is not None, html
    return found.group(0)


def test_down_servers_show_since_when_and_why() -> None:
    async def scenario() -> None:
        port = free_port()
        dead_port = free_port()
        sim = OllamaSimulator({"small": [fresh_pull([1000])]}, loop=True)
        url = await sim.start(port=port)
        async with exporter(url, f"http://127.0.0.1:{dead_port}") as client:
            servers, pairs = await until(
                client,
                lambda s, _: s["flaky"]["up"] is True and s["dead"]["up"] is False,
                "the probes",
            )
            assert servers["flaky"]["version"] == sim.version
            assert servers["flaky"]["down_since"] is None
            assert servers["flaky"]["problem"] is None
            dead = servers["dead"]
            assert dead["problem"] == (
                f"connection refused (is Ollama running and listening there?) "
                f"at 127.0.0.1:{dead_port}"
            )
            assert dead["down_since"] <= SYSTEM_CLOCK.time()
            assert dead["version"] is None
            assert pairs["dead"]["server_problem"] == dead["problem"]
            assert pairs["dead"]["server_down_since"] == dead["down_since"]
            assert pairs["flaky"]["server_problem"] is None
            html = await page(client)
            assert "down</span> since" in server_row(html, "dead")
            assert "connection refused" in server_row(html, "dead")
            assert "Errno" not in html
            assert "ClientConnectorError" not in html

            # The server that was up goes down: a pull finds it so; its version goes.
            await sim.stop()
            went_down = SYSTEM_CLOCK.time()
            await pull_now(client, "flaky")
            servers, pairs = await until(
                client,
                lambda s, p: s["flaky"]["up"] is False and not p["flaky"]["in_progress"],
                "the pull to find it down",
            )
            flaky = servers["flaky"]
            assert flaky["version"] is None
            assert flaky["problem"].startswith("connection refused")
            assert went_down <= flaky["down_since"] <= SYSTEM_CLOCK.time()
            row = server_row(await page(client), "flaky")
            assert "down</span> since" in row
            assert sim.version not in row

            # It comes back: a successful run clears the problem and the down-since.
            back = OllamaSimulator({"small": [fresh_pull([1000])]}, loop=True)
            await back.start(port=port)
            try:
                await pull_now(client, "flaky")
                servers, pairs = await until(
                    client,
                    lambda s, p: (
                        s["flaky"]["up"] is True
                        and p["flaky"]["last"] is not None
                        and p["flaky"]["last"]["result"] == "success"
                    ),
                    "a successful run",
                )
                assert servers["flaky"]["problem"] is None
                assert servers["flaky"]["down_since"] is None
                assert pairs["flaky"]["server_problem"] is None
                assert "down" not in server_row(await page(client), "flaky")
            finally:
                await back.stop()

    run_virtual(scenario())
