"""The README's "Try it without Ollama" works as written.

The commands are read from the README itself and run as they stand (only `.venv/bin/` is
pointed at the environment running the tests), as processes, in a network namespace of their
own so the demo's fixed ports cannot clash with anything else on the machine. The exporter must
then report every model of demo/config.yaml, and each one in the shape demo/scenarios.yaml
gives it: downloading, up to date, failing as disk_full.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families as text_families

from ollama_sim import load_scenario_file
from tests.harness import REPO_ROOT, Samples

README = REPO_ROOT / "README.md"
DRIVER = Path(__file__).with_name("demo_driver.py")
SECTION = "## Try it without Ollama"
BASE_URL = "http://127.0.0.1:11435"


def _section() -> str:
    text = README.read_text(encoding="utf-8")
    assert SECTION in text, f"README has no {SECTION!r} section"
    body = text.split(SECTION, 1)[1]
    return re.split(r"^## ", body, maxsplit=1, flags=re.MULTILINE)[0]


def _commands() -> list[str]:
    """The shell lines of the section's first code block, comments and blank lines left out."""
    block = re.search(r"```sh\n(.*?)```", _section(), re.DOTALL)
    assert block is not None, "the section has no ```sh block"
    lines = [line.strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _in_this_environment(command: str) -> str:
    bin_dir = Path(sys.executable).parent
    return re.sub(r"(^|\s)\.venv/bin/", lambda m: f"{m.group(1)}{bin_dir}/", command)


def _parse(metrics: dict[str, object]) -> Samples:
    body, content_type = str(metrics["body"]), str(metrics.get("content_type", ""))
    families = (
        openmetrics_families(body)  # type: ignore[no-untyped-call]
        if content_type.startswith("application/openmetrics-text")
        else text_families(body)
    )
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in families
        for sample in family.samples
    }


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


def test_the_documented_commands_are_the_demo() -> None:
    commands = _commands()
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install -q .",
        ".venv/bin/python -m ollama_sim --scenarios=demo/scenarios.yaml",
        ".venv/bin/ollama-pull-exporter --config.file=demo/config.yaml"
        " --web.listen-address=127.0.0.1:11435",
    ]
    section = _section()
    assert f"{BASE_URL}/" in section
    assert f"{BASE_URL}/metrics" in section


def test_demo_config_pulls_every_simulated_model_from_the_simulator() -> None:
    scenarios = load_scenario_file(REPO_ROOT / "demo/scenarios.yaml")
    config = yaml.safe_load((REPO_ROOT / "demo/config.yaml").read_text(encoding="utf-8"))
    (server,) = config["servers"]
    assert server["url"] == "http://127.0.0.1:11434"  # where `python -m ollama_sim` listens
    assert [m if isinstance(m, str) else m["name"] for m in server["models"]] == list(
        scenarios.models
    )
    assert scenarios.loop
    durations = {model: runs[0].nominal_duration() for model, runs in scenarios.models.items()}
    assert 20 <= durations["llama3.2:1b"] <= 60
    assert durations["gemma3:270m"] < 1
    assert not scenarios.models["mistral:7b"][0].succeeds
    assert any(run.nominal_duration() == float("inf") for run in scenarios.models["qwen3:0.6b"])


