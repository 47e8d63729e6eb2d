"""The live page in a real browser: Debian's headless Chromium driven by Playwright.

Progress bars move while a simulated pull streams (without a reload), the filters work, a failed
run's transcript shows its error line, "pull now" starts a run that the page then shows, the page
and its "pull now" form work with JavaScript off, a form on another site cannot start a pull,
and axe-core finds no serious or critical accessibility problem.
Chromium comes from Debian (`/usr/bin/chromium`, `.ci/setup/60-browser.sh`), never a download.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ollama_sim import OllamaSimulator, error_after_manifest, fresh_pull, up_to_date
from tests.e2e.test_api import call
from tests.harness import Exporter, run_exporter, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
AXE = Path(
    os.environ.get(
        "OPE_AXE_JS",
        Path.home() / ".cache/ollama-pull-exporter/axe-core-4.14.1/package/axe.min.js",
    )
)
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium")
ERROR = "pull model manifest: file does not exist"
BIG = 400_000_000  # at 20 MB/s and time scale 1: about 20 s of download


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    sim = OllamaSimulator(
        {
            "moving:1b": [fresh_pull([BIG], rate=20_000_000)],
            "broken:1b": [error_after_manifest(ERROR)],
            "idle:1b": [up_to_date([1000]), fresh_pull([BIG], rate=20_000_000)],
            "form:1b": [up_to_date([1000]), fresh_pull([BIG], rate=20_000_000)],
        },
        time_scale=1.0,
    )
    config = (
        "defaults: {interval: 1h, jitter: 0}\nservers:\n"
        "  - name: alpha\n    url: {url}\n    max_concurrent_pulls: 5\n"
        "    models: [moving:1b, broken:1b, idle:1b, form:1b]\n"
    )
    with sim.running() as url:
        workdir = tmp_path_factory.mktemp("browser")
        with run_exporter(
            config.replace("{url}", url), workdir, "--web.enable-admin-api"
        ) as running:
            wait_for(
                lambda: (
                    len(call(running, "GET", "/api/v1/runs?result=failure")[1]["runs"]) == 1
                    and call(running, "GET", "/api/v1/runs?result=success")[1]["runs"]
                ),
                20,
                "the first runs",
            )
            yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with playwright_api.sync_playwright() as playwright:
        # --disable-gpu: without it, screenshots in a GPU-less container hang.
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu"])
        try:
            yield launched
        finally:
            launched.close()


ABORTED_BY_THE_BROWSER = "net::ERR_ABORTED"
"""Chromium's error text for a request it cancelled (navigation, closing the page)."""


def open_page(browser: Any, *, bypass_csp: bool) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1300, "height": 900}, bypass_csp=bypass_csp)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))

    def failed(request: Any) -> None:
        # A poll still in flight when a click navigates away (or the test closes the page)
        # is cancelled by the browser itself: on a busy machine polls are slow enough for
        # that to happen. The page never aborts a request, so any other failure counts.
        if request.failure != ABORTED_BY_THE_BROWSER:
            errors.append(f"failed: {request.url} ({request.failure})")

    opened.on("requestfailed", failed)
    try:
        yield opened
    finally:
        context.close()
    assert not errors, errors


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page for driving: the page's CSP is lifted, since Playwright's waits and axe's
    injection evaluate strings (`csp_page` checks the page under its own policy)."""
    yield from open_page(browser, bypass_csp=True)


@pytest.fixture
def csp_page(browser: Any) -> Iterator[Any]:
    """A page under the exporter's own Content-Security-Policy: its script must run there."""
    yield from open_page(browser, bypass_csp=False)


def row(page: Any, model: str) -> Any:
    return page.locator(f'tr.pair[data-key=\'["alpha","{model}"]\']')


def progress(page: Any, model: str) -> float:
    return float(row(page, model).locator("progress").get_attribute("value"))


