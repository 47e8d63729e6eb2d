"""The only module that names metrics: a Collector over `ExporterState`.

Each scrape builds fresh families from in-memory state (the client_python
"custom collector" pattern), so series of removed pairs vanish by themselves,
`_created` series never appear, and `collect()` does no I/O and takes no locks.

`/metrics` itself is served by `make_metrics_handler` from `Exposition`, which writes
the same bytes as prometheus_client but re-renders only the series whose values
changed since the last scrape (see docs/performance.md).
"""

from __future__ import annotations

import asyncio
import functools
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from aiohttp import hdrs, web
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder, generate_latest, gzip_accepted
from prometheus_client.openmetrics import exposition as om
from prometheus_client.openmetrics.exposition import generate_latest as om_generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString, parse_version

from exporter import __version__
from exporter.holdings import CheckResult, InventoryResult
from exporter.protocol import RUN_PHASES, Phase, Reason
from exporter.state import DURATION_BUCKETS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

    from aiohttp.typedefs import Handler

    _Encoder = Callable[[Collector], bytes]
    """A prometheus_client encoder: `generate_latest` or its OpenMetrics twin, maybe partial."""

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


# --------------------------------------------------------------------------- per-pair series
#
# One table says which value of a pair goes into which family. The collector above and
# the cached renderer below (`Exposition`) both read it, so they cannot disagree.

_Values = tuple[float, ...] | None
"""A pair's values for one family, one per `extra` label value (None: no series)."""


@dataclass(frozen=True, slots=True)
class _Family:
    """One per-pair family: name (counters without `_total`), type, help, values."""

    name: str
    kind: str
    """`counter`, `gauge` or `histogram`."""
    help: str
    values: Callable[[PairState], _Values]
    extra: tuple[str, tuple[str, ...]] | None = None
    """A third label and its values, in order (`reason`, `phase`)."""


def _source(pair: PairState) -> RunProgress | LastRun | None:
    """The current run, else the last finished one."""
    run = pair.current
    return run if run is not None else pair.last


def _runs(pair: PairState) -> _Values:
    return (pair.runs_total,)


def _failures(pair: PairState) -> _Values:
    return tuple(map(pair.failures.__getitem__, _REASONS))


def _downloaded(pair: PairState) -> _Values:
    return (pair.downloaded_total,)


def _regressions(pair: PairState) -> _Values:
    return (pair.regressions_total,)


def _skipped(pair: PairState) -> _Values:
    return (pair.skipped_total,)


def _in_progress(pair: PairState) -> _Values:
    return (0 if pair.current is None else 1,)


_ONE_HOT: Final = {
    current: tuple(1 if each is current else 0 for each in _ALL_PHASES) for current in _ALL_PHASES
}


def _phase(pair: PairState) -> _Values:
    return _ONE_HOT[pair.phase]


def _completed_bytes(pair: PairState) -> _Values:
    source = _source(pair)
    return (source.completed_bytes if source else 0,)


def _expected_bytes(pair: PairState) -> _Values:
    source = _source(pair)
    return (source.expected_bytes if source else 0,)


def _layers(pair: PairState) -> _Values:
    source = _source(pair)
    return (source.layers if source else 0,)


def _layers_completed(pair: PairState) -> _Values:
    source = _source(pair)
    return (source.layers_completed if source else 0,)


def _last_success(pair: PairState) -> _Values:
    last = pair.last
    return None if last is None else (1 if last.success else 0,)


def _last_run_ts(pair: PairState) -> _Values:
    last = pair.last
    return None if last is None else (last.ended_at,)


def _last_success_ts(pair: PairState) -> _Values:
    at = pair.last_success_at
    return None if at is None else (at,)


def _last_duration(pair: PairState) -> _Values:
    last = pair.last
    return None if last is None else (last.duration,)


def _last_phase_duration(pair: PairState) -> _Values:
    last = pair.last
    return None if last is None else tuple(map(last.phase_durations.__getitem__, RUN_PHASES))


