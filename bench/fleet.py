"""Fleet benchmark: the real exporter process watching many pairs while it is scraped.

The exporter as shipped (`python -m exporter`, from this checkout) is configured with
`--pairs` (server, model) pairs over `--servers` simulated Ollama servers
(`bench/fleet_sim.py`, one process, one port each).
Each server allows `--concurrency / --servers` pulls at once, so that many pulls stream at
Ollama's real cadence (a line every 60 ms each) while the rest wait their turn; every pull
lasts about `--pull-seconds`, so runs keep ending and starting. After `--warmup` seconds,
two scraper processes (`bench/scrape.py`) read `/metrics` every 15 s and every 1 s for
`--duration` seconds, and the exporter's CPU (from /proc), peak RSS (VmHWM), the lines the
servers sent and the scrape latencies are recorded.

Placement: the exporter is pinned alone to CPU 0; the load generator and the scrapers are
pinned to the other CPU(s) and niced (+5 and +10), so they cannot starve the exporter.

    python -m bench.fleet                       # 1,000 pairs, 50 servers, 200 streaming, 60 s
    python -m bench.fleet --pairs 20 --servers 2 --concurrency 4 --warmup 1 --duration 3

Each of `--rounds` rounds (default 5) starts everything afresh; the report gives the median,
minimum and maximum of every measure over the rounds, and the scrape percentiles of all
rounds' scrapes pooled.

The exporter is imported from the checkout the benchmark runs in, so an older commit is
measured from a worktree of it (docs/performance.md, "Reproduce").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import (
    REPO_ROOT,
    Summary,
    checkout,
    cpu_layout,
    machine_info,
    percentile,
    proc_cpu_seconds,
    proc_memory_kib,
    python_command,
    read_line,
    start_process,
    stop_process,
    write_json,
)
from bench.fleet_sim import PRUNE_SECONDS, VERIFY_SECONDS, model_name
from bench.scrape import scrape_once

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterator, Sequence

SIM_NICE = 5
SCRAPER_NICE = 10


@dataclass(frozen=True, slots=True)
class Fleet:
    """What a fleet run is made of."""

    pairs: int
    servers: int
    concurrency: int
    mode: str = "stream"
    pull_seconds: float = 30.0
    inventory_interval: str = "1m"
    """The exporter's `inventory_interval` (`0s`: no `/api/tags` requests at all)."""


def models_per_server(fleet: Fleet) -> list[int]:
    """How many models each server gets (as even as possible)."""
    base, extra = divmod(fleet.pairs, fleet.servers)
    return [base + (1 if index < extra else 0) for index in range(fleet.servers)]


def limits_per_server(fleet: Fleet) -> list[int]:
    """`max_concurrent_pulls` of each server; they add up to `fleet.concurrency`."""
    base, extra = divmod(fleet.concurrency, fleet.servers)
    return [max(1, base + (1 if index < extra else 0)) for index in range(fleet.servers)]


def exporter_config(fleet: Fleet, urls: list[str]) -> str:
    """The exporter's YAML config: every pair starts at once (no jitter) and runs once."""
    lines = [f"inventory_interval: {fleet.inventory_interval}"]
    lines += ["defaults:", "  interval: 24h", "  jitter: 0", "  timeout: 2h", "servers:"]
    counts, limits = models_per_server(fleet), limits_per_server(fleet)
    for index, (url, count, limit) in enumerate(zip(urls, counts, limits, strict=True)):
        lines += [
            f"  - name: sim-{index:03d}",
            f"    url: {url}",
            f"    max_concurrent_pulls: {limit}",
            "    models:",
            *(f"      - {model_name(model)}" for model in range(count)),
        ]
    return "\n".join(lines) + "\n"


