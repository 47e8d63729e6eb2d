"""Per-(server, model) live and last-run state: what `/metrics` and `/` read.

Runs write here, scrapes read here; both happen on the one event loop, so plain
attributes are enough and a scrape never waits on a lock or does I/O. Readers read the
attributes; writers go through the methods below, so every change has one place to look.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from exporter.core.clock import SYSTEM_CLOCK
from exporter.ollama.protocol import RUN_PHASES, Phase, Reason
from exporter.state.holdings import STAMPS, PairHolding, ServerHolding

if TYPE_CHECKING:
    from exporter.config.types import Config
    from exporter.ollama.progress import RunProgress

DURATION_BUCKETS: Final = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)  # fmt: skip  # noqa: E501
"""Upper bounds of `ollama_pull_duration_seconds` (contract §4): a pull takes seconds to hours."""


_REASONS: Final = tuple(Reason)
_REASON_INDEX: Final = {reason: index for index, reason in enumerate(_REASONS)}
_NO_FAILURES: Final = (0,) * len(_REASONS)


class ReasonCounts(Mapping[Reason, int]):
    """Failed runs per reason, every `Reason` in its order: a list, not a 16-key dict per pair.

    A dict of the 16 reasons is about 650 bytes, this about 200; reads in order (`counts`)
    need no hashing at all. Until its first failure a pair shares one tuple of zeros: most
    pairs of a fleet never fail, and the list is the larger part of those 200 bytes.
    """

    __slots__ = ("_counts",)

    def __init__(self) -> None:
        self._counts: list[int] | tuple[int, ...] = _NO_FAILURES

    def __getitem__(self, reason: Reason) -> int:
        return self._counts[_REASON_INDEX[reason]]

    def __iter__(self) -> Iterator[Reason]:
        return iter(_REASONS)

    def __len__(self) -> int:
        return len(_REASONS)

    def add(self, reason: Reason) -> None:
        """One more failed run for `reason`."""
        counts = self._counts
        if isinstance(counts, tuple):
            counts = self._counts = list(counts)
        counts[_REASON_INDEX[reason]] += 1

    def counts(self) -> tuple[int, ...]:
        """The counts in `Reason`'s order (all 0: one shared tuple, which the renderer keeps)."""
        counts = self._counts
        return tuple(counts) if any(counts) else _NO_FAILURES


_RUN_PHASE_INDEX: Final = {phase: index for index, phase in enumerate(RUN_PHASES)}


class PhaseSeconds(Mapping[Phase, float]):
    """Seconds a finished run spent in each phase of `RUN_PHASES`, in that order.

    A tuple, not a dict per pair (about 90 bytes instead of 360), and the renderer keeps the
    very tuple as its values (`seconds`) instead of a copy.
    """

    __slots__ = ("seconds",)

    def __init__(self, seconds: tuple[float, ...]) -> None:
        if len(seconds) != len(RUN_PHASES):
            raise ValueError(f"{len(RUN_PHASES)} phases, got {len(seconds)} durations")
        self.seconds = seconds

    def __getitem__(self, phase: Phase) -> float:
        return self.seconds[_RUN_PHASE_INDEX[phase]]

    def __iter__(self) -> Iterator[Phase]:
        return iter(RUN_PHASES)

    def __len__(self) -> int:
        return len(RUN_PHASES)

    def __repr__(self) -> str:
        return f"PhaseSeconds({dict(self)!r})"


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
    phase_durations: Mapping[Phase, float]
    """Per phase of `RUN_PHASES`, in that order (a `PhaseSeconds` for runs of this process)."""
    downloaded_bytes: int
    completed_bytes: int
    expected_bytes: int
    layers: int
    layers_completed: int
    last_progress_at: float | None = None
    """Unix time its bytes last grew (None: restored from storage, which does not keep it)."""


@dataclass(frozen=True, slots=True)
class RunExemplar:
    """The run behind a histogram observation: `{run_id="N"}` in OpenMetrics."""

    run_id: int
    value: float
    """The observed wall time (seconds)."""
    at: float
    """When the run ended (Unix time): the exemplar's timestamp."""


