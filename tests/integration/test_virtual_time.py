"""The virtual-time loop of tests/virtual_time.py, which the slow in-process tests run on.

Its time jumps to the next timer when there is nothing else to do, the exporter's clock reads
it, and a socket read between two ends of the loop is not overtaken by a timer.
"""

from __future__ import annotations

import asyncio

from exporter.core.clock import SYSTEM_CLOCK
from tests.virtual_time import START, UNIX_START, run_virtual


def test_time_jumps_to_the_timers_in_order_and_the_exporter_clock_follows() -> None:
    async def scenario() -> list[tuple[str, float]]:
        woke: list[tuple[str, float]] = []

        async def sleeper(name: str, seconds: float) -> None:
            await SYSTEM_CLOCK.sleep(seconds)
            woke.append((name, SYSTEM_CLOCK.monotonic()))

        await asyncio.gather(sleeper("hour", 3600), sleeper("minute", 60), sleeper("now", 0))
        assert SYSTEM_CLOCK.time() - UNIX_START == SYSTEM_CLOCK.monotonic() - START
        return woke

    assert run_virtual(scenario()) == [
        ("now", START),
        ("minute", START + 60),
        ("hour", START + 3600),
    ]


def test_a_socket_answer_in_the_loop_comes_before_a_later_timer() -> None:
    async def scenario() -> bytes:
        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"ping\n")
            async with asyncio.timeout(0.001):  # a virtual millisecond: it only passes if idle
                answer = await reader.readline()
            writer.close()
            await writer.wait_closed()
        return answer

    assert run_virtual(scenario()) == b"ping\n"
