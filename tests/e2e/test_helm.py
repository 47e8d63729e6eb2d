"""The Helm chart: `helm lint`, `helm template` and offline validation of what it renders.

Every rendering (default values, the sharded example, the sidecar example) is validated by
kubeconform against strict JSON schemas made from the Kubernetes API's own OpenAPI document and
the prometheus-operator CRDs (`.ci/setup/60-kubernetes.sh` builds the tools and the schemas;
`deploy/kubernetes/schemas.py` converts them). A test below proves those schemas reject a
misspelt field, so "valid" means something. Then the shape users rely on: shards, probes,
the non-root security context, the state volume, monitors that select what exists, the rules
and dashboard from their one source, and a config the exporter itself accepts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness import run_cli

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "kubernetes" / "ollama-pull-exporter"
EXAMPLES = CHART / "examples"
VALUES = {
    "default": (),
    "sharded": ("-f", str(EXAMPLES / "values-sharded.yaml")),
    "sidecar": ("-f", str(EXAMPLES / "values-sidecar.yaml")),
}
TOOLS = Path(
    os.environ.get("OPE_KUBE_TOOLS")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "ollama-pull-exporter"
    / "kube-tools"
)
SCHEMA_LOCATION = str(TOOLS / "schemas") + "/{{ .ResourceKind }}{{ .KindSuffix }}.json"

Doc = dict[str, Any]


def _tool(name: str) -> str:
    path = TOOLS / "bin" / name
    if path.exists():
        return str(path)
    found = shutil.which(name)
    if found is not None and (TOOLS / "schemas").is_dir():
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{name} or the schemas are missing: .ci/setup/60-kubernetes.sh installs them")
    pytest.skip(f"{name} is not installed (run .ci/setup/60-kubernetes.sh)")


def _run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, input=stdin, capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )


def _template(values: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return _run(_tool("helm"), "template", "pulls", str(CHART), *VALUES[values], *extra)


def _render(values: str, *extra: str) -> tuple[str, list[Doc]]:
    result = _template(values, *extra)
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return result.stdout, docs


def _kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [doc for doc in docs if doc["kind"] == kind]


def _one(docs: list[Doc], kind: str) -> Doc:
    (doc,) = _kind(docs, kind)
    return doc


def _kubeconform(manifests: str) -> tuple[int, list[dict[str, Any]]]:
    """Validate offline against the strict schemas; (exit code, one entry per resource)."""
    result = _run(
        _tool("kubeconform"),
        "-strict",
        "-summary",
        "-verbose",
        "-output",
        "json",
        "-schema-location",
        SCHEMA_LOCATION,
        "-",
        stdin=manifests,
    )
    report = json.loads(result.stdout)
    return result.returncode, report["resources"]


@pytest.mark.parametrize("values", VALUES)
def test_helm_lint(values: str) -> None:
    result = _run(_tool("helm"), "lint", "--strict", str(CHART), *VALUES[values])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    ("values", "kinds"),
    [
        ("default", {"ConfigMap", "Service", "StatefulSet", "ServiceMonitor", "PrometheusRule"}),
        ("sharded", {"ConfigMap", "Service", "StatefulSet", "ServiceMonitor", "PrometheusRule"}),
        ("sidecar", {"ConfigMap", "Service", "StatefulSet", "PodMonitor", "PrometheusRule"}),
    ],
)
def test_rendered_manifests_are_valid_kubernetes_and_operator_objects(
    values: str, kinds: set[str]
) -> None:
    text, docs = _render(values)
    assert {doc["kind"] for doc in docs} == kinds
    code, resources = _kubeconform(text)
    statuses = {(r["kind"], r["name"]): r["status"] for r in resources}
    assert len(statuses) == len(docs)
    assert set(statuses.values()) == {"statusValid"}, resources
    assert code == 0


def test_the_schemas_reject_what_kubernetes_and_the_operator_would_reject() -> None:
    _, docs = _render("sharded")
    statefulset = _one(docs, "StatefulSet")
    statefulset["spec"]["replica"] = statefulset["spec"].pop("replicas")  # misspelt
    monitor = _one(docs, "ServiceMonitor")
    monitor["spec"]["endpoints"][0]["interval"] = ["30s"]  # wrong type
    rule = _one(docs, "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["for"] = "five minutes"  # not a duration
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["runAsUser"] = "10001"  # a string, not an integer
    code, resources = _kubeconform(yaml.safe_dump_all([statefulset, monitor, rule]))
    assert code == 1
    errors = {r["kind"]: r["msg"] for r in resources if r["status"] == "statusInvalid"}
    assert set(errors) == {"StatefulSet", "ServiceMonitor", "PrometheusRule"}, resources
    assert "replica" in errors["StatefulSet"]
    assert "runAsUser" in errors["StatefulSet"]
    assert "interval" in errors["ServiceMonitor"]
    assert "for" in errors["PrometheusRule"]


def _config(docs: list[Doc]) -> Doc:
    """The exporter's config.yaml from the chart's (non-dashboard) ConfigMap."""
    (config,) = [doc for doc in _kind(docs, "ConfigMap") if "config.yaml" in doc["data"]]
    parsed: Doc = yaml.safe_load(config["data"]["config.yaml"])
    return parsed


def _exporter_container(pod_spec: Doc) -> Doc:
    (container,) = [c for c in pod_spec["containers"] if c["name"] == "exporter"]
    found: Doc = container
    return found


def _args(container: Doc) -> dict[str, str]:
    return dict(arg.removeprefix("--").split("=", 1) for arg in container["args"])


def test_central_mode_is_a_sharded_statefulset_behind_a_headless_service() -> None:
    _, docs = _render("sharded")
    statefulset = _one(docs, "StatefulSet")
    spec = statefulset["spec"]
    assert spec["replicas"] == 3
    pod = spec["template"]["spec"]
    container = _exporter_container(pod)
    args = _args(container)
    assert args["shard"] == "auto"  # the pod's ordinal: pulls-ollama-pull-exporter-2 -> 2
    assert args["total-shards"] == "3"
    # Probes on the exporter's own endpoints, through the named port.
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert args["web.listen-address"] == f":{ports['metrics']}"
    assert container["livenessProbe"]["httpGet"] == {"path": "/-/healthy", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/-/ready", "port": "metrics"}
    # Non-root, read-only root file system; the state lives on a claim per shard.
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert Path(args["storage.path"]).parent == Path(mounts["state"])
    assert [claim["metadata"]["name"] for claim in spec["volumeClaimTemplates"]] == ["state"]
    assert Path(args["config.file"]).parent == Path(mounts["config"])
    # The headless Service names the pods; the ServiceMonitor scrapes each through it.
    services = {doc["metadata"]["name"]: doc for doc in _kind(docs, "Service")}
    own = services[spec["serviceName"]]
    assert own["spec"]["clusterIP"] == "None"
    labels = spec["template"]["metadata"]["labels"]
    assert own["spec"]["selector"].items() <= labels.items()
    monitor = _one(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= own["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    assert [p["name"] for p in own["spec"]["ports"]] == ["metrics"]
    # The Ollama pods' headless Service, whose SRV answers the discovery lists.
    ollama = services["ollama-headless"]
    assert ollama["spec"]["clusterIP"] == "None"
    assert [p["name"] for p in ollama["spec"]["ports"]] == ["http"]
    config = _config(docs)
    (discovery,) = config["server_discovery"]
    assert discovery["dns"].startswith("_http._tcp.ollama-headless.")
    assert discovery["type"] == "SRV"


def test_sidecar_mode_puts_the_exporter_beside_ollama() -> None:
    _, docs = _render("sidecar")
    statefulset = _one(docs, "StatefulSet")
    pod = statefulset["spec"]["template"]["spec"]
    assert {c["name"] for c in pod["containers"]} == {"ollama", "exporter"}
    container = _exporter_container(pod)
    assert "shard" not in _args(container)
    # Ollama's image runs as root; the exporter container is non-root on its own.
    assert container["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["runAsUser"] == 10001
    config = _config(docs)
    assert [server["url"] for server in config["servers"]] == ["http://127.0.0.1:11434"]
    assert "server_discovery" not in config
    monitor = _one(docs, "PodMonitor")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert [e["port"] for e in monitor["spec"]["podMetricsEndpoints"]] == ["metrics"]
    assert "metrics" in {port["name"] for port in container["ports"]}


@pytest.mark.parametrize("values", ["default", "sharded", "sidecar"])
def test_the_rendered_config_passes_the_exporters_own_check(values: str, tmp_path: Path) -> None:
    _, docs = _render(values)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_config(docs)))
    result = run_cli(f"--config.file={config}", "--config.check")
    assert result.returncode == 0, result.stderr
    want = {
        "default": "config OK: 1 server, 1 model",
        "sharded": "config OK: 0 servers, 0 models and 1 server_discovery entry",
        "sidecar": "config OK: 1 server, 2 models",
    }
    assert result.stdout.strip() == want[values]


def test_rules_and_dashboard_come_from_their_one_source() -> None:
    for name, source in [
        ("alerts.yml", ROOT / "prometheus" / "alerts.yml"),
        ("ollama-pull.json", ROOT / "grafana" / "dashboards" / "ollama-pull.json"),
    ]:
        link = CHART / "files" / name
        assert link.is_symlink(), f"{link} must link to {source}, not copy it"
        assert link.resolve() == source.resolve()
    _, docs = _render("default")
    rules = yaml.safe_load((ROOT / "prometheus" / "alerts.yml").read_text())
    assert _one(docs, "PrometheusRule")["spec"] == rules
    dashboards = [
        doc for doc in _kind(docs, "ConfigMap") if doc["metadata"]["name"].endswith("-dashboard")
    ]
    (dashboard,) = dashboards
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    source = json.loads((ROOT / "grafana" / "dashboards" / "ollama-pull.json").read_text())
    assert json.loads(dashboard["data"]["ollama-pull.json"]) == source


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (("--set", "shards=0"), "shards must be an integer >= 1"),
        (("--set", "mode=cluster"), 'mode must be central or sidecar, not "cluster"'),
    ],
)
def test_bad_values_fail_with_a_clear_message(values: tuple[str, str], message: str) -> None:
    result = _template("default", *values)
    assert result.returncode == 1
    assert message in result.stderr