@dataclass
class Running:
    """The processes of one fleet run."""

    sim: subprocess.Popen[bytes]
    exporter: subprocess.Popen[bytes]
    url: str
    stats_path: Path
    workdir: Path

    def stats(self) -> dict[str, Any]:
        """The load generator's latest counters (and `phases`, see `bench.fleet_sim`)."""
        for _ in range(50):
            with contextlib.suppress(OSError, ValueError):
                data: dict[str, Any] = json.loads(self.stats_path.read_text())
                return data
            time.sleep(0.1)
        raise RuntimeError("no stats from the load generator")

    def wait(self, condition: str, check: Any, timeout: float) -> None:  # noqa: ANN401
        """Poll `check()` every 0.2 s until true, or fail naming `condition`."""
        deadline = time.monotonic() + timeout
        while not check():
            if self.exporter.poll() is not None:
                log = (self.workdir / "exporter.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"exporter exited early:\n{log}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout}s waiting for {condition}")
            time.sleep(0.2)


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def fleet_running(
    fleet: Fleet, workdir: Path, *, spread: float = 0.3, where: Path = REPO_ROOT
) -> Iterator[Running]:
    """Start the load generator and the exporter of checkout `where` (pinned apart); stop both."""
    measured_cpus, helper_cpus = cpu_layout()
    stats_path = workdir / "sim-stats.json"
    sim = start_process(
        python_command(
            "bench.fleet_sim",
            f"--servers={fleet.servers}",
            f"--models={max(models_per_server(fleet))}",
            f"--mode={fleet.mode}",
            f"--pull-seconds={fleet.pull_seconds}",
            f"--spread={spread}",
            f"--stats={stats_path}",
        ),
        cpus=helper_cpus,
        niceness=SIM_NICE,
    )
    exporter: subprocess.Popen[bytes] | None = None
    try:
        urls = json.loads(read_line(sim, 60))["urls"]
        config = workdir / "config.yaml"
        config.write_text(exporter_config(fleet, urls))
        port = free_port()
        with (workdir / "exporter.log").open("wb") as log:
            exporter = start_process(
                python_command(
                    "exporter",
                    f"--config.file={config}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=info",
                ),
                cpus=measured_cpus,
                stdout=log.fileno(),
                stderr=log.fileno(),
                cwd=where,
            )
        running = Running(sim, exporter, f"http://127.0.0.1:{port}", stats_path, workdir)
        running.wait("the exporter to answer", lambda: _answers(running.url), 60)
        yield running
    finally:
        if exporter is not None:
            stop_process(exporter)
        stop_process(sim)


def _answers(url: str) -> bool:
    try:
        return scrape_once(url + "/-/ready", timeout=2)[2] == 200
    except OSError:
        return False


def _scraper(url: str, interval: float, duration: float, out: Path) -> subprocess.Popen[bytes]:
    _, helper_cpus = cpu_layout()
    return start_process(
        python_command(
            "bench.scrape",
            f"--url={url}/metrics",
            f"--interval={interval}",
            f"--duration={duration}",
            f"--out={out}",
        ),
        cpus=helper_cpus,
        niceness=SCRAPER_NICE,
        stdout=None,
    )


def measure(
    running: Running, duration: float, scrape_intervals: tuple[float, ...]
) -> dict[str, Any]:
    """Measure the exporter over `duration` seconds while the scrapers run."""
    return measure_all([running], duration, scrape_intervals)[0]


def measure_all(
    runnings: list[Running], duration: float, scrape_intervals: tuple[float, ...]
) -> list[dict[str, Any]]:
    """Measure every exporter over the same `duration` seconds, each scraped by its own."""
    outs = [
        [running.workdir / f"scrape-{i}.json" for i in range(len(scrape_intervals))]
        for running in runnings
    ]
    before = [(running.stats(), proc_cpu_seconds(running.exporter.pid)) for running in runnings]
    started = time.monotonic()
    scrapers = [
        _scraper(running.url, interval, duration, out)
        for running, paths in zip(runnings, outs, strict=True)
        for interval, out in zip(scrape_intervals, paths, strict=True)
    ]
    open_streams: list[list[float]] = [[] for _ in runnings]
    try:
        while time.monotonic() - started < duration:
            time.sleep(1.0)
            for running, counts in zip(runnings, open_streams, strict=True):
                counts.append(running.stats()["open"])
        wall = time.monotonic() - started
        after = [(running.stats(), proc_cpu_seconds(running.exporter.pid)) for running in runnings]
        memory = [proc_memory_kib(running.exporter.pid) for running in runnings]
        for scraper in scrapers:
            scraper.wait(60 + max(scrape_intervals, default=0))
    finally:
        for scraper in scrapers:
            stop_process(scraper)
    return [
        _result(
            wall,
            before=before[i],
            after=after[i],
            memory=memory[i],
            open_streams=open_streams[i],
            outs=outs[i],
            scrape_intervals=scrape_intervals,
        )
        for i in range(len(runnings))
    ]


