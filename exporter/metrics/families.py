"""The only module that names metrics: the metric table and a Collector over `ExporterState`.

`PAIR_FAMILIES` says, for each per-(server, model) family, its name, type, help and how to
read its values from a `PairState`; `exporter_families` builds the per-server and
exporter-wide ones. Both `PullCollector` (the prometheus_client "custom collector": fresh
families from in-memory state on each scrape, so series of removed pairs vanish, `_created`
series never appear, and `collect()` does no I/O) and the cached renderer behind `/metrics`
(`exporter.metrics.exposition`) read this table, so they cannot disagree. Adding a family is one
`Family(...)` row here (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from exporter import __version__
from exporter.ollama.protocol import RUN_PHASES, Phase, Reason
from exporter.state.holdings import CheckResult, InventoryResult
from exporter.state.pairs import DURATION_BUCKETS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from exporter.ollama.progress import RunProgress
    from exporter.state.pairs import ExporterState, LastRun, PairState

PAIR_LABELS = ("server", "model")
_ALL_PHASES = tuple(Phase)
_REASONS = tuple(Reason)
_BUCKET_BOUNDS = (*(repr(b) for b in DURATION_BUCKETS), "+Inf")


class PullCollector(Collector):
    """Renders `ExporterState` as the metric families of contract §4."""

    def __init__(self, state: ExporterState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        """Yield every family; called by the registry on each scrape."""
        yield from pair_families(self._state.pairs.values())
        yield model_info_family(self._state.pairs.values())
        yield from exporter_families(self._state)


# --------------------------------------------------------------------------- per-pair series
#
# One table says which value of a pair goes into which family. The collector above and
# the cached renderer (`exporter.metrics.exposition`) both read it. To add a per-pair family, write
# its values function (a tuple of floats, one per `extra` label value, or None for "no
# series") and add a `Family` row to `PAIR_FAMILIES`; nothing else changes.

Values = tuple[float, ...] | None
"""A pair's values for one family, one per `extra` label value (None: no series)."""


@dataclass(frozen=True, slots=True)
class Family:
    """One per-pair family: name (counters without `_total`), type, help, values."""

    name: str
    kind: str
    """`counter`, `gauge` or `histogram`."""
    help: str
    values: Callable[[PairState], Values]
    extra: tuple[str, tuple[str, ...]] | None = None
    """A third label and its values, in order (`reason`, `phase`)."""


def _source(pair: PairState) -> RunProgress | LastRun | None:
    """The current run, else the last finished one."""
    run = pair.current
    return run if run is not None else pair.last


def _runs(pair: PairState) -> Values:
    return (pair.runs_total,)


def _failures(pair: PairState) -> Values:
    # `failures` holds every Reason in Reason's order from its creation on (only counts
    # change): reading the values in order spares 21 enum hashes per pair and scrape.
    return tuple(pair.failures.values())


def _downloaded(pair: PairState) -> Values:
    return (pair.downloaded_total,)


def _regressions(pair: PairState) -> Values:
    return (pair.regressions_total,)


def _skipped(pair: PairState) -> Values:
    return (pair.skipped_total,)


def _in_progress(pair: PairState) -> Values:
    return (0 if pair.current is None else 1,)


_ONE_HOT: Final = {
    current: tuple(1 if each is current else 0 for each in _ALL_PHASES) for current in _ALL_PHASES
}


def _phase(pair: PairState) -> Values:
    return _ONE_HOT[pair.phase]


def _completed_bytes(pair: PairState) -> Values:
    source = _source(pair)
    return (source.completed_bytes if source else 0,)


def _expected_bytes(pair: PairState) -> Values:
    source = _source(pair)
    return (source.expected_bytes if source else 0,)


def _layers(pair: PairState) -> Values:
    source = _source(pair)
    return (source.layers if source else 0,)


def _layers_completed(pair: PairState) -> Values:
    source = _source(pair)
    return (source.layers_completed if source else 0,)


def _last_success(pair: PairState) -> Values:
    last = pair.last
    return None if last is None else (1 if last.success else 0,)


def _last_run_ts(pair: PairState) -> Values:
    last = pair.last
    return None if last is None else (last.ended_at,)


def _last_success_ts(pair: PairState) -> Values:
    at = pair.last_success_at
    return None if at is None else (at,)


def _last_duration(pair: PairState) -> Values:
    last = pair.last
    return None if last is None else (last.duration,)


