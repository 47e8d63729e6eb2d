"""`--demo`: the exporter with the simulator in its own process, and the README's first command.

In process where it can be: the demo's app (the real page, metrics and API) with the embedded
simulator, scraped like Prometheus until a success, a failure and bytes moving show. Then the
processes a newcomer runs: the README's command, in a network namespace of its own when the
machine allows (so the demo's fixed port 11435 cannot clash), stopped with SIGTERM; and
`--demo --once`.
"""

from __future__ import annotations

import asyncio
import dataclasses
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
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from aiohttp.test_utils import TestClient, TestServer

from exporter.app import assemble, demo
from exporter.config.loader import parse_config
from exporter.fleet.sharding import Shard
from ollama_sim import OLLAMA_VERSION, ErrorLine, demo_scenarios, layer_digest
from tests.harness import (
    REPO_ROOT,
    Samples,
    exporter_command,
    free_port,
    parse_samples,
    run_cli,
    wait_for,
)
from tests.virtual_time import run_virtual

if TYPE_CHECKING:
    from aiohttp import web

README = REPO_ROOT / "README.md"
DRIVER = Path(__file__).resolve().parents[1] / "demo_driver.py"
BASE_URL = "http://127.0.0.1:11435"
ACCEPT = "application/openmetrics-text;version=1.0.0;q=0.9,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
"""Prometheus 2's scrape `Accept` header."""
MODELS = ["llama3.2:1b", "gemma3:270m", "mistral:7b", "qwen3:0.6b"]


def _value(samples: Samples, name: str, model: str, **labels: str) -> float | None:
    return samples.get((name, frozenset({"server": "demo", "model": model, **labels}.items())))


def _shapes_seen(samples: Samples, moving: bool) -> bool:
    """What a newcomer should see within a minute: pulls, a success, a failure, bytes moving."""
    return (
        all(_value(samples, "ollama_pull_runs_total", m) for m in MODELS)
        and _value(samples, "ollama_pull_last_success", "gemma3:270m") == 1
        and _value(samples, "ollama_pull_last_downloaded_bytes", "gemma3:270m") == 0
        and _value(samples, "ollama_pull_failures_total", "mistral:7b", reason="disk_full") == 1
        and moving
    )


# ------------------------------------------------------------------ the demo's parts


def test_the_demo_config_pulls_every_simulated_model_from_the_simulator() -> None:
    scenarios = demo_scenarios()  # from the installed package, not from a path in the clone
    config = demo.demo_config("http://127.0.0.1:1")
    (server,) = config.servers
    assert server.name == demo.SERVER
    assert [m.name for m in server.models] == list(scenarios.models) == MODELS
    assert server.max_concurrent_pulls >= len(MODELS)
    assert scenarios.loop
    durations = {model: runs[0].nominal_duration() for model, runs in scenarios.models.items()}
    assert 20 <= durations["llama3.2:1b"] <= 60
    assert durations["gemma3:270m"] < 1
    assert durations["mistral:7b"] < 10  # the failure shows within seconds
    assert not scenarios.models["mistral:7b"][0].succeeds
    assert any(run.nominal_duration() == float("inf") for run in scenarios.models["qwen3:0.6b"])


def test_the_demo_scenarios_are_package_data_of_the_wheel() -> None:
    pyproject = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^ollama_sim = \[.*"demo\.yaml".*\]', pyproject, re.MULTILINE)
    assert (REPO_ROOT / "ollama_sim" / "demo.yaml").is_file()


def test_the_disk_full_error_names_the_blob_being_pulled() -> None:
    (run,) = demo_scenarios().models["mistral:7b"]
    error = next(step for step in run.steps if isinstance(step, ErrorLine))
    blob = layer_digest("mistral:7b", 0).replace(":", "-")
    assert f"/blobs/{blob}-partial-" in error.text


def test_the_demo_server_says_the_tested_ollama_release() -> None:
    pinned = re.search(
        r"^OLLAMA_PINNED=(\S+)$",
        (REPO_ROOT / ".ci/setup/60-ollama.sh").read_text(encoding="utf-8"),
        re.MULTILINE,
    )
    assert pinned is not None
    assert pinned.group(1) == OLLAMA_VERSION


@pytest.mark.e2e  # starts a process
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


# ------------------------------------------------------------------ in process


async def _scrape(client: TestClient[web.Request, web.Application]) -> Samples:
    response = await client.get("/metrics", headers={"Accept": ACCEPT})
    assert response.status == 200
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    return parse_samples(await response.text())


