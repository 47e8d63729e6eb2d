"""`python -m ollama_sim`: serve a scenario file until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import typing
from pathlib import Path

from ollama_sim.scenario_file import ScenarioFile, demo_scenarios, load_scenario_file
from ollama_sim.server import OllamaSimulator, serve_until_signal
from ollama_sim.steps import ScenarioError
from ollama_sim.wire import OLLAMA_VERSION

if typing.TYPE_CHECKING:
    from collections.abc import Sequence

    from ollama_sim.record import RequestRecord


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ollama_sim", description="Simulated Ollama server (POST /api/pull)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=11434, help="port; 0 picks a free one")
    parser.add_argument(
        "--scenarios",
        help="scenario file, JSON or YAML (docs/simulator.md); without it every model is unknown",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="serve the packaged demo scenarios (those of ollama-pull-exporter --demo)",
    )
    parser.add_argument("--time-scale", type=float, help="delay multiplier (default: file, else 1)")
    parser.add_argument(
        "--ollama-version",
        default=OLLAMA_VERSION,
        help=f"answer of /api/version (default {OLLAMA_VERSION})",
    )
    parser.add_argument("--record", help="append one JSON line per finished pull request here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until SIGINT or SIGTERM; exit 0, or 1 on a bad scenario file."""
    args = _parse_args(argv)
    if args.demo and args.scenarios:
        print("error: --demo and --scenarios exclude each other", file=sys.stderr)
        return 2
    try:
        if args.demo:
            loaded = demo_scenarios()
        else:
            loaded = load_scenario_file(args.scenarios) if args.scenarios else ScenarioFile({})
    except (OSError, ScenarioError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    scale = args.time_scale if args.time_scale is not None else loaded.time_scale
    record_file = Path(args.record).open("a", encoding="utf-8") if args.record else None  # noqa: SIM115

    def write_record(record: RequestRecord) -> None:
        if record_file is not None:
            record_file.write(json.dumps(record.to_json(), default=repr) + "\n")
            record_file.flush()

    sim = OllamaSimulator(
        loaded.models,
        time_scale=1.0 if scale is None else scale,
        unknown=loaded.unknown,
        version=args.ollama_version,
        loop=loaded.loop,
        on_finish=write_record,
    )
    try:
        asyncio.run(serve_until_signal(sim, args.host, args.port))
    finally:
        if record_file is not None:
            record_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
