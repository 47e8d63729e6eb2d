"""The Grafana dashboard: Grafana's own JSON schema, variables, descriptions and PromQL hygiene.

The schema in grafana/schema/ is generated from the `@grafana/schema` npm package by
grafana/schema/regenerate.sh. The helpers at the top are shared with test_prometheus_e2e.py,
which runs every query here against a real Prometheus.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jsonschema
import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD_PATH = ROOT / "grafana" / "dashboards" / "ollama-pull.json"
SCHEMA_PATH = ROOT / "grafana" / "schema" / "dashboard.schema.json"
CONTRACT_PATH = ROOT / "docs" / "contract.md"  # the project's copy of the shared contract

# Section 4 of the contract: metric name -> its labels besides job/instance.
PAIR = frozenset({"server", "model"})
CONTRACT_METRICS: dict[str, frozenset[str]] = {
    "ollama_pull_runs_total": PAIR,
    "ollama_pull_failures_total": PAIR | {"reason"},
    "ollama_pull_downloaded_bytes_total": PAIR,
    "ollama_pull_progress_regressions_total": PAIR,
    "ollama_pull_skipped_total": PAIR,
    "ollama_pull_in_progress": PAIR,
    "ollama_pull_phase": PAIR | {"phase"},
    "ollama_pull_completed_bytes": PAIR,
    "ollama_pull_expected_bytes": PAIR,
    "ollama_pull_layers": PAIR,
    "ollama_pull_layers_completed": PAIR,
    "ollama_pull_last_progress_timestamp_seconds": PAIR,
    "ollama_pull_last_success": PAIR,
    "ollama_pull_last_run_timestamp_seconds": PAIR,
    "ollama_pull_last_success_timestamp_seconds": PAIR,
    "ollama_pull_last_duration_seconds": PAIR,
    "ollama_pull_last_phase_duration_seconds": PAIR | {"phase"},
    "ollama_pull_last_downloaded_bytes": PAIR,
    "ollama_pull_duration_seconds": PAIR,
    "ollama_pull_next_run_timestamp_seconds": PAIR,
    "ollama_pull_interval_seconds": PAIR,
    "ollama_pull_server_up": frozenset({"server"}),
    "ollama_pull_exporter_build_info": frozenset({"version"}),
    "ollama_pull_exporter_config_last_reload_successful": frozenset(),
    "ollama_pull_exporter_config_last_reload_success_timestamp_seconds": frozenset(),
}
# Section 8 (many machines): sharding and discovery, one series set per exporter.
FLEET_METRICS: dict[str, frozenset[str]] = {
    "ollama_pull_exporter_shard_info": frozenset({"shard", "total_shards"}),
    "ollama_pull_exporter_pairs": frozenset(),
    "ollama_pull_exporter_configured_pairs": frozenset(),
    "ollama_pull_exporter_discovered_servers": frozenset({"discovery"}),
    "ollama_pull_exporter_discovery_failures_total": frozenset({"discovery"}),
}
# Section 6: what each server holds, drift, updates (the `digest` of model_info, `result`s).
SECTION_6_METRICS: dict[str, frozenset[str]] = {
    "ollama_pull_model_present": PAIR,
    "ollama_pull_model_info": PAIR | {"digest"},
    "ollama_pull_model_size_bytes": PAIR,
    "ollama_pull_model_changes_total": PAIR,
    "ollama_pull_model_last_change_timestamp_seconds": PAIR,
    "ollama_pull_update_available": PAIR,
    "ollama_pull_registry_checks_total": PAIR | {"result"},
    "ollama_pull_inventory_requests_total": frozenset({"server", "result"}),
    "ollama_pull_reused_bytes_total": PAIR,
}
ALL_METRICS = CONTRACT_METRICS | SECTION_6_METRICS | FLEET_METRICS
HISTOGRAMS = frozenset({"ollama_pull_duration_seconds"})
REASONS = frozenset(
    {
        "ollama_unreachable", "invalid_request", "ollama_http_error", "stream_interrupted",
        "stalled", "timeout", "protocol_error", "digest_mismatch", "disk_full",
        "download_failed", "manifest_not_found", "unauthorized", "registry_unreachable",
        "registry_error", "other",
    }
)  # fmt: skip
PHASES = frozenset({"idle", "manifest", "download", "verify", "write", "prune"})

METRIC_RE = re.compile(r"\b(ollama_pull_[a-z_]+)\b(\{[^}]*\})?")
LABEL_VALUE_RE = re.compile(r'\b(reason|phase)\s*=~?\s*"([^"]*)"')


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD_PATH.read_text(encoding="utf-8"))
    return data


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, rows included, and the children of collapsed rows."""
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def panel_targets(dashboard: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every visible query of the dashboard."""
    return [
        (panel["title"], target)
        for panel in walk_panels(dashboard["panels"])
        for target in panel.get("targets", [])
        if not target.get("hide", False)
    ]


def base_metric(name: str) -> str:
    """`ollama_pull_duration_seconds_bucket` -> `ollama_pull_duration_seconds`."""
    for suffix in ("_bucket", "_sum", "_count"):
        stem = name.removesuffix(suffix)
        if stem != name and stem in HISTOGRAMS:
            return stem
    return name


def metric_names(expr: str) -> set[str]:
    return {match.group(1) for match in METRIC_RE.finditer(expr)}


def variables(dashboard: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {var["name"]: var for var in dashboard["templating"]["list"]}


# ------------------------------------------------------------------ schema


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def _schema_errors(validator: jsonschema.Draft7Validator, doc: dict[str, Any]) -> list[str]:
    """Readable errors; anyOf failures (Panel | RowPanel) are drilled down to their causes."""

    def flatten(error: jsonschema.ValidationError) -> Iterator[str]:
        if error.context:
            for sub in error.context:
                yield from flatten(sub)
        else:
            yield f"{'/'.join(map(str, error.absolute_path))}: {error.message}"

    return [line for error in validator.iter_errors(doc) for line in flatten(error)]


def test_dashboard_validates_against_grafana_schema(
    validator: jsonschema.Draft7Validator,
) -> None:
    assert _schema_errors(validator, load_dashboard()) == []


def _set_refresh(d: dict[str, Any]) -> None:
    d["refresh"] = 5


def _set_width(d: dict[str, Any]) -> None:
    d["panels"][1]["gridPos"]["w"] = "twelve"


def _misspell_title(d: dict[str, Any]) -> None:
    d["titel"] = d.pop("title")


def _break_variable(d: dict[str, Any]) -> None:
    d["templating"]["list"][1]["multi"] = "yes"


@pytest.mark.parametrize(
    "mutate", [_set_refresh, _set_width, _misspell_title, _break_variable], ids=lambda f: f.__name__
)
def test_schema_rejects_broken_dashboards(
    validator: jsonschema.Draft7Validator, mutate: Callable[[dict[str, Any]], None]
) -> None:
    broken = copy.deepcopy(load_dashboard())
    mutate(broken)
    assert _schema_errors(validator, broken) != []


# ------------------------------------------------------------------ provisioning-ready


def test_dashboard_is_provisioning_ready() -> None:
    dashboard = load_dashboard()
    assert dashboard["uid"] == "ollama-pull-exporter"
    assert 39 <= dashboard["schemaVersion"] <= 41
    assert "__inputs" not in dashboard
    assert "__requires" not in dashboard
    assert "${DS_" not in DASHBOARD_PATH.read_text(encoding="utf-8")


def test_every_query_uses_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    expected = {"type": "prometheus", "uid": "${datasource}"}
    for panel in walk_panels(dashboard["panels"]):
        if panel["type"] != "row":
            assert panel["datasource"] == expected, panel["title"]
    for title, target in panel_targets(dashboard):
        assert target["datasource"] == expected, title
    for name in ("server", "model"):
        assert variables(dashboard)[name]["datasource"] == expected


# ------------------------------------------------------------------ variables


def test_variables() -> None:
    by_name = variables(load_dashboard())
    assert list(by_name) == ["datasource", "server", "model", "exporter_url"]
    exporter_url = by_name["exporter_url"]
    assert exporter_url["type"] == "textbox"
    assert exporter_url["query"] == exporter_url["current"]["value"] == "http://localhost:11435"
    datasource = by_name["datasource"]
    assert (datasource["type"], datasource["query"]) == ("datasource", "prometheus")
    queries = {
        "server": "label_values(ollama_pull_runs_total, server)",
        "model": 'label_values(ollama_pull_runs_total{server=~"$server"}, model)',
    }
    for name, query in queries.items():
        var = by_name[name]
        assert var["type"] == "query", name
        assert var["query"]["query"] == query, name
        assert var["multi"] is True, name
        assert var["includeAll"] is True, name
        assert "allValue" not in var, name  # All = every value, as a (a|b) regex


# ------------------------------------------------------------------ panels


def test_panels_have_descriptions_ids_and_queries() -> None:
    panels = list(walk_panels(load_dashboard()["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel.get("description", "").strip(), f"{panel['title']}: no description"
        assert panel["targets"], f"{panel['title']}: no query"
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{panel['title']}: duplicate refId"


def test_panels_fit_the_grid_without_overlap() -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in walk_panels(load_dashboard()["panels"]):
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[x, y] = panel["title"]


def test_table_columns_refer_to_existing_queries() -> None:
    for panel in walk_panels(load_dashboard()["panels"]):
        refs = {target["refId"] for target in panel.get("targets", [])}
        for transformation in panel.get("transformations", []):
            text = json.dumps(transformation)
            used = set(re.findall(r"Value #(\w+)", text))
            assert used <= refs, f"{panel['title']}: {used - refs} are no query"


def test_dashboard_covers_what_the_issue_asks_for() -> None:
    exprs = "\n".join(target["expr"] for _, target in panel_targets(load_dashboard()))
    for needle in (
        "rate(ollama_pull_downloaded_bytes_total",
        "ollama_pull_duration_seconds_bucket",
        "ollama_pull_last_phase_duration_seconds",
        'reason="stalled"',
        "ollama_pull_progress_regressions_total",
        "ollama_pull_skipped_total",
        "ollama_pull_completed_bytes",
        "ollama_pull_expected_bytes",
        "ollama_pull_layers_completed",
        "ollama_pull_next_run_timestamp_seconds",
        "ollama_pull_last_success_timestamp_seconds",
        "ollama_pull_last_downloaded_bytes",
        "ollama_pull_server_up",
        "ollama_pull_in_progress",
        # The Fleet row (contract section 6).
        "ollama_pull_model_info",
        "count by (model, digest) (ollama_pull_model_info",
        "ollama_pull_model_present",
        "ollama_pull_update_available",
        "ollama_pull_reused_bytes_total",
        "ollama_pull_inventory_requests_total",
    ):
        assert needle in exprs, needle


def test_the_duration_panel_links_its_exemplars_to_the_runs() -> None:
    """Exemplars (`{run_id="N"}`) of the duration histogram lead to `$exporter_url/runs/N`."""
    [panel] = [
        panel
        for panel in walk_panels(load_dashboard()["panels"])
        if any(target.get("exemplar") for target in panel.get("targets", []))
    ]
    assert panel["type"] == "timeseries"
    [target] = panel["targets"]
    assert "ollama_pull_duration_seconds_bucket" in target["expr"]
    assert target["range"] is True
    links = panel["fieldConfig"]["defaults"]["links"]
    assert [link["url"] for link in links] == ["${exporter_url}/runs/${__data.fields.run_id}"]


# ------------------------------------------------------------------ PromQL hygiene


def test_no_regex_formatted_variables_in_promql() -> None:
    # `${var:regex}` escapes `.` as `\.`, which Prometheus rejects inside a string.
    for title, target in panel_targets(load_dashboard()):
        assert not re.search(r"\$\{\w+:regex\}|\[\[\w+:regex\]\]", target["expr"]), title


def test_no_vacuous_queries() -> None:
    for title, target in panel_targets(load_dashboard()):
        expr = target["expr"]
        assert not re.search(r"\bor\s+vector\s*\(", expr), title
        assert not re.search(r"\babsent(_over_time)?\s*\(", expr), title
        assert metric_names(expr), f"{title}: no metric of the exporter behind {expr!r}"


def test_every_metric_is_in_the_contract_and_filtered_by_the_variables() -> None:
    for title, target in panel_targets(load_dashboard()):
        for match in METRIC_RE.finditer(target["expr"]):
            name, selector = base_metric(match.group(1)), match.group(2) or ""
            assert name in ALL_METRICS, f"{title}: {match.group(1)} is not in the contract"
            labels = ALL_METRICS[name]
            if "server" in labels:
                assert 'server=~"$server"' in selector, f"{title}: {name} ignores $server"
            if "model" in labels:
                assert 'model=~"$model"' in selector, f"{title}: {name} ignores $model"


def test_label_values_in_queries_are_contract_values() -> None:
    for title, target in panel_targets(load_dashboard()):
        for label, value in LABEL_VALUE_RE.findall(target["expr"]):
            allowed = REASONS if label == "reason" else PHASES
            assert value in allowed, f"{title}: {label}={value!r}"


def test_metric_list_matches_the_contract_document() -> None:
    text = CONTRACT_PATH.read_text(encoding="utf-8")
    section = text[text.index("## 4. Metrics") : text.index("## 5.")]
    documented = set(re.findall(r"^\| `(ollama_pull_[a-z_]+)` \|", section, re.MULTILINE))
    assert documented == set(CONTRACT_METRICS)
    reasons = set(
        re.findall(r"^\| `([a-z_]+)` \| ", section[section.index("| reason |") :], re.MULTILINE)
    )
    assert reasons == REASONS
    section_6 = text[text.index("## 6. What each server holds") : text.index("## 7.")]
    documented = set(re.findall(r"^\| `(ollama_pull_[a-z_]+)` \|", section_6, re.MULTILINE))
    assert documented == set(SECTION_6_METRICS)


def test_fleet_metric_list_matches_the_contract_document() -> None:
    text = CONTRACT_PATH.read_text(encoding="utf-8")
    section = text[text.index("## 8. Many machines") : text.index("## 9.")]
    documented = set(re.findall(r"^\| `(ollama_pull_[a-z_]+)` \|", section, re.MULTILINE))
    assert documented == set(FLEET_METRICS)
