"""The alert rules: promtool lints them and runs their unit tests (prometheus/alerts_test.yml)."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.prometheus3 import find

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "prometheus" / "alerts.yml"
RULES_TEST = ROOT / "prometheus" / "alerts_test.yml"


# Debian's 2.42 and a current Prometheus 3: the rules must load and pass on both.
FLAVOURS = pytest.mark.parametrize("flavour", ["2", "3"], ids=["prometheus2", "prometheus3"])


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, check=False)


def _load(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for group in _load(RULES)["groups"] for rule in group["rules"] if "alert" in rule]


@pytest.mark.prometheus
@FLAVOURS
def test_rules_pass_promtool_lint(flavour: str) -> None:
    result = _run(find("promtool", flavour), "check", "rules", "--lint-fatal", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alert_rules())} rules found" in result.stdout


@pytest.mark.prometheus
@FLAVOURS
def test_rule_unit_tests_pass(flavour: str) -> None:
    result = _run(find("promtool", flavour), "test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


REQUIRED_ALERTS = {
    "OllamaPullFailing",
    "OllamaPullNoRecentSuccess",
    "OllamaPullNeverSucceeded",
    "OllamaPullStalled",
    "OllamaPullNoProgress",
    "OllamaPullRunningLong",
    "OllamaServerDown",
    "OllamaPullExporterConfigReloadFailed",
    "OllamaModelMissing",
    "OllamaModelDrift",
    "OllamaModelUpdateAvailable",
    "OllamaInventoryFailing",
    "OllamaPullExporterShardsIncomplete",
}


def test_required_alerts_exist_with_severity_and_annotations() -> None:
    rules = _alert_rules()
    assert REQUIRED_ALERTS - {rule["alert"] for rule in rules} == set()
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description"}, name
        text = annotations["summary"] + annotations["description"]
        # Pair alerts name server and model; the server alert names the server (and lists its
        # models through a query); the config alert names the exporter instance.
        if name == "OllamaPullExporterConfigReloadFailed":
            assert "$labels.instance" in text, name
        elif name == "OllamaModelDrift":  # across servers: it lists them with their digests
            assert "$labels.model" in text, name
            assert ".Labels.server" in text, name
            assert ".Labels.digest" in text, name
        elif name == "OllamaPullExporterShardsIncomplete":  # about a job's shards together
            assert "$labels.job" in text, name
        else:
            assert "$labels.server" in text, name
            assert "$labels.model" in text or ".Labels.model" in text, name


def test_every_alert_is_shown_firing_and_not_firing() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for case in _load(RULES_TEST)["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check["exp_alerts"] else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _alert_rules()}
    assert names - fired == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown quiet"


def _documented_alerts() -> list[tuple[str, str]]:
    """(name, severity) of each row of the alert table in docs/monitoring.md."""
    text = (ROOT / "docs" / "monitoring.md").read_text(encoding="utf-8")
    _, _, rest = text.partition("| alert | severity | fires when |\n|---|---|---|\n")
    rows = []
    for line in rest.splitlines():
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows.append((cells[0].strip("`"), cells[1]))
    return rows


def test_the_alert_table_in_the_docs_matches_the_rules() -> None:
    """docs/monitoring.md is the one alert table: every rule once, with its severity."""
    documented = _documented_alerts()
    rules = [(rule["alert"], rule["labels"]["severity"]) for rule in _alert_rules()]
    assert len(documented) == len(rules)
    assert sorted(documented) == sorted(rules)