def _result(
    wall: float,
    *,
    before: tuple[dict[str, float], float],
    after: tuple[dict[str, float], float],
    memory: dict[str, int],
    open_streams: list[float],
    outs: list[Path],
    scrape_intervals: tuple[float, ...],
) -> dict[str, Any]:
    """One exporter's figures of a measurement."""
    (before_stats, before_cpu), (after_stats, after_cpu) = before, after
    scrapes: dict[str, Any] = {}
    for interval, out in zip(scrape_intervals, outs, strict=True):
        data = json.loads(out.read_text())
        latencies = [s * 1000 for s in data["latencies"]]
        scrapes[f"every {interval:g}s"] = {
            "count": len(latencies),
            "errors": data["errors"],
            "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99),
            "max_ms": max(latencies, default=math.nan),
            "latencies_ms": latencies,
            "gzip_bytes_median": statistics.median(data["sizes"]) if data["sizes"] else 0,
        }
    lines = after_stats["lines"] - before_stats["lines"]
    cpu = after_cpu - before_cpu
    return {
        "wall_seconds": wall,
        "exporter_cpu_seconds": cpu,
        "exporter_cpu_share": cpu / wall,
        "exporter_rss_mib": memory["VmRSS"] / 1024,
        "exporter_peak_rss_mib": memory["VmHWM"] / 1024,
        "lines": lines,
        "lines_per_second": lines / wall,
        "cpu_us_per_line": cpu / lines * 1e6 if lines else math.nan,
        "open_streams": {
            "min": min(open_streams, default=0),
            "median": statistics.median(open_streams) if open_streams else 0,
            "max": max(open_streams, default=0),
        },
        "load_generator_cpu_share": (after_stats["cpu"] - before_stats["cpu"]) / wall,
        "scrapes": scrapes,
    }


def _exposition(url: str) -> str:
    import urllib.request  # noqa: PLC0415

    with urllib.request.urlopen(url + "/metrics", timeout=30) as response:
        return str(response.read().decode())


PHASE_TRUTH = {"verify": VERIFY_SECONDS, "prune": PRUNE_SECONDS}
"""The silences the load generator means to keep after `verifying sha256 digest` and the
prune line (what it really kept, its own late wake-ups in, it reports: `played_phases`)."""
_PLAYED = {"verify": 1, "prune": 2}
"""Where each phase is in a `played_phases` entry (after the count of completed runs)."""


def phase_errors(url: str, played: dict[str, list[float]]) -> dict[str, list[float]]:
    """Per phase, each finished pair's last reported duration minus the played one, in ms.

    A pair counts once its last run succeeded (its verify and prune lines came and went) and
    the load generator's count of its completed runs is the exporter's count of its runs
    (the same run on both sides). The truth is what the load generator played: a phase it
    was late to start is shorter than meant (its schedule is absolute), and the exporter is
    measured against what it was sent, not against what was meant.
    """
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    durations: dict[tuple[str, str], dict[str, float]] = {}
    succeeded: set[tuple[str, str]] = set()
    runs: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(_exposition(url)):
        for sample in family.samples:
            key = (sample.labels.get("server", ""), sample.labels.get("model", ""))
            if sample.name == "ollama_pull_last_phase_duration_seconds":
                durations.setdefault(key, {})[sample.labels["phase"]] = sample.value
            elif sample.name == "ollama_pull_last_success" and sample.value == 1:
                succeeded.add(key)
            elif sample.name == "ollama_pull_runs_total":
                runs[key] = sample.value
    errors: dict[str, list[float]] = {phase: [] for phase in PHASE_TRUTH}
    for key in sorted(succeeded):
        server, model = key
        truth = played.get(f"{int(server.removeprefix('sim-'))}/{model}")
        if truth is None or truth[0] != runs.get(key):
            continue
        for phase, slot in _PLAYED.items():
            if phase in durations.get(key, {}) and math.isfinite(truth[slot]):
                errors[phase].append((durations[key][phase] - truth[slot]) * 1000)
    return errors