def _last_downloaded(pair: PairState) -> _Values:
    last = pair.last
    return None if last is None else (last.downloaded_bytes,)


def _duration(pair: PairState) -> _Values:
    """Bucket counts (not cumulative) then the sum; the family cumulates them."""
    durations = pair.durations
    return (*durations.counts, durations.total)


def _next_run(pair: PairState) -> _Values:
    at = pair.next_run_at
    return None if at is None else (at,)


def _interval(pair: PairState) -> _Values:
    return (pair.interval,)


def _reused(pair: PairState) -> _Values:
    return (pair.reused_total,)


def _present(pair: PairState) -> _Values:
    present = pair.holding.present
    return None if present is None else (1 if present else 0,)


def _size(pair: PairState) -> _Values:
    size = pair.holding.size
    return None if size is None else (size,)


def _changes(pair: PairState) -> _Values:
    holding = pair.holding
    return (holding.changes_total,) if holding.tracked else None


def _last_change(pair: PairState) -> _Values:
    at = pair.holding.last_change_at
    return None if at is None else (at,)


def _update_available(pair: PairState) -> _Values:
    update = pair.holding.update_available
    return None if update is None else (update,)


_CHECK_RESULTS: Final = tuple(CheckResult)


def _registry_checks(pair: PairState) -> _Values:
    checks = pair.holding.checks
    return None if checks is None else tuple(map(checks.__getitem__, _CHECK_RESULTS))


_PAIR_FAMILIES: Final = (
    _Family("ollama_pull_runs", "counter", "Pull runs started.", _runs),
    _Family(
        "ollama_pull_failures",
        "counter",
        "Failed pull runs, by reason.",
        _failures,
        ("reason", tuple(reason.value for reason in _REASONS)),
    ),
    _Family(
        "ollama_pull_downloaded_bytes",
        "counter",
        "Bytes downloaded by pulls, increased live while a run streams.",
        _downloaded,
    ),
    _Family(
        "ollama_pull_progress_regressions",
        "counter",
        "Times a layer's completed bytes went backwards (Ollama rolled back a part).",
        _regressions,
    ),
    _Family(
        "ollama_pull_skipped",
        "counter",
        "Scheduled starts skipped because the previous run was still going.",
        _skipped,
    ),
    _Family("ollama_pull_in_progress", "gauge", "1 while a pull run is going.", _in_progress),
    _Family(
        "ollama_pull_phase",
        "gauge",
        "1 for the current phase of the pair, 0 for the others.",
        _phase,
        ("phase", tuple(each.value for each in _ALL_PHASES)),
    ),
    _Family(
        "ollama_pull_completed_bytes",
        "gauge",
        "Bytes completed, summed over layers, of the current or last run.",
        _completed_bytes,
    ),
    _Family(
        "ollama_pull_expected_bytes",
        "gauge",
        "Sum of the layer sizes seen in the current or last run.",
        _expected_bytes,
    ),
    _Family("ollama_pull_layers", "gauge", "Layers seen in the current or last run.", _layers),
    _Family(
        "ollama_pull_layers_completed",
        "gauge",
        "Layers completed in the current or last run.",
        _layers_completed,
    ),
    _Family(
        "ollama_pull_last_success", "gauge", "1 if the last finished run succeeded.", _last_success
    ),
    _Family(
        "ollama_pull_last_run_timestamp_seconds",
        "gauge",
        "When the last finished run ended (Unix time).",
        _last_run_ts,
    ),
    _Family(
        "ollama_pull_last_success_timestamp_seconds",
        "gauge",
        "When the last successful run ended (Unix time).",
        _last_success_ts,
    ),
    _Family(
        "ollama_pull_last_duration_seconds",
        "gauge",
        "Wall time of the last finished run.",
        _last_duration,
    ),
    _Family(
        "ollama_pull_last_phase_duration_seconds",
        "gauge",
        "Time the last finished run spent in each phase (0 if not reached).",
        _last_phase_duration,
        ("phase", tuple(each.value for each in RUN_PHASES)),
    ),
    _Family(
        "ollama_pull_last_downloaded_bytes",
        "gauge",
        "Bytes the last finished run downloaded (0: the model was up to date).",
        _last_downloaded,
    ),
    _Family(
        "ollama_pull_duration_seconds", "histogram", "Wall time of successful pull runs.", _duration
    ),
    _Family(
        "ollama_pull_next_run_timestamp_seconds",
        "gauge",
        "When the next scheduled run will start (Unix time).",
        _next_run,
    ),
    _Family("ollama_pull_interval_seconds", "gauge", "The configured pull interval.", _interval),
    # What each server holds and whether an update waits (contract section 6).
    _Family(
        "ollama_pull_reused_bytes",
        "counter",
        "Bytes of layers that runs found already present (first seen complete).",
        _reused,
    ),
    _Family(
        "ollama_pull_model_present",
        "gauge",
        "1 if the server's /api/tags lists the model, 0 if not.",
        _present,
    ),
    _Family(
        "ollama_pull_model_size_bytes",
        "gauge",
        "Size of the held copy per /api/tags.",
        _size,
    ),
    _Family(
        "ollama_pull_model_changes",
        "counter",
        "Times the held copy's digest changed.",
        _changes,
    ),
    _Family(
        "ollama_pull_model_last_change_timestamp_seconds",
        "gauge",
        "When the held copy's digest last changed (Unix time).",
        _last_change,
    ),
    _Family(
        "ollama_pull_update_available",
        "gauge",
        "check mode: 1 if the registry's digest differs from the held one, 0 if equal.",
        _update_available,
    ),
    _Family(
        "ollama_pull_registry_checks",
        "counter",
        "check mode registry requests, by result.",
        _registry_checks,
        ("result", tuple(result.value for result in _CHECK_RESULTS)),
    ),
)


