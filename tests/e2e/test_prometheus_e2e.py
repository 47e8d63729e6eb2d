"""The dashboard and the alert rules against a real Prometheus scraping the real exporter.

The simulator serves several scenarios (a fresh download, an up-to-date model, a failure, a
stall) plus a server that is down, and two more simulated servers hold a `mode: check` model
at different digests of the simulated registry (drift, an update waiting); the exporter pulls
and checks them every couple of seconds, and a real Prometheus scrapes it every second with
prometheus/alerts.yml loaded: Debian's 2.42 and a current Prometheus 3 (tests/prometheus3.py),
each in its own stack, since every query and rule must work on both. Then
every dashboard query, with its variables substituted the way Grafana's Prometheus datasource
does it, must parse and return series through the HTTP API; every metric the dashboard and the
rules use must exist; the exposition passes `promtool check metrics`; the rules evaluate without
errors and the failing scenarios raise their alerts. (`promtool check rules` and the rule unit
tests are in test_alerts.py.)
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ollama_sim import (
    NOT_FOUND,
    Layer,
    Manifest,
    OllamaSimulator,
    RegistrySimulator,
    Scenario,
    Success,
    Verify,
    Write,
    error_after_manifest,
    fresh_pull,
    stalled,
    up_to_date,
)
from tests.e2e.test_api import request
from tests.harness import (
    Exporter,
    Prometheus,
    free_port,
    run_exporter,
    run_prometheus,
    wait_for,
)
from tests.prometheus3 import find
from tests.unit.repo.test_dashboard import load_dashboard, metric_names, panel_targets, variables

if TYPE_CHECKING:
    from collections.abc import Iterator

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "prometheus" / "alerts.yml"
QUERY_DEADLINE = 60.0

pytestmark = [pytest.mark.prometheus, pytest.mark.timeout(240)]

# ------------------------------------------------------------------ Grafana's substitution

# What Grafana puts in for its built-in variables; fixed values are enough to parse and run.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__interval_ms": "15000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}
VARIABLE_RE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)(?::(\w+))?\]\]|\$(\w+)")
LABEL_VALUES_RE = re.compile(r"^\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*$")
REGEX_META_RE = re.compile(r"[$^*{}\[\]'+?.()|]")


@dataclass(frozen=True)
class Selection:
    """The values a variable stands for, and whether it is multi-value (or has All)."""

    values: tuple[str, ...]
    multi: bool


def _format(selection: Selection, fmt: str | None) -> str:
    values = selection.values
    if fmt is None:  # the Prometheus datasource's default interpolation
        if not selection.multi:
            return values[0].replace("\\", "\\\\").replace("'", "\\'")
        # Regex-escaped for use inside a PromQL string: `.` becomes `\\.`.
        escaped = [
            REGEX_META_RE.sub(lambda m: "\\\\" + m.group(0), v.replace("\\", "\\\\\\\\"))
            for v in values
        ]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt == "regex":
        escaped = [re.sub(r"[\\^$*+?.()|\[\]{}/]", lambda m: "\\" + m.group(0), v) for v in values]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if fmt == "pipe":
        return "|".join(values)
    if fmt == "csv":
        return ",".join(values)
    raise AssertionError(f"unsupported variable format :{fmt}")


def substitute(expr: str, selections: dict[str, Selection]) -> str:
    """Replace `$var`, `${var}`, `${var:fmt}` and `[[var]]` like Grafana does."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3) or match.group(5)
        fmt = match.group(2) or match.group(4)
        if name in BUILTINS:
            return BUILTINS[name]
        if name not in selections:
            raise AssertionError(f"undefined variable ${name} in {expr!r}")
        return _format(selections[name], fmt)

    return VARIABLE_RE.sub(replace, expr)


# ------------------------------------------------------------------ Prometheus


def prometheus_config(target: str) -> dict[str, Any]:
    """Scrape `target` every second, with the project's rules evaluated every second."""
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [
            {"job_name": "ollama-pull-exporter", "static_configs": [{"targets": [target]}]}
        ],
    }


# ------------------------------------------------------------------ the stack


@dataclass
class Stack:
    exporter: Exporter
    prometheus: Prometheus
    checked: str = ""
    """The check-mode model the two fleet servers hold at different digests."""


