"""Screenshots of the pictures for the docs: a stall as it happens, a run's chart, sparklines.

    python -m bench.chart_screenshots   # docs/img/stall.png, run-chart.png, fleet-sparklines.png

Starts the simulator and an exporter over three servers: one pull that downloads, stalls for
7 s while its lines keep coming, rolls back once and finishes; downloads at changing speeds on
the other servers; one server with nothing listening. Photographs the fleet page while the pull
stalls (its row says "no progress for N s", the down server says since when and why), the
stalled run's page once it finished, then the fleet page (its sparklines hold the last minute).
Debian's Chromium, driven by Playwright; no download.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

from ollama_sim import (
    Layer,
    Manifest,
    OllamaSimulator,
    Scenario,
    Success,
    Verify,
    Write,
    fresh_pull,
    up_to_date,
)
from testkit.process import free_port, run_exporter, wait_for

IMG = Path(__file__).resolve().parent.parent / "docs" / "img"
MB = 1_000_000


def stalling() -> Scenario:
    return Scenario(
        Manifest(fetch=0.6),
        Layer(120 * MB, rate=25 * MB, latency_ticks=0),
        Layer(
            90 * MB,
            rate=20 * MB,
            resume_from=10 * MB,
            latency_ticks=120,
            rollback_at=60 * MB,
            rollback_bytes=15 * MB,
        ),
        Layer(12_000),
        Verify(silence=1.0),
        Write(),
        Success(),
        name="stalling",
    )


def varying(rates: list[float]) -> Scenario:
    return Scenario(
        Manifest(fetch=0.3),
        *(Layer(round(rate * 6), rate=rate, latency_ticks=0) for rate in rates),
        Verify(silence=0.5),
        Write(),
        Success(),
        name="varying",
    )


def scenarios() -> OllamaSimulator:
    return OllamaSimulator(
        {
            "llama3.2:1b": [stalling()],
            "qwen3:8b": [varying([30 * MB, 8 * MB, 45 * MB, 15 * MB, 30 * MB, 5 * MB, 40 * MB])],
            "gemma3:270m": [up_to_date([290 * MB, 8_000])],
            "phi4:14b": [fresh_pull([2_000 * MB], rate=12 * MB)],
        }
    )


def config(url: str) -> str:
    return (
        "defaults: {interval: 6h, jitter: 0}\nservers:\n"
        f"  - name: gpu-a\n    url: {url}\n    models: [llama3.2:1b, gemma3:270m]\n"
        f"  - name: gpu-b\n    url: {url}\n    models: [qwen3:8b, phi4:14b]\n"
        f"  - name: edge-1\n    url: http://127.0.0.1:{free_port()}\n    models: [gemma3:270m]\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.chart_screenshots", description=__doc__)
    parser.add_argument("--out", type=Path, default=IMG)
    args = parser.parse_args(argv)
    with (
        scenarios().running() as url,
        tempfile.TemporaryDirectory() as workdir,
        run_exporter(config(url), Path(workdir)) as exporter,
    ):

        def runs() -> list[dict[str, object]]:
            with urllib.request.urlopen(exporter.url + "/api/v1/runs", timeout=10) as answer:
                found: list[dict[str, object]] = json.loads(answer.read())["runs"]
            return found

        def stalled_run() -> dict[str, object] | None:
            return next(
                (r for r in runs() if r["model"] == "llama3.2:1b" and r["state"] == "finished"),
                None,
            )

        def stalled_now() -> bool:
            with urllib.request.urlopen(exporter.url + "/api/v1/status", timeout=10) as answer:
                pairs = json.loads(answer.read())["pairs"]
            return any(
                p["model"] == "llama3.2:1b" and p["stalled"] and p["no_progress_seconds"] >= 3
                for p in pairs
            )

        wait_for(stalled_now, 90, "the pull to stall", step=0.25)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--disable-gpu"]
            )
            try:
                live = browser.new_page(viewport={"width": 1300, "height": 800})
                live.goto(exporter.url + "/")
                live.wait_for_selector("body[data-updated]")
                live.screenshot(path=str(args.out / "stall.png"), full_page=True)
            finally:
                browser.close()
        wait_for(lambda: stalled_run() is not None, 90, "the stalled pull to finish", step=0.5)
        run = stalled_run()
        assert run is not None
        wait_for(
            lambda: any(r["model"] == "qwen3:8b" and r["state"] == "finished" for r in runs()),
            90,
            "the varying pull to finish",
            step=0.5,
        )
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--disable-gpu"]
            )
            try:
                page = browser.new_page(viewport={"width": 1000, "height": 700})
                page.goto(f"{exporter.url}/runs/{run['id']}")
                page.locator("section.chart-box").screenshot(path=str(args.out / "run-chart.png"))
                fleet = browser.new_page(viewport={"width": 1280, "height": 800})
                fleet.goto(exporter.url + "/")
                fleet.wait_for_selector("body[data-updated]")
                fleet.screenshot(path=str(args.out / "fleet-sparklines.png"), full_page=True)
            finally:
                browser.close()
    print(f"wrote {args.out}/stall.png, run-chart.png and fleet-sparklines.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