def _empty_family(family: _Family) -> Metric:
    labels = _PAIR if family.extra is None else (*_PAIR, family.extra[0])
    if family.kind == "counter":
        return CounterMetricFamily(family.name, family.help, labels=labels)
    if family.kind == "histogram":
        return HistogramMetricFamily(family.name, family.help, labels=labels)
    return GaugeMetricFamily(family.name, family.help, labels=labels)


def _pair_families(pairs: Iterable[PairState]) -> list[Metric]:
    """The per-(server, model) families, one pass over the pairs."""
    metrics = [_empty_family(family) for family in _PAIR_FAMILIES]
    for pair in pairs:
        labels = [pair.server, pair.model]
        for family, metric in zip(_PAIR_FAMILIES, metrics, strict=True):
            values = family.values(pair)
            if values is None:
                continue
            if isinstance(metric, HistogramMetricFamily):
                metric.add_metric(labels, _cumulative(values[:-1]), values[-1])
            elif family.extra is None:
                metric.add_metric(labels, values[0])  # type: ignore[attr-defined]
            else:
                for extra, value in zip(family.extra[1], values, strict=True):
                    metric.add_metric([*labels, extra], value)  # type: ignore[attr-defined]
    return metrics


def _cumulative(counts: Sequence[float]) -> list[tuple[str, float]]:
    buckets: list[tuple[str, float]] = []
    running: float = 0
    for bound, count in zip(_BUCKET_BOUNDS, counts, strict=True):
        running += count
        buckets.append((bound, running))
    return buckets


def _holding_families(state: ExporterState) -> Iterator[Metric]:
    """`ollama_pull_model_info` (a label per digest) and the per-server inventory requests."""
    info = GaugeMetricFamily(
        "ollama_pull_model_info",
        "Always 1; digest is the first 12 hex characters of the held copy's digest.",
        labels=("server", "model", "digest"),
    )
    for pair in state.pairs.values():
        digest = pair.holding.digest
        if digest is not None:
            info.add_metric([pair.server, pair.model, digest[:12]], 1)
    yield info
    requests = CounterMetricFamily(
        "ollama_pull_inventory_requests",
        "Inventory requests (GET /api/tags), by result.",
        labels=("server", "result"),
    )
    for server, holding in state.inventory.items():
        for result in InventoryResult:
            requests.add_metric([server, result.value], holding.requests[result])
    yield requests