def test_progress_bar_moves_without_a_reload(exporter: Exporter, csp_page: Any) -> None:
    page = csp_page
    page.goto(exporter.url + "/")
    page.evaluate("window.loadedOnce = true")
    wait_for(lambda: page.locator("body").get_attribute("data-updated"), 5, "a first update")
    first = progress(page, "moving:1b")
    assert first < 100
    moving = row(page, "moving:1b")

    def moved_with_a_rate() -> bool:
        # The bar can move before the throughput has two samples 0.9 s apart: wait for all three
        # things this test asserts, not for the first of them.
        return (
            progress(page, "moving:1b") > first
            and "MiB/s" in moving.locator("td.c-throughput").inner_text()
            and moving.locator("td.c-eta").inner_text() != "\u2013"
        )

    wait_for(moved_with_a_rate, 10, "the bar to move with a rate and an ETA", step=0.2)
    assert page.evaluate("window.loadedOnce") is True  # the same document: no reload


def test_filters_hide_and_show_rows(exporter: Exporter, page: Any) -> None:
    page.goto(exporter.url + "/")
    page.select_option("select[name=state]", "failing")
    assert row(page, "broken:1b").is_visible()
    assert not row(page, "moving:1b").is_visible()
    assert "state=failing" in page.url
    page.select_option("select[name=state]", "")
    page.fill("input[name=model]", "mov")
    assert row(page, "moving:1b").is_visible()
    assert not row(page, "broken:1b").is_visible()
    assert not row(page, "idle:1b").is_visible()


def test_a_failed_run_shows_its_error_line(exporter: Exporter, page: Any) -> None:
    page.goto(exporter.url + "/")
    row(page, "broken:1b").get_by_role("link", name="failed: manifest_not_found").click()
    page.wait_for_url("**/runs/*")
    assert ERROR in page.locator(".error-box").inner_text()
    assert page.locator("tr.error-line").inner_text().endswith(f'{{"error":"{ERROR}"}}')


def test_pull_now_starts_a_run_that_the_page_shows(exporter: Exporter, page: Any) -> None:
    page.goto(exporter.url + "/")
    idle = row(page, "idle:1b")
    assert idle.locator("td.c-phase").inner_text() == "idle"
    idle.get_by_role("button", name="Pull now").click()
    link = idle.locator(".note a")
    link.wait_for(timeout=5000)
    assert link.inner_text().startswith("run #")
    page.wait_for_function(
        """document.querySelector('tr.pair[data-key=\\'["alpha","idle:1b"]\\'] td.c-phase')
            .innerText === 'download'""",
        timeout=10_000,
    )
    assert idle.get_by_role("button", name="Pull now").is_disabled()
    run_id = int(link.inner_text().removeprefix("run #"))
    assert (
        call(exporter, "GET", f"/api/v1/runs/{run_id}", "/api/v1/runs/{id}")[1]["trigger"] == "api"
    )


def test_the_page_works_with_javascript_off(exporter: Exporter, browser: Any) -> None:
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(exporter.url + "/")
        assert page.locator("tr.pair").count() == 4
        page.select_option("select[name=state]", "failing")
        page.get_by_role("button", name="Filter").click()
        page.wait_for_url("**/?*state=failing*")
        assert row(page, "broken:1b").is_visible()
        assert not row(page, "moving:1b").is_visible()
        row(page, "broken:1b").get_by_role("link", name="history").click()
        page.wait_for_url("**/history?*")
        page.locator("a[href^='/runs/']").first.click()
        assert ERROR in page.locator("tr.error-line").inner_text()
    finally:
        context.close()


def form_runs(exporter: Exporter) -> list[Any]:
    runs: list[Any] = call(exporter, "GET", "/api/v1/runs?server=alpha&model=form:1b")[1]["runs"]
    return runs