TIME_SCALE = 0.1  # simulated delays run 10x faster than real Ollama
RATE = 20_000_000  # bytes per second of a simulated download
SCENARIOS: dict[str, list[Scenario]] = {
    # sim-a: healthy pulls
    "fresh:1.5b": [fresh_pull([30_000_000, 5_000_000], rate=RATE, verify=1.0)],
    "current:latest": [up_to_date([30_000_000, 5_000_000])],
    "wobbly:7b": [
        Scenario(
            Manifest(),
            Layer(20_000_000, rate=RATE, rollback_at=10_000_000, rollback_bytes=4_000_000),
            Verify(),
            Write(),
            Success(),
        )
    ],
    "slow:70b": [fresh_pull([60_000_000], rate=2_000_000)],  # 3 s real: longer than the interval
    # sim-b.local: failures
    "missing:1b": [error_after_manifest(NOT_FOUND)],
    "stuck:1b": [stalled(10_000_000, rate=RATE)],  # silent until the exporter gives up
}
HEALTHY = ("fresh:1.5b", "current:latest", "wobbly:7b", "slow:70b")
FAILING = ("missing:1b", "stuck:1b")
FLEET = ("fleet-a", "fleet-b")
"""Two servers that hold the check-mode model at different digests."""


def drift_model(registry_host: str) -> str:
    """The check-mode model, at the simulated registry (a name with `.`, `:` and `/`)."""
    return f"{registry_host}/library/drift:1b"


def exporter_config(
    ollama_url: str, down_url: str, fleet_urls: tuple[str, str], checked: str
) -> str:
    """Two simulated servers (names and models with regex metacharacters), a dead one, and
    two that hold the check-mode model `checked`."""
    return f"""\
inventory_interval: 1s
defaults:
  interval: 2s
  jitter: 0
  timeout: 10s
  stall_timeout: 1s
servers:
  - name: sim-a
    url: {ollama_url}
    max_concurrent_pulls: 4
    models: [{", ".join(HEALTHY)}]
  - name: sim-b.local
    url: {ollama_url}
    max_concurrent_pulls: 2
    models: [{", ".join(FAILING)}]
  - name: down
    url: {down_url}
    models: [fresh:1.5b]
  - name: {FLEET[0]}
    url: {fleet_urls[0]}
    models: [{{name: "{checked}", mode: check, insecure: true}}]
  - name: {FLEET[1]}
    url: {fleet_urls[1]}
    models: [{{name: "{checked}", mode: check, insecure: true}}]
server_discovery:  # an empty list (discovered.yaml): the discovery series exist, nobody joins
  - name: extra
    file: discovered.yaml
    template:
      models: [fresh:1.5b]
"""