def _exporter_families(state: ExporterState) -> Iterator[Metric]:
    """Per-server and exporter-wide families."""
    yield from _holding_families(state)
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


# --------------------------------------------------------------------------- fast /metrics


class _Fixed(Collector):
    """A collector over families already built (to reuse the library's encoders)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        """The families, as given."""
        return iter(self._metrics)


def _escape(value: str) -> str:
    """A label value as both text formats write it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Cached:
    """One pair's rendered lines, per family, with the values they were rendered from."""

    __slots__ = ("lines", "model", "pair", "server", "values")

    def __init__(self, pair: PairState) -> None:
        self.pair = pair
        self.server = _escape(pair.server)
        self.model = _escape(pair.model)
        count = len(_PAIR_FAMILIES)
        self.values: list[object] = [_UNSET] * count
        self.lines: list[bytes] = [b""] * count

    def render(self, family: _Family, values: _Values) -> bytes:
        """The sample lines of `family` for this pair (same bytes as prometheus_client)."""
        if values is None:
            return b""
        pair = f'model="{self.model}",server="{self.server}"'
        name = family.name
        if family.kind == "counter":
            name += "_total"
        if family.kind == "histogram":
            lines = [
                f'{name}_bucket{{le="{bound}",{pair}}} {_go(count)}\n'
                for bound, count in _cumulative(values[:-1])
            ]
            lines.append(f"{name}_count{{{pair}}} {_go(sum(values[:-1]))}\n")
            lines.append(f"{name}_sum{{{pair}}} {_go(values[-1])}\n")
        elif family.extra is None:
            lines = [f"{name}{{{pair}}} {_go(values[0])}\n"]
        else:
            label, extras = family.extra
            # Labels sorted by name, as the library writes them: model < phase/reason < server.
            lines = [
                f'{name}{{model="{self.model}",{label}="{_escape(extra)}",server="{self.server}"}}'
                f" {_go(value)}\n"
                for extra, value in zip(extras, values, strict=True)
            ]
        return "".join(lines).encode()


_UNSET: Final = object()
_go: Final[Callable[[float], str]] = floatToGoString
"""prometheus_client's own value formatting (Go's float format), typed."""


class Exposition:
    """`/metrics` bytes for `ExporterState`, re-rendering only the series whose values changed.

    A scrape of 1,000 pairs is about 57,000 samples; building `Metric` objects and formatting
    each sample through prometheus_client costs 0.4 s (text) to 0.65 s (OpenMetrics) of CPU,
    on the event loop. Here every pair keeps its rendered lines per family together with the
    values they came from; a scrape reads each pair's values (one small tuple per family),
    re-renders only what changed, and joins bytes. The bytes are identical to what
    `generate_latest` writes for the same state (tests compare them).
    """

    def __init__(self, state: ExporterState) -> None:
        self._state = state
        self._ids: list[int] = []
        self._cached: list[_Cached] = []
        self._headers: dict[object, tuple[bytes, ...]] = {}

    def render(self, encoder: _Encoder, *, openmetrics: bool) -> bytes:
        """The whole exposition in the format of `encoder` (a prometheus_client encoder)."""
        headers = self._headers.get(encoder)
        if headers is None:
            headers = self._headers[encoder] = self._family_headers(encoder, openmetrics)
        cached = self._refresh()
        parts: list[bytes] = []
        for index, header in enumerate(headers):
            parts.append(header)
            parts.extend([entry.lines[index] for entry in cached])
        # The few exporter-wide families go through the library itself (`# EOF` included).
        parts.append(encoder(_Fixed(list(_exporter_families(self._state)))))
        return b"".join(parts)

    def _refresh(self) -> list[_Cached]:
        pairs = list(self._state.pairs.values())
        ids = list(map(id, pairs))  # the cache holds the pairs, so ids are not reused
        if ids != self._ids:
            known = {id(entry.pair): entry for entry in self._cached}
            self._cached = [known.get(id(pair)) or _Cached(pair) for pair in pairs]
            self._ids = ids
        families = tuple(enumerate(_PAIR_FAMILIES))
        for entry in self._cached:
            pair, seen, lines = entry.pair, entry.values, entry.lines
            for index, family in families:
                values = family.values(pair)
                if values != seen[index]:
                    seen[index] = values
                    lines[index] = entry.render(family, values)
        return self._cached

    @staticmethod
    def _family_headers(encoder: _Encoder, openmetrics: bool) -> tuple[bytes, ...]:
        """`# HELP` and `# TYPE` of each pair family, written by the library itself."""
        headers = []
        for family in _PAIR_FAMILIES:
            text = encoder(_Fixed([_empty_family(family)]))
            if openmetrics:
                text = text.removesuffix(b"# EOF\n")
            headers.append(text)
        return tuple(headers)