def test_the_readme_demo_runs_and_reports_every_model(tmp_path: Path) -> None:
    *_install, simulator, exporter = _commands()
    commands = [_in_this_environment(simulator), _in_this_environment(exporter)]
    assert not any(set(c) & set("|&;<>$`") for c in commands), "plain commands, no shell syntax"
    prefix = _namespace_prefix()
    driver = [sys.executable, str(DRIVER), f"--base-url={BASE_URL}", f"--logs={tmp_path}"]
    if prefix is None:
        if not (_port_free(11434) and _port_free(11435)):
            pytest.skip("no network namespaces here, and the demo's ports 11434/11435 are taken")
        driver.append("--no-loopback")
    models = list(load_scenario_file(REPO_ROOT / "demo/scenarios.yaml").models)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    last: dict[str, object] = {}
    samples: Samples = {}

    def value(name: str, model: str, **labels: str) -> float | None:
        key = frozenset({"server": "demo", "model": model, **labels}.items())
        return samples.get((name, key))

    def demo_shapes_seen() -> bool:
        return (
            all(value("ollama_pull_runs_total", m) for m in models)
            and (value("ollama_pull_downloaded_bytes_total", "llama3.2:1b") or 0) > 0
            and (value("ollama_pull_downloaded_bytes_total", "qwen3:0.6b") or 0) > 0
            and value("ollama_pull_last_success", "gemma3:270m") == 1
            and value("ollama_pull_last_downloaded_bytes", "gemma3:270m") == 0
            and value("ollama_pull_failures_total", "mistral:7b", reason="disk_full") == 1
        )

    with subprocess.Popen(
        [*(prefix or []), *driver, "--", *commands],
        cwd=REPO_ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as process:
        assert process.stdout is not None
        assert process.stdin is not None
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                readable, _, _ = select.select([process.stdout], [], [], 5)
                line = process.stdout.readline() if readable else b""
                if not line:
                    continue
                last = json.loads(line)
                assert last.get("exited", [None, None]) == [None, None], last
                metrics = last.get("metrics")
                if isinstance(metrics, dict) and metrics.get("status") == 200:
                    samples = _parse(metrics)
                    if demo_shapes_seen():
                        break
        finally:
            process.stdin.close()
            tail = process.stdout.read().decode()
            process.wait(timeout=30)
    logs = "\n".join(p.read_text(errors="replace") for p in sorted(tmp_path.glob("*.log")))
    assert demo_shapes_seen(), f"last report: {json.dumps(last)[:3000]}\nlogs:\n{logs}"
    assert samples.get(("ollama_pull_server_up", frozenset({("server", "demo")}))) == 1
    page = last["page"]
    assert isinstance(page, dict)
    assert page["status"] == 200
    for model in models:
        assert model in str(page["body"])
    stopped = json.loads(tail.strip().splitlines()[-1])["stopped"]
    assert stopped == [0, 0], f"simulator and exporter should exit 0 on SIGTERM:\n{logs}"


def test_the_compose_demo_runs_the_simulator_and_the_demo_config() -> None:
    compose_dir = REPO_ROOT / "deploy" / "compose"
    base = yaml.safe_load((compose_dir / "docker-compose.yml").read_text(encoding="utf-8"))
    demo = yaml.safe_load((compose_dir / "docker-compose.demo.yml").read_text(encoding="utf-8"))
    assert set(demo["services"]) <= set(base["services"])  # an override, no new service
    simulator = demo["services"]["ollama"]
    assert simulator["build"] == base["services"]["exporter"]["build"]  # the exporter's image
    assert simulator["image"] == base["services"]["exporter"]["image"]
    assert simulator["entrypoint"] == ["python", "-m", "ollama_sim"]
    assert simulator["command"] == [
        "--host=0.0.0.0",
        "--port=11434",
        "--scenarios=/demo/scenarios.yaml",
    ]
    assert simulator["volumes"] == ["../../demo:/demo:ro"]
    assert (
        compose_dir / "../../demo/scenarios.yaml"
    ).resolve() == REPO_ROOT / "demo/scenarios.yaml"
    assert "http://127.0.0.1:11434/" in " ".join(simulator["healthcheck"]["test"])
    exporter = demo["services"]["exporter"]
    assert exporter["depends_on"] == {"ollama": {"condition": "service_healthy"}}
    (mount,) = exporter["volumes"]
    source, target, _mode = mount.split(":")
    assert target == "/etc/ollama-pull-exporter/config.yaml"
    in_compose = yaml.safe_load((compose_dir / source).read_text(encoding="utf-8"))
    local = yaml.safe_load((REPO_ROOT / "demo/config.yaml").read_text(encoding="utf-8"))
    assert in_compose["servers"][0].pop("url") == "http://ollama:11434"
    assert local["servers"][0].pop("url") == "http://127.0.0.1:11434"
    assert in_compose == local, "exporter-demo.yaml and demo/config.yaml drifted apart"
    check = subprocess.run(
        [
            sys.executable,
            "-m",
            "exporter",
            "--config.check",
            f"--config.file={compose_dir / source}",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr
