"""The only module that names metrics: a Collector over `ExporterState`.

Each scrape builds fresh families from in-memory state (the client_python
"custom collector" pattern), so series of removed pairs vanish by themselves,
`_created` series never appear, and `collect()` does no I/O and takes no locks.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from exporter import __version__
from exporter.protocol import RUN_PHASES, Phase, Reason
from exporter.state import DURATION_BUCKETS

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from exporter.progress import RunProgress
    from exporter.state import ExporterState, LastRun, PairState

_PAIR = ("server", "model")
_ALL_PHASES = tuple(Phase)
_REASONS = tuple(Reason)
_BUCKET_BOUNDS = (*(repr(b) for b in DURATION_BUCKETS), "+Inf")


class PullCollector(Collector):
    """Renders `ExporterState` as the metric families of contract §4."""

    def __init__(self, state: ExporterState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        """Yield every family; called by the registry on each scrape."""
        yield from _pair_families(self._state.pairs.values())
        yield from _exporter_families(self._state)


def _pair_families(pairs: Iterable[PairState]) -> list[Metric]:
    """The per-(server, model) families, one pass over the pairs."""
    runs = CounterMetricFamily("ollama_pull_runs", "Pull runs started.", labels=_PAIR)
    failures = CounterMetricFamily(
        "ollama_pull_failures", "Failed pull runs, by reason.", labels=(*_PAIR, "reason")
    )
    downloaded = CounterMetricFamily(
        "ollama_pull_downloaded_bytes",
        "Bytes downloaded by pulls, increased live while a run streams.",
        labels=_PAIR,
    )
    regressions = CounterMetricFamily(
        "ollama_pull_progress_regressions",
        "Times a layer's completed bytes went backwards (Ollama rolled back a part).",
        labels=_PAIR,
    )
    skipped = CounterMetricFamily(
        "ollama_pull_skipped",
        "Scheduled starts skipped because the previous run was still going.",
        labels=_PAIR,
    )
    in_progress = GaugeMetricFamily(
        "ollama_pull_in_progress", "1 while a pull run is going.", labels=_PAIR
    )
    phase = GaugeMetricFamily(
        "ollama_pull_phase",
        "1 for the current phase of the pair, 0 for the others.",
        labels=(*_PAIR, "phase"),
    )
    completed_bytes = GaugeMetricFamily(
        "ollama_pull_completed_bytes",
        "Bytes completed, summed over layers, of the current or last run.",
        labels=_PAIR,
    )
    expected_bytes = GaugeMetricFamily(
        "ollama_pull_expected_bytes",
        "Sum of the layer sizes seen in the current or last run.",
        labels=_PAIR,
    )
    layers = GaugeMetricFamily(
        "ollama_pull_layers", "Layers seen in the current or last run.", labels=_PAIR
    )
    layers_completed = GaugeMetricFamily(
        "ollama_pull_layers_completed",
        "Layers completed in the current or last run.",
        labels=_PAIR,
    )
    last_success = GaugeMetricFamily(
        "ollama_pull_last_success", "1 if the last finished run succeeded.", labels=_PAIR
    )
    last_run_ts = GaugeMetricFamily(
        "ollama_pull_last_run_timestamp_seconds",
        "When the last finished run ended (Unix time).",
        labels=_PAIR,
    )
    last_success_ts = GaugeMetricFamily(
        "ollama_pull_last_success_timestamp_seconds",
        "When the last successful run ended (Unix time).",
        labels=_PAIR,
    )
    last_duration = GaugeMetricFamily(
        "ollama_pull_last_duration_seconds",
        "Wall time of the last finished run.",
        labels=_PAIR,
    )
    last_phase_duration = GaugeMetricFamily(
        "ollama_pull_last_phase_duration_seconds",
        "Time the last finished run spent in each phase (0 if not reached).",
        labels=(*_PAIR, "phase"),
    )
    last_downloaded = GaugeMetricFamily(
        "ollama_pull_last_downloaded_bytes",
        "Bytes the last finished run downloaded (0: the model was up to date).",
        labels=_PAIR,
    )
    duration = HistogramMetricFamily(
        "ollama_pull_duration_seconds", "Wall time of successful pull runs.", labels=_PAIR
    )
    next_run = GaugeMetricFamily(
        "ollama_pull_next_run_timestamp_seconds",
        "When the next scheduled run will start (Unix time).",
        labels=_PAIR,
    )
    interval = GaugeMetricFamily(
        "ollama_pull_interval_seconds", "The configured pull interval.", labels=_PAIR
    )

    for pair in pairs:
        labels = [pair.server, pair.model]
        runs.add_metric(labels, pair.runs_total)
        for reason in _REASONS:
            failures.add_metric([*labels, reason.value], pair.failures[reason])
        downloaded.add_metric(labels, pair.downloaded_total)
        regressions.add_metric(labels, pair.regressions_total)
        skipped.add_metric(labels, pair.skipped_total)
        run = pair.current
        in_progress.add_metric(labels, 1 if run is not None else 0)
        current_phase = pair.phase
        for each in _ALL_PHASES:
            phase.add_metric([*labels, each.value], 1 if each is current_phase else 0)
        source: RunProgress | LastRun | None = run if run is not None else pair.last
        for family, value in (
            (completed_bytes, source.completed_bytes if source else 0),
            (expected_bytes, source.expected_bytes if source else 0),
            (layers, source.layers if source else 0),
            (layers_completed, source.layers_completed if source else 0),
        ):
            family.add_metric(labels, value)
        last = pair.last
        if last is not None:
            last_success.add_metric(labels, 1 if last.success else 0)
            last_run_ts.add_metric(labels, last.ended_at)
            last_duration.add_metric(labels, last.duration)
            for each in RUN_PHASES:
                last_phase_duration.add_metric([*labels, each.value], last.phase_durations[each])
            last_downloaded.add_metric(labels, last.downloaded_bytes)
        if pair.last_success_at is not None:
            last_success_ts.add_metric(labels, pair.last_success_at)
        duration.add_metric(labels, _cumulative(pair.durations.counts), pair.durations.total)
        if pair.next_run_at is not None:
            next_run.add_metric(labels, pair.next_run_at)
        interval.add_metric(labels, pair.interval)

    return [
    runs, failures, downloaded, regressions, skipped, in_progress, phase,
    completed_bytes, expected_bytes, layers, layers_completed,
    last_success, last_run_ts, last_success_ts, last_duration,
    last_phase_duration, last_downloaded, duration, next_run, interval,
    ]  # fmt: skip


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(_BUCKET_BOUNDS, counts, strict=True):
        running += count
        buckets.append((bound, running))
    return buckets


def _exporter_families(state: ExporterState) -> Iterator[Metric]:
    """Per-server and exporter-wide families."""
    server_up = GaugeMetricFamily(
        "ollama_pull_server_up",
        "1 if the Ollama server answered the last request at the HTTP level.",
        labels=("server",),
    )
    for server, up in state.server_up.items():
        if up is not None:
            server_up.add_metric([server], up)
    yield server_up
    build_info = GaugeMetricFamily(
        "ollama_pull_exporter_build_info", "Always 1; the version label.", labels=("version",)
    )
    build_info.add_metric([__version__], 1)
    yield build_info
    try:
        tasks = len(asyncio.all_tasks())
    except RuntimeError:  # collected outside the event loop (e.g. generate_latest in a test)
        pass
    else:
        yield GaugeMetricFamily(
            "ollama_pull_exporter_asyncio_tasks",
            "asyncio tasks alive in the exporter (a leak shows as growth under steady load).",
            value=tasks,
        )
    reload_ok = GaugeMetricFamily(
        "ollama_pull_exporter_config_last_reload_successful",
        "1 if the last config (re)load succeeded.",
    )
    reload_ok.add_metric([], 1 if state.config_reload_successful else 0)
    yield reload_ok
    if state.config_reload_success_at is not None:
        yield GaugeMetricFamily(
            "ollama_pull_exporter_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded successfully (Unix time).",
            value=state.config_reload_success_at,
        )


def build_registry(state: ExporterState) -> CollectorRegistry:
    """A registry of our own (never the global one) holding the pull collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(PullCollector(state))
    return registry