def _last_phase_duration(pair: PairState) -> Values:
    last = pair.last
    # Built in RUN_PHASES order, like `failures` in Reason's (see `_failures`).
    return None if last is None else tuple(last.phase_durations.values())


def _last_downloaded(pair: PairState) -> Values:
    last = pair.last
    return None if last is None else (last.downloaded_bytes,)


def _duration(pair: PairState) -> Values:
    """Bucket counts (not cumulative) then the sum; the family cumulates them."""
    durations = pair.durations
    return (*durations.counts, durations.total)


def _next_run(pair: PairState) -> Values:
    at = pair.next_run_at
    return None if at is None else (at,)


def _interval(pair: PairState) -> Values:
    return (pair.interval,)


def _reused(pair: PairState) -> Values:
    return (pair.reused_total,)


def _present(pair: PairState) -> Values:
    present = pair.holding.present
    return None if present is None else (1 if present else 0,)


def _size(pair: PairState) -> Values:
    size = pair.holding.size
    return None if size is None else (size,)


def _changes(pair: PairState) -> Values:
    holding = pair.holding
    return (holding.changes_total,) if holding.tracked else None


def _last_change(pair: PairState) -> Values:
    at = pair.holding.last_change_at
    return None if at is None else (at,)


def _update_available(pair: PairState) -> Values:
    update = pair.holding.update_available
    return None if update is None else (update,)


_CHECK_RESULTS: Final = tuple(CheckResult)


def _registry_checks(pair: PairState) -> Values:
    checks = pair.holding.checks
    return None if checks is None else tuple(map(checks.__getitem__, _CHECK_RESULTS))


PAIR_FAMILIES: Final = (
    Family("ollama_pull_runs", "counter", "Pull runs started.", _runs),
    Family(
        "ollama_pull_failures",
        "counter",
        "Failed pull runs, by reason.",
        _failures,
        ("reason", tuple(reason.value for reason in _REASONS)),
    ),
    Family(
        "ollama_pull_downloaded_bytes",
        "counter",
        "Bytes downloaded by pulls, increased live while a run streams.",
        _downloaded,
    ),
    Family(
        "ollama_pull_progress_regressions",
        "counter",
        "Times a layer's completed bytes went backwards (Ollama rolled back a part).",
        _regressions,
    ),
    Family(
        "ollama_pull_skipped",
        "counter",
        "Scheduled starts skipped because the previous run was still going.",
        _skipped,
    ),
    Family("ollama_pull_in_progress", "gauge", "1 while a pull run is going.", _in_progress),
    Family(
        "ollama_pull_phase",
        "gauge",
        "1 for the current phase of the pair, 0 for the others.",
        _phase,
        ("phase", tuple(each.value for each in _ALL_PHASES)),
    ),
    Family(
        "ollama_pull_completed_bytes",
        "gauge",
        "Bytes completed, summed over layers, of the current or last run.",
        _completed_bytes,
    ),
    Family(
        "ollama_pull_expected_bytes",
        "gauge",
        "Sum of the layer sizes seen in the current or last run.",
        _expected_bytes,
    ),
    Family("ollama_pull_layers", "gauge", "Layers seen in the current or last run.", _layers),
    Family(
        "ollama_pull_layers_completed",
        "gauge",
        "Layers completed in the current or last run.",
        _layers_completed,
    ),
    Family(
        "ollama_pull_last_success", "gauge", "1 if the last finished run succeeded.", _last_success
    ),
    Family(
        "ollama_pull_last_run_timestamp_seconds",
        "gauge",
        "When the last finished run ended (Unix time).",
        _last_run_ts,
    ),
    Family(
        "ollama_pull_last_success_timestamp_seconds",
        "gauge",
        "When the last successful run ended (Unix time).",
        _last_success_ts,
    ),
    Family(
        "ollama_pull_last_duration_seconds",
        "gauge",
        "Wall time of the last finished run.",
        _last_duration,
    ),
    Family(
        "ollama_pull_last_phase_duration_seconds",
        "gauge",
        "Time the last finished run spent in each phase (0 if not reached).",
        _last_phase_duration,
        ("phase", tuple(each.value for each in RUN_PHASES)),
    ),
    Family(
        "ollama_pull_last_downloaded_bytes",
        "gauge",
        "Bytes the last finished run downloaded (0: the model was up to date).",
        _last_downloaded,
    ),
    Family(
        "ollama_pull_duration_seconds", "histogram", "Wall time of successful pull runs.", _duration
    ),
    Family(
        "ollama_pull_next_run_timestamp_seconds",
        "gauge",
        "When the next scheduled run will start (Unix time).",
        _next_run,
    ),
    Family("ollama_pull_interval_seconds", "gauge", "The configured pull interval.", _interval),
    # What each server holds and whether an update waits (contract section 6).
    Family(
        "ollama_pull_reused_bytes",
        "counter",
        "Bytes of layers that runs found already present (first seen complete).",
        _reused,
    ),
    Family(
        "ollama_pull_model_present",
        "gauge",
        "1 if the server's /api/tags lists the model, 0 if not.",
        _present,
    ),
    Family(
        "ollama_pull_model_size_bytes",
        "gauge",
        "Size of the held copy per /api/tags.",
        _size,
    ),
    Family(
        "ollama_pull_model_changes",
        "counter",
        "Times the held copy's digest changed.",
        _changes,
    ),
    Family(
        "ollama_pull_model_last_change_timestamp_seconds",
        "gauge",
        "When the held copy's digest last changed (Unix time).",
        _last_change,
    ),
    Family(
        "ollama_pull_update_available",
        "gauge",
        "check mode: 1 if the registry's digest differs from the held one, 0 if equal.",
        _update_available,
    ),
    Family(
        "ollama_pull_registry_checks",
        "counter",
        "check mode registry requests, by result.",
        _registry_checks,
        ("result", tuple(result.value for result in _CHECK_RESULTS)),
    ),
)