def test_the_demo_app_shows_pulls_a_failure_and_bytes_moving() -> None:
    embedded = demo.Demo.prepare()
    options = assemble.Options(config_path=demo.SOURCE, shard=Shard())

    async def watch() -> tuple[Samples, str, dict[str, Any], str]:
        with assemble.open_program(options, embedded.config, embedded) as program:
            async with (
                assemble.scheduling(program) as running,
                TestClient(
                    TestServer(assemble.web_app(program, running), host="127.0.0.1")
                ) as client,
            ):
                samples: Samples = {}
                seen: list[float] = []
                async with asyncio.timeout(60):
                    while True:
                        samples = await _scrape(client)
                        seen.append(
                            _value(samples, "ollama_pull_downloaded_bytes_total", "llama3.2:1b")
                            or 0
                        )
                        if _shapes_seen(samples, len(set(seen) - {0}) >= 2):
                            break
                        await asyncio.sleep(0.5)  # a scrape interval (virtual), as Prometheus waits
                page = await (await client.get("/")).text()
                runs = await (await client.get("/api/v1/runs?model=mistral:7b")).json()
                run = await (await client.get(f"/api/v1/runs/{runs['runs'][0]['id']}")).json()
                healthy = await (await client.get("/-/healthy")).text()
        return samples, page, run, healthy

    try:
        samples, page, run, healthy = run_virtual(watch())
    finally:
        embedded.close()
    assert healthy == "OK\n"
    assert samples[("ollama_pull_server_up", frozenset({("server", "demo")}))] == 1
    for model in MODELS:
        assert model in page
    assert "demo" in page
    # The error line names the layer the transcript shows being pulled.
    assert run["reason"] == "disk_full"
    digests = {
        json.loads(entry["line"]).get("digest")
        for entry in run["transcript"]
        if isinstance(entry, dict) and '"digest"' in entry["line"]
    }
    assert digests == {layer_digest("mistral:7b", 0)}
    assert layer_digest("mistral:7b", 0).split(":")[1] in str(run["error"])
    # The simulator is gone with the app: its socket is closed.
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", int(embedded.url.rsplit(":", 1)[1]))) != 0


# ------------------------------------------------------------------ the command line


@pytest.mark.e2e  # starts a process
def test_demo_with_a_config_file_is_a_usage_error() -> None:
    done = run_cli("--demo", "--config.file=config.example.yaml")
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert "--demo" in done.stderr
    assert "--config.file" in done.stderr


@pytest.mark.e2e  # starts a process
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


@pytest.mark.e2e  # starts a process
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


# ------------------------------------------------------------------ the README


def _first_block() -> list[str]:
    """The shell lines of the README's first code block, comments and blank lines left out."""
    block = re.search(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    assert block is not None, "the README has no ```sh block"
    lines = [line.strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


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


def test_the_readme_starts_with_the_demo_then_the_tests() -> None:
    install, tests = _first_block()
    assert install == (
        "python3 -m venv .venv && .venv/bin/pip install -q -e . && .venv/bin/ollama-pull-exporter --demo"
    )
    ci = (REPO_ROOT / ".ci/run").read_text(encoding="utf-8")
    assert tests.endswith("&& .venv/bin/pytest")
    assert "\n.venv/bin/pytest\n" in ci  # the same command as CI's
    text = README.read_text(encoding="utf-8")
    assert f"{BASE_URL}/" in text.split("## Point it at your Ollama")[0]


@pytest.mark.e2e  # starts a process
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


# ------------------------------------------------------------------ compose


def test_the_compose_demo_runs_the_packaged_scenarios_and_the_demo_config() -> None:
    compose_dir = REPO_ROOT / "deploy" / "compose"
    base = yaml.safe_load((compose_dir / "docker-compose.yml").read_text(encoding="utf-8"))
    override = yaml.safe_load((compose_dir / "docker-compose.demo.yml").read_text(encoding="utf-8"))
    assert set(override["services"]) <= set(base["services"])  # an override, no new service
    simulator = override["services"]["ollama"]
    assert simulator["build"] == base["services"]["exporter"]["build"]  # the exporter's image
    assert simulator["image"] == base["services"]["exporter"]["image"]
    assert simulator["entrypoint"] == ["python", "-m", "ollama_sim"]
    assert simulator["command"] == ["--host=0.0.0.0", "--port=11434", "--demo"]
    assert "volumes" not in simulator  # the scenarios come with the package
    assert "http://127.0.0.1:11434/" in " ".join(simulator["healthcheck"]["test"])
    exporter = override["services"]["exporter"]
    assert exporter["depends_on"] == {"ollama": {"condition": "service_healthy"}}
    (mount,) = exporter["volumes"]
    source, target, _mode = mount.split(":")
    assert target == "/etc/ollama-pull-exporter/config.yaml"
    in_compose = (compose_dir / source).read_text(encoding="utf-8")
    url = "http://ollama:11434"
    compose_config = dataclasses.replace(parse_config(in_compose, source), source=demo.SOURCE)
    assert compose_config == parse_config(demo.CONFIG.format(url=url), demo.SOURCE), (
        "exporter-demo.yaml and the demo's built-in config drifted apart"
    )
    assert yaml.safe_load(in_compose)["servers"][0]["url"] == url
