"""Load generator: many simulated Ollama servers (`ollama_sim/`) in one process.

Each server listens on its own 127.0.0.1 port and answers every model with the same kind
of run, played at real Ollama timing (a progress line every 60 ms per stream):

- `stream`: a fresh pull whose big layer spans `--pull-seconds` (varied by +-`--spread`
  per model so streams do not all end at once), plus two small layers, then `verifying sha256
  digest` and `--verify-seconds` of silence, `writing manifest`, `removing unused layers` and
  `--prune-seconds` of silence, success (the two silences are what the phase-timing error of
  bench.fleet is measured against);
- `uptodate`: a re-pull of a model already present (four lines, no waiting).

It prints one JSON line `{"urls": [...]}` when every server listens, then writes
`{"t", "lines", "open", "requests", "cpu"}` to `--stats` every second until SIGTERM.

    python -m bench.fleet_sim --servers 50 --models 20 --mode stream --stats /tmp/s.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import signal
import sys
import time
from pathlib import Path

from bench.common import own_cpu_seconds
from ollama_sim import (
    TICK,
    Layer,
    Manifest,
    OllamaSimulator,
    Prune,
    Scenario,
    Stall,
    Success,
    Verify,
    Write,
    up_to_date,
)
from ollama_sim.record import OUTCOME_COMPLETED

BIG_LAYER = 2_000_000_000
SMALL_LAYERS = (11_000, 480)


def model_name(index: int) -> str:
    """The name of model `index` on every server."""
    return f"bench/model-{index:03d}:latest"


VERIFY_SECONDS = 0.3
PRUNE_SECONDS = 0.2


def stream_run(
    seconds: float, verify: float = VERIFY_SECONDS, prune: float = PRUNE_SECONDS
) -> Scenario:
    """A fresh pull whose lines arrive every 60 ms for about `seconds`, then verify and prune."""
    ticks = max(1, round(seconds / TICK))
    return Scenario(
        Manifest(),
        Layer(BIG_LAYER, ticks=ticks),
        *(Layer(size, ticks=1) for size in SMALL_LAYERS),
        Verify(verify),
        Write(),
        *([Prune(), Stall(prune)] if prune else []),
        Success(),
        name="bench_stream",
    )


def scenarios(
    mode: str,
    models: int,
    pull_seconds: float,
    spread: float,
    *,
    verify: float = VERIFY_SECONDS,
    prune: float = PRUNE_SECONDS,
) -> dict[str, list[Scenario]]:
    """The runs of one server: the same model list on every server."""
    runs: dict[str, list[Scenario]] = {}
    for index in range(models):
        if mode == "uptodate":
            runs[model_name(index)] = [up_to_date([BIG_LAYER, *SMALL_LAYERS])]
        else:
            # Spread the lengths evenly over [1 - spread, 1 + spread] * pull_seconds.
            share = (index + 0.5) / models if models else 0.5
            seconds = pull_seconds * (1 - spread + 2 * spread * share)
            runs[model_name(index)] = [stream_run(seconds, verify, prune)]
    return runs


_PHASE_ENDS = frozenset(
    ("verifying sha256 digest", "writing manifest", "removing unused layers", "success")
)
"""The lines that start and end verify and prune."""


def played_phases(sims: list[OllamaSimulator]) -> dict[str, list[float]]:
    """Per `server index/model`: its completed runs, then the last one's verify and prune as
    played (seconds from one line to the next as written, the simulator's late wake-ups in)."""
    played: dict[str, list[float]] = {}
    for index, sim in enumerate(sims):
        for record in sim.requests:
            if record.outcome != OUTCOME_COMPLETED or record.model is None:
                continue
            key = f"{index}/{record.model}"
            count = played[key][0] + 1 if key in played else 1
            at = record.sent_at
            if at.keys() >= _PHASE_ENDS:
                verify = at["writing manifest"] - at["verifying sha256 digest"]
                prune = at["success"] - at["removing unused layers"]
                played[key] = [count, verify, prune]
            else:
                played[key] = [count, math.nan, math.nan]
    return played


async def serve(args: argparse.Namespace) -> None:
    """Start the servers, report their URLs, write stats every second until SIGTERM."""
    sims = [
        OllamaSimulator(
            scenarios(
                args.mode,
                args.models,
                args.pull_seconds,
                args.spread,
                verify=args.verify_seconds,
                prune=args.prune_seconds,
            )
        )
        for _ in range(args.servers)
    ]
    for sim in sims:  # every model already on disk: each /api/tags answer lists them all
        for index in range(args.models):
            sim.hold(model_name(index), size=BIG_LAYER)
    urls = [await sim.start("127.0.0.1", 0) for sim in sims]
    print(json.dumps({"urls": urls}), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    stats = Path(args.stats) if args.stats else None
    try:
        while not stop.is_set():
            if stats is not None:
                requests = [record for sim in sims for record in sim.requests]
                snapshot = {
                    "t": time.monotonic(),
                    "lines": sum(record.lines_sent for record in requests),
                    "open": sum(sim.active_overall for sim in sims),
                    "requests": len(requests),
                    "cpu": own_cpu_seconds(),
                    "phases": played_phases(sims),
                }
                tmp = stats.with_suffix(".tmp")
                tmp.write_text(json.dumps(snapshot))
                tmp.replace(stats)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
    finally:
        await asyncio.gather(*(sim.stop() for sim in sims))


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_sim", description=__doc__)
    parser.add_argument("--servers", type=int, default=50)
    parser.add_argument("--models", type=int, default=20, help="models per server")
    parser.add_argument("--mode", choices=("stream", "uptodate"), default="stream")
    parser.add_argument("--pull-seconds", type=float, default=30.0)
    parser.add_argument("--spread", type=float, default=0.3)
    parser.add_argument("--verify-seconds", type=float, default=VERIFY_SECONDS)
    parser.add_argument("--prune-seconds", type=float, default=PRUNE_SECONDS)
    parser.add_argument("--stats", help="file to rewrite every second with counters")
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
