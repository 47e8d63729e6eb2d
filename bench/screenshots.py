"""Screenshots of the live page for the docs, from simulated pulls, in headless Chromium.

    python -m bench.screenshots            # writes docs/img/operator-{page,phone,run}.png

Starts the simulator (two long downloads, up-to-date models, a missing model, an unreachable
registry) and an exporter with the admin API on (plus one server nobody listens on), waits until
the downloads show a throughput, and photographs the page at desktop and phone width and the
failed run's transcript. Debian's Chromium, driven by Playwright; no browser download.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
import urllib.request
from pathlib import Path

from playwright.sync_api import sync_playwright

from ollama_sim import OllamaSimulator, error_after_manifest, fresh_pull, up_to_date
from testkit.process import free_port, run_exporter, wait_for

IMG = Path(__file__).resolve().parent.parent / "docs" / "img"


def scenarios() -> OllamaSimulator:
    return OllamaSimulator(
        {
            "llama3.2:1b": [fresh_pull([1_300_000_000, 12_000, 6_000], rate=20_000_000)],
            "gemma3:270m": [up_to_date([290_000_000, 8_000])],
            "qwen3:8b": [fresh_pull([5_200_000_000, 11_000], rate=45_000_000)],
            "mistral:7b": [error_after_manifest("pull model manifest: file does not exist")],
            "phi4:14b": [
                error_after_manifest(
                    'pull model manifest: Get "https://registry.ollama.ai/v2/library/phi4/'
                    'manifests/14b": dial tcp: lookup registry.ollama.ai: no such host'
                )
            ],
        }
    )


def config(url: str) -> str:
    return (
        "defaults: {interval: 6h, jitter: 0}\nservers:\n"
        f"  - name: gpu-a\n    url: {url}\n    max_concurrent_pulls: 3\n"
        "    models: [llama3.2:1b, gemma3:270m, qwen3:8b]\n"
        f"  - name: gpu-b\n    url: {url}\n    models: [mistral:7b, phi4:14b, gemma3:270m]\n"
        f"  - name: edge-1\n    url: http://127.0.0.1:{free_port()}\n    models: [llama3.2:1b]\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.screenshots", description=__doc__)
    parser.add_argument("--out", type=Path, default=IMG)
    args = parser.parse_args(argv)
    with (
        scenarios().running() as url,
        tempfile.TemporaryDirectory() as workdir,
        run_exporter(config(url), Path(workdir), "--web.enable-admin-api") as exporter,
    ):

        def status() -> list[dict[str, object]]:
            with urllib.request.urlopen(exporter.url + "/api/v1/status", timeout=10) as answer:
                pairs: list[dict[str, object]] = json.loads(answer.read())["pairs"]
            return pairs

        wait_for(
            lambda: sum(1 for p in status() if p["bytes_per_second"] and p["eta_seconds"]) == 2,
            60,
            "two downloads with a throughput",
            step=0.5,
        )
        time.sleep(3)  # a few seconds into the downloads
        failed = next(
            p
            for p in status()
            if isinstance(p["last"], dict) and p["last"]["reason"] == "manifest_not_found"
        )
        assert isinstance(failed["last"], dict)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--disable-gpu"]
            )
            try:
                desk = browser.new_page(viewport={"width": 1280, "height": 800})
                desk.goto(exporter.url + "/")
                desk.wait_for_selector("body[data-updated]")
                desk.screenshot(path=str(args.out / "operator-page.png"), full_page=True)
                phone = browser.new_page(viewport={"width": 390, "height": 844})
                phone.goto(exporter.url + "/")
                phone.wait_for_selector("body[data-updated]")
                phone.screenshot(path=str(args.out / "operator-phone.png"))
                run = browser.new_page(viewport={"width": 1000, "height": 640})
                run.goto(f"{exporter.url}/runs/{failed['last']['id']}")
                run.screenshot(path=str(args.out / "operator-run.png"), full_page=True)
            finally:
                browser.close()
    shutil.copyfile(args.out / "operator-page.png", args.out / "exporter-status.png")
    print(f"wrote {args.out}/operator-{{page,phone,run}}.png and exporter-status.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