@contextlib.contextmanager
def other_site(exporter: Exporter) -> Iterator[int]:
    """A page on another port (another origin) with a form that posts "pull now" to the
    exporter, as a malicious page a logged-in operator visits would; yields its port."""
    form = (
        f'<!DOCTYPE html><html lang="en"><title>Win</title><form method="post" '
        f'action="{exporter.url}/pull-now"><input type="hidden" name="server" value="alpha">'
        '<input type="hidden" name="model" value="form:1b">'
        '<button type="submit">Claim your prize</button></form></html>'
    ).encode()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(form)))
            self.end_headers()
            self.wfile.write(form)

        def log_message(self, *_: object) -> None:
            pass

    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield server.server_address[1]
        finally:
            server.shutdown()
            thread.join(5)


@pytest.mark.parametrize(
    ("host", "fetch_site"), [("127.0.0.1", "same-site"), ("localhost", "cross-site")]
)
def test_a_form_on_another_site_cannot_start_a_pull(
    exporter: Exporter, browser: Any, host: str, fetch_site: str
) -> None:
    before = [run["id"] for run in form_runs(exporter)]
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        with other_site(exporter) as port:
            page.goto(f"http://{host}:{port}/")
            with page.expect_response(lambda answer: answer.url.endswith("/pull-now")) as info:
                page.get_by_role("button", name="Claim your prize").click()
            answer = info.value
            sent = answer.request.all_headers()
        assert sent["sec-fetch-site"] == fetch_site  # what the browser told the exporter
        assert answer.status == 403
        assert "cross-site request refused" in answer.text()
    finally:
        context.close()
    assert [run["id"] for run in form_runs(exporter)] == before


def test_pull_now_works_with_javascript_off(exporter: Exporter, browser: Any) -> None:
    context = browser.new_context(java_script_enabled=False)
    try:
        page = context.new_page()
        page.goto(exporter.url + "/")
        form = row(page, "form:1b")
        with page.expect_response(lambda answer: answer.url.endswith("/pull-now")) as info:
            form.get_by_role("button", name="Pull now").click()
        assert info.value.status == 303
        assert info.value.request.all_headers()["sec-fetch-site"] == "same-origin"
        page.wait_for_url("**/history?server=alpha&model=form%3A1b#run-*")
        run_id = int(page.url.rpartition("#run-")[2])
        started = page.locator(f"tr#run-{run_id}")
        assert started.locator("td[data-label=Trigger]").inner_text() == "api"
        assert started.locator("td[data-label=Result]").inner_text() in {"queued", "running"}
        assert form_runs(exporter)[0]["id"] == run_id
        page.goto(exporter.url + "/")  # while it runs, the button is off
        assert row(page, "form:1b").get_by_role("button", name="Pull now").is_disabled()
    finally:
        context.close()


@pytest.mark.skipif(not AXE.exists(), reason="needs axe-core from npm (.ci/setup/60-browser.sh)")
@pytest.mark.parametrize("path", ["/", "/?state=failing", "/history?server=alpha&model=broken:1b"])
def test_axe_finds_no_serious_accessibility_problem(
    exporter: Exporter, page: Any, path: str
) -> None:
    page.goto(exporter.url + path)
    page.wait_for_function(
        "document.body.dataset.updated !== undefined || !document.getElementById('pairs')"
    )
    page.add_script_tag(content=AXE.read_text())
    results = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    serious = [
        f"{v['id']} ({v['impact']}): {v['help']} at {[n['target'] for n in v['nodes']][:3]}"
        for v in results["violations"]
        if v["impact"] in {"serious", "critical"}
    ]
    assert not serious, serious


@pytest.mark.skipif(not AXE.exists(), reason="needs axe-core from npm (.ci/setup/60-browser.sh)")
def test_axe_on_a_run_page(exporter: Exporter, page: Any) -> None:
    run_id = call(exporter, "GET", "/api/v1/runs?result=failure")[1]["runs"][0]["id"]
    page.goto(f"{exporter.url}/runs/{run_id}")
    page.add_script_tag(content=AXE.read_text())
    results = page.evaluate("axe.run(document, {resultTypes: ['violations']})")
    serious = [v["id"] for v in results["violations"] if v["impact"] in {"serious", "critical"}]
    assert not serious, results["violations"]
