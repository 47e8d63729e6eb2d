"""A tiny run of each benchmark in bench/, so the benchmark code keeps working.

Nothing here asserts anything about speed: only that each benchmark runs end to end
against the real exporter code and processes, and reports numbers of the right shape.
The real runs are by hand (docs/performance.md).
"""

from __future__ import annotations

import importlib.util
import math
from typing import TYPE_CHECKING

import pytest

from bench import ingest, scaling
from bench.common import REPO_ROOT
from bench.fleet import (
    Fleet,
    format_comparison,
    format_report,
    format_rounds,
    run_fleet,
    run_side_by_side,
    summarize,
)

if TYPE_CHECKING:
    from pathlib import Path


def _check_ingest(consumers: tuple[str, ...]) -> None:
    report = ingest.run_benchmark(lines=3000, layers=3, rounds=1, consumers=consumers)
    assert set(report["lines_per_cpu_second"]) == set(consumers)
    for name in consumers:
        (sample,) = report["samples"][name]
        assert sample["lines"] == report["lines"] == 3004  # manifest + 3000 + verify/write/success
        assert sample["cpu"] >= 0
    assert report["samples"]["A"][0]["exposition_bytes"] > 0
    assert set(report["ratios"]) == {f"A/{name}" for name in consumers if name != "A"}
    assert "lines per CPU-second" in ingest.format_report(report)


def test_ingest_exporter_aiohttp_and_floor() -> None:
    _check_ingest(("A", "C", "D"))


@pytest.mark.skipif(
    importlib.util.find_spec("ollama") is None,
    reason="the official ollama client (consumer B) is not installed: pip install -e '.[test]'",
)
def test_ingest_official_client() -> None:
    _check_ingest(("A", "B"))


def test_fleet() -> None:
    fleet = Fleet(6, 2, 4, pull_seconds=2.0)
    result = run_fleet(fleet, warmup=0.3, duration=2.5, scrape_intervals=(1.0, 0.5))
    assert result["lines"] > 0
    assert result["exporter_peak_rss_mib"] > 0
    assert result["exporter_totals"]["pairs"] == 6
    assert result["exporter_totals"]["failures"] == 0
    # Phases are held to what the load generator played (its own lateness apart).
    assert set(result["phase_errors_ms"]) == set(result["sim_lag_ms"]) == {"verify", "prune"}
    for scrape in result["scrapes"].values():
        assert scrape["count"] >= 2
        assert scrape["errors"] == 0
        assert math.isfinite(scrape["p99_ms"])
    assert "exporter CPU" in format_report(result)
    report = summarize([result, result])
    assert report["summary"]["exporter_cpu_share"]["n"] == 2
    for name, pooled in report["scrapes_pooled"].items():
        assert pooled["count"] == 2 * result["scrapes"][name]["count"]
    assert "| exporter CPU, share of one core |" in format_rounds(report)


def test_fleet_side_by_side() -> None:
    """Two exporters (here of the same checkout) measured over the same seconds."""
    fleet = Fleet(4, 2, 2, pull_seconds=2.0)
    results = run_side_by_side(
        fleet, (REPO_ROOT, REPO_ROOT), warmup=0.3, duration=2.5, scrape_intervals=(1.0,)
    )
    assert len(results) == 2
    for result in results:
        assert result["lines"] > 0
        assert result["exporter_totals"]["pairs"] == 4
        assert result["placement"]["exporters_side_by_side"] == 2
    reports = [summarize([result]) for result in results]
    for report in reports:
        report["machine"] = {"commit": "abc1234"}
    table = format_comparison(reports)
    assert "abc1234 / abc1234, each round measured at the same time" in table
    assert "| exporter CPU, share of one core |" in table


def test_scaling(tmp_path: Path) -> None:
    report = {
        "pairs": [scaling.scrape_point(12, scrapes=2)],
        "pulls": [scaling.pull_point(3, warmup=0.3, duration=2.0)],
    }
    (point,) = report["pairs"]
    assert point["exposition_bytes"] > point["gzip_bytes"] > 0
    assert report["pulls"][0]["lines_per_second"] > 0
    assert "pulls at once" in scaling.format_report(report)
    combined = scaling.combine([point, {**point, "rss_mib": point["rss_mib"] + 2}])
    assert combined["rss_mib"] == point["rss_mib"] + 1
    assert (combined["rss_mib_min"], combined["rss_mib_max"]) == (
        point["rss_mib"],
        point["rss_mib"] + 2,
    )
    assert f"{combined['rss_mib']:.1f} (" in scaling.format_report({**report, "pairs": [combined]})
    if importlib.util.find_spec("matplotlib") is not None:
        scaling.plot(report, str(tmp_path / "scaling.png"), baseline=report)
        assert (tmp_path / "scaling.png").stat().st_size > 0
