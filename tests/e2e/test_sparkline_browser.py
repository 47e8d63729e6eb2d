"""The fleet page's sparklines move while the page is open, in a real browser (Chromium).

The page draws each server's throughput once on the server; its script then redraws the line
from `/api/v1/status` every second, so an operator watching a pull sees it without a reload.
The script's arithmetic is checked against the server's under node, point by point.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from exporter.web.charts import size_label, sparkline
from ollama_sim import OllamaSimulator, fresh_pull
from tests.e2e.test_api import call
from tests.e2e.test_browser import CHROMIUM, browser, open_page
from tests.e2e.test_page import js_function
from tests.harness import Exporter, run_exporter, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["browser"]  # the fixture, shared with test_browser

SERIES = [
    [],
    [5.0],
    [0.0, 0.0, 0.0],
    [1.0, 2.0, 3.0, 0.0],
    [1_048_576.0, 12_345_678.0, 0.0, 987_654.0, 3.0],
    [float(i * 7919 % 1_000_003) for i in range(75)],  # more samples than slots
]


def _points(markup: str) -> list[tuple[float, float]]:
    found = re.search(r'class="spark-line" points="([^"]*)"', markup)
    if found is None:
        return []
    return [tuple(map(float, pair.split(","))) for pair in found.group(1).split()]  # type: ignore[misc]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_script_draws_the_points_and_labels_the_server_draws() -> None:
    sizes = [0, 9, 1023, 1024, 10_239, 10_240, 5 * 2**20, 3 * 2**30, 12 * 2**40]
    program = (
        f"{js_function('sizeLabel')}\n{js_function('sparkPoints')}\n"
        f"console.log(JSON.stringify({{points: {json.dumps(SERIES)}.map("
        "v => sparkPoints(v, 60, 150, 28)), "
        f"sizes: {json.dumps(sizes)}.map(sizeLabel)}}));\n"
    )
    done = subprocess.run(
        ["node", "--input-type=module", "-"],
        input=program,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    drawn = json.loads(done.stdout)
    assert drawn["sizes"] == [size_label(size) for size in sizes]
    for values, points in zip(SERIES, drawn["points"], strict=True):
        expected = _points(str(sparkline(values, server="s")))
        got = [tuple(map(float, pair.split(","))) for pair in points.split()] if points else []
        if len(values) < 2:  # one sample draws no line on the server; the script may keep a dot
            assert expected == []
            continue
        assert len(got) == len(expected)
        for (x, y), (ex, ey) in zip(got, expected, strict=True):
            assert abs(x - ex) <= 0.051
            assert abs(y - ey) <= 0.051  # one decimal each, ties rounded either way


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    """One pull that streams for about a minute: the line has something to move with."""
    sim = OllamaSimulator({"long": [fresh_pull([60_000_000], rate=1_000_000)]})
    config = (
        "defaults: {interval: 1h, jitter: 0}\n"
        "servers:\n  - name: alpha\n    url: {url}\n    models: [long]\n"
    )
    with sim.running() as url:
        workdir = tmp_path_factory.mktemp("spark")
        with run_exporter(config.replace("{url}", url), workdir) as running:
            wait_for(
                lambda: (
                    call(running, "GET", "/api/v1/status")[1]["pairs"][0]["completed_bytes"] > 0
                ),
                60,
                "the pull to move bytes",
                step=0.2,
            )
            yield running


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")
def test_the_sparkline_moves_without_a_reload(exporter: Exporter, browser: Any) -> None:
    for page in open_page(browser, bypass_csp=True):
        page.goto(exporter.url + "/")
        page.wait_for_selector("body[data-updated]")
        page.evaluate("window.sameDocument = true")
        spark = page.locator("tr.server[data-server='alpha'] svg.spark")
        first = spark.get_attribute("aria-label")
        points = "tr.server[data-server='alpha'] svg.spark polyline.spark-line"
        before = page.evaluate(
            f"document.querySelector({json.dumps(points)})?.getAttribute('points') ?? ''"
        )
        # The very thing asserted: the drawn line changes (a sample a second while bytes move).
        page.wait_for_function(
            f"(before) => (document.querySelector({json.dumps(points)})"
            "?.getAttribute('points') ?? '') !== before",
            arg=before,
            timeout=30_000,
        )
        assert page.evaluate("window.sameDocument") is True  # no reload drew it
        label = spark.get_attribute("aria-label") or ""
        assert label != first
        assert re.fullmatch(
            r"Throughput of alpha over the last \d+ s: now [\d.]+ \S+/s, peak [\d.]+ \S+/s", label
        ), label
        samples = call(exporter, "GET", "/api/v1/status")[1]["servers"][0]["throughput"]
        assert samples
        assert max(samples) > 0  # bytes moved, so the line has a peak
