"""The pictures on the real pages: the exporter in process, the simulator in the same loop.

One pull downloads a layer, then its second layer ticks for 6 s without new bytes (as real
Ollama does through a stall), rolls back once, finishes. The run's page must draw it with its
phase boundaries, a stall mark and a regression mark, and fold the stall's repeated lines into
one row with their count. Another pull hangs the same way and never ends: its page must show the
stall while it happens. The fleet page must show a sparkline per server. Names are hostile:
every page must escape them. The loop runs on virtual time (tests/virtual_time.py): the
seconds of the pulls and the stalls cost none.
"""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from typing import TYPE_CHECKING, Any

import pytest

from exporter.web import charts
from exporter.web.charts import STALL_SECONDS, WIDTH
from ollama_sim import (
    Layer,
    Manifest,
    OllamaSimulator,
    Scenario,
    Success,
    Verify,
    Write,
    up_to_date,
)
from tests.inprocess import Client, exporter_in_process
from tests.virtual_time import run_virtual

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

SVG = "{http://www.w3.org/2000/svg}"
STALL_TICKS = 100
"""Lines (60 ms apart) of the second layer before its bytes flow: 6 s without progress."""
IDLE = "<i>idle</i>"


def stalling_pull() -> Scenario:
    return Scenario(
        Manifest(),
        Layer(1_500_000, rate=1_000_000, latency_ticks=0),
        Layer(
            2_000_000,
            rate=2_000_000,
            resume_from=500_000,
            latency_ticks=STALL_TICKS,
            rollback_at=1_200_000,
            rollback_bytes=300_000,
        ),
        Verify(),
        Write(),
        Success(),
        name="stall then finish",
    )


def hanging_pull() -> Scenario:
    """A layer, then lines without new bytes until the exporter leaves."""
    return Scenario(
        Manifest(),
        Layer(500_000, rate=1_000_000, latency_ticks=0),
        Layer(2_000_000, resume_from=100_000, latency_ticks=10**6),
        name="hangs",
    )


def config_text(url: str) -> str:
    return (
        "defaults: {interval: 1h, jitter: 0, timeout: 1h, stall_timeout: 10m}\nservers:\n"
        f"  - name: sim\n    url: {url}\n    models: [stuck, hung]\n"
        f"  - name: '{IDLE}'\n    url: {url}\n    models: [small]\n"
    )


async def until(
    probe: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], within: float
) -> Any:
    """Poll `probe` every 100 ms until `ok` holds; `within` seconds of the loop's time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        answer = await probe()
        if ok(answer):
            return answer
        assert loop.time() < deadline, f"waited {within}s; last: {answer!r}"
        await asyncio.sleep(0.1)


async def runs(client: Client) -> list[Any]:
    async with client.get("/api/v1/runs") as response:
        found: list[Any] = (await response.json())["runs"]
        return found


async def text(client: Client, path: str) -> str:
    async with client.get(path) as response:
        assert response.status == 200
        assert "style-src 'self'" in response.headers["Content-Security-Policy"]
        assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
        return await response.text()


def svgs(page: str, css: str) -> list[ET.Element]:
    return [ET.fromstring(m) for m in re.findall(rf'<svg class="{css}".*?</svg>', page)]


def classes(root: ET.Element, tag: str, css: str) -> list[ET.Element]:
    return [e for e in root.iter(SVG + tag) if css in (e.get("class") or "").split()]


async def status(client: Client) -> Any:
    async with client.get("/api/v1/status") as response:
        return await response.json()


def test_the_run_page_draws_a_stall_and_the_fleet_page_sparklines() -> None:
    async def scenario() -> tuple[str, str, str, str]:
        sim = OllamaSimulator(
            {"stuck": [stalling_pull()], "hung": [hanging_pull()], "small": [up_to_date([1000])]}
        )
        url = await sim.start()
        try:
            async with exporter_in_process(config_text(url)) as (client, _):
                done = await until(
                    lambda: runs(client),
                    lambda found: sum(r["state"] == "finished" for r in found) == 2,
                    60,
                )
                by_model = {run["model"]: run for run in done}
                stuck, idle = by_model["stuck"], by_model["small"]
                assert stuck["result"] == "success", stuck
                hung = await until(
                    lambda: status(client),
                    lambda body: any(
                        (p["no_progress_seconds"] or 0) > STALL_SECONDS + 0.5 for p in body["pairs"]
                    ),
                    60,
                )
                (hung_id,) = [p["run_id"] for p in hung["pairs"] if p["model"] == "hung"]
                return (
                    await text(client, f"/runs/{stuck['id']}"),
                    await text(client, f"/runs/{idle['id']}"),
                    await text(client, "/"),
                    await text(client, f"/runs/{hung_id}"),
                )
        finally:
            await sim.stop()

    run_page, idle_page, fleet, hung_page = run_virtual(scenario())

    # While it happens: the running run's page (it reloads itself) marks the stall up to now.
    assert '<meta http-equiv="refresh"' in hung_page
    (live,) = svgs(hung_page, "chart")
    (now_stalled,) = classes(live, "rect", "stall")
    right = float(now_stalled.get("x") or 0) + float(now_stalled.get("width") or 0)
    assert right == pytest.approx(WIDTH - charts._RIGHT, abs=0.2)  # to the right edge: now
    assert [e.text for e in classes(live, "text", "phase-label")] == ["manifest", "download"]

    (chart,) = svgs(run_page, "chart")
    assert chart.get("aria-label") == "Bytes of stuck on sim over time"
    assert chart.find(SVG + "desc") is not None
    assert [e.text for e in classes(chart, "text", "phase-label")] == [
        "manifest",
        "download",
        "verify",
        "write",
    ]
    assert len(classes(chart, "line", "boundary")) == 3
    stalls = classes(chart, "rect", "stall")
    assert len(stalls) == 1
    tip = stalls[0].find(SVG + "title")
    assert tip is not None
    seconds = float(re.findall(r"for ([\d.]+) s", tip.text or "")[0])
    assert STALL_SECONDS < seconds < 30
    assert len(classes(chart, "circle", "regression")) == 1
    assert " style=" not in run_page
    # The stall's lines are one row with their count, not a hundred rows.
    repeats = [int(n) for n in re.findall(r'class="repeat"[^>]*>&times;(\d+)<', run_page)]
    assert max(repeats) >= STALL_TICKS // 2

    assert svgs(idle_page, "chart") == []
    assert "No chart: no bytes moved (every layer was on disk already)." in idle_page

    sparks = svgs(fleet, "spark")
    assert len(sparks) == 2
    labels = [s.get("aria-label") or "" for s in sparks]
    assert labels[0].startswith("Throughput of sim over the last ")
    assert "peak 0 B/s" not in labels[0]  # the stalling pull moved bytes within the minute
    assert labels[1].startswith(f"Throughput of {IDLE} over")  # parsed back: was escaped
    assert IDLE not in fleet
    assert "&lt;i&gt;idle&lt;/i&gt;" in fleet
    assert all(classes(s, "polyline", "spark-line") for s in sparks)
