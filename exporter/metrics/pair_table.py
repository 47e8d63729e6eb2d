"""The per-(server, model) metric table: one `Family` row per family, and how to read its values.

`PAIR_FAMILIES` says, for each per-pair family, its name, type, help and how to read its
values from a `PairState`. Both the prometheus_client Collector
(`exporter.metrics.families`) and the cached renderer behind `/metrics`
(`exporter.metrics.exposition`) read this table, so they cannot disagree. Adding a per-pair
family is one `Family(...)` row here (docs/architecture.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from exporter.ollama.protocol import RUN_PHASES, Phase, Reason
from exporter.state.holdings import CheckResult
from exporter.state.pairs import PhaseSeconds

if TYPE_CHECKING:
    from collections.abc import Callable

    from exporter.ollama.progress import RunProgress
    from exporter.state.pairs import LastRun, PairState, RunExemplar

_ALL_PHASES: Final = tuple(Phase)
_REASONS: Final = tuple(Reason)


# To add a per-pair family, write its values function (a tuple of floats, one per `extra`
# label value, or None for "no series") and add a `Family` row to `PAIR_FAMILIES` (with
# `live=True` if the function reads `pair.current`); nothing else changes.

Values = tuple[float, ...] | None
"""A pair's values for one family, one per `extra` label value (None: no series)."""
Exemplars = tuple["RunExemplar | None", ...]
"""Per bucket of a histogram, the exemplar of the last observation in it, if any."""


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
    exemplars: Callable[[PairState], Exemplars] | None = None
    """Histograms: per bucket, the run observed last in it (OpenMetrics exemplars)."""
    live: bool = False
    """Its values read the current run (`pair.current`), which changes with no write of the
    pair: of a running pair whose stamps did not move, the renderer reads only the live
    families. tests/unit/metrics/test_pair_table.py checks that every family reading the
    run says so."""


def _source(pair: PairState) -> RunProgress | LastRun | None:
    """The current run, else the last finished one."""
    run = pair.current
    return run if run is not None else pair.last


def _runs(pair: PairState) -> Values:
    return (pair.runs_total,)


def _failures(pair: PairState) -> Values:
    # `failures` holds every Reason in Reason's order: reading the counts in order spares
    # 16 enum hashes per pair and scrape.
    return pair.failures.counts()


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
    if last is None:
        return None
    # Built in RUN_PHASES order, like `failures` in Reason's (see `_failures`); a run of this
    # process keeps a tuple already, which the renderer then keeps as is.
    durations = last.phase_durations
    return durations.seconds if isinstance(durations, PhaseSeconds) else tuple(durations.values())


def _last_downloaded(pair: PairState) -> Values:
    last = pair.last
    return None if last is None else (last.downloaded_bytes,)


def _duration(pair: PairState) -> Values:
    """Bucket counts (not cumulative) then the sum; the family cumulates them."""
    durations = pair.durations
    return (*durations.counts, durations.total)


def _duration_exemplars(pair: PairState) -> Exemplars:
    return pair.durations.exemplars


def _last_progress(pair: PairState) -> Values:
    """The current run's last progress, else the last finished run's (None: no series)."""
    run = pair.current
    if run is not None:
        return (run.last_progress_wall,)
    last = pair.last
    at = None if last is None else last.last_progress_at
    return None if at is None else (at,)


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
        live=True,
    ),
    Family(
        "ollama_pull_progress_regressions",
        "counter",
        "Times a layer's completed bytes went backwards (Ollama rolled back a part).",
        _regressions,
        live=True,
    ),
    Family(
        "ollama_pull_skipped",
        "counter",
        "Scheduled starts skipped because the previous run was still going.",
        _skipped,
    ),
    Family(
        "ollama_pull_in_progress", "gauge", "1 while a pull run is going.", _in_progress, live=True
    ),
    Family(
        "ollama_pull_phase",
        "gauge",
        "1 for the current phase of the pair, 0 for the others.",
        _phase,
        ("phase", tuple(each.value for each in _ALL_PHASES)),
        live=True,
    ),
    Family(
        "ollama_pull_completed_bytes",
        "gauge",
        "Bytes completed, summed over layers, of the current or last run.",
        _completed_bytes,
        live=True,
    ),
    Family(
        "ollama_pull_expected_bytes",
        "gauge",
        "Sum of the layer sizes seen in the current or last run.",
        _expected_bytes,
        live=True,
    ),
    Family(
        "ollama_pull_layers", "gauge", "Layers seen in the current or last run.", _layers, live=True
    ),
    Family(
        "ollama_pull_layers_completed",
        "gauge",
        "Layers completed in the current or last run.",
        _layers_completed,
        live=True,
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
        "ollama_pull_duration_seconds",
        "histogram",
        "Wall time of successful pull runs.",
        _duration,
        exemplars=_duration_exemplars,
    ),
    Family(
        "ollama_pull_next_run_timestamp_seconds",
        "gauge",
        "When the next scheduled run will start (Unix time).",
        _next_run,
    ),
    Family("ollama_pull_interval_seconds", "gauge", "The configured pull interval.", _interval),
    Family(
        "ollama_pull_last_progress_timestamp_seconds",
        "gauge",
        "When the current or last run's bytes last grew (Unix time; its start until they do).",
        _last_progress,
        live=True,
    ),
    # What each server holds and whether an update waits (contract section 6).
    Family(
        "ollama_pull_reused_bytes",
        "counter",
        "Bytes of layers that runs found already present (first seen complete).",
        _reused,
        live=True,
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
