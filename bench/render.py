"""In-process scrape benchmark: the CPU of `/metrics` without a process, a socket or a client.

Builds an `ExporterState` of `--pairs` pairs (each after one finished run, holding its model,
scheduled: every series present) of which `--running` are pulling: between two scrapes each
running run gets `--lines` progress lines (its bytes, and now and then its phase, move),
`--turnover` runs finish and as many start elsewhere (running pairs are spread over the
table, as in the fleet), and `--touch` idle pairs are rescheduled. Then it scrapes
`--scrapes` times as the handler does for Prometheus (OpenMetrics, gzip; the body's gzip kept
while the exposition is unchanged, and the gzip of each chunk that did not change where the
checkout keeps them) and reports, per scrape, the CPU of `Exposition.pieces` or `.chunks`
(the part on the event loop: the longest block a scrape makes) and of the gzip (in a thread
in the exporter), with the first scrape (everything rendered) apart. The garbage collector is
tuned as the daemon tunes it (`exporter.core.collector`) unless `--no-gc-tuning`. `--repeat`
builds and scrapes that many times; the figures are medians over the repetitions.

    python -m bench.render --pairs 1000 --running 200 --repeat 5
    python -m bench.render --pairs 10000 --running 0 --repeat 3 [--touch 1]
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from typing import Any

import exporter
from bench.common import machine_info, write_json
from exporter.core import collector
from exporter.metrics.exposition import Exposition, Format
from exporter.metrics.scrape import _gzip

try:
    from exporter.metrics.packing import gzip_chunks
except ImportError:  # a checkout from before: compared with the same command
    CHUNKED = False
else:
    CHUNKED = True
from exporter.ollama.progress import RunProgress
from exporter.ollama.protocol import ProgressLine
from exporter.ollama.tags import Held
from exporter.state.holdings import CheckResult
from exporter.state.pairs import ExporterState, PairState, RunResult

WALL = 1_765_000_000.0
"""Unix time at monotonic 0."""
LAYERS = 6
WEIGHTS = 4_683_075_271
"""Bytes of the first layer (the weights); the others are small."""


def _digest(seed: int, layer: int) -> str:
    return f"sha256:{seed:032x}{layer:032x}"


def _start(pair: PairState, seed: int, now: float) -> RunProgress:
    """A run of `pair` started at `now`: the manifest line and every layer's first line."""
    run = RunProgress(now, wall=WALL)
    pair.start_run(run)
    run.apply(ProgressLine("pulling manifest"), now)
    for layer in range(LAYERS):
        total = WEIGHTS if layer == 0 else 1_000 * (layer + 7)
        run.apply(ProgressLine(f"pulling {layer}", _digest(seed, layer), total, 0), now)
    for layer in range(1, LAYERS):  # the small ones arrive whole
        total = 1_000 * (layer + 7)
        run.apply(ProgressLine(f"pulling {layer}", _digest(seed, layer), total, total), now)
    return run


def _advance(run: RunProgress, seed: int, now: float, lines: int, step: int) -> None:
    """`lines` progress lines of the weights, `step` bytes further each."""
    done = run.completed_bytes
    for _ in range(lines):
        done = min(WEIGHTS - 1, done + step)
        run.apply(ProgressLine("pulling 0", _digest(seed, 0), WEIGHTS, done), now)


def _finish(pair: PairState, run: RunProgress, seed: int, now: float, run_id: int) -> None:
    _advance(run, seed, now, 1, WEIGHTS)
    run.apply(ProgressLine("verifying sha256 digest"), now)
    run.apply(ProgressLine("writing manifest"), now)
    run.apply(ProgressLine("success"), now)
    run.finish(now, succeeded=True)
    duration = now - run.started_at
    pair.finish_run(run, RunResult(None), ended_at=WALL + now, duration=duration, run_id=run_id)


