"""`--demo`: the exporter with the simulator in its own process, and the README's first command.

In process where it can be: the demo's app (the real page, metrics and API) with the embedded
simulator, scraped like Prometheus until a success, a failure and bytes moving show. Then the
processes a newcomer runs: the README's command, in a network namespace of its own when the
machine allows (so the demo's fixed port 11435 cannot clash), stopped with SIGTERM; and
`--demo --once`.

The tests that start processes are in tests/e2e/test_demo_process.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import socket
from typing import TYPE_CHECKING, Any

import yaml
from aiohttp.test_utils import TestClient, TestServer

from exporter.app import assemble, demo
from exporter.config.loader import parse_config
from exporter.fleet.sharding import Shard
from ollama_sim import OLLAMA_VERSION, ErrorLine, demo_scenarios, layer_digest
from tests.harness import (
    REPO_ROOT,
    Samples,
    parse_samples,
)
from tests.virtual_time import run_virtual

if TYPE_CHECKING:
    from aiohttp import web

README = REPO_ROOT / "README.md"
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


# ------------------------------------------------------------------ the README


def _first_block() -> list[str]:
    """The shell lines of the README's first code block, comments and blank lines left out."""
    block = re.search(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    assert block is not None, "the README has no ```sh block"
    lines = [line.strip() for line in block.group(1).splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


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
