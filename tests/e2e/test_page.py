"""The operator's pages as a client without JavaScript sees them: plain HTML from the exporter.

A browser with JavaScript is in `test_browser.py`; here the real exporter serves the simulator's
runs and the tests read the HTML: one row per pair, filters applied by the server, a pair's
history, a failed run's transcript with its error line marked, and nothing from elsewhere.
"""

from __future__ import annotations

import asyncio
import html
import json
import math
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote

import pytest

from exporter.state.history import History
from exporter.web.page import span
from ollama_sim import OllamaSimulator, error_after_manifest, fresh_pull, up_to_date
from tests.e2e.test_api import call, operator_app, request
from tests.harness import Exporter, run_exporter, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator

PAGE_JS = Path(__file__).resolve().parents[2] / "exporter" / "web" / "static" / "page.js"

ERROR = "pull model manifest: file does not exist"


class Links(HTMLParser):
    """Every URL a page refers to, and its pair rows with their visibility."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.rows: dict[str, bool] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        for name in ("href", "src", "action"):
            if values.get(name) is not None:
                self.urls.append(values[name] or "")
        if tag == "tr" and "pair" in (values.get("class") or "").split():
            self.rows[values["data-key"] or ""] = "hidden" not in values


def parse(page: str) -> Links:
    links = Links()
    links.feed(page)
    return links


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    sim = OllamaSimulator(
        {
            "good:1b": [fresh_pull([2_000_000, 1_000_000], rate=10_000_000), up_to_date([1])],
            "gone:1b": [error_after_manifest(ERROR)],
        },
        time_scale=0.1,
    )
    config = (
        "defaults: {interval: 1h, jitter: 0}\nservers:\n"
        "  - name: alpha\n    url: {url}\n    models: [good:1b, gone:1b]\n"
        "  - name: beta\n    url: {url}\n    models: [good:1b]\n"
    )
    with sim.running() as url:
        workdir = tmp_path_factory.mktemp("page")
        with run_exporter(config.replace("{url}", url), workdir) as running:
            wait_for(
                lambda: (
                    len(call(running, "GET", "/api/v1/runs")[1]["runs"]) == 3
                    and all(
                        r["state"] == "finished"
                        for r in call(running, "GET", "/api/v1/runs")[1]["runs"]
                    )
                ),
                20,
                "three finished runs",
            )
            yield running


def page(exporter: Exporter, path: str) -> str:
    status, content_type, body = request(exporter, "GET", path)
    assert status == 200, body
    assert content_type.startswith("text/html")
    return body


def test_the_page_is_a_table_of_every_pair(exporter: Exporter) -> None:
    body = page(exporter, "/")
    rows = parse(body).rows
    assert list(rows) == [
        '["alpha","good:1b"]',
        '["alpha","gone:1b"]',
        '["beta","good:1b"]',
    ]
    assert all(rows.values())
    assert "failed: manifest_not_found" in body
    assert re.search(r'data-count="failing">1<', body)
    assert re.search(r'data-count="ok">2<', body)


@pytest.mark.parametrize(
    ("query", "visible"),
    [
        ("server=beta", ['["beta","good:1b"]']),
        ("model=gone", ['["alpha","gone:1b"]']),
        ("state=failing", ['["alpha","gone:1b"]']),
        ("state=ok&server=alpha", ['["alpha","good:1b"]']),
        ("state=pulling", []),
    ],
)
def test_filters_work_without_javascript(
    exporter: Exporter, query: str, visible: list[str]
) -> None:
    rows = parse(page(exporter, f"/?{query}")).rows
    assert len(rows) == 3
    assert [key for key, shown in rows.items() if shown] == visible


def test_nothing_is_loaded_from_elsewhere(exporter: Exporter) -> None:
    for path in ("/", "/history?server=alpha&model=gone:1b", "/runs/1"):
        for url in parse(page(exporter, path)).urls:
            assert url.startswith("/"), (path, url)
            assert not url.startswith("//"), (path, url)
    status, headers_type, _ = request(exporter, "GET", "/static/page.js")
    assert (status, headers_type.split(";")[0]) == (200, "text/javascript")
    assert request(exporter, "GET", "/static/page.css")[0] == 200
    assert request(exporter, "GET", "/static/other.js")[0] == 404


def test_history_and_transcript_of_a_failed_run(exporter: Exporter) -> None:
    history = page(exporter, "/history?server=alpha&model=" + quote("gone:1b"))
    run_ids = re.findall(r'href="/runs/(\d+)"', history)
    assert len(run_ids) == 1
    assert html.escape(ERROR) in history
    run = page(exporter, f"/runs/{run_ids[0]}")
    assert 'class="error-box"' in run
    error_lines = re.findall(r'<tr class="error-line">.*?<code>(.*?)</code>', run)
    assert [html.unescape(line) for line in error_lines] == [f'{{"error":"{ERROR}"}}']


def test_unknown_run_page(exporter: Exporter) -> None:
    status, _, body = request(exporter, "GET", "/runs/424242")
    assert status == 404
    assert "No such run" in body


def test_no_pull_now_button_without_the_admin_api(exporter: Exporter) -> None:
    assert "pull-now" not in page(exporter, "/")


def test_the_page_escapes_names(tmp_path: Path) -> None:
    sim = OllamaSimulator({})
    with sim.running() as url:
        config = f"servers:\n  - name: '<b>x</b>'\n    url: {url}\n    models: [a]\n"
        with run_exporter(config, tmp_path) as running:
            bodies = [
                page(running, "/"),
                page(running, "/?model=%3Cb%3Ex%3C%2Fb%3E"),  # the filter's value, shown back
                page(running, "/history?server=%3Cb%3Ex%3C%2Fb%3E&model=a"),
            ]
    for body in bodies:
        assert "<b>x</b>" not in body
        assert "&lt;b&gt;x&lt;/b&gt;" in body


SPANS = [
    (0.0, "0s"),
    (-5.0, "0s"),
    (math.nan, "0s"),
    (0.4, "0s"),
    (0.5, "1s"),
    (59.4, "59s"),
    (59.5, "1m 00s"),  # was "60s"
    (60.0, "1m 00s"),
    (119.4, "1m 59s"),
    (119.6, "2m 00s"),  # was "1m 60s"
    (125.0, "2m 05s"),
    (3599.4, "59m 59s"),
    (3599.6, "1h 00m"),  # was "59m 60s"
    (3929.0, "1h 05m"),
    (3930.0, "1h 06m"),  # 65.5 minutes, half up
    (7199.9, "2h 00m"),
    (86369.0, "23h 59m"),
    (86370.0, "1.0d"),  # 1439.5 minutes round up to a day
    (108000.0, "1.3d"),  # 1.25 days: half up in both languages (Python's format rounds to even)
    (129600.0, "1.5d"),
    (10 * 86400.0, "10.0d"),
]


@pytest.mark.parametrize(("seconds", "text"), SPANS)
def test_span_rounds_once_then_splits(seconds: float, text: str) -> None:
    assert span(seconds) == text


def js_function(name: str) -> str:
    """The source of one top-level function of page.js's closure, to run it under node."""
    source = PAGE_JS.read_text()
    start = source.index(f"  function {name}(")
    end = source.index("\n  }\n", start) + len("\n  }\n")
    return source[start:end]


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_javascript_span_says_the_same() -> None:
    values = ", ".join("NaN" if math.isnan(s) else repr(s) for s, _ in SPANS)
    program = f"{js_function('span')}\nconsole.log(JSON.stringify([{values}].map(span)));\n"
    done = subprocess.run(
        ["node", "--input-type=module", "-"],
        input=program,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert json.loads(done.stdout) == [text for _, text in SPANS]


HOSTILE = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'


def test_hostile_error_text_is_escaped_on_every_page() -> None:
    """An error text from Ollama lands in the run's error box, its transcript and the history."""
    sim = OllamaSimulator({"bad": [error_after_manifest(HOSTILE)]})

    async def scenario() -> list[str]:
        async with operator_app(sim, "[bad]", history=History()) as rig:
            answer = await rig.client.post("/api/v1/pulls", json={"server": "s", "model": "bad"})
            run_id = (await answer.json())["id"]
            async with asyncio.timeout(20):
                await rig.ended["bad"].wait()
            paths = ["/", "/history?server=s&model=bad", "/history", f"/runs/{run_id}"]
            return [await (await rig.client.get(path)).text() for path in paths]

    pages = asyncio.run(scenario())
    for body in pages:
        assert "<script>" not in body
        assert "<img" not in body
    escaped = html.escape(HOSTILE).replace("&#x27;", "&#39;").replace("&quot;", "&#34;")
    assert escaped in pages[1]  # the history's error column
    assert 'class="error-box"' in pages[-1]
    assert escaped in pages[-1]
    assert "\\u003cscript\\u003e" in pages[-1]  # the transcript's raw line, as Ollama escapes it