@pytest.fixture(scope="module", params=["2", "3"], ids=["prometheus2", "prometheus3"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    binary = find("prometheus", request.param)
    workdir = tmp_path_factory.mktemp("e2e")
    down_url = f"http://127.0.0.1:{free_port()}"
    simulator = OllamaSimulator(SCENARIOS, time_scale=TIME_SCALE)
    registry = RegistrySimulator()
    fleet = (OllamaSimulator(), OllamaSimulator())
    (workdir / "discovered.yaml").write_text("[]\n")
    with (
        registry.running(),
        simulator.running() as ollama_url,
        fleet[0].running() as fleet_a,
        fleet[1].running() as fleet_b,
    ):
        assert registry.host is not None
        checked = drift_model(registry.host)
        fleet[0].hold(checked, registry.push(checked))  # behind: an update waits for it
        fleet[1].hold(checked, registry.push(checked))  # current
        config = exporter_config(ollama_url, down_url, (fleet_a, fleet_b), checked)
        with _stack(binary, config, workdir) as running:
            running.checked = checked
            # The current server pulls the next version: one change, the other still behind.
            present = "ollama_pull_model_present"
            running.exporter.wait_value(present, lambda v: v == 1, server=FLEET[1], model=checked)
            fleet[1].hold(checked, registry.push(checked))
            yield running


@contextlib.contextmanager
def _stack(binary: str, config: str, workdir: Path) -> Iterator[Stack]:
    with (
        run_exporter(config, workdir) as exporter,
        run_prometheus(
            binary,
            prometheus_config(exporter.url.removeprefix("http://")),
            workdir,
            ("--enable-feature=exemplar-storage",),
        ) as prometheus,
    ):
        yield Stack(exporter, prometheus)


# ------------------------------------------------------------------ the checks


def resolve_variables(prometheus: Prometheus, dashboard: dict[str, Any]) -> dict[str, Selection]:
    """Every query variable set to All: all values of its label_values(...) query."""
    selections: dict[str, Selection] = {}
    for name, var in variables(dashboard).items():
        if var["type"] in {"datasource", "textbox"}:  # not a query (the exporter's URL)
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        match = LABEL_VALUES_RE.match(query)
        assert match is not None, f"${name}: unsupported variable query {query!r}"
        selector, label = match.group(1), match.group(2)
        if selector:
            selector = substitute(selector, selections)
        values = prometheus.label_values(label, selector)
        if not values:
            return {}  # not scraped yet
        selections[name] = Selection(tuple(values), var["multi"] or var["includeAll"])
    return selections


def test_variables_resolve_to_the_configured_pairs(stack: Stack) -> None:
    dashboard = load_dashboard()
    selections = wait_for(
        lambda: resolve_variables(stack.prometheus, dashboard), 30, "label values"
    )
    assert set(selections["server"].values) == {"sim-a", "sim-b.local", "down", *FLEET}
    assert set(selections["model"].values) == {*HEALTHY, *FAILING, stack.checked}
    assert substitute('x{server=~"$server"}', {"server": Selection(("sim-b.local",), True)}) == (
        'x{server=~"sim-b\\\\.local"}'
    )


def test_every_dashboard_query_parses_and_returns_series(stack: Stack) -> None:
    dashboard = load_dashboard()
    selections = wait_for(
        lambda: resolve_variables(stack.prometheus, dashboard), 30, "label values"
    )
    pending = {
        f"{title} [{target['refId']}]": substitute(target["expr"], selections)
        for title, target in panel_targets(dashboard)
    }
    assert len(pending) >= 30
    problems: dict[str, str] = {}
    deadline = time.monotonic() + QUERY_DEADLINE
    while pending:
        for name, expr in list(pending.items()):
            status, body = stack.prometheus.query(expr)
            # A parse error never heals: fail at once, with Prometheus' message.
            assert status == 200, f"{name}: {expr}\n{body.get('error')}"
            assert body["status"] == "success", f"{name}: {body}"
            if body["data"]["result"]:
                del pending[name]
            else:
                problems[name] = f"no series for {expr}"
        if pending and time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {name: problems[name] for name in pending} == {}


def _names_used() -> set[str]:
    names = set()
    for _, target in panel_targets(load_dashboard()):
        names |= metric_names(target["expr"])
    return names | metric_names(RULES.read_text(encoding="utf-8"))


def test_every_metric_used_exists_in_the_exposition(stack: Stack) -> None:
    used = _names_used()
    assert len(used) >= 20

    def names_in_prometheus() -> set[str]:
        status, body = stack.prometheus.get("/api/v1/label/__name__/values")
        assert status == 200, body
        return set(body["data"])

    # Gauges of the last finished run appear once the first runs have ended.
    with contextlib.suppress(AssertionError):
        wait_for(lambda: used <= names_in_prometheus(), QUERY_DEADLINE, "all metric names")
    assert used - names_in_prometheus() == set()
    status, text = stack.exporter.get("/metrics")
    assert status == 200
    exposed = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    assert used - exposed == set()


def test_exposition_passes_promtool_check_metrics(stack: Stack) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None
    # promtool reads the classic text format.
    status, text = stack.exporter.get("/metrics", headers={"Accept": "text/plain;version=0.0.4"})
    assert status == 200
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_rules_evaluate_without_errors_on_live_data(stack: Stack) -> None:
    def evaluated_rules() -> list[dict[str, Any]] | None:
        status, body = stack.prometheus.get("/api/v1/rules")
        assert status == 200, body
        rules = [rule for group in body["data"]["groups"] for rule in group["rules"]]
        never = "0001-01-01T00:00:00Z"
        return rules if rules and all(r["lastEvaluation"] != never for r in rules) else None

    rules = wait_for(evaluated_rules, 30, "every rule to be evaluated")
    assert len(rules) >= 9
    assert {rule["name"]: rule["health"] for rule in rules if rule["health"] != "ok"} == {}


def test_duration_exemplars_lead_to_their_runs(stack: Stack) -> None:
    """Prometheus keeps the `{run_id="N"}` exemplars; `/runs/N` on the exporter is that run."""
    selector = 'ollama_pull_duration_seconds_bucket{server="sim-a", model="fresh:1.5b"}'

    def exemplars() -> list[dict[str, Any]] | None:
        now = time.time()
        status, body = stack.prometheus.get(
            "/api/v1/query_exemplars", query=selector, start=str(now - 600), end=str(now + 60)
        )
        assert status == 200, body
        found = [each for series in body["data"] for each in series["exemplars"]]
        return found or None

    found = wait_for(exemplars, QUERY_DEADLINE, "exemplars of the duration histogram", step=0.5)
    for exemplar in found:
        assert set(exemplar["labels"]) == {"run_id"}, exemplar
        run_id = exemplar["labels"]["run_id"]
        status, _, text = request(stack.exporter, "GET", f"/api/v1/runs/{run_id}")
        assert status == 200, text
        run = json.loads(text)
        assert (run["server"], run["model"], run["result"]) == ("sim-a", "fresh:1.5b", "success")
        assert abs(run["duration_seconds"] - float(exemplar["value"])) < 0.01
        assert abs(run["ended_at"] - exemplar["timestamp"]) < 0.01
        status, _, page = request(stack.exporter, "GET", f"/runs/{run_id}")
        assert status == 200
        assert "fresh:1.5b" in page


def test_alerts_react_to_the_live_scenarios(stack: Stack) -> None:
    def alerts() -> dict[tuple[str, str, str], str] | None:
        status, body = stack.prometheus.get("/api/v1/alerts")
        assert status == 200, body
        found = {
            (
                a["labels"]["alertname"],
                a["labels"].get("server", ""),
                a["labels"].get("model", ""),
            ): a["state"]
            for a in body["data"]["alerts"]
        }
        wanted = {
            ("OllamaPullStalled", "sim-b.local", "stuck:1b"),
            ("OllamaPullFailing", "sim-b.local", "missing:1b"),
            ("OllamaPullFailing", "down", "fresh:1.5b"),
            ("OllamaServerDown", "down", ""),
            ("OllamaModelMissing", "sim-b.local", "missing:1b"),
            ("OllamaModelDrift", "", stack.checked),
            ("OllamaModelUpdateAvailable", FLEET[0], stack.checked),
            ("OllamaInventoryFailing", "down", ""),
            ("OllamaPullNeverSucceeded", "sim-b.local", "missing:1b"),
            ("OllamaPullProgressRegressions", "sim-a", "wobbly:7b"),
            ("OllamaPullRunsSkipped", "sim-a", "slow:70b"),
        }
        return found if wanted <= set(found) else None

    found = wait_for(alerts, QUERY_DEADLINE, "the alerts of the failing scenarios", step=0.5)
    assert found[("OllamaPullStalled", "sim-b.local", "stuck:1b")] == "firing"  # no `for:`
    assert found[("OllamaPullFailing", "sim-b.local", "missing:1b")] == "pending"  # for: 5m
    assert found[("OllamaServerDown", "down", "")] == "pending"
    # Two 2 s intervals after start the never-succeeded pairs qualify; `for: 5m` holds them.
    assert found[("OllamaPullNeverSucceeded", "sim-b.local", "missing:1b")] == "pending"
    # Fleet (section 6): all held by their `for:`; the current server raises nothing.
    for key in (
        ("OllamaModelMissing", "sim-b.local", "missing:1b"),
        ("OllamaModelDrift", "", stack.checked),
        ("OllamaModelUpdateAvailable", FLEET[0], stack.checked),
        ("OllamaInventoryFailing", "down", ""),
    ):
        assert found[key] == "pending", key
    assert [key for key in found if key[1] == FLEET[1]] == []
    # The healthy server only gets the informational alerts its scenarios provoke. A run
    # longer than its interval skips every other slot, so successes of slow:70b come two
    # intervals apart, right at NoRecentSuccess's threshold: on a busy machine it may go
    # pending (never firing: `for: 5m`).
    slow_gap = ("OllamaPullNoRecentSuccess", "sim-a", "slow:70b")
    assert found.pop(slow_gap, "pending") == "pending"
    assert {key: state for key, state in found.items() if key[1] == "sim-a"} == {
        ("OllamaPullProgressRegressions", "sim-a", "wobbly:7b"): "firing",
        ("OllamaPullRunsSkipped", "sim-a", "slow:70b"): "firing",
    }