def empty_family(family: Family) -> Metric:
    """The prometheus_client family of `family`, with no samples yet."""
    labels = PAIR_LABELS if family.extra is None else (*PAIR_LABELS, family.extra[0])
    if family.kind == "counter":
        return CounterMetricFamily(family.name, family.help, labels=labels)
    if family.kind == "histogram":
        return HistogramMetricFamily(family.name, family.help, labels=labels)
    return GaugeMetricFamily(family.name, family.help, labels=labels)


def pair_families(pairs: Iterable[PairState]) -> list[Metric]:
    """The per-(server, model) families, one pass over the pairs."""
    metrics = [empty_family(family) for family in PAIR_FAMILIES]
    for pair in pairs:
        labels = [pair.server, pair.model]
        for family, metric in zip(PAIR_FAMILIES, metrics, strict=True):
            values = family.values(pair)
            if values is None:
                continue
            if isinstance(metric, HistogramMetricFamily):
                metric.add_metric(labels, cumulative(values[:-1]), values[-1])
            elif family.extra is None:
                metric.add_metric(labels, values[0])  # type: ignore[attr-defined]
            else:
                for extra, value in zip(family.extra[1], values, strict=True):
                    metric.add_metric([*labels, extra], value)  # type: ignore[attr-defined]
    return metrics


def cumulative(counts: Sequence[float]) -> list[tuple[str, float]]:
    """Per-bucket counts -> the (`le`, cumulative count) pairs of a histogram."""
    buckets: list[tuple[str, float]] = []
    running: float = 0
    for bound, count in zip(_BUCKET_BOUNDS, counts, strict=True):
        running += count
        buckets.append((bound, running))
    return buckets


def model_digest(pair: PairState) -> str | None:
    """The `digest` label of the pair's `ollama_pull_model_info` (None: no series)."""
    digest = pair.holding.digest
    return None if digest is None else digest[:12]


def model_info_family(pairs: Iterable[PairState]) -> Metric:
    """`ollama_pull_model_info`: one series per pair holding the model, its digest a label.

    Not a `Family` row (its third label's value is the pair's own), but per pair all the
    same, so the cached renderer keeps its lines too (`exporter.metrics.exposition`).
    """
    info = GaugeMetricFamily(
        "ollama_pull_model_info",
        "Always 1; digest is the first 12 hex characters of the held copy's digest.",
        labels=("server", "model", "digest"),
    )
    for pair in pairs:
        digest = model_digest(pair)
        if digest is not None:
            info.add_metric([pair.server, pair.model, digest], 1)
    return info


def _inventory_families(state: ExporterState) -> Iterator[Metric]:
    """The per-server inventory requests."""
    requests = CounterMetricFamily(
        "ollama_pull_inventory_requests",
        "Inventory requests (GET /api/tags), by result.",
        labels=("server", "result"),
    )
    for server, holding in state.inventory.items():
        for result in InventoryResult:
            requests.add_metric([server, result.value], holding.requests[result])
    yield requests


