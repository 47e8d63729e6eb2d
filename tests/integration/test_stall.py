"""A stall while it happens: lines keep coming without new bytes (as real Ollama sends them).

The exporter runs in process (its real app, scheduler and history) against the simulator in
the same loop, on virtual time (tests/virtual_time.py): the seconds of the stall cost none.
One pull downloads a first layer, then its second layer keeps ticking with the
same `completed` forever. The status API must say so at once (`stalled`, rate 0, no ETA,
`no_progress_seconds`), `ollama_pull_last_progress_timestamp_seconds` must stay put while the
transcript keeps growing, and the page must show "no progress for N s" in the row.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from typing import TYPE_CHECKING, Any

from exporter.core.clock import SYSTEM_CLOCK
from ollama_sim import (
    SETTLE_TICKS_0_17,
    Layer,
    Manifest,
    OllamaSimulator,
    Scenario,
    Stall,
    Success,
    Verify,
    Write,
)
from tests.inprocess import Client, exporter_in_process
from tests.virtual_time import run_virtual

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

FIRST = 3_000_000
"""The first layer: three seconds of bytes at 1 MB/s, so a rate is measured."""
STUCK = 50_000_000
RESUMED_AT = 1_000_000
"""Where the second layer stops: every line after its first says `completed` 1 MB."""


def stalling_pull(first: int = FIRST) -> Scenario:
    """Bytes flow (`first` at 1 MB/s), then a layer ticks every 60 ms with no new bytes."""
    return Scenario(
        Manifest(),
        Layer(first, rate=1_000_000, latency_ticks=0),
        Layer(STUCK, resume_from=RESUMED_AT, latency_ticks=10**6),
        Verify(),
        Write(),
        Success(),
        name="stalling",
    )


def config_text(url: str) -> str:
    return (
        "defaults: {interval: 1h, jitter: 0, timeout: 1h, stall_timeout: 10m}\n"
        f"servers:\n  - name: sim\n    url: {url}\n    models: [stuck]\n"
    )


@contextlib.asynccontextmanager
async def exporter(sim: OllamaSimulator) -> AsyncIterator[Client]:
    """The real exporter in this loop, against `sim`; stopped (and `sim`) on exit."""
    url = await sim.start()
    try:
        async with exporter_in_process(config_text(url)) as (client, _):
            yield client
    finally:
        await sim.stop()


async def until(
    probe: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], within: float, what: str
) -> Any:
    """Poll `probe` every 50 ms (virtual) until `ok` holds for its answer; fail after `within` s
    of the loop's virtual time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        answer = await probe()
        if ok(answer):
            return answer
        if loop.time() > deadline:
            raise AssertionError(f"waited {within}s for {what}; last: {answer!r}")
        await asyncio.sleep(0.05)


async def pair(client: Client) -> Any:
    async with client.get("/api/v1/status") as response:
        assert response.status == 200
        [view] = (await response.json())["pairs"]
        return view


async def gauge(client: Client) -> str | None:
    async with client.get("/metrics") as response:
        text = await response.text()
    found = re.search(
        r"^ollama_pull_last_progress_timestamp_seconds\{[^}]*\} (\S+)$", text, re.MULTILINE
    )
    return None if found is None else found.group(1)


async def lines_received(client: Client, run_id: int) -> int:
    async with client.get(f"/api/v1/runs/{run_id}") as response:
        run = await response.json()
    count: int = len(run["transcript"]) + run["transcript_omitted"]
    return count


def test_a_stall_shows_while_lines_keep_coming() -> None:
    async def scenario() -> None:
        sim = OllamaSimulator({"stuck": [stalling_pull()]})
        async with exporter(sim) as client:
            moving = await until(
                lambda: pair(client),
                lambda p: p["phase"] == "download" and (p["bytes_per_second"] or 0) > 0,
                30,
                "bytes to flow",
            )
            assert moving["stalled"] is False
            assert moving["eta_seconds"] is not None
            stalled = await until(
                lambda: pair(client), lambda p: p["stalled"], 30, "the stall to show"
            )
            assert stalled["in_progress"] is True
            assert stalled["phase"] == "download"
            assert stalled["bytes_per_second"] == 0
            assert stalled["eta_seconds"] is None
            assert stalled["no_progress_seconds"] >= 0.7  # 0.75, rounded to 0.1
            assert stalled["completed_bytes"] == FIRST + RESUMED_AT
            since = stalled["last_progress_at"]
            assert since <= SYSTEM_CLOCK.time() - 0.75
            # Lines keep coming; the last progress and the gauge stay where they were.
            shown = await gauge(client)
            assert shown is not None
            assert abs(float(shown) - since) < 1e-3
            run_id = stalled["run_id"]
            before = await lines_received(client, run_id)
            await until(
                lambda: lines_received(client, run_id),
                lambda n: n >= before + 10,
                30,
                "more lines without bytes",
            )
            later = await pair(client)
            assert later["last_progress_at"] == since
            assert later["no_progress_seconds"] > stalled["no_progress_seconds"]
            assert await gauge(client) == shown
            # The row says so too (the page without JavaScript renders the same view).
            async with client.get("/") as response:
                page = await response.text()
            assert re.search(r'class="stall">no progress for \d+ s<', page), page

    run_virtual(scenario())


def test_a_healthy_pull_never_shows_a_stall() -> None:
    """Between layers Ollama 0.17.4 ticks about 1 s at 100% before the next blob's first line.

    Recorded from the real server (tests/e2e/real/transcripts/0.17.4/): 1.006 to 1.047 s without
    new bytes at every layer boundary. With 0.3 s more before the next blob, the threshold
    inside a layer (0.75 s) would show a stall for half a second at each boundary; polled
    every 50 ms, it would be seen.
    """

    async def scenario() -> None:
        layers = [Layer(1_500_000, rate=1_000_000, settle_ticks=SETTLE_TICKS_0_17)] * 3
        between = [step for layer in layers for step in (layer, Stall(0.3))][:-1]
        pull = Scenario(Manifest(), *between, Verify(), Write(), Success())
        sim = OllamaSimulator({"stuck": [pull]})
        async with exporter(sim) as client:
            seen: list[Any] = []

            def done(view: Any) -> bool:
                seen.append(view)
                return view["last"] is not None

            last = await until(lambda: pair(client), done, 60, "the pull to finish")
            assert last["last"]["result"] == "success"
            running = [view for view in seen if view["in_progress"]]
            assert len(running) > 50
            assert [view for view in running if view["stalled"]] == []

    run_virtual(scenario())
