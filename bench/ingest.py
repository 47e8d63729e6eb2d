"""Ingest benchmark: lines per CPU-second of four ways to consume one `/api/pull` stream.

One simulator process (`ollama_sim/`) streams a pull of `--lines` real-shaped lines
(the `bulk_pull` scenario: several layers of `pulling <hex>` lines with digest, total and
completed, then verify, write, success) as fast as the socket takes it. The body is rendered
once when the simulator starts and played as `raw` steps of 512 lines each, the same bytes
and HTTP chunks as `bulk_pull`: generating lines per request costs the simulator about 1 us
a line, which made it slower than the fastest consumers, and a consumer that waits on its
producer reads smaller chunks and pays more per line, so the comparison would depend on it.
Each consumer runs in a fresh process of its own, in alternation A B C D A B C D ..., and
measures its own CPU seconds (user + system, `getrusage`) from the request to the end of
the stream:

- A: the exporter's production path, `exporter.clients.pull.run_pull` with a real `ExporterState`,
  its `PairState`, the real collector registered (one scrape at the end is measured too) and
  the run recorded in a `History` with its transcript, as every run of the exporter is;
- B: the official `ollama` client, `AsyncClient(host).pull(model, stream=True)`;
- C: plain aiohttp, `async for line in resp.content: json.loads(line)`;
- D: the floor: aiohttp chunks split on newlines and decoded with msgspec, nothing else.

    python -m bench.ingest                      # 500,000 lines, 7 rounds
    python -m bench.ingest --lines 2000 --rounds 1 --json /tmp/ingest.json

The simulator is pinned to the other CPU(s) than the consumers, so it never steals their
core; CPU seconds are the consumer's own either way.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import time
from typing import TYPE_CHECKING, Any

from bench.common import (
    Summary,
    cpu_layout,
    machine_info,
    own_cpu_seconds,
    python_command,
    read_line,
    running,
    start_process,
    stop_process,
    write_json,
)

if TYPE_CHECKING:
    import subprocess

MODEL = "bench/ingest:latest"
CONSUMERS = ("A", "B", "C", "D")
NAMES = {
    "A": "exporter (run_pull + state + collector)",
    "B": "ollama AsyncClient.pull(stream=True)",
    "C": "aiohttp + json.loads per line",
    "D": "floor: aiohttp chunks + msgspec",
}


def ollama_available() -> bool:
    """True if the official `ollama` client is installed (consumer B)."""
    return importlib.util.find_spec("ollama") is not None


# --------------------------------------------------------------------------- consumers


async def _consume_a(url: str) -> dict[str, Any]:
    from prometheus_client import generate_latest  # noqa: PLC0415

    from exporter.clients.pull import make_session, run_pull  # noqa: PLC0415
    from exporter.config.types import Config, ModelConfig, PullSettings, ServerConfig  # noqa: PLC0415
    from exporter.metrics.families import build_registry  # noqa: PLC0415
    from exporter.state.history import History, Trigger  # noqa: PLC0415
    from exporter.state.pairs import ExporterState, sync_pairs  # noqa: PLC0415

    settings = PullSettings(
        interval=3600.0,
        jitter=0.0,
        timeout=3600.0,
        stall_timeout=600.0,
        insecure=False,
        run_on_start=True,
    )
    model = ModelConfig(MODEL, settings)
    server = ServerConfig("bench", url, (), 1, (model,))
    state = ExporterState()
    sync_pairs(state, Config("bench", (server,)))
    registry = build_registry(state)
    pair = state.pairs[server.name, model.name]
    history = History()
    async with make_session() as session:
        before, wall = own_cpu_seconds(), time.perf_counter()
        # As shipped: every run is recorded in the history with its transcript.
        active = history.reserve(server.name, model.name, Trigger.SCHEDULE)
        result = await run_pull(session, server, model, state, pair, active=active)
        history.finish(active, result, pair)
        exposition = generate_latest(registry)
        cpu, wall = own_cpu_seconds() - before, time.perf_counter() - wall
    if not result.succeeded:
        raise RuntimeError(f"run failed: {result}")
    assert pair.last is not None
    return {
        "cpu": cpu,
        "wall": wall,
        "lines": None,  # filled by the parent: the exporter does not count lines
        "downloaded": pair.downloaded_total,
        "layers": pair.last.layers,
        "exposition_bytes": len(exposition),
    }


async def _consume_b(url: str) -> dict[str, Any]:
    # Imported by name: the bench/test extra has it, a bare install may not.
    client: Any = importlib.import_module("ollama").AsyncClient(host=url)
    lines = 0
    before, wall = own_cpu_seconds(), time.perf_counter()
    async for _event in await client.pull(MODEL, stream=True):
        lines += 1
    cpu, wall = own_cpu_seconds() - before, time.perf_counter() - wall
    return {"cpu": cpu, "wall": wall, "lines": lines}


async def _consume_c(url: str) -> dict[str, Any]:
    import aiohttp  # noqa: PLC0415

    body = {"model": MODEL, "insecure": False, "stream": True}
    lines = 0
    async with aiohttp.ClientSession() as session:
        before, wall = own_cpu_seconds(), time.perf_counter()
        async with session.post(f"{url}/api/pull", json=body) as response:
            async for line in response.content:
                json.loads(line)
                lines += 1
        cpu, wall = own_cpu_seconds() - before, time.perf_counter() - wall
    return {"cpu": cpu, "wall": wall, "lines": lines}


async def _consume_d(url: str) -> dict[str, Any]:
    import aiohttp  # noqa: PLC0415
    import msgspec  # noqa: PLC0415

    class Line(msgspec.Struct, frozen=True, gc=False):  # the fastest msgspec setup
        status: str | None = None
        digest: str | None = None
        total: int | None = None
        completed: int | None = None
        error: str | None = None

    decode_lines = msgspec.json.Decoder(Line).decode_lines
    body = {"model": MODEL, "insecure": False, "stream": True}
    lines = 0
    tail = b""
    async with aiohttp.ClientSession() as session:
        before, wall = own_cpu_seconds(), time.perf_counter()
        async with session.post(f"{url}/api/pull", json=body) as response:
            async for chunk in response.content.iter_any():
                end = chunk.rfind(b"\n") + 1
                if not end:
                    tail += chunk
                    continue
                lines += len(decode_lines(tail + chunk[:end] if tail else chunk[:end]))
                tail = chunk[end:]
        cpu, wall = own_cpu_seconds() - before, time.perf_counter() - wall
    return {"cpu": cpu, "wall": wall, "lines": lines}


_CONSUMERS = {"A": _consume_a, "B": _consume_b, "C": _consume_c, "D": _consume_d}


def child_main(consumer: str, url: str) -> int:
    """Run one consumer once and print its measurement as one JSON line."""
    result = asyncio.run(_CONSUMERS[consumer](url))
    print(json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------- the driver


BATCH = 512
"""Lines per HTTP chunk, as `bulk_pull` writes them."""


def _expected(lines: int, layers: int) -> tuple[int, int]:
    """(lines on the wire, downloaded bytes) of the bulk_pull scenario."""
    from ollama_sim import bulk_pull  # noqa: PLC0415

    scenario = bulk_pull(lines, layers, batch=BATCH)
    return len(scenario.expected_lines(MODEL)), scenario.expected_downloaded()


def prerendered(lines: int, layers: int) -> Any:  # noqa: ANN401 - an ollama_sim.Scenario
    """`bulk_pull(lines, layers)` with its body rendered now: raw steps of `BATCH` lines."""
    from ollama_sim import Raw, Scenario, bulk_pull  # noqa: PLC0415

    body = bulk_pull(lines, layers, batch=BATCH).expected_lines(MODEL)
    head, rest = body[:1], body[1:]  # `pulling manifest` goes alone, as in bulk_pull
    steps = [Raw(head[0] + b"\n")]
    for start in range(0, len(rest) - 3, BATCH):
        chunk = rest[start : min(start + BATCH, len(rest) - 3)]
        steps.append(Raw(b"\n".join(chunk) + b"\n"))
    steps += [Raw(line + b"\n") for line in rest[-3:]]  # verify, write, success
    return Scenario(*steps, name="bulk_pull_prerendered")


async def _serve(lines: int, layers: int) -> None:
    from ollama_sim import OllamaSimulator, serve_until_signal  # noqa: PLC0415

    sim = OllamaSimulator({MODEL: [prerendered(lines, layers)]})
    await serve_until_signal(sim, "127.0.0.1", 0)


def start_server(lines: int, layers: int, cpus: set[int]) -> tuple[subprocess.Popen[bytes], str]:
    """The simulator with the pre-rendered pull, on a free port; (process, base URL)."""
    process = start_process(
        python_command("bench.ingest", "--serve", f"--lines={lines}", f"--layers={layers}"),
        cpus=cpus,
    )
    try:
        line = read_line(process, 120)
    except BaseException:
        stop_process(process)
        raise
    return process, line.removeprefix("listening on ").strip()


def run_benchmark(
    lines: int, layers: int, rounds: int, consumers: tuple[str, ...]
) -> dict[str, Any]:
    """Alternate the consumers `rounds` times against one simulator; return the report."""
    wire_lines, downloaded = _expected(lines, layers)
    measured_cpus, helper_cpus = cpu_layout()
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in consumers}
    sim, url = start_server(lines, layers, helper_cpus)
    with running(sim):
        for _ in range(rounds):
            for name in consumers:
                child = start_process(
                    python_command("bench.ingest", "--child", name, "--url", url),
                    cpus=measured_cpus,
                )
                with running(child):
                    sample = json.loads(read_line(child, 600))
                    if child.wait(60) != 0:
                        raise RuntimeError(f"consumer {name} exited {child.returncode}")
                if name == "A":
                    if sample["downloaded"] != downloaded:
                        raise RuntimeError(f"A counted {sample['downloaded']} bytes")
                    sample["lines"] = wire_lines
                elif sample["lines"] != wire_lines:
                    raise RuntimeError(f"{name} saw {sample['lines']} of {wire_lines} lines")
                sample["lines_per_cpu_second"] = wire_lines / sample["cpu"]
                samples[name].append(sample)
                print(
                    f"  {name}: {sample['cpu']:.3f} CPU-s, {sample['wall']:.3f} s wall, "
                    f"{sample['lines_per_cpu_second']:,.0f} lines/CPU-s",
                    file=sys.stderr,
                    flush=True,
                )
    rates = {
        name: Summary.of([s["lines_per_cpu_second"] for s in runs])
        for name, runs in samples.items()
    }
    ratios: dict[str, dict[str, float]] = {}
    for other in consumers:
        if other != "A" and "A" in rates:
            per_round = [
                a["lines_per_cpu_second"] / o["lines_per_cpu_second"]
                for a, o in zip(samples["A"], samples[other], strict=True)
            ]
            summary = Summary.of(per_round)
            ratios[f"A/{other}"] = {
                "of_medians": rates["A"].median / rates[other].median,
                **{f"per_round_{k}": v for k, v in summary.to_json().items() if k != "n"},
            }
    return {
        "benchmark": "ingest",
        "machine": machine_info(),
        "placement": {
            "consumer_cpus": sorted(measured_cpus),
            "simulator_cpus": sorted(helper_cpus),
        },
        "lines": wire_lines,
        "layers": layers,
        "rounds": rounds,
        "consumers": {name: NAMES[name] for name in consumers},
        "samples": samples,
        "lines_per_cpu_second": {name: s.to_json() for name, s in rates.items()},
        "ratios": ratios,
    }


def format_report(report: dict[str, Any]) -> str:
    """A Markdown table of the results."""
    out = [
        f"{report['lines']:,} lines, {report['layers']} layers, {report['rounds']} rounds",
        "",
        "| consumer | lines per CPU-second (median) | min | max | CPU s (median) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rate in report["lines_per_cpu_second"].items():
        cpu = Summary.of([s["cpu"] for s in report["samples"][name]])
        out.append(
            f"| {name}: {report['consumers'][name]} | {rate['median']:,.0f} | "
            f"{rate['min']:,.0f} | {rate['max']:,.0f} | {cpu.median:.3f} |"
        )
    out += [
        "",
        "| ratio | of medians | per round: median | min | max |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, ratio in report["ratios"].items():
        out.append(
            f"| {label} | {ratio['of_medians']:.2f} | {ratio['per_round_median']:.2f} | "
            f"{ratio['per_round_min']:.2f} | {ratio['per_round_max']:.2f} |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    """Command line: the driver, or (`--child`) one consumer run."""
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__)
    parser.add_argument("--lines", type=int, default=500_000, help="layer lines in the pull")
    parser.add_argument("--layers", type=int, default=8, help="layers in the pull")
    parser.add_argument("--rounds", type=int, default=7, help="rounds of A B C D")
    parser.add_argument("--consumers", default="ABCD", help="which consumers, e.g. ACD")
    parser.add_argument("--json", help="write the full report here")
    parser.add_argument("--child", choices=CONSUMERS, help=argparse.SUPPRESS)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child, args.url)
    if args.serve:
        asyncio.run(_serve(args.lines, args.layers))
        return 0
    consumers = tuple(c for c in CONSUMERS if c in args.consumers.upper())
    if "B" in consumers and not ollama_available():
        print("the ollama package is not installed: skipping B", file=sys.stderr)
        consumers = tuple(c for c in consumers if c != "B")
    report = run_benchmark(args.lines, args.layers, args.rounds, consumers)
    write_json(args.json, report)
    print(format_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
