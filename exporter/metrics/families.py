"""The metric families: a Collector over `ExporterState`, with the per-server and own families.

The per-(server, model) families come from the table in `exporter.metrics.pair_table`;
`exporter_families` here builds the per-server and exporter-wide ones. The two modules are the
only ones that name metrics. Both `PullCollector` (the prometheus_client "custom collector": fresh
families from in-memory state on each scrape, so series of removed pairs vanish, `_created`
series never appear, and `collect()` does no I/O) and the cached renderer behind `/metrics`
(`exporter.metrics.exposition`) read the same table, so they cannot disagree. Adding a
per-pair family is one `Family(...)` row in the table (docs/architecture.md).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from prometheus_client.core import (
    CounterMetricFamily,
    Exemplar,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from exporter import __version__
from exporter.metrics.pair_table import PAIR_FAMILIES, Family
from exporter.state.holdings import InventoryResult
from exporter.state.pairs import DURATION_BUCKETS

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

    from exporter.metrics.pair_table import Exemplars
    from exporter.state.pairs import ExporterState, PairState, RunExemplar

__all__ = ["PAIR_FAMILIES", "Family", "PullCollector", "PullRegistry", "build_registry"]

PAIR_LABELS = ("server", "model")
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
                buckets = cumulative(values[:-1])
                if family.exemplars is not None:
                    buckets = with_exemplars(buckets, family.exemplars(pair))
                metric.add_metric(labels, buckets, values[-1])
            elif family.extra is None:
                metric.add_metric(labels, values[0])  # type: ignore[attr-defined]
            else:
                for extra, value in zip(family.extra[1], values, strict=True):
                    metric.add_metric([*labels, extra], value)  # type: ignore[attr-defined]
    return metrics


Bucket = tuple[str, float] | tuple[str, float, Exemplar]
"""A histogram bucket as prometheus_client takes it: `le`, count and maybe an exemplar."""


def exemplar_of(run: RunExemplar) -> Exemplar:
    """The OpenMetrics exemplar of one observation: `{run_id="N"} VALUE TIMESTAMP`."""
    return Exemplar({"run_id": str(run.run_id)}, run.value, run.at)


def with_exemplars(buckets: list[Bucket], exemplars: Exemplars) -> list[Bucket]:
    """`buckets` with each bucket's last observation attached (text 0.0.4 drops them)."""
    return [
        bucket if run is None else (bucket[0], bucket[1], exemplar_of(run))
        for bucket, run in zip(buckets, exemplars, strict=True)
    ]


def cumulative(counts: Sequence[float]) -> list[Bucket]:
    """Per-bucket counts -> the (`le`, cumulative count) pairs of a histogram."""
    buckets: list[Bucket] = []
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
