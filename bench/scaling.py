"""Scaling benchmark: how scrape cost, exposition size, RSS and CPU grow.

Two sweeps against the real exporter process (see `bench/fleet.py` for the setup and the
CPU placement):

- pairs: 10, 100, 1,000, 5,000 configured pairs, each after one finished (up-to-date) run so
  every series exists; then `--scrapes` scrapes one after another, like Prometheus
  (OpenMetrics, gzip): latency, exporter CPU per scrape, exposition size (uncompressed text
  and gzip), RSS;
- pulls: 10, 50, 200, 500 pulls streaming at once at Ollama's 60 ms cadence, scraped every
  15 s: exporter CPU share and CPU per line.

Each of `--rounds` rounds (default 5) runs both sweeps, every point in a fresh exporter; a
point's figures are the medians over the rounds, with their min and max (`<name>_min`,
`<name>_max`), and `scrape_ms_max` is the slowest scrape of all rounds.
Writes JSON and draws the plot; `--baseline` adds an earlier report's points to the plot
(of a report from before the exporter-only variants were dropped, its `stock` points):

    python -m bench.scaling --json bench/results/scaling.json --plot docs/img/scaling.png \
        --baseline bench/results/history/scaling-2a8fcf0.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import machine_info, proc_cpu_seconds, proc_memory_kib, write_json
from bench.fleet import Fleet, exporter_totals, fleet_running, measure
from bench.scrape import ACCEPT_TEXT, scrape_once, scrape_size

PAIRS = (10, 100, 1000, 5000)
PULLS = (10, 50, 200, 500)


def _servers_for(pairs: int) -> int:
    return max(1, min(50, math.ceil(pairs / 20)))


def scrape_point(pairs: int, scrapes: int) -> dict[str, Any]:
    """Scrape cost with `pairs` pairs, every series present, nothing streaming."""
    servers = _servers_for(pairs)
    fleet = Fleet(pairs, servers, servers * 10, mode="uptodate")
    with (
        tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp,
        fleet_running(fleet, Path(tmp)) as running,
    ):

        def all_ran() -> bool:
            totals = exporter_totals(running.url)
            return totals["runs"] >= pairs and totals["in_progress"] == 0

        running.wait(f"{pairs} finished runs", all_ran, 120 + pairs / 20)
        url = running.url + "/metrics"
        pid = running.exporter.pid
        text_bytes = scrape_size(url, ACCEPT_TEXT)
        latencies: list[float] = []
        gzip_bytes = 0
        cpu_before = proc_cpu_seconds(pid)
        for _ in range(scrapes):
            seconds, gzip_bytes, status = scrape_once(url)
            if status != 200:
                raise RuntimeError(f"scrape answered {status}")
            latencies.append(seconds * 1000)
        cpu = (proc_cpu_seconds(pid) - cpu_before) / scrapes
        memory = proc_memory_kib(pid)
    return {
        "pairs": pairs,
        "servers": servers,
        "scrape_ms_median": statistics.median(latencies),
        "scrape_ms_max": max(latencies),
        "scrape_cpu_ms": cpu * 1000,
        "exposition_bytes": text_bytes,
        "gzip_bytes": gzip_bytes,
        "rss_mib": memory["VmRSS"] / 1024,
        "peak_rss_mib": memory["VmHWM"] / 1024,
    }


def pull_point(pulls: int, warmup: float, duration: float) -> dict[str, Any]:
    """Exporter CPU with `pulls` pulls streaming for the whole window (no turnover)."""
    servers = min(50, pulls)
    # Pull lengths spread over +-30%: the shortest must outlast start-up, warm-up and window.
    pull_seconds = (warmup + duration + 25) / 0.7
    fleet = Fleet(pulls, servers, pulls, pull_seconds=pull_seconds)
    with (
        tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp,
        fleet_running(fleet, Path(tmp)) as running,
    ):
        running.wait(f"{pulls} open streams", lambda: running.stats()["open"] >= pulls, 60)
        time.sleep(warmup)
        result = measure(running, duration, (15.0,))
    return {
        "pulls": pulls,
        "cpu_share": result["exporter_cpu_share"],
        "lines_per_second": result["lines_per_second"],
        "cpu_us_per_line": result["cpu_us_per_line"],
        "open_streams_min": result["open_streams"]["min"],
        "rss_mib": result["exporter_rss_mib"],
    }


_KEYS = ("pairs", "pulls", "servers")


def combine(points: list[dict[str, Any]]) -> dict[str, Any]:
    """One point from its rounds: the median of each figure, with its min and max."""
    out: dict[str, Any] = dict(points[0])
    for key, value in points[0].items():
        if key in _KEYS or not isinstance(value, int | float):
            continue
        values = [p[key] for p in points]
        out[key] = statistics.median(values)
        out[f"{key}_min"], out[f"{key}_max"] = min(values), max(values)
    if "scrape_ms_max" in out:  # the slowest scrape of all rounds
        out["scrape_ms_max"] = max(p["scrape_ms_max"] for p in points)
    out["rounds"] = len(points)
    return out


def _baseline_points(baseline: dict[str, Any], sweep: str) -> list[dict[str, Any]]:
    """An earlier report's points of one sweep; of an old two-variant report, the shipped ones."""
    return [
        p
        for p in baseline.get(sweep, [])
        if p.get("exporter", "stock") == "stock" and not p.get("coalesce_seconds")
    ]


