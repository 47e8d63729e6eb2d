"""Soak: the real exporter runs thousands of short pulls over 100 pairs while being scraped.

Five server entries with twenty models each (m000..m099) all point at one simulator. Every
pair runs every second (jitter 0.2) and cycles through quick scenarios: fresh, up to date,
client2, x/transfer, manifest not found, a download error, an interrupted stream, a 500
and a stall (stall_timeout 1 s). A thread scrapes `/metrics` every 100 ms with Prometheus'
own `Accept` header (so it gets OpenMetrics, as a real Prometheus does) and samples the
exporter's RSS, open file descriptors and `ollama_pull_exporter_asyncio_tasks`.

After the warm-up third, nothing may grow: the median RSS of the last third stays within
10 MB (or 15 %) of the middle third; the 10th percentile and the median of the fds and
tasks *beyond those the runs in flight hold* (each run going at the scrape holds a
connection and three tasks: the run, its reader and its watchdog) in the last third stay
within a small slack of the middle third, and no sample exceeds the design ceiling (one
connection and five tasks per pair, plus a constant). The raw counts follow how many runs
happen to be going when a scrape lands, which a busy machine shifts between thirds; what
the runs in flight do not explain is what a leak would grow. Every scrape must answer 200,
and the exporter must log no traceback and exit 0.

`SOAK_SECONDS` sets the duration: 30 s by default (what CI runs), e.g. 600 for the long run.
The soak goes on past it (up to `MAX_SECONDS`) until it has done its minimum of runs and
scrapes, so a starved machine gets a longer soak rather than a thinner one. The summary
line goes to the terminal even without `-s`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from exporter.ollama.protocol import Reason
from ollama_sim import (
    NOT_FOUND,
    OllamaSimulator,
    Scenario,
    client2_pull,
    download_error,
    error_after_manifest,
    fresh_pull,
    interrupted,
    pre_stream_error,
    stalled,
    transfer_pull,
    up_to_date,
)
from tests.harness import PROMETHEUS_ACCEPT, Exporter, parse_samples, run_exporter

if TYPE_CHECKING:
    from collections.abc import Iterator

SOAK_SECONDS = float(os.environ.get("SOAK_SECONDS", "30"))
MAX_SECONDS = 4 * SOAK_SECONDS
SERVERS = 5
MODELS_PER_SERVER = 20
PAIRS = SERVERS * MODELS_PER_SERVER
INTERVAL = 1.0
STALL_TIMEOUT = 1.0
TIME_SCALE = 0.02
SCRAPE_EVERY = 0.1
RATE = 20_000_000  # 1.2 MB per 60 ms tick: a few lines per layer

# Tolerances (see the module docstring).
RSS_GROWTH_BYTES = 10 * 1024 * 1024
RSS_GROWTH_RATIO = 0.15
FD_SLACK = 15
TASK_SLACK = 20
# Design ceilings for any single sample: a pair holds at most one connection, and runs
# with a schedule loop, a run task, a reader, a watchdog and a connection attempt.
FD_CEILING = 32 + PAIRS
TASK_CEILING = 32 + 5 * PAIRS
MIN_RUN_RATIO = 0.3  # of PAIRS * SOAK_SECONDS / INTERVAL (stalls and skips cost some)
MIN_RUNS = MIN_RUN_RATIO * PAIRS * SOAK_SECONDS / INTERVAL
MIN_SCRAPES = 0.5 * SOAK_SECONDS / SCRAPE_EVERY
TASKS_PER_RUN = 3  # the run, its reader and its watchdog

SCENARIOS: tuple[tuple[Scenario, Reason | None], ...] = (
    (fresh_pull([3_000_000, 400_000], rate=RATE, prune=True), None),
    (up_to_date([3_000_000, 400_000]), None),
    (client2_pull([2_000_000, 1_000_000], rate=RATE), None),
    (transfer_pull(500_000), None),
    (error_after_manifest(NOT_FOUND), Reason.MANIFEST_NOT_FOUND),
    (
        download_error([2_000_000, 3_000_000], "max retries exceeded: unexpected EOF", rate=RATE),
        Reason.DOWNLOAD_FAILED,
    ),
    (interrupted([2_000_000, 3_000_000], rate=RATE), Reason.STREAM_INTERRUPTED),
    (interrupted([3_000_000], rate=RATE, reset=True), Reason.STREAM_INTERRUPTED),
    (pre_stream_error(500, "something went wrong"), Reason.OLLAMA_HTTP_ERROR),
    (stalled(3_000_000, rate=RATE), Reason.STALLED),  # silent until the exporter leaves
)
EXPECTED_REASONS = {reason.value for _, reason in SCENARIOS if reason is not None}


def model_name(index: int) -> str:
    return f"m{index:03d}"


def config_text(url: str) -> str:
    lines = [
        "defaults:",
        f"  interval: {INTERVAL:g}s",
        "  jitter: 0.2",
        "  timeout: 20s",
        f"  stall_timeout: {STALL_TIMEOUT:g}s",
        "servers:",
    ]
    for server in range(SERVERS):
        first = server * MODELS_PER_SERVER
        models = ", ".join(model_name(i) for i in range(first, first + MODELS_PER_SERVER))
        lines += [
            f"  - name: s{server}",
            f"    url: {url}",
            f"    max_concurrent_pulls: {MODELS_PER_SERVER}",
            f"    models: [{models}]",
        ]
    return "\n".join(lines) + "\n"


def simulator() -> OllamaSimulator:
    """Each model cycles through every scenario, each from its own offset."""
    runs = int(MAX_SECONDS / INTERVAL * 2) + 50  # more than a pair can start
    return OllamaSimulator(
        {
            model_name(i): [SCENARIOS[(i + k) % len(SCENARIOS)][0] for k in range(runs)]
            for i in range(PAIRS)
        },
        time_scale=TIME_SCALE,
    )


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # seconds since the soak started
    rss: int  # bytes
    fds: int
    tasks: int
    runs: int  # sum of ollama_pull_runs_total
    in_flight: int  # sum of ollama_pull_in_progress: the runs going at the scrape

    @property
    def spare_fds(self) -> int:
        """Open fds beyond the connections of the runs in flight."""
        return self.fds - self.in_flight

    @property
    def spare_tasks(self) -> int:
        """Tasks beyond those of the runs in flight."""
        return self.tasks - TASKS_PER_RUN * self.in_flight


class Sampler(threading.Thread):
    """Scrapes `/metrics` every SCRAPE_EVERY and samples the process; never raises."""

    def __init__(self, exporter: Exporter) -> None:
        super().__init__(name="soak-sampler", daemon=True)
        self.exporter = exporter
        self.started_at = time.monotonic()
        self.done = threading.Event()
        self.samples: list[Sample] = []
        self.scrapes = 0
        self.failures: list[str] = []
        self.last_body = ""
        self.latencies: list[float] = []

    def run(self) -> None:
        pid = self.exporter.process.pid
        next_at = time.monotonic()
        while not self.done.wait(max(0.0, next_at - time.monotonic())):
            next_at = max(next_at + SCRAPE_EVERY, time.monotonic())  # fixed rate, no catch-up
            self.scrapes += 1
            try:
                began = time.monotonic()
                body = self._scrape()
                self.latencies.append(time.monotonic() - began)
                self.samples.append(
                    Sample(
                        at=time.monotonic() - self.started_at,
                        rss=_rss_bytes(pid),
                        fds=sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir()),
                        tasks=int(_gauge(body, "ollama_pull_exporter_asyncio_tasks")),
                        runs=int(_sum(body, "ollama_pull_runs_total{")),
                        in_flight=int(_sum(body, "ollama_pull_in_progress{")),
                    )
                )
                self.last_body = body
            except Exception as exc:  # noqa: BLE001 - every failure is recorded and asserted on
                self.failures.append(f"scrape {self.scrapes}: {type(exc).__name__}: {exc}")

    def _scrape(self) -> str:
        request = urllib.request.Request(
            self.exporter.url + "/metrics", headers={"Accept": PROMETHEUS_ACCEPT}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            status = int(response.status)
            content_type = response.headers["Content-Type"]
            body: str = response.read().decode()
        if status != 200:
            raise AssertionError(f"status {status}")
        if not content_type.startswith("application/openmetrics-text"):
            raise AssertionError(f"content type {content_type}")
        if not body.endswith("# EOF\n"):
            raise AssertionError("truncated exposition")
        return body


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _gauge(body: str, name: str) -> float:
    prefix = name + " "
    for line in body.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    raise AssertionError(f"{name} missing from /metrics")


def _sum(body: str, prefix: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(prefix)
    )


@pytest.fixture
def soak(tmp_path: Path) -> Iterator[tuple[Exporter, Sampler]]:
    sim = simulator()
    with sim.running() as url, run_exporter(config_text(url), tmp_path, "--log.level=info") as exp:
        sampler = Sampler(exp)
        sampler.start()
        try:
            started = time.monotonic()
            deadline = started + SOAK_SECONDS
            while exp.process.poll() is None and not _done(sampler, started, deadline):
                time.sleep(min(1.0, max(0.1, deadline - time.monotonic())))
        finally:
            sampler.done.set()
            sampler.join(15)
        assert not sampler.is_alive()
        assert exp.process.poll() is None, f"the exporter died:\n{exp.logs()[-5000:]}"
        yield exp, sampler


def _done(sampler: Sampler, started: float, deadline: float) -> bool:
    """SOAK_SECONDS have passed and the minimum work is done (or MAX_SECONDS have passed)."""
    now = time.monotonic()
    if now < deadline:
        return False
    samples = sampler.samples
    enough = sampler.scrapes >= MIN_SCRAPES and bool(samples) and samples[-1].runs >= MIN_RUNS
    return enough or now - started >= MAX_SECONDS


THIRDS = ("warm", "middle", "last")


@dataclass(frozen=True, slots=True)
class Spread:
    p10: int
    p50: int
    peak: int


def _spread(values: list[int]) -> Spread:
    ordered = sorted(values)
    return Spread(ordered[len(ordered) // 10], ordered[len(ordered) // 2], ordered[-1])


def _show(spreads: dict[str, Spread]) -> str:
    return " ".join(f"{name}={s.p10}/{s.p50}/{s.peak}" for name, s in spreads.items())


def _thirds(samples: list[Sample]) -> tuple[list[Sample], list[Sample], list[Sample]]:
    third = samples[-1].at / 3 if samples else SOAK_SECONDS / 3
    first = [s for s in samples if s.at < third]
    second = [s for s in samples if third <= s.at < 2 * third]
    last = [s for s in samples if s.at >= 2 * third]
    return first, second, last


@pytest.mark.slow
@pytest.mark.timeout(MAX_SECONDS + 180)
def test_soak_resources_stay_flat_and_every_scrape_answers(
    soak: tuple[Exporter, Sampler], capsys: pytest.CaptureFixture[str]
) -> None:
    exporter, sampler = soak
    samples = sampler.samples
    warm, middle, last = _thirds(samples)
    assert warm, "no sample in the warm-up third"
    assert middle, "no sample in the middle third"
    assert last, "no sample in the last third"

    runs = samples[-1].runs
    seconds = samples[-1].at
    latencies = sorted(sampler.latencies)
    rss_middle = statistics.median(s.rss for s in middle)
    rss_last = statistics.median(s.rss for s in last)
    rss_growth = rss_last - rss_middle
    parts = dict(zip(THIRDS, (warm, middle, last), strict=True))
    fds = {name: _spread([s.fds for s in part]) for name, part in parts.items()}
    tasks = {name: _spread([s.tasks for s in part]) for name, part in parts.items()}
    spare_fds = {name: _spread([s.spare_fds for s in part]) for name, part in parts.items()}
    spare_tasks = {name: _spread([s.spare_tasks for s in part]) for name, part in parts.items()}
    finals = parse_samples(sampler.last_body)
    failures_by_reason: dict[str, float] = {}
    for (name, labels), value in finals.items():
        if name == "ollama_pull_failures_total" and value:
            reason = dict(labels)["reason"]
            failures_by_reason[reason] = failures_by_reason.get(reason, 0) + value
    successes = sum(v for (n, _), v in finals.items() if n == "ollama_pull_duration_seconds_count")
    skipped = sum(v for (n, _), v in finals.items() if n == "ollama_pull_skipped_total")
    summary = (
        f"SOAK seconds={seconds:.0f} pairs={PAIRS} runs={runs} "
        f"runs_per_s={runs / seconds:.1f} successes={successes:g} skipped={skipped:g} "
        f"failures={dict(sorted(failures_by_reason.items()))} "
        f"scrapes={sampler.scrapes} scrape_failures={len(sampler.failures)} "
        f"scrape_ms p50={latencies[len(latencies) // 2] * 1000:.0f} "
        f"p99={latencies[len(latencies) * 99 // 100] * 1000:.0f} max={latencies[-1] * 1000:.0f} "
        f"metrics_kb={len(sampler.last_body) / 1024:.0f} "
        f"rss_mb start={samples[0].rss / 2**20:.1f} middle_median={rss_middle / 2**20:.1f} "
        f"last_median={rss_last / 2**20:.1f} end={samples[-1].rss / 2**20:.1f} "
        f"max={max(s.rss for s in samples) / 2**20:.1f} "
        f"fds(p10/p50/max) {_show(fds)} end={samples[-1].fds} "
        f"tasks(p10/p50/max) {_show(tasks)} end={samples[-1].tasks} "
        f"beyond the runs in flight: fds {_show(spare_fds)} tasks {_show(spare_tasks)}"
    )
    with capsys.disabled():
        print("\n" + summary)
    if "SOAK_SAMPLES" in os.environ:  # one JSON line per sample, for plots and the issue note
        with Path(os.environ["SOAK_SAMPLES"]).open("w") as out:
            out.writelines(json.dumps(dataclasses.asdict(s)) + "\n" for s in samples)

    assert sampler.failures == [], sampler.failures[:5]
    assert sampler.scrapes >= MIN_SCRAPES, summary
    assert len(samples) == sampler.scrapes
    assert runs >= MIN_RUNS, f"only {runs} runs in {seconds:.0f} s, wanted >= {MIN_RUNS:g}"
    assert successes > 0
    assert set(failures_by_reason) <= EXPECTED_REASONS, failures_by_reason
    assert rss_growth < max(RSS_GROWTH_BYTES, RSS_GROWTH_RATIO * rss_middle), summary
    # Bursts (every pair fires within the same 0.2 s each second) make single peaks noisy,
    # and how many runs are going when a scrape lands depends on the machine's load: a leak
    # is judged on the floor and the middle of what the runs in flight do not hold, and
    # peaks against the design.
    for spare, slack in ((spare_fds, FD_SLACK), (spare_tasks, TASK_SLACK)):
        assert spare["last"].p10 <= spare["middle"].p10 + slack, summary
        assert spare["last"].p50 <= spare["middle"].p50 + slack, summary
    for spread, ceiling in ((fds, FD_CEILING), (tasks, TASK_CEILING)):
        assert max(s.peak for s in spread.values()) <= ceiling, summary
    assert exporter.stop() == 0
    logs = exporter.logs()
    assert "Traceback" not in logs
    assert "crashed" not in logs