def exporter_families(state: ExporterState) -> Iterator[Metric]:
    """Per-server and exporter-wide families."""
    yield from server_families(state)
    yield from own_families(state)


def server_key(state: ExporterState) -> object:
    """Every value `server_families` shows: equal keys, equal families (a cache key)."""
    inventory = tuple((server, *h.requests.values()) for server, h in state.inventory.items())
    return inventory, tuple(state.server_up.items())


def server_families(state: ExporterState) -> Iterator[Metric]:
    """The per-server families: a few series per server, for fleets of hundreds."""
    yield from _inventory_families(state)
    server_up = GaugeMetricFamily(
        "ollama_pull_server_up",
        "1 if the Ollama server answered the last request at the HTTP level.",
        labels=("server",),
    )
    for server, up in state.server_up.items():
        if up is not None:
            server_up.add_metric([server], up)
    yield server_up


def own_families(state: ExporterState) -> Iterator[Metric]:
    """The exporter's own families: a few series, whatever the fleet."""
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
    yield CounterMetricFamily(
        "ollama_pull_exporter_storage_failures",
        "Failed opens and writes of the --storage.path state file (runs go on without it).",
        value=state.storage_failures,
    )
    yield from _fleet_families(state)


def _fleet_families(state: ExporterState) -> Iterator[Metric]:
    """Sharding and discovery (`--shard`, `server_discovery`): a few series per exporter."""
    fleet = state.fleet
    shard_info = GaugeMetricFamily(
        "ollama_pull_exporter_shard_info",
        "Always 1; which shard of how many this exporter is (--shard, --total-shards).",
        labels=("shard", "total_shards"),
    )
    shard_info.add_metric([str(fleet.shard), str(fleet.total_shards)], 1)
    yield shard_info
    pairs = len(state.pairs)
    yield GaugeMetricFamily(
        "ollama_pull_exporter_pairs", "(server, model) pairs this exporter schedules.", value=pairs
    )
    configured = fleet.configured_pairs
    yield GaugeMetricFamily(
        "ollama_pull_exporter_configured_pairs",
        "(server, model) pairs in the config and discovery, before sharding.",
        value=pairs if configured is None else configured,
    )
    discovered = GaugeMetricFamily(
        "ollama_pull_exporter_discovered_servers",
        "Servers produced by each server_discovery entry (its name, else its index).",
        labels=("discovery",),
    )
    for name, count in fleet.discovered.items():
        discovered.add_metric([name], count)
    yield discovered
    failures = CounterMetricFamily(
        "ollama_pull_exporter_discovery_failures",
        "Failed refreshes of each server_discovery entry (the last good list stays).",
        labels=("discovery",),
    )
    for name in fleet.discovered:
        failures.add_metric([name], fleet.failures.get(name, 0))
    yield failures
    rejected = CounterMetricFamily(
        "ollama_pull_exporter_discovery_rejected_targets",
        "DNS answers of each server_discovery entry dropped: the target is no host name or IP.",
        labels=("discovery",),
    )
    dropped = GaugeMetricFamily(
        "ollama_pull_exporter_discovery_dropped_servers",
        "Servers of each server_discovery entry's last list beyond its max_servers.",
        labels=("discovery",),
    )
    for name in fleet.discovered:
        rejected.add_metric([name], fleet.rejected.get(name, 0))
        dropped.add_metric([name], fleet.dropped.get(name, 0))
    yield rejected
    yield dropped
    if fleet.discovered:
        yield GaugeMetricFamily(
            "ollama_pull_exporter_discovery_departed_servers",
            "Discovered servers that left and whose run history waits for their forget_after.",
            value=fleet.departed,
        )


class PullRegistry(CollectorRegistry):
    """The exporter's own registry (never the global one): the pull collector over `state`.

    `/metrics` is served from `exporter.metrics.exposition.Exposition` over the same `state`; this
    registry is what `generate_latest` and the tests read.
    """

    def __init__(self, state: ExporterState) -> None:
        super().__init__(auto_describe=False)
        self.state = state
        self.register(PullCollector(state))


def build_registry(state: ExporterState) -> PullRegistry:
    """A registry of our own (never the global one) holding the pull collector."""
    return PullRegistry(state)
