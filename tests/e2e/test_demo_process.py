"""`--demo`: the exporter with the simulator in its own process, and the README's first command.

In process where it can be: the demo's app (the real page, metrics and API) with the embedded
simulator, scraped like Prometheus until a success, a failure and bytes moving show. Then the
processes a newcomer runs: the README's command, in a network namespace of its own when the
machine allows (so the demo's fixed port 11435 cannot clash), stopped with SIGTERM; and
`--demo --once`.

This module holds the tests that start processes; tests/integration/test_demo.py holds the
in-process ones and the helpers both use.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.harness import (
    REPO_ROOT,
    Samples,
    exporter_command,
    free_port,
    parse_samples,
    run_cli,
    wait_for,
)
from tests.integration.test_demo import BASE_URL, MODELS, _first_block, _shapes_seen, _value

DRIVER = Path(__file__).resolve().parents[1] / "demo_driver.py"


def test_the_simulator_alone_serves_the_packaged_demo_scenarios(tmp_path: Path) -> None:
    """`python -m ollama_sim --demo` (the compose demo's Ollama), run away from the clone."""
    with subprocess.Popen(
        [sys.executable, "-m", "ollama_sim", "--demo", "--port=0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        body = json.dumps({"model": "gemma3:270m"}).encode()
        with urllib.request.urlopen(f"{url}/api/pull", data=body, timeout=10) as answer:
            lines = answer.read().decode().splitlines()
        process.terminate()
        assert process.wait(timeout=10) == 0
    assert json.loads(lines[-1]) == {"status": "success"}
    both = run_module_sim("--demo", "--scenarios=x.yaml")
    assert both.returncode == 2
    assert both.stderr == "error: --demo and --scenarios exclude each other\n"


def run_module_sim(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ollama_sim", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# ------------------------------------------------------------------ the command line


def test_demo_with_a_config_file_is_a_usage_error() -> None:
    done = run_cli("--demo", "--config.file=config.example.yaml")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert "--demo" in done.stderr
    assert "--config.file" in done.stderr


def test_demo_once_runs_one_round_and_exits_1_for_the_deliberate_failure() -> None:
    done = run_cli("--demo", "--once", timeout=110)
    lines = sorted(done.stdout.splitlines())
    assert done.returncode == 1, done.stdout + done.stderr
    assert [line.split(" result=")[0] for line in lines] == sorted(
        f"server=demo model={model}" for model in MODELS
    )
    results = {line.split()[1]: line.split()[2] for line in lines}
    assert results == {
        "model=llama3.2:1b": "result=success",
        "model=gemma3:270m": "result=success",
        "model=mistral:7b": "result=failure",
        "model=qwen3:0.6b": "result=success",
    }
    assert "reason=disk_full" in next(line for line in lines if "mistral" in line)
    assert "Traceback" not in done.stderr


def test_the_demo_reloads_its_built_in_config(tmp_path: Path) -> None:
    """There is no file to read: SIGHUP and `POST /-/reload` rebuild the config in memory."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = tmp_path / "demo.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            exporter_command("--demo", "--web.enable-lifecycle", f"--web.listen-address=:{port}"),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:

        def reloads_ok() -> float | None:
            with urllib.request.urlopen(f"{base}/metrics", timeout=5) as answer:
                samples = parse_samples(answer.read().decode())
            return samples.get(("ollama_pull_exporter_config_last_reload_successful", frozenset()))

        def ready() -> bool:
            try:
                return reloads_ok() == 1
            except OSError:
                return False

        wait_for(ready, 30, "the demo to serve")
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: "config reloaded" in log.read_text(), 30, "the SIGHUP reload")
        request = urllib.request.Request(f"{base}/-/reload", method="POST")
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert (answer.status, answer.read()) == (200, b"OK\n")
        assert reloads_ok() == 1
    finally:
        process.terminate()
        code = process.wait(timeout=10)
    text = log.read_text()
    assert code == 0, text
    assert "config reload failed" not in text
    assert text.count('msg="config reloaded" config=<demo> pairs=4') == 2


def _namespace_prefix() -> list[str] | None:
    """`unshare` into a new network namespace, if this machine allows it."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return None
    prefix = [unshare, "--net", "--map-root-user"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, check=False)
    return prefix if probe.returncode == 0 else None


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _parse(metrics: dict[str, object]) -> Samples:
    return parse_samples(str(metrics["body"]))


def test_the_readme_demo_command_shows_pulls_and_stops_on_sigterm(tmp_path: Path) -> None:
    install, _tests = _first_block()
    command = install.rsplit("&& ", 1)[1]
    bin_dir = Path(sys.executable).parent
    command = re.sub(r"^\.venv/bin/", f"{bin_dir}/", command)
    prefix = _namespace_prefix()
    driver = [sys.executable, str(DRIVER), f"--base-url={BASE_URL}", f"--logs={tmp_path}"]
    if prefix is None:
        if not _port_free(11435):
            pytest.skip("no network namespaces here, and the demo's port 11435 is taken")
        driver.append("--no-loopback")
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    last: dict[str, object] = {}
    samples: Samples = {}
    seen: set[float] = set()
    started = time.monotonic()
    with subprocess.Popen(
        [*(prefix or []), *driver, "--", command],
        cwd=tmp_path,  # no config file anywhere near: the demo needs none
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None
        assert process.stdin is not None
        try:
            while time.monotonic() - started < 90:
                readable, _, _ = select.select([process.stdout], [], [], 5)
                line = process.stdout.readline() if readable else b""
                if not line:
                    continue
                last = json.loads(line)
                assert last.get("exited", [None]) == [None], last
                metrics = last.get("metrics")
                if isinstance(metrics, dict) and metrics.get("status") == 200:
                    samples = _parse(metrics)
                    seen.add(
                        _value(samples, "ollama_pull_downloaded_bytes_total", "llama3.2:1b") or 0
                    )
                    if _shapes_seen(samples, len(seen - {0}) >= 2):
                        break
        finally:
            process.stdin.close()
            tail = process.stdout.read().decode()
            process.wait(timeout=30)
    logs = "\n".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("*.log")))
    assert _shapes_seen(samples, len(seen - {0}) >= 2), f"{json.dumps(last)[:3000]}\n{logs}"
    page = last["page"]
    assert isinstance(page, dict)
    assert page["status"] == 200
    for model in MODELS:
        assert model in str(page["body"])
    stopped = json.loads(tail.strip().splitlines()[-1])["stopped"]
    assert stopped == [0], f"the demo should exit 0 on SIGTERM:\n{logs}"
    assert "Traceback" not in logs
