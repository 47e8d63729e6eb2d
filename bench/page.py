"""The operator's page and status API at fleet size: load times at 1,000 pairs.

One simulator process, one exporter process with `--pairs` pairs (servers of 20 models each, all
pointing at the simulator, every model up to date so every pair has a finished run). Measures, on
127.0.0.1:

- `GET /api/v1/status`: wall time of `--requests` sequential requests (median, p90, max) and size;
- `GET /`: the HTML's wall time the same way;
- the page in headless Chromium (Debian's, via Playwright): navigation timing (response end, DOM
  content loaded, load) and the time until the first live update from `/api/v1/status` has been
  applied to every row, median of `--loads` fresh loads.

    python -m bench.page                    # 1,000 pairs
    python -m bench.page --pairs 200 --json /tmp/page.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from ollama_sim import OllamaSimulator, up_to_date
from testkit.process import run_exporter, wait_for

MODELS_PER_SERVER = 20


def timed_get(url: str) -> tuple[float, int]:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as response:
        size = len(response.read())
    return time.perf_counter() - start, size


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "median_ms": round(statistics.median(ordered) * 1000, 1),
        "p90_ms": round(ordered[int(0.9 * (len(ordered) - 1))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def browser_loads(url: str, loads: int) -> dict[str, float]:
    from playwright.sync_api import sync_playwright  # noqa: PLC0415 - only this measure needs it

    timings: dict[str, list[float]] = {
        "response_end": [],
        "dom_content_loaded": [],
        "load": [],
        "first_update": [],
    }
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", args=["--disable-gpu"]
        )
        try:
            for _ in range(loads):
                context = browser.new_context(viewport={"width": 1300, "height": 900})
                page = context.new_page()
                start = time.perf_counter()
                page.goto(url + "/")
                page.wait_for_selector("body[data-updated]", timeout=30_000)
                first_update = time.perf_counter() - start
                nav = page.evaluate(
                    "JSON.stringify(performance.getEntriesByType('navigation')[0].toJSON())"
                )
                entry = json.loads(nav)
                timings["response_end"].append(entry["responseEnd"] / 1000)
                timings["dom_content_loaded"].append(entry["domContentLoadedEventEnd"] / 1000)
                timings["load"].append(entry["loadEventEnd"] / 1000)
                timings["first_update"].append(first_update)
                context.close()
        finally:
            browser.close()
    return {name: round(statistics.median(values) * 1000, 1) for name, values in timings.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.page", description=__doc__)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--loads", type=int, default=5)
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    servers = max(1, args.pairs // MODELS_PER_SERVER)
    models = [f"model-{i}:latest" for i in range(MODELS_PER_SERVER)]
    sim = OllamaSimulator({name: [up_to_date([1000, 2000])] for name in models})
    report: dict[str, Any] = {"pairs": servers * MODELS_PER_SERVER}
    with sim.running() as sim_url, tempfile.TemporaryDirectory() as workdir:
        config = "defaults: {interval: 6h, jitter: 0}\nservers:\n" + "".join(
            f"  - name: server-{s:03d}\n    url: {sim_url}\n    max_concurrent_pulls: 20\n"
            f"    models: [{', '.join(models)}]\n"
            for s in range(servers)
        )
        with run_exporter(config, Path(workdir)) as exporter:
            status_url = exporter.url + "/api/v1/status"

            def all_ran() -> bool:
                with urllib.request.urlopen(status_url, timeout=30) as response:
                    pairs = json.loads(response.read())["pairs"]
                return all(pair["last"] is not None for pair in pairs)

            wait_for(all_ran, 120, "every pair to finish its first run", step=1)
            for path, name in (("/api/v1/status", "status"), ("/", "page_html")):
                samples, size = [], 0
                for _ in range(args.requests):
                    took, size = timed_get(exporter.url + path)
                    samples.append(took)
                report[name] = {**summary(samples), "bytes": size}
            report["browser"] = browser_loads(exporter.url, args.loads)
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