class PullRegistry(CollectorRegistry):
    """The exporter's registry: the pull collector, plus the cached `Exposition` of it."""

    def __init__(self, state: ExporterState) -> None:
        super().__init__(auto_describe=False)
        self.register(PullCollector(state))
        self.exposition = Exposition(state)

    def render(self, accept: str) -> tuple[bytes, str] | None:
        """(body, content type) for an Accept header, as prometheus_client would answer it.

        None when the negotiated format is one the cache does not write (name escaping other
        than underscores or UTF-8, OpenMetrics 2.x): the caller falls back to the library.
        """
        encoder, content_type = choose_encoder(accept)
        options = encoder.keywords if isinstance(encoder, functools.partial) else {}
        function = encoder.func if isinstance(encoder, functools.partial) else encoder
        if options.get("escaping", om.UNDERSCORES) not in {om.UNDERSCORES, om.ALLOWUTF8}:
            return None
        if function is om_generate_latest:
            if parse_version(str(options.get("version", "1.0.0"))) >= (2, 0, 0):
                return None
            return self.exposition.render(encoder, openmetrics=True), content_type
        if function is generate_latest:
            return self.exposition.render(encoder, openmetrics=False), content_type
        return None


def build_registry(state: ExporterState) -> PullRegistry:
    """A registry of our own (never the global one) holding the pull collector."""
    return PullRegistry(state)


_GZIP_LEVEL: Final = 1
"""zlib level 1: a 5 MB exposition compresses in about 10 ms instead of about 28 ms at 6."""


def make_metrics_handler(registry: CollectorRegistry) -> Handler:
    """The `/metrics` handler: `make_aiohttp_handler`'s answers, from the cached exposition.

    Same content negotiation (prometheus_client's `choose_encoder`) and gzip when the client
    accepts it. Requests the cache cannot answer (`name[]` filters, unusual formats) and
    registries other than `PullRegistry` go to prometheus_client's own handler.
    """
    fallback = make_aiohttp_handler(registry)
    if not isinstance(registry, PullRegistry):
        return fallback

    async def handler(request: web.Request) -> web.StreamResponse:
        if "name[]" in request.query:
            return await fallback(request)
        rendered = registry.render(",".join(request.headers.getall(hdrs.ACCEPT, [])))
        if rendered is None:
            return await fallback(request)
        body, content_type = rendered
        headers = {hdrs.CONTENT_TYPE: content_type}
        if gzip_accepted(request.headers.get(hdrs.ACCEPT_ENCODING, "")):
            compressor = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            body = compressor.compress(body) + compressor.flush()
            headers[hdrs.CONTENT_ENCODING] = "gzip"
        return web.Response(body=body, headers=headers)

    return handler
