"""Sharding: three real exporters split one config of 30 servers, checked by a real Prometheus.

`--shard=I --total-shards=3` over the same config: the union of the three `/metrics` holds
every pair exactly once, every pair is pulled once per interval and never twice (the
simulators see every request), each server lands on the shard Prometheus' own `hashmod`
relabel action computes for its name (Debian's Prometheus does the relabelling; its targets
API shows the result), and killing one shard makes `OllamaPullExporterShardsIncomplete` fire
on that Prometheus.

This module holds the tests that start processes; tests/integration/test_sharding.py holds the
in-process ones and the helpers both use.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections import defaultdict
from typing import TYPE_CHECKING, Any

import pytest
import yaml

from exporter.fleet.sharding import hashmod
from ollama_sim import OllamaSimulator, up_to_date
from tests.e2e.test_prometheus_e2e import RULES
from tests.harness import Exporter, Prometheus, run_cli, run_exporter, run_prometheus, wait_for

if TYPE_CHECKING:
    from pathlib import Path

from tests.integration.test_sharding import SERVERS, on_fixed_rate_slots

MODELS = ("a:1b", "b:1b")
INTERVAL = 2.0
SHARDS = 3


def _model(server_index: int, model: str) -> str:
    """A model name unique to one server, so the simulators can tell the pairs apart."""
    return f"s{server_index:02d}-{model}"


def _pairs() -> set[tuple[str, str]]:
    return {(name, _model(i, m)) for i, name in enumerate(SERVERS) for m in MODELS}


def test_bad_shard_flags_stop_start_up_with_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("servers:\n  - url: http://127.0.0.1:1\n    models: [a]\n")
    result = run_cli(f"--config.file={config}", "--shard=3", "--total-shards=3")
    assert result.returncode == 2
    assert "--shard=3 is not below --total-shards=3: shards are 0..2" in result.stderr


# ------------------------------------------------------------------ three shards, one config


def _config(urls: list[str]) -> str:
    servers = [
        {
            "name": name,
            "url": urls[i % len(urls)],
            "max_concurrent_pulls": 2,
            "models": [_model(i, m) for m in MODELS],
        }
        for i, name in enumerate(SERVERS)
    ]
    defaults = {"interval": "2s", "jitter": 0, "timeout": "10s", "stall_timeout": "5s"}
    return json.dumps({"defaults": defaults, "servers": servers})


def _owned(exporter: Exporter) -> set[tuple[str, str]]:
    samples = exporter.scrape()
    return {
        (labels["server"], labels["model"])
        for (name, label_set), _ in samples.items()
        if name == "ollama_pull_runs_total"
        for labels in [dict(label_set)]
    }


def _runs(exporter: Exporter) -> dict[tuple[str, str], float]:
    return {
        (labels["server"], labels["model"]): value
        for (name, label_set), value in exporter.scrape().items()
        if name == "ollama_pull_runs_total"
        for labels in [dict(label_set)]
    }


def _prometheus_config(targets: list[str], workdir: Path) -> dict[str, Any]:
    """Prometheus scraping the shards (job "pulls") and relabelling the server names.

    Job "hashmod" has one target per server name (never reachable, scraped once an hour): its
    relabel rules put Prometheus' own `hashmod` of the name into the labels `shard3` and
    `shard1000`, which the targets API shows. The rules are the project's, with only the
    shard alert's `for:` shortened so that the test sees it fire.
    """
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "OllamaPullExporterShardsIncomplete":
                rule["for"] = "1s"
    rules_path = workdir / "rules.yml"
    rules_path.write_text(yaml.safe_dump(rules))
    return {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules_path)],
        "scrape_configs": [
            {"job_name": "pulls", "static_configs": [{"targets": targets}]},
            {
                "job_name": "hashmod",
                "scrape_interval": "1h",
                "static_configs": [
                    {"targets": ["127.0.0.1:9"], "labels": {"server": name}} for name in SERVERS
                ],
                "relabel_configs": [
                    {
                        "source_labels": ["server"],
                        "modulus": modulus,
                        "target_label": f"shard{modulus}",
                        "action": "hashmod",
                    }
                    for modulus in (3, 1000)
                ],
            },
        ],
    }


def _hashmod_by_prometheus(prometheus: Prometheus) -> dict[str, dict[int, int]]:
    def targets() -> list[dict[str, Any]] | None:
        status, body = prometheus.get("/api/v1/targets", state="active")
        assert status == 200, body
        found = [t for t in body["data"]["activeTargets"] if t["labels"]["job"] == "hashmod"]
        return found if len(found) == len(SERVERS) else None

    return {
        target["labels"]["server"]: {
            modulus: int(target["labels"][f"shard{modulus}"]) for modulus in (3, 1000)
        }
        for target in wait_for(targets, 30, "the hashmod targets")
    }


def _alerts(prometheus: Prometheus, name: str) -> list[dict[str, Any]]:
    status, body = prometheus.get("/api/v1/alerts")
    assert status == 200, body
    return [a for a in body["data"]["alerts"] if a["labels"]["alertname"] == name]


def _evaluated(prometheus: Prometheus) -> bool:
    """The shard alert's rule has been evaluated at least once, without errors."""
    status, body = prometheus.get("/api/v1/rules")
    assert status == 200, body
    rules = [r for g in body["data"]["groups"] for r in g["rules"]]
    (rule,) = [r for r in rules if r["name"] == "OllamaPullExporterShardsIncomplete"]
    assert rule["health"] in {"ok", "unknown"}, rule
    return bool(rule["health"] == "ok")


