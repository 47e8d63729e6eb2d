"""What a new user meets first: `--once` stopped by Ctrl-C or SIGTERM, when the first pulls run,
and whether an unreachable Ollama shows before the first run. The real process, over sockets."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING

import pytest

from ollama_sim import OLLAMA_VERSION, OllamaSimulator, Scenario, Stall, up_to_date
from tests.harness import exporter_command, free_port, run_exporter, wait_for

if TYPE_CHECKING:
    from pathlib import Path

QUICK = up_to_date([1000])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_once_stopped_by_a_signal_prints_what_it_has_and_one_line(
    tmp_path: Path, sig: signal.Signals
) -> None:
    sim = OllamaSimulator({"quick": [QUICK], "hang": [Scenario(Stall())]}, time_scale=0.05)
    with sim.running() as url:
        config = tmp_path / "config.yaml"
        config.write_text(
            "defaults: {stall_timeout: 10m}\n"
            f"servers:\n  - name: sim\n    url: {url}\n    max_concurrent_pulls: 2\n"
            "    models: [quick, hang]\n"
        )
        process = subprocess.Popen(
            exporter_command(f"--config.file={config}", "--once"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        stderr = process.stderr
        assert stderr is not None
        # The exporter's own word that `quick` finished (the simulator sending its last line
        # is not enough: the exporter may not have read it yet when the signal comes).
        log: list[str] = []
        reader = threading.Thread(target=lambda: log.extend(iter(stderr.readline, "")))
        reader.start()
        try:
            wait_for(
                lambda: (
                    any("pull finished" in line and "model=quick" in line for line in log[:])
                    and ("hang", "open") in {(r.model, r.outcome) for r in sim.requests}
                ),
                20,
                "one pull done and one hanging",
            )
            process.send_signal(sig)
            process.wait(timeout=10)  # not communicate(): the reader owns stderr
            assert process.stdout is not None
            out = process.stdout.read()
            reader.join(5)
            err = "".join(log)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            reader.join(5)
            for pipe in (process.stdout, stderr):
                if pipe is not None:
                    pipe.close()
    assert "Traceback" not in err, err
    assert process.returncode == 1, (out, err)
    lines = out.splitlines()
    assert lines[0].startswith("server=sim model=quick result=success duration="), out
    assert lines[1:] == ["server=sim model=hang result=cancelled"]
    assert err.strip().splitlines()[-1] == (
        f"interrupted by {sig.name}: 1 of 2 runs did not finish"
    )


def test_run_on_start_runs_within_a_minute_and_says_when(tmp_path: Path) -> None:
    # The defaults: interval 6h, jitter 0.1. The first run used to wait up to 36 minutes.
    sim = OllamaSimulator({"a": [QUICK], "b": [QUICK]}, time_scale=0.05)
    with sim.running() as url:
        config = f"servers:\n  - name: sim\n    url: {url}\n    models: [a, b]\n"
        with run_exporter(config, tmp_path) as exporter:
            exporter.scrape()
            now = time.time()
            for model in ("a", "b"):
                next_run = exporter.value(
                    "ollama_pull_next_run_timestamp_seconds", server="sim", model=model
                )
                last = exporter.value(
                    "ollama_pull_last_run_timestamp_seconds", server="sim", model=model
                )
                assert last is not None or (next_run is not None and next_run - now <= 30)
            lines = [line for line in exporter.logs().splitlines() if 'msg="next run"' in line]
            assert {line.split("model=")[1].split()[0] for line in lines} >= {"a", "b"}
            assert all(" at=" in line and " in_seconds=" in line for line in lines)


def test_an_unreachable_server_shows_before_the_first_run(tmp_path: Path) -> None:
    sim = OllamaSimulator({"a": [QUICK]}, time_scale=0.05)
    dead = f"http://127.0.0.1:{free_port()}"
    with sim.running() as url:
        config = (
            "defaults: {run_on_start: false}\n"
            f"servers:\n  - name: sim\n    url: {url}\n    models: [a]\n"
            f"  - name: dead\n    url: {dead}\n    models: [a]\n"
        )
        with run_exporter(config, tmp_path) as exporter:
            exporter.wait_value("ollama_pull_server_up", lambda v: v == 0, server="dead")
            exporter.wait_value("ollama_pull_server_up", lambda v: v == 1, server="sim")
            status, page = exporter.get("/")
            logs = exporter.logs()
            assert exporter.value("ollama_pull_runs_total", server="dead", model="a") == 0
    assert status == 200
    assert OLLAMA_VERSION in page  # the simulator's Ollama version: the release tested
    assert 'class="fail">down</span>' in page
    assert 'msg="server unreachable" server=dead' in logs
    assert f'msg="server up" server=sim version={OLLAMA_VERSION}' in logs