def _bars(ax: Any, line: Any, points: list[dict[str, Any]], key: str, scale: float = 1) -> None:  # noqa: ANN401
    """Min-max bars of the rounds around a combined series (none for a single round)."""
    if not points or f"{key}_min" not in points[0] or points[0].get("rounds", 1) < 2:
        return
    xs, ys = line.get_xdata(), line.get_ydata()
    low = [y - scale * p[f"{key}_min"] for y, p in zip(ys, points, strict=True)]
    high = [scale * p[f"{key}_max"] - y for y, p in zip(ys, points, strict=True)]
    ax.errorbar(xs, ys, yerr=[low, high], fmt="none", ecolor=line.get_color(), capsize=3)


def plot(
    report: dict[str, Any],
    path: str,
    baseline: dict[str, Any] | None = None,
    baseline_label: str = "before",
) -> None:
    """Four panels: scrape time, exposition size, RSS (by pairs); CPU (by pulls).

    With `baseline` (an earlier report), its points are drawn too, grey and dashed. Scrape
    time and CPU carry min-max bars over the rounds.
    """
    # The bench extra; imported by name so that type checks pass without it installed.
    importlib.import_module("matplotlib").use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    scrape_ax, size_ax, rss_ax, cpu_ax = axes[0][0], axes[0][1], axes[1][0], axes[1][1]
    label = "now"
    if baseline is not None:
        before = baseline_label
        old = _baseline_points(baseline, "pairs")
        style = {"color": "grey", "linestyle": "--", "marker": "s", "alpha": 0.7, "label": before}
        if old:
            xs = [p["pairs"] for p in old]
            scrape_ax.plot(xs, [p["scrape_ms_median"] for p in old], **style)
            rss_ax.plot(xs, [p["rss_mib"] for p in old], **style)
        old = _baseline_points(baseline, "pulls")
        if old:
            cpu_ax.plot([p["pulls"] for p in old], [100 * p["cpu_share"] for p in old], **style)
    points = report["pairs"]
    xs = [p["pairs"] for p in points]
    now = scrape_ax.plot(xs, [p["scrape_ms_median"] for p in points], "o-", label=label)[0]
    _bars(scrape_ax, now, points, "scrape_ms_median")
    rss_ax.plot(xs, [p["rss_mib"] for p in points], "o-", label=label)
    text = size_ax.plot(
        xs, [p["exposition_bytes"] / 2**20 for p in points], "o-", label="text, uncompressed"
    )[0]
    gzip = size_ax.plot(
        xs, [p["gzip_bytes"] / 2**20 for p in points], "o-", label="OpenMetrics, gzip"
    )[0]
    scrape_ax.axhline(250, color="grey", linestyle=":", label="target p99 250 ms")
    for ax, lines in ((scrape_ax, (now,)), (size_ax, (text, gzip))):
        for line in lines:  # slope 1 on log-log axes: linear growth
            lxs, lys = line.get_xdata(), line.get_ydata()
            if len(lxs) > 1:
                ax.plot(
                    [lxs[0], lxs[-1]],
                    [lys[-1] * lxs[0] / lxs[-1], lys[-1]],
                    linestyle="--",
                    color=line.get_color(),
                    alpha=0.4,
                    label="linear (through the last point)" if line is lines[0] else None,
                )
    for ax, title, unit in (
        (scrape_ax, "scrape time by pairs (median, bars: min-max of rounds)", "ms"),
        (size_ax, "exposition size by pairs", "MiB"),
        (rss_ax, "exporter RSS by pairs", "MiB"),
    ):
        if ax is not rss_ax:  # RSS on linear axes: a straight line is linear growth
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("pairs")
        ax.set_ylabel(unit)
        ax.grid(visible=True, which="both", alpha=0.3)
        ax.legend()
    pulls = report["pulls"]
    cpu_line = cpu_ax.plot(
        [p["pulls"] for p in pulls], [100 * p["cpu_share"] for p in pulls], "o-", label=label
    )[0]
    _bars(cpu_ax, cpu_line, pulls, "cpu_share", 100)
    cpu_ax.axhline(10, color="grey", linestyle=":", label="target 10% (at 200)")
    cpu_ax.set_title("exporter CPU by pulls streaming at once (60 ms cadence)", fontsize=10)
    cpu_ax.set_xlabel("pulls streaming at once")
    cpu_ax.set_ylabel("% of one core")
    cpu_ax.grid(visible=True, alpha=0.3)
    cpu_ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _spread(point: dict[str, Any], key: str, fmt: str, scale: float = 1) -> str:
    """`median (min-max)` of a combined point's figure, or the figure alone."""
    text = fmt.format(scale * point[key])
    if f"{key}_min" in point and point.get("rounds", 1) > 1:
        low, high = scale * point[f"{key}_min"], scale * point[f"{key}_max"]
        text += f" ({fmt.format(low)}-{fmt.format(high)})"
    return text


