"""Reload (SIGHUP, POST /-/reload) and shutdown (SIGTERM, SIGINT) of the real process."""

from __future__ import annotations

import signal
import threading
import time
import urllib.request
from typing import TYPE_CHECKING

import pytest

from exporter.protocol import Reason
from ollama_sim import OllamaSimulator, Scenario, Stall, fresh_pull, stalled, up_to_date
from tests.harness import Exporter, run_exporter, wait_for

if TYPE_CHECKING:
    from pathlib import Path

TIME_SCALE = 0.05
QUICK = up_to_date([1000, 200])


def post(exporter: Exporter, path: str) -> tuple[int, str]:
    request = urllib.request.Request(exporter.url + path, method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def config(url: str, models: str, *, interval: str = "1h") -> str:
    return (
        f"defaults: {{interval: {interval}, jitter: 0, stall_timeout: 1m}}\n"
        f"servers:\n  - name: sim\n    url: {url}\n    max_concurrent_pulls: 5\n"
        f"    models:\n{models}"
    )


def pair_series(exporter: Exporter, model: str) -> list[str]:
    exporter.scrape()
    return sorted(name for (name, labels) in exporter._samples if ("model", model) in labels)


def test_reload_is_forbidden_without_the_lifecycle_flag(tmp_path: Path) -> None:
    sim = OllamaSimulator({"a": [QUICK]}, time_scale=TIME_SCALE)
    with sim.running() as url, run_exporter(config(url, "      - a\n"), tmp_path) as exporter:
        status, body = post(exporter, "/-/reload")
        assert status == 403
        assert "not enabled" in body


def test_reload_adds_removes_and_changes_pairs(tmp_path: Path) -> None:
    sim = OllamaSimulator(
        {"keep": [QUICK], "gone": [stalled(10_000_000)], "new": [QUICK]}, time_scale=TIME_SCALE
    )
    with sim.running() as url:
        first = config(url, "      - keep\n      - gone\n")
        with run_exporter(first, tmp_path, "--web.enable-lifecycle") as exporter:
            exporter.wait_value(
                "ollama_pull_last_success", lambda v: v == 1, model="keep", server="sim"
            )
            # `gone` is mid-pull (stalled stream) when the reload removes it.
            exporter.wait_value(
                "ollama_pull_in_progress", lambda v: v == 1, model="gone", server="sim"
            )
            before = exporter.value(
                "ollama_pull_exporter_config_last_reload_success_timestamp_seconds"
            )
            exporter.config_path.write_text(
                config(
                    url,
                    "      - name: keep\n        interval: 2h\n      - name: new\n        run_on_start: false\n",
                )
            )
            assert post(exporter, "/-/reload") == (200, "OK\n")
            exporter.scrape()
            assert pair_series(exporter, "gone") == []
            record = wait_for(
                lambda: next(
                    (r for r in sim.requests if r.model == "gone" and r.outcome != "open"), None
                ),
                5,
                "the removed pair's stream to close",
            )
            assert record.client_disconnected
            # The added pair exists at once with every series at zero (it has not run).
            assert exporter.value("ollama_pull_runs_total", server="sim", model="new") == 0
            for reason in Reason:
                assert (
                    exporter.value(
                        "ollama_pull_failures_total", server="sim", model="new", reason=reason.value
                    )
                    == 0
                )
            assert exporter.value("ollama_pull_last_success", server="sim", model="new") is None
            assert exporter.value("ollama_pull_interval_seconds", server="sim", model="new") == 3600
            # The kept pair keeps its counters and takes the new interval for its next run.
            assert exporter.value("ollama_pull_runs_total", server="sim", model="keep") == 1
            assert (
                exporter.value("ollama_pull_interval_seconds", server="sim", model="keep") == 7200
            )
            last = exporter.value(
                "ollama_pull_last_run_timestamp_seconds", server="sim", model="keep"
            )
            next_run = exporter.value(
                "ollama_pull_next_run_timestamp_seconds", server="sim", model="keep"
            )
            assert last is not None
            assert next_run is not None
            assert 7200 - 30 < next_run - last <= 7200
            assert exporter.value("ollama_pull_exporter_config_last_reload_successful") == 1
            after = exporter.value(
                "ollama_pull_exporter_config_last_reload_success_timestamp_seconds"
            )
            assert before is not None
            assert after is not None
            assert after > before
            assert sim.run_count("new") == 0


def test_bad_reload_keeps_the_old_config(tmp_path: Path) -> None:
    sim = OllamaSimulator({"a": [QUICK]}, time_scale=TIME_SCALE)
    with sim.running() as url:
        good = config(url, "      - a\n")
        with run_exporter(good, tmp_path, "--web.enable-lifecycle") as exporter:
            exporter.wait_value(
                "ollama_pull_last_success", lambda v: v == 1, model="a", server="sim"
            )
            exporter.config_path.write_text(
                good.replace("interval: 1h", "interval: 5 minutes") + "      - b\n"
            )
            status, body = post(exporter, "/-/reload")
            assert status == 500
            assert 'defaults.interval: invalid duration "5 minutes"' in body
            exporter.scrape()
            assert exporter.value("ollama_pull_exporter_config_last_reload_successful") == 0
            assert exporter.value("ollama_pull_runs_total", server="sim", model="a") == 1
            assert pair_series(exporter, "b") == []
            assert "config reload failed" in exporter.logs()
            # SIGHUP reloads too; a fixed file brings the gauge back to 1.
            exporter.config_path.write_text(good + "      - b\n")
            exporter.process.send_signal(signal.SIGHUP)
            exporter.wait_value(
                "ollama_pull_exporter_config_last_reload_successful", lambda v: v == 1
            )
            exporter.wait_value("ollama_pull_runs_total", lambda v: v >= 0, server="sim", model="b")


def test_concurrent_reloads_all_succeed_and_agree(tmp_path: Path) -> None:
    sim = OllamaSimulator({"a": [QUICK]}, time_scale=TIME_SCALE)
    with sim.running() as url:
        models = "".join(f"      - name: m{i}\n        run_on_start: false\n" for i in range(50))
        with run_exporter(
            config(url, "      - a\n"), tmp_path, "--web.enable-lifecycle"
        ) as exporter:
            exporter.config_path.write_text(config(url, models))
            results: list[tuple[int, str]] = []
            threads = [
                threading.Thread(target=lambda: results.append(post(exporter, "/-/reload")))
                for _ in range(8)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(20)
            assert results == [(200, "OK\n")] * 8
            exporter.scrape()
            runs = [name for name in exporter._samples if name[0] == "ollama_pull_runs_total"]
            assert len(runs) == 50


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_during_a_live_pull_is_clean_and_fast(tmp_path: Path, sig: signal.Signals) -> None:
    sim = OllamaSimulator(
        {"live": [fresh_pull([500_000_000], rate=1_000_000)], "hang": [Scenario(Stall())]},
        time_scale=TIME_SCALE,
    )
    with sim.running() as url:
        with run_exporter(config(url, "      - live\n      - hang\n"), tmp_path) as exporter:
            exporter.wait_value(
                "ollama_pull_downloaded_bytes_total", lambda v: v > 0, server="sim", model="live"
            )
            exporter.wait_value(
                "ollama_pull_in_progress", lambda v: v == 1, server="sim", model="hang"
            )
            started = time.monotonic()
            code = exporter.stop(sig, timeout=10)
            elapsed = time.monotonic() - started
        assert code == 0, exporter.logs()
        assert elapsed < 5, f"took {elapsed:.2f}s"
        records = wait_for(
            lambda: (
                [r for r in sim.requests if r.outcome != "open"]
                if all(r.outcome != "open" for r in sim.requests)
                else None
            ),
            5,
            "every stream to be closed",
        )
        assert {r.model for r in records} == {"live", "hang"}
        assert all(r.client_disconnected for r in records)
        assert "Traceback" not in exporter.logs()