def sim_lag(played: dict[str, list[float]]) -> dict[str, list[float]]:
    """Per phase, the played duration minus the meant one, in ms: the load generator's own
    lateness, which a comparison with the meant durations would blame on the exporter."""
    return {
        phase: [
            (entry[slot] - PHASE_TRUTH[phase]) * 1000
            for entry in played.values()
            if math.isfinite(entry[slot])
        ]
        for phase, slot in _PLAYED.items()
    }


def exporter_totals(url: str) -> dict[str, float]:
    """Sums over the exporter's own metrics: runs, failures, pulls in progress."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    text = _exposition(url)
    totals = {"runs": 0.0, "failures": 0.0, "in_progress": 0.0, "pairs": 0.0}
    names = {
        "ollama_pull_runs_total": "runs",
        "ollama_pull_failures_total": "failures",
        "ollama_pull_in_progress": "in_progress",
        "ollama_pull_interval_seconds": "pairs",
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = names.get(sample.name)
            if key == "pairs":
                totals[key] += 1
            elif key is not None:
                totals[key] += sample.value
    return totals


def run_fleet(
    fleet: Fleet, *, warmup: float, duration: float, scrape_intervals: tuple[float, ...]
) -> dict[str, Any]:
    """One fleet run: start, wait for the streams and `warmup`, measure, stop."""
    return run_side_by_side(
        fleet, (REPO_ROOT,), warmup=warmup, duration=duration, scrape_intervals=scrape_intervals
    )[0]


def run_side_by_side(
    fleet: Fleet,
    checkouts: Sequence[Path],
    *,
    warmup: float,
    duration: float,
    scrape_intervals: tuple[float, ...],
) -> list[dict[str, Any]]:
    """One fleet run per checkout, all at the same time, each exporter with its own fleet.

    The exporters share one CPU and their load generators and scrapers the other(s), so
    whatever else the machine does in that minute (a neighbour, a frequency change) weighs
    on each alike: their ratio is steadier than that of runs taken one after the other.
    """
    with contextlib.ExitStack() as stack:
        runnings = []
        for where in checkouts:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-fleet-")))
            runnings.append(stack.enter_context(fleet_running(fleet, workdir, where=where)))
        wanted = min(fleet.concurrency, fleet.pairs)
        for running in runnings:
            with contextlib.suppress(TimeoutError):  # reported: the open-stream count says it
                running.wait(
                    f"{wanted} open streams",
                    lambda running=running: running.stats()["open"] >= wanted,
                    20 + wanted / 10,
                )
        time.sleep(warmup)
        results = measure_all(runnings, duration, scrape_intervals)
        for running, result in zip(runnings, results, strict=True):
            result["exporter_totals"] = exporter_totals(running.url)
            played = running.stats()["phases"]
            result["phase_errors_ms"] = phase_errors(running.url, played)
            result["sim_lag_ms"] = sim_lag(played)
        measured_cpus, helper_cpus = cpu_layout()
    for result in results:
        result["fleet"] = {
            "pairs": fleet.pairs,
            "servers": fleet.servers,
            "concurrency": fleet.concurrency,
            "pull_seconds": fleet.pull_seconds,
            "warmup_seconds": warmup,
        }
        result["placement"] = {
            "exporter_cpus": sorted(measured_cpus),
            "load_generator_cpus": sorted(helper_cpus),
            "load_generator_nice": SIM_NICE,
            "scraper_nice": SCRAPER_NICE,
            "exporters_side_by_side": len(checkouts),
        }
    return results


def format_report(result: dict[str, Any]) -> str:
    """A Markdown table of one fleet run."""
    fleet = result["fleet"]
    out = [
        f"{fleet['pairs']:,} pairs on {fleet['servers']} servers, {fleet['concurrency']} pulls "
        f"streaming at once (open streams min/median/max: "
        f"{result['open_streams']['min']:.0f}/{result['open_streams']['median']:.0f}/"
        f"{result['open_streams']['max']:.0f}), measured for {result['wall_seconds']:.0f} s"
        + (f"; exporter at {result['machine']['commit']}" if "machine" in result else ""),
        "",
        "| measure | value |",
        "|---|---:|",
        f"| exporter CPU, share of one core | {100 * result['exporter_cpu_share']:.1f}% |",
        f"| exporter peak RSS (VmHWM) | {result['exporter_peak_rss_mib']:.1f} MiB |",
        f"| exporter RSS at the end | {result['exporter_rss_mib']:.1f} MiB |",
        f"| lines processed | {result['lines']:,} ({result['lines_per_second']:,.0f}/s) |",
        f"| exporter CPU per line (scrapes included) | {result['cpu_us_per_line']:.1f} us |",
        f"| load generator CPU (other core) | {100 * result['load_generator_cpu_share']:.1f}% |",
        (
            f"| runs started / failed | {result['exporter_totals']['runs']:,.0f} / "
            f"{result['exporter_totals']['failures']:,.0f} |"
        ),
    ]
    for phase, errors in result.get("phase_errors_ms", {}).items():
        out.append(
            f"| {phase} timing error: median / p99 / max of abs, ms ({len(errors)} pairs) | "
            f"{_abs_percentile(errors, 0.5):.1f} / {_abs_percentile(errors, 0.99):.1f} / "
            f"{_abs_percentile(errors, 1.0):.1f} |"
        )
    for name, scrape in result["scrapes"].items():
        out.append(
            f"| scrape {name}: p50 / p99 / max ({scrape['count']} scrapes, "
            f"{scrape['errors']} errors) | {scrape['p50_ms']:.1f} / {scrape['p99_ms']:.1f} / "
            f"{scrape['max_ms']:.1f} ms |"
        )
    return "\n".join(out)


def _abs_percentile(values: list[float], q: float) -> float:
    return percentile([abs(v) for v in values], q) if values else math.nan


def _measures(result: dict[str, Any]) -> dict[str, float]:
    """One round's figures, flat, for the summary."""
    out = {
        "exporter_cpu_share": result["exporter_cpu_share"],
        "exporter_peak_rss_mib": result["exporter_peak_rss_mib"],
        "lines_per_second": result["lines_per_second"],
        "cpu_us_per_line": result["cpu_us_per_line"],
        "open_streams_median": result["open_streams"]["median"],
        "load_generator_cpu_share": result["load_generator_cpu_share"],
        "runs": result["exporter_totals"]["runs"],
        "failures": result["exporter_totals"]["failures"],
    }
    for phase, errors in result.get("phase_errors_ms", {}).items():
        out[f"{phase} timing error median_ms"] = _abs_percentile(errors, 0.5)
        out[f"{phase} timing error p99_ms"] = _abs_percentile(errors, 0.99)
        out[f"{phase} timing error max_ms"] = _abs_percentile(errors, 1.0)
    for name, scrape in result["scrapes"].items():
        out[f"scrape {name} p50_ms"] = scrape["p50_ms"]
        out[f"scrape {name} p99_ms"] = scrape["p99_ms"]
    return out


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Median, min and max of each measure over `rounds`; scrape percentiles pooled."""
    measures = [_measures(result) for result in rounds]
    pooled: dict[str, Any] = {}
    for name in rounds[0]["scrapes"]:
        latencies = [ms for r in rounds for ms in r["scrapes"][name]["latencies_ms"]]
        pooled[name] = {
            "count": len(latencies),
            "errors": sum(r["scrapes"][name]["errors"] for r in rounds),
            "p50_ms": percentile(latencies, 0.5),
            "p99_ms": percentile(latencies, 0.99),
            "max_ms": max(latencies, default=math.nan),
        }
    phases: dict[str, Any] = {}
    for phase in rounds[0].get("phase_errors_ms", {}):
        errors = [e for r in rounds for e in r["phase_errors_ms"][phase]]
        lag = [e for r in rounds for e in r.get("sim_lag_ms", {}).get(phase, [])]
        phases[phase] = {
            "count": len(errors),
            "true_ms": PHASE_TRUTH[phase] * 1000,
            "sim_lag_abs_p99_ms": _abs_percentile(lag, 0.99),
            "mean_ms": statistics.fmean(errors) if errors else math.nan,
            "abs_p50_ms": _abs_percentile(errors, 0.5),
            "abs_p99_ms": _abs_percentile(errors, 0.99),
            "abs_max_ms": _abs_percentile(errors, 1.0),
        }
    return {
        "benchmark": "fleet",
        "fleet": rounds[0]["fleet"],
        "placement": rounds[0]["placement"],
        "summary": {key: Summary.of([m[key] for m in measures]).to_json() for key in measures[0]},
        "scrapes_pooled": pooled,
        "phase_errors_pooled": phases,
        "rounds": rounds,
    }


_ROWS = (
    ("exporter CPU, share of one core", "exporter_cpu_share", 100, "{:.1f}%"),
    ("exporter peak RSS (VmHWM)", "exporter_peak_rss_mib", 1, "{:.1f} MiB"),
    ("lines processed per second", "lines_per_second", 1, "{:,.0f}"),
    ("exporter CPU per line (scrapes included)", "cpu_us_per_line", 1, "{:.1f} us"),
    ("pulls streaming (median in the round)", "open_streams_median", 1, "{:.0f}"),
    ("load generator CPU (other core)", "load_generator_cpu_share", 100, "{:.1f}%"),
    ("runs started", "runs", 1, "{:,.0f}"),
    ("runs failed", "failures", 1, "{:,.0f}"),
)


def format_rounds(report: dict[str, Any]) -> str:
    """A Markdown table of a multi-round report: median, min and max of each measure."""
    fleet, summary = report["fleet"], report["summary"]
    rounds = len(report["rounds"])
    out = [
        f"{fleet['pairs']:,} pairs on {fleet['servers']} servers, {fleet['concurrency']} pulls "
        f"streaming at once, {rounds} rounds of "
        f"{report['rounds'][0]['wall_seconds']:.0f} s"
        + (f"; exporter at {report['machine']['commit']}" if "machine" in report else ""),
        "",
        "| measure | median | min | max |",
        "|---|---:|---:|---:|",
    ]
    rows = list(_ROWS)
    for phase in report.get("phase_errors_pooled", {}):
        rows += [
            (f"{phase} timing error: abs p50 (ms)", f"{phase} timing error median_ms", 1, "{:.1f}"),
            (f"{phase} timing error: abs max (ms)", f"{phase} timing error max_ms", 1, "{:.1f}"),
        ]
    for name in report["scrapes_pooled"]:
        rows += [
            (f"scrape {name}: p50 (ms)", f"scrape {name} p50_ms", 1, "{:.1f}"),
            (f"scrape {name}: p99 (ms)", f"scrape {name} p99_ms", 1, "{:.1f}"),
        ]
    for label, key, scale, fmt in rows:
        values = summary[key]
        cells = [fmt.format(scale * values[stat]) for stat in ("median", "min", "max")]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out += ["", "| scrapes of all rounds pooled | count | errors | p50 | p99 | max |"]
    out.append("|---|---:|---:|---:|---:|---:|")
    out.extend(
        f"| {name} | {p['count']} | {p['errors']} | {p['p50_ms']:.1f} ms | "
        f"{p['p99_ms']:.1f} ms | {p['max_ms']:.1f} ms |"
        for name, p in report["scrapes_pooled"].items()
    )
    if report.get("phase_errors_pooled"):
        out += [
            "",
            (
                "| phase timing error, all rounds pooled (reported - played) | pairs | meant "
                "| mean | abs p50 | abs p99 | abs max | load generator late, abs p99 |"
            ),
            "|---|---:|---:|---:|---:|---:|---:|---:|",
        ]
        out.extend(
            f"| {phase} | {p['count']} | {p['true_ms']:.0f} ms | {p['mean_ms']:.1f} ms | "
            f"{p['abs_p50_ms']:.1f} ms | {p['abs_p99_ms']:.1f} ms | {p['abs_max_ms']:.1f} ms | "
            f"{p.get('sim_lag_abs_p99_ms', math.nan):.1f} ms |"
            for phase, p in report["phase_errors_pooled"].items()
        )
    return "\n".join(out)


_COMPARED = (
    ("exporter CPU, share of one core", "exporter_cpu_share"),
    ("exporter peak RSS (VmHWM)", "exporter_peak_rss_mib"),
    ("exporter CPU per line", "cpu_us_per_line"),
)


def format_comparison(reports: list[dict[str, Any]]) -> str:
    """Per round, the first checkout's figure over each other's (they ran at the same time)."""
    first, others = reports[0], reports[1:]
    out = []
    for other in others:
        mine, theirs = first["machine"]["commit"], other["machine"]["commit"]
        out += [
            f"{mine} / {theirs}, each round measured at the same time",
            "",
            "| ratio | per round | median |",
            "|---|---|---:|",
        ]
        for label, key in _COMPARED:
            ratios = [
                a[key] / b[key] if b[key] else math.nan
                for a, b in zip(first["rounds"], other["rounds"], strict=True)
            ]
            cells = ", ".join(f"{r:.2f}" for r in ratios)
            out.append(f"| {label} | {cells} | {statistics.median(ratios):.2f} |")
        for name in first["scrapes_pooled"]:
            a, b = first["scrapes_pooled"][name]["p99_ms"], other["scrapes_pooled"][name]["p99_ms"]
            out.append(f"| scrape {name} p99, pooled | {a:.1f} / {b:.1f} ms | {a / b:.2f} |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--servers", type=int, default=50)
    parser.add_argument("--concurrency", type=int, default=200)
    parser.add_argument("--pull-seconds", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument(
        "--scrape-intervals", default="15,1", help="seconds, comma-separated, one scraper each"
    )
    parser.add_argument("--rounds", type=int, default=5, help="fresh runs, summarised")
    parser.add_argument(
        "--inventory-interval", default="1m", help="the exporter's inventory_interval (0s: off)"
    )
    parser.add_argument(
        "--against",
        action="append",
        default=[],
        metavar="CHECKOUT",
        help="another checkout (a git worktree) whose exporter runs at the same time, side by "
        "side, each with its own fleet; repeatable",
    )
    parser.add_argument("--json", help="write the full report here")
    args = parser.parse_args(argv)
    fleet = Fleet(
        args.pairs,
        args.servers,
        args.concurrency,
        pull_seconds=args.pull_seconds,
        inventory_interval=args.inventory_interval,
    )
    intervals = tuple(float(x) for x in args.scrape_intervals.split(",") if x)
    checkouts = [REPO_ROOT, *(Path(path).resolve() for path in args.against)]
    rounds: list[list[dict[str, Any]]] = [[] for _ in checkouts]
    for index in range(args.rounds):
        results = run_side_by_side(
            fleet, checkouts, warmup=args.warmup, duration=args.duration, scrape_intervals=intervals
        )
        for where, result, kept in zip(checkouts, results, rounds, strict=True):
            print(
                f"round {index + 1}, {checkout(where)}:\n{format_report(result)}\n",
                file=sys.stderr,
                flush=True,
            )
            kept.append(result)
    reports = []
    for where, kept in zip(checkouts, rounds, strict=True):
        report = summarize(kept)
        report["machine"] = {**machine_info(), "commit": checkout(where)}
        reports.append(report)
    if len(reports) == 1:
        write_json(args.json, reports[0])
        print(format_rounds(reports[0]))
        return 0
    write_json(args.json, {"benchmark": "fleet side by side", "reports": reports})
    print("\n\n".join(format_rounds(report) for report in reports))
    print("\n" + format_comparison(reports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