@dataclass(slots=True)
class DurationHistogram:
    """Cumulative-free bucket counts; the collector accumulates at scrape time."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(DURATION_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0
    exemplars: tuple[RunExemplar | None, ...] = (None,) * (len(DURATION_BUCKETS) + 1)
    """Per bucket, the last run observed in it (a tuple: replaced, never changed in place)."""

    def observe(self, seconds: float, exemplar: RunExemplar | None = None) -> None:
        """Add one successful run's wall time; `exemplar` names the run (if it has an id)."""
        index = bisect.bisect_left(DURATION_BUCKETS, seconds)
        self.counts[index] += 1
        self.total += seconds
        self.count += 1
        if exemplar is not None:
            changed = list(self.exemplars)
            changed[index] = exemplar
            self.exemplars = tuple(changed)


@dataclass(slots=True)
class PairState:
    """Everything the exporter knows about one (server, model) pair."""

    server: str
    model: str
    interval: float
    runs_total: int = 0
    failures: ReasonCounts = field(default_factory=ReasonCounts)
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
    reused_before: int = 0
    """Bytes of layers finished runs found already present; the live run adds its own."""
    holding: PairHolding = field(default_factory=PairHolding)
    """The held copy per the inventory, and the registry's digest in `check` mode."""
    stamp: int = field(default=0, repr=False, compare=False)
    """Taken from `STAMPS` at every write of an attribute (its counters and histogram change
    only with one): the renderer skips an idle pair whose stamp it has seen."""

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        object.__setattr__(self, "stamp", next(STAMPS))

    @property
    def reused_total(self) -> int:
        """`ollama_pull_reused_bytes_total`, live like the downloaded bytes."""
        run = self.current
        return self.reused_before + (run.reused_bytes if run is not None else 0)

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

    def schedule(self, next_run_at: float) -> None:
        """The next scheduled start (Unix time), for `ollama_pull_next_run_timestamp_seconds`."""
        self.next_run_at = next_run_at

    def skip(self) -> None:
        """A scheduled start found the previous run still going (`ollama_pull_skipped_total`)."""
        self.skipped_total += 1

    def restore(self, last: LastRun, last_success_at: float | None) -> bool:
        """Take a stored last run (`--storage.path`) unless this pair knows a newer one."""
        changed = False
        if self.last is None or self.last.ended_at < last.ended_at:
            self.last = last
            changed = True
        if last_success_at is not None and (
            self.last_success_at is None or self.last_success_at < last_success_at
        ):
            self.last_success_at = last_success_at
            changed = True
        return changed

    def start_run(self, run: RunProgress) -> None:
        """A run has started streaming (counted in `ollama_pull_runs_total`)."""
        self.runs_total += 1
        self.current = run

    def finish_run(
        self,
        run: RunProgress,
        result: RunResult,
        *,
        ended_at: float,
        duration: float,
        run_id: int | None = None,
    ) -> None:
        """Fold a finished run into the counters and the last-run gauges.

        `run_id` (the run history's id) becomes the duration observation's exemplar.
        """
        self.current = None
        self.downloaded_before += run.downloaded_bytes
        self.regressions_before += run.regressions
        self.reused_before += run.reused_bytes
        if result.reason is None:
            self.last_success_at = ended_at
            exemplar = None if run_id is None else RunExemplar(run_id, duration, ended_at)
            self.durations.observe(duration, exemplar)
        else:
            self.failures.add(result.reason)
        self.last = LastRun(
            success=result.reason is None,
            reason=result.reason,
            ended_at=ended_at,
            duration=duration,
            phase_durations=PhaseSeconds(tuple(run.phase_durations[phase] for phase in RUN_PHASES)),
            downloaded_bytes=run.downloaded_bytes,
            completed_bytes=run.completed_bytes,
            expected_bytes=run.expected_bytes,
            layers=run.layers,
            layers_completed=run.layers_completed,
            last_progress_at=run.last_progress_wall,
        )

    def abandon_run(self, run: RunProgress) -> None:
        """A run cancelled by shutdown or reload: keep its bytes, count no result."""
        self.current = None
        self.downloaded_before += run.downloaded_bytes
        self.regressions_before += run.regressions
        self.reused_before += run.reused_bytes


@dataclass(slots=True)
class ServerStatus:
    """What the exporter knows of one server itself, apart from its pairs."""

    version: str | None = None
    """Ollama's `GET /api/version` answer at the last probe, if it gave one."""
    problem: str | None = None
    """Why the last request got no answer, in plain words for `/`; None when it answered."""
    down_since: float | None = None
    """Unix time of the first failed request since it last answered; None while up."""


