"""The pictures in a real browser (Debian's headless Chromium, driven by Playwright).

Under the exporter's own Content-Security-Policy the chart and the sparklines must be styled by
`page.css` alone (the policy refuses inline styles, and Chromium says so on the console when a
page tries), the chart must fill its box, and axe-core must find no serious or critical
accessibility problem on a run page with a chart or on the fleet page with its sparklines.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ollama_sim import OllamaSimulator, up_to_date
from tests.e2e.test_api import call
from tests.e2e.test_browser import AXE, CHROMIUM, browser, open_page
from tests.harness import Exporter, run_exporter, wait_for
from tests.integration.test_charts_live import stalling_pull

if TYPE_CHECKING:
    from collections.abc import Iterator

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")
__all__ = ["browser"]  # the fixture, shared with test_browser


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    sim = OllamaSimulator({"stuck": [stalling_pull()], "small": [up_to_date([1000])]})
    config = (
        "defaults: {interval: 1h, jitter: 0}\nservers:\n"
        "  - name: alpha\n    url: {url}\n    models: [stuck]\n"
        "  - name: beta\n    url: {url}\n    models: [small]\n"
    )
    with sim.running() as url:
        workdir = tmp_path_factory.mktemp("charts")
        with run_exporter(config.replace("{url}", url), workdir) as running:
            wait_for(
                lambda: len(call(running, "GET", "/api/v1/runs?result=success")[1]["runs"]) == 2,
                60,
                "both runs to finish",
                step=0.2,
            )
            yield running


def stuck_run(exporter: Exporter) -> int:
    runs = call(exporter, "GET", "/api/v1/runs?server=alpha")[1]["runs"]
    run_id: int = runs[0]["id"]
    return run_id


def watched(browser: Any, *, bypass_csp: bool) -> Iterator[tuple[Any, list[str]]]:
    """A page and what its console said."""
    said: list[str] = []
    for page in open_page(browser, bypass_csp=bypass_csp):
        page.on("console", lambda message: said.append(message.text))
        yield page, said


def test_the_chart_is_styled_under_the_pages_own_policy(exporter: Exporter, browser: Any) -> None:
    for page, said in watched(browser, bypass_csp=False):
        page.goto(f"{exporter.url}/runs/{stuck_run(exporter)}")
        chart = page.locator("svg.chart")
        assert chart.count() == 1
        box = chart.bounding_box()
        assert box["width"] > 600  # the viewport is 1300 px wide: the chart fills its box
        assert box["height"] > 200
        stall = page.locator("svg.chart rect.stall")
        assert stall.count() == 1
        fill = stall.evaluate("element => getComputedStyle(element).fill")
        assert fill == "rgb(179, 38, 30)"  # --fail from page.css, through the class
        line = page.locator("svg.chart polyline.series")
        assert line.evaluate("element => getComputedStyle(element).fill") == "none"
        page.goto(exporter.url + "/")
        page.wait_for_selector("body[data-updated]")
        sparks = page.locator("svg.spark polyline.spark-line")
        assert sparks.count() == 2
        assert sparks.first.evaluate("element => getComputedStyle(element).fill") == "none"
        assert not [text for text in said if "Content Security Policy" in text], said


@pytest.mark.skipif(not AXE.exists(), reason="needs axe-core from npm (.ci/setup/60-browser.sh)")
@pytest.mark.parametrize("where", ["run", "fleet"])
def test_axe_finds_no_serious_problem_in_the_pictures(
    exporter: Exporter, browser: Any, where: str
) -> None:
    path = f"/runs/{stuck_run(exporter)}" if where == "run" else "/"
    for page, _ in watched(browser, bypass_csp=True):
        page.goto(exporter.url + path)
        page.add_script_tag(content=AXE.read_text())
        results = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
        serious = [v for v in results["violations"] if v["impact"] in {"serious", "critical"}]
        assert not serious, serious
