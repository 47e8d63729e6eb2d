"""Per-(server, model) live and last-run state: what `/metrics` and `/` read.

Runs write here, scrapes read here; both happen on the one event loop, so plain
attributes are enough and a scrape never waits on a lock or does I/O.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from exporter.protocol import RUN_PHASES, Phase, Reason

if TYPE_CHECKING:
    from exporter.config import Config
    from exporter.progress import RunProgress

DURATION_BUCKETS: Final = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)  # fmt: skip  # noqa: E501
"""Upper bounds of `ollama_pull_duration_seconds` (contract §4): a pull takes seconds to hours."""


@dataclass(frozen=True, slots=True)
class RunResult:
    """How a finished run ended; `reason` is None exactly when it succeeded."""

    reason: Reason | None
    detail: str = ""
    """Human text for the log (error line, exception); never a label."""

    @property
    def succeeded(self) -> bool:
        """True for a run that saw `{"status":"success"}`."""
        return self.reason is None


@dataclass(frozen=True, slots=True)
class LastRun:
    """The numbers of the last finished run, kept until the next one ends."""

    success: bool
    reason: Reason | None
    ended_at: float
    """Unix time."""
    duration: float
    phase_durations: dict[Phase, float]
    downloaded_bytes: int
    completed_bytes: int
    expected_bytes: int
    layers: int
    layers_completed: int


@dataclass(slots=True)
class DurationHistogram:
    """Cumulative-free bucket counts; the collector accumulates at scrape time."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        """Add one successful run's wall time."""
        self.counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1


@dataclass(slots=True)
class PairState:
    """Everything the exporter knows about one (server, model) pair."""

    server: str
    model: str
    interval: float
    runs_total: int = 0
    failures: dict[Reason, int] = field(default_factory=lambda: dict.fromkeys(Reason, 0))
    skipped_total: int = 0
    downloaded_before: int = 0
    """Downloaded bytes of finished runs; the live run adds its own on top."""
    regressions_before: int = 0
    current: RunProgress | None = None
    last: LastRun | None = None
    last_success_at: float | None = None
    next_run_at: float | None = None
    """Unix time of the next scheduled start."""
    durations: DurationHistogram = field(default_factory=DurationHistogram)

    @property
    def downloaded_total(self) -> int:
        """`ollama_pull_downloaded_bytes_total`: grows live while a run streams."""
        run = self.current
        return self.downloaded_before + (run.downloaded_bytes if run is not None else 0)

    @property
    def regressions_total(self) -> int:
        """`ollama_pull_progress_regressions_total`, live like the byte counter."""
        run = self.current
        return self.regressions_before + (run.regressions if run is not None else 0)

    @property
    def phase(self) -> Phase:
        """The current run's phase, or idle between runs."""
        run = self.current
        return run.phase if run is not None else Phase.IDLE

    def start_run(self, run: RunProgress) -> None:
        """A run has started streaming (counted in `ollama_pull_runs_total`)."""
        self.runs_total += 1
        self.current = run

    def finish_run(
        self, run: RunProgress, result: RunResult, *, ended_at: float, duration: float
    ) -> None:
        """Fold a finished run into the counters and the last-run gauges."""
        self.current = None
        self.downloaded_before += run.downloaded_bytes
        self.regressions_before += run.regressions
        if result.reason is None:
            self.last_success_at = ended_at
            self.durations.observe(duration)
        else:
            self.failures[result.reason] += 1
        self.last = LastRun(
            success=result.reason is None,
            reason=result.reason,
            ended_at=ended_at,
            duration=duration,
            phase_durations={phase: run.phase_durations[phase] for phase in RUN_PHASES},
            downloaded_bytes=run.downloaded_bytes,
            completed_bytes=run.completed_bytes,
            expected_bytes=run.expected_bytes,
            layers=run.layers,
            layers_completed=run.layers_completed,
        )

    def abandon_run(self, run: RunProgress) -> None:
        """A run cancelled by shutdown or reload: keep its bytes, count no result."""
        self.current = None
        self.downloaded_before += run.downloaded_bytes
        self.regressions_before += run.regressions


@dataclass(slots=True)
class ExporterState:
    """All pairs and servers, in config order, plus the exporter's own status."""

    pairs: dict[tuple[str, str], PairState] = field(default_factory=dict)
    server_up: dict[str, float | None] = field(default_factory=dict)
    """1/0 after the first request to a server; None (no series) before it."""
    config_reload_successful: bool = False
    config_reload_success_at: float | None = None
    ready: bool = False


def sync_pairs(state: ExporterState, config: Config) -> None:
    """Make `state.pairs` match `config`: new pairs start at zero, gone pairs vanish.

    Pairs that stay keep their counters; their interval follows the config.
    """
    wanted: dict[tuple[str, str], float] = {
        (server.name, model.name): model.settings.interval
        for server in config.servers
        for model in server.models
    }
    for key in [key for key in state.pairs if key not in wanted]:
        del state.pairs[key]
    fresh = {
        key: state.pairs.get(key) or PairState(server=key[0], model=key[1], interval=interval)
        for key, interval in wanted.items()
    }
    for key, pair in fresh.items():
        pair.interval = wanted[key]
    state.pairs.clear()
    state.pairs.update(fresh)
    servers = {server.name for server in config.servers}
    for name in [name for name in state.server_up if name not in servers]:
        del state.server_up[name]