def build(pairs: int, running: int, servers: int = 50) -> ExporterState:
    """`pairs` pairs after one finished run each, `running` of them pulling again."""
    state = ExporterState(config_reload_successful=True)
    state.server_up = {f"gpu-node-{s:03d}": 1.0 for s in range(servers)}
    for index in range(pairs):
        server = f"gpu-node-{index % servers:03d}"
        model = f"library-model-{index // servers:04d}:8b-q4_K_M"
        pair = state.pairs[server, model] = PairState(server, model, 86_400.0)
        now = 100.0 + index / 7
        run = _start(pair, index, now)
        _advance(run, index, now + 1.3, 20, WEIGHTS // 25)
        _finish(pair, run, index, now + 30.0 + index % 97 / 3, index + 1)
        pair.schedule(WALL + 86_400 + index * 3.7)
        holding = pair.holding
        holding.tracked = True
        holding.observe(_held(index), WALL + now)
        if index % 10 == 0:  # a few in check mode
            holding.set_checking(True)
            holding.checked(CheckResult.OK, _digest(index, 0))
    table = list(state.pairs.values())
    # Spread over the table as in the fleet (each server pulls a few of its models at once).
    for index in range(running):
        row = index * len(table) // running
        _start(table[row], row, 5_000.0)
    return state


def _held(index: int) -> Held:
    return Held(_digest(index, 0)[7:], WEIGHTS + 40_000)


def _tick(state: ExporterState, tick: int, lines: int, turnover: int, touch: int) -> None:
    """A second of the fleet: running runs stream `lines` lines; `turnover` end, as many start;
    `touch` idle pairs are written (rescheduled)."""
    now = 5_000.0 + tick
    pairs = list(state.pairs.values())
    for index in range(touch):
        pairs[(tick * 7_919 + index * 104_729) % len(pairs)].schedule(WALL + now + index)
    running = [(index, p) for index, p in enumerate(pairs) if p.current is not None]
    for index, pair in running:
        assert pair.current is not None
        _advance(pair.current, index, now, lines, 3_100_000 + index)
    draw = random.Random(tick)  # the same runs end and start in every repetition and checkout
    ending = draw.sample(running, min(turnover, len(running)))
    for index, pair in ending:
        assert pair.current is not None
        _finish(pair, pair.current, index, now, 100_000 + tick * 1_000 + index)
    idle = [(index, p) for index, p in enumerate(pairs) if p.current is None]
    for index, pair in draw.sample(idle, min(len(ending), len(idle))):
        _start(pair, index, now)


def one(args: argparse.Namespace, fmt: Format) -> dict[str, Any]:
    """Build the fleet once and scrape it `--scrapes` times."""
    state = build(args.pairs, args.running)
    exposition = Exposition(state)
    kept: tuple[object, bytes] | None = None
    chunks: Any = (b"", {})
    loop_ms: list[float] = []
    gzip_ms: list[float] = []
    size = wire = 0
    if args.gc_tuning:  # as the daemon after start-up: what it built kept out of the sweeps
        collector.tune()
        collector.settle()
    else:
        gc.collect()
    for tick in range(args.scrapes + 1):
        if tick:
            _tick(state, tick, args.lines, args.turnover, args.touch)
        started = time.process_time()
        unless = None if kept is None else kept[0]
        pieces: list[Any] | None
        runs: list[Any] | None = None
        if CHUNKED:  # the gzip of the chunks that did not change kept, as the handler does
            runs = exposition.chunks(fmt, unless=unless)
            rendered = time.process_time()
            pieces = None
            if runs is not None:
                packed, chunks = gzip_chunks(runs, chunks)
                kept = (exposition.last_key, packed)
        else:  # a checkout from before (the whole body compressed each time)
            pieces = exposition.pieces(fmt, unless=unless)
            rendered = time.process_time()
            if pieces is not None:
                kept = (exposition.last_key, _gzip(pieces))
        zipped = time.process_time()
        if runs is not None:
            pieces = [piece for _, run in runs for piece in run]
        if pieces is not None:
            size, wire = sum(map(len, pieces)), len(kept[1]) if kept is not None else 0
        loop_ms.append((rendered - started) * 1000)
        gzip_ms.append((zipped - rendered) * 1000)
    steady, steady_gzip = loop_ms[1:], gzip_ms[1:]
    return {
        "first_loop_ms": loop_ms[0],
        "first_gzip_ms": gzip_ms[0],
        "loop_ms_mean": statistics.fmean(steady),
        "loop_ms_median": statistics.median(steady),
        "loop_ms_max": max(steady),
        "gzip_ms_mean": statistics.fmean(steady_gzip),
        "cpu_ms_mean": statistics.fmean(a + b for a, b in zip(steady, steady_gzip, strict=True)),
        "body_bytes": size,
        "gzip_bytes": wire,
    }


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.render", description=__doc__)
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--running", type=int, default=200)
    parser.add_argument("--lines", type=int, default=16, help="lines per running run a second")
    parser.add_argument(
        "--turnover", type=int, default=7, help="runs ending a second (200 pulls of 30 s)"
    )
    parser.add_argument("--touch", type=int, default=0, help="idle pairs written a second")
    parser.add_argument("--scrapes", type=int, default=30)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--format", choices=[f.value for f in Format], default="openmetrics")
    parser.add_argument(
        "--no-gc-tuning",
        dest="gc_tuning",
        action="store_false",
        help="leave the collector as CPython sets it (the daemon tunes it)",
    )
    parser.add_argument("--json", help="write the report here")
    args = parser.parse_args(argv)
    fmt = Format(args.format)
    rounds = [one(args, fmt) for _ in range(args.repeat)]
    medians = {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}
    report = {
        "benchmark": "render",
        "exporter": exporter.__file__,
        "args": vars(args),
        "median": medians,
        "rounds": rounds,
        "machine": machine_info(),
    }
    write_json(args.json, report)
    print(f"exporter from {exporter.__file__}", file=sys.stderr)
    print(
        f"{args.pairs} pairs, {args.running} running, {fmt.value}: per scrape (medians of "
        f"{args.repeat}) loop {medians['loop_ms_mean']:.1f} ms mean, "
        f"{medians['loop_ms_max']:.1f} max; gzip {medians['gzip_ms_mean']:.1f} ms; "
        f"CPU {medians['cpu_ms_mean']:.1f} ms; first scrape {medians['first_loop_ms']:.0f} "
        f"+ {medians['first_gzip_ms']:.0f} ms; body {medians['body_bytes'] / 2**20:.2f} MiB, "
        f"gzip {medians['gzip_bytes'] / 2**10:.0f} KiB"
    )
    print(json.dumps(medians, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