def _value(prometheus: Prometheus, expr: str) -> float | None:
    status, body = prometheus.query(expr)
    assert status == 200, body
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else None


@pytest.mark.prometheus
@pytest.mark.timeout(240)
def test_three_shards_pull_every_pair_exactly_once(tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (CI installs Debian's prometheus package)")
    sims = [OllamaSimulator(unknown=up_to_date([1_000_000, 2_000])) for _ in range(3)]
    with contextlib.ExitStack() as stack:
        urls = [stack.enter_context(sim.running()) for sim in sims]
        config = _config(urls)
        exporters = []
        for shard in range(SHARDS):
            workdir = tmp_path / f"shard{shard}"
            workdir.mkdir()
            exporters.append(
                stack.enter_context(
                    run_exporter(config, workdir, f"--shard={shard}", f"--total-shards={SHARDS}")
                )
            )
        prometheus = stack.enter_context(
            run_prometheus(
                binary,
                _prometheus_config([e.url.removeprefix("http://") for e in exporters], tmp_path),
                tmp_path,
            )
        )

        # The union of the shards' series is every pair, each in exactly one shard.
        owned = [_owned(exporter) for exporter in exporters]
        assert sum(len(pairs) for pairs in owned) == len(_pairs())
        assert set().union(*owned) == _pairs()
        for shard, exporter in enumerate(exporters):
            assert (
                exporter.value(
                    "ollama_pull_exporter_shard_info", shard=str(shard), total_shards="3"
                )
                == 1
            )
            assert exporter.value("ollama_pull_exporter_pairs") == len(owned[shard])
            assert exporter.value("ollama_pull_exporter_configured_pairs") == len(_pairs())

        # Each server is on the shard Prometheus' hashmod relabelling gives its name.
        by_prometheus = _hashmod_by_prometheus(prometheus)
        for shard, pairs in enumerate(owned):
            for server, _ in pairs:
                assert by_prometheus[server][3] == shard, server
        assert {s: hashmod(s, 1000) for s in SERVERS} == {
            s: m[1000] for s, m in by_prometheus.items()
        }

        # Every pair is pulled once per interval by exactly one shard, never twice.
        start = time.monotonic()
        wait_for(
            lambda: all(min(_runs(e).values()) >= 4 for e in exporters),
            40,
            "four runs of every pair",
            step=0.5,
        )
        before = [_runs(exporter) for exporter in exporters]
        requests = [record for sim in sims for record in sim.requests]
        after = [_runs(exporter) for exporter in exporters]
        starts: dict[str, list[float]] = defaultdict(list)
        for record in requests:
            assert record.model is not None
            starts[record.model].append(record.started)
        assert set(starts) == {model for _, model in _pairs()}
        for shard in range(SHARDS):
            for (server, model), runs in before[shard].items():
                assert runs <= len(starts[model]) <= after[shard][server, model], (server, model)
        # Starts follow fixed-rate slots, each possibly late by the event loop's lag.
        for model, times in starts.items():
            assert on_fixed_rate_slots(sorted(times), INTERVAL), f"{model}: {sorted(times)}"
        assert time.monotonic() - start < 60

        # Prometheus sees all shards: every configured pair is scheduled, the alert is quiet.
        wait_for(
            lambda: (
                _value(prometheus, 'sum(ollama_pull_exporter_pairs{job="pulls"})') == len(_pairs())
            ),
            30,
            "Prometheus to scrape the three shards",
        )
        assert _value(prometheus, 'max(ollama_pull_exporter_configured_pairs{job="pulls"})') == 60
        wait_for(lambda: _evaluated(prometheus), 10, "the shard alert to be evaluated")
        time.sleep(2)  # a few evaluations with all shards up
        assert _alerts(prometheus, "OllamaPullExporterShardsIncomplete") == []

        # Shard 1 dies: its pairs drop out of the sum and the alert fires.
        assert exporters[1].stop() == 0
        missing = len(owned[1])

        def fired() -> dict[str, Any] | None:
            alerts = _alerts(prometheus, "OllamaPullExporterShardsIncomplete")
            return next((a for a in alerts if a["state"] == "firing"), None)

        alert = wait_for(fired, 30, "OllamaPullExporterShardsIncomplete to fire", step=0.5)
        assert alert["labels"]["job"] == "pulls"
        assert float(alert["value"]) == len(_pairs()) - missing
        assert f"schedule only {len(_pairs()) - missing} pairs" in alert["annotations"]["summary"]
        assert "Shards seen: 0/3 2/3" in alert["annotations"]["description"]
