"""A stall on the live page in Debian's headless Chromium: "no progress for N s" in the row.

The pull downloads its first layer, then its second layer keeps sending lines without new
bytes (as real Ollama does through a stall). The row, updated by `page.js` without a reload,
must show the rate at 0, no ETA, and "no progress for N s" with N growing. How long after the
last progress the note appeared is printed (`pytest -s`); it is not asserted (a busy machine).
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ollama_sim import OllamaSimulator
from tests.e2e.test_api import call, post_pull
from tests.harness import Exporter, free_port, run_exporter, wait_for
from tests.integration.test_stall import stalling_pull

if TYPE_CHECKING:
    from collections.abc import Iterator

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    # 8 s of bytes, from when the test that watches them starts the pull (not at start-up,
    # which made the bytes outlast the other test and a browser's launch: 20 s of waiting).
    sim = OllamaSimulator({"stuck:1b": [stalling_pull(first=8_000_000)]})
    config = (
        "defaults: {interval: 1h, jitter: 0, stall_timeout: 10m}\nservers:\n"
        "  - name: alpha\n    url: {url}\n    models: [{name: stuck:1b, run_on_start: false}]\n"
        f"  - name: gone\n    url: http://127.0.0.1:{free_port()}\n"
        "    models: [{name: stuck:1b, run_on_start: false}]\n"
    )
    with (
        sim.running() as url,
        run_exporter(
            config.replace("{url}", url),
            tmp_path_factory.mktemp("stall-browser"),
            "--web.enable-admin-api",
        ) as running,
    ):
        yield running


def status(exporter: Exporter) -> Any:
    return call(exporter, "GET", "/api/v1/status")[1]["pairs"][0]  # alpha


def test_a_down_server_shows_since_when_and_why(exporter: Exporter) -> None:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(exporter.url + "/")
            gone = page.locator('tr.pair[data-key=\'["gone","stuck:1b"]\'] td.c-server')
            # page.js renders it (data-down is its mark), the same words as the server did.
            wait_for(lambda: gone.get_attribute("data-down"), 10, "page.js to render the row")
            note = gone.locator(".server-down").inner_text()
            pattern = r"down since \S+ ago: connection refused .* at 127\.0\.0\.1:\d+"
            assert re.fullmatch(pattern, note), note
            server = page.locator('tr.server[data-server="gone"]')
            wait_for(lambda: server.get_attribute("data-key"), 10, "page.js to render servers")
            assert server.locator(".c-server-state").inner_text().startswith("down since ")
            assert "connection refused" in server.locator(".c-server-detail").inner_text()
            up = page.locator('tr.server[data-server="alpha"] .c-server-detail')
            assert up.inner_text().startswith("Ollama ")
        finally:
            browser.close()


def test_the_row_shows_no_progress_while_lines_keep_coming(exporter: Exporter) -> None:
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu"])
        try:
            page = browser.new_page()
            page.goto(exporter.url + "/")
            row = page.locator('tr.pair[data-key=\'["alpha","stuck:1b"]\']')
            throughput = row.locator("td.c-throughput")
            wait_for(lambda: page.locator("body").get_attribute("data-updated"), 10, "an update")
            assert post_pull(exporter, "alpha", "stuck:1b")[0] == 202  # the page is watching
            wait_for(lambda: "KiB/s" in throughput.inner_text(), 30, "bytes to flow", step=0.1)
            assert row.locator(".stall").count() == 0
            row.locator(".stall").wait_for(timeout=30_000)
            seen_at = time.time()
            stalled = status(exporter)
            late = seen_at - stalled["last_progress_at"]
            print(f"'no progress' appeared {late:.2f} s after the last progress")
            first = row.locator(".stall").inner_text()
            assert re.fullmatch(r"no progress for \d+ s", first), first
            assert throughput.inner_text().startswith("0 B/s")
            assert row.locator("td.c-eta").inner_text() == "\u2013"
            assert "stalled" in (row.get_attribute("class") or "")

            def grew() -> bool:
                now = row.locator(".stall").inner_text()
                return int(now.split()[3]) > int(first.split()[3])

            wait_for(grew, 10, "N to grow", step=0.2)
            assert status(exporter)["last_progress_at"] == stalled["last_progress_at"]
        finally:
            browser.close()