def format_report(report: dict[str, Any]) -> str:
    """Markdown tables of both sweeps: medians over the rounds, (min-max)."""
    out = [
        (
            "| pairs | scrape median (ms) | slowest scrape (ms) | CPU per scrape (ms) | "
            "text exposition | OpenMetrics gzip | RSS (MiB) | peak RSS (MiB) |"
        ),
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    out.extend(
        f"| {p['pairs']:,} | {_spread(p, 'scrape_ms_median', '{:.1f}')} | "
        f"{p['scrape_ms_max']:.1f} | {_spread(p, 'scrape_cpu_ms', '{:.1f}')} | "
        f"{p['exposition_bytes'] / 2**20:.2f} MiB | {p['gzip_bytes'] / 1024:.0f} KiB | "
        f"{_spread(p, 'rss_mib', '{:.1f}')} | {_spread(p, 'peak_rss_mib', '{:.1f}')} |"
        for p in report["pairs"]
    )
    out += [
        "",
        "| pulls at once | lines/s | exporter CPU (% of a core) | CPU per line (us) |",
        "|---:|---:|---:|---:|",
    ]
    out.extend(
        f"| {p['pulls']} | {p['lines_per_second']:,.0f} | "
        f"{_spread(p, 'cpu_share', '{:.1f}', 100)} | {_spread(p, 'cpu_us_per_line', '{:.1f}')} |"
        for p in report["pulls"]
    )
    return "\n".join(out)


def _ints(text: str) -> tuple[int, ...]:
    """The counts of a comma list; 0 (as in `--pulls 0`) skips that sweep's point."""
    return tuple(number for number in (int(x) for x in text.split(",") if x) if number > 0)


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.scaling", description=__doc__)
    parser.add_argument("--pairs", default=",".join(map(str, PAIRS)))
    parser.add_argument("--pulls", default=",".join(map(str, PULLS)))
    parser.add_argument("--scrapes", type=int, default=20, help="scrapes per pair count")
    parser.add_argument("--rounds", type=int, default=5, help="runs of both sweeps")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--duration", type=float, default=30.0, help="seconds per pull count")
    parser.add_argument("--json", help="write the full report here")
    parser.add_argument("--plot", help="write the PNG plot here (needs matplotlib)")
    parser.add_argument("--baseline", help="an earlier --json report to draw on the plot too")
    args = parser.parse_args(argv)
    rounds: list[dict[str, list[dict[str, Any]]]] = []
    for index in range(args.rounds):
        done: dict[str, list[dict[str, Any]]] = {"pairs": [], "pulls": []}
        for pairs in _ints(args.pairs):
            done["pairs"].append(scrape_point(pairs, args.scrapes))
            print(f"round {index + 1}: {done['pairs'][-1]}", file=sys.stderr, flush=True)
        for pulls in _ints(args.pulls):
            done["pulls"].append(pull_point(pulls, args.warmup, args.duration))
            print(f"round {index + 1}: {done['pulls'][-1]}", file=sys.stderr, flush=True)
        rounds.append(done)
    report: dict[str, Any] = {"benchmark": "scaling"}
    for sweep in ("pairs", "pulls"):
        report[sweep] = [
            combine([r[sweep][i] for r in rounds]) for i in range(len(rounds[0][sweep]))
        ]
    report["rounds"] = rounds
    report["machine"] = machine_info()
    write_json(args.json, report)
    if args.plot:
        baseline, label = None, "before"
        if args.baseline:
            baseline = json.loads(Path(args.baseline).read_text())
            label += f" ({baseline.get('machine', {}).get('commit', Path(args.baseline).stem)})"
        plot(report, args.plot, baseline, label)
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