@dataclass(slots=True)
class FleetStatus:
    """What the shard and discovery gauges read (contract "Many machines")."""

    shard: int = 0
    total_shards: int = 1
    configured_pairs: int | None = None
    """Pairs of the config and discovery before sharding; None: not sharded (= the pairs)."""
    discovered: dict[str, int] = field(default_factory=dict)
    """Servers each `server_discovery` entry produced, by entry name."""
    failures: dict[str, int] = field(default_factory=dict)
    """Failed refreshes, by entry name (kept across reloads while the entry exists)."""
    rejected: dict[str, int] = field(default_factory=dict)
    """DNS targets dropped as no host name, by entry name (kept like `failures`)."""
    dropped: dict[str, int] = field(default_factory=dict)
    """Servers of the last list beyond the entry's `max_servers`, by entry name."""
    departed: int = 0
    """Departed discovered servers whose history is kept until their `forget_after`."""


@dataclass(slots=True)
class ExporterState:
    """All pairs and servers, in config order, plus the exporter's own status."""

    pairs: dict[tuple[str, str], PairState] = field(default_factory=dict)
    server_up: dict[str, float | None] = field(default_factory=dict)
    """1/0 after the first request to a server; None (no series) before it."""
    servers: dict[str, ServerStatus] = field(default_factory=dict)
    """Per configured server: what its probe found (version, problem); `server_up` is above."""
    inventory: dict[str, ServerHolding] = field(default_factory=dict)
    """Per server with the inventory enabled: its `/api/tags` requests and last good answer."""
    config_reload_successful: bool = False
    config_reload_success_at: float | None = None
    ready: bool = False
    storage_failures: int = 0
    fleet: FleetStatus = field(default_factory=FleetStatus)
    """Shard, pairs before sharding, discovery counts."""
    """Failed reads and writes of `--storage.path` (a self-metric; runs are unaffected)."""

    def sync(self, config: Config) -> None:
        """Make `pairs` and `servers` match `config`: new ones start at zero, gone ones vanish.

        Pairs that stay keep their counters; their interval follows the config.
        """
        wanted: dict[tuple[str, str], float] = {
            (server.name, model.name): model.settings.interval
            for server in config.servers
            for model in server.models
        }
        fresh = {
            key: self.pairs.get(key) or PairState(server=key[0], model=key[1], interval=interval)
            for key, interval in wanted.items()
        }
        for key, pair in fresh.items():
            pair.interval = wanted[key]
        self.pairs.clear()
        self.pairs.update(fresh)
        names = [server.name for server in config.servers]
        kept_up = {name: self.server_up[name] for name in names if name in self.server_up}
        self.server_up.clear()
        self.server_up.update(kept_up)
        self.servers = {name: self.servers.get(name) or ServerStatus() for name in names}

    def server_answered(self, name: str, version: str | None = None) -> None:
        """`name` answered at the HTTP level (a pull, a probe, the inventory): `server_up` 1.

        Whatever made it down is over: its problem and down-since go.
        """
        self.server_up[name] = 1
        status = self.servers.setdefault(name, ServerStatus())
        status.problem = None
        status.down_since = None
        if version is not None:
            status.version = version

    def server_unreachable(self, name: str, problem: str = "", at: float | None = None) -> None:
        """`name` could not be reached at `at` (Unix time; default now): `server_up` 0."""
        self.server_up[name] = 0
        status = self.servers.setdefault(name, ServerStatus())
        status.problem = problem or "unreachable"
        if status.down_since is None:
            status.down_since = SYSTEM_CLOCK.time() if at is None else at

    def config_loaded(self, at: float) -> None:
        """A config (the first one or a reload) is in force since `at` (Unix time)."""
        self.config_reload_successful = True
        self.config_reload_success_at = at

    def config_failed(self) -> None:
        """A reload failed; the old config stays in force."""
        self.config_reload_successful = False

    def set_ready(self, ready: bool) -> None:
        """The scheduler runs (`/-/ready` 200) or has stopped."""
        self.ready = ready

    def storage_failed(self) -> None:
        """A read or write of the state file failed (the run itself is unaffected)."""
        self.storage_failures += 1


def sync_pairs(state: ExporterState, config: Config) -> None:
    """Same as `state.sync(config)`; kept for callers written before the method."""
    state.sync(config)
