"""Recorded real-Ollama answers, replayed by the simulator, give the exporter's real numbers.

The transcripts under tests/e2e/real/transcripts/<version>/ were recorded by the real tier
(`RECORD_TRANSCRIPTS=1 pytest -m real`), one folder per Ollama release CI builds. Each carries
what the exporter reported against the real server; here the simulator replays the recording
(sped up) and the real exporter process must report exactly that again, for every release. This keeps the fast suite honest about real streams
without needing Ollama.

This module holds the tests that start processes; tests/integration/test_replay.py holds the
in-process ones and the helpers both use.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import TYPE_CHECKING

import pytest

from ollama_sim import (
    SETTLE_TICKS_0_17,
    TICK,
    OllamaSimulator,
    Scenario,
    error_after_manifest,
    fresh_pull,
    not_found,
    up_to_date,
)
from tests.e2e.real.rig import exporter_for, replay_summary, summary, wait_runs

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from ollama_sim.replay import Transcript

from tests.integration.test_replay import RELEASES

ALL = {f"{v}/{name}": t for v, recorded in RELEASES.items() for name, t in recorded.items()}
REPLAY_SECONDS = 2.0
"""Each replay is sped up to take about this long (never slowed down)."""


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.e2e  # starts the exporter process (exporter_for)
def test_replay_reports_what_the_real_run_reported(name: str, tmp_path: Path) -> None:
    transcript = ALL[name]
    scale = min(1.0, REPLAY_SECONDS / max(transcript.duration, 0.001))
    assert replay_summary(transcript, tmp_path, time_scale=scale) == transcript.expect


def _lines_per_layer(lines: list[str]) -> dict[str, tuple[int, int, int]]:
    """Per digest: (lines, lines at 100%, first `completed`)."""
    out: dict[str, tuple[int, int, int]] = {}
    for line in lines:
        value = json.loads(line)
        if "digest" not in value:
            continue
        n, full, first = out.get(value["digest"], (0, 0, value.get("completed", 0)))
        out[value["digest"]] = (n + 1, full + (value.get("completed") == value["total"]), first)
    return out


@pytest.mark.parametrize("version", sorted(RELEASES))
@pytest.mark.e2e  # starts the exporter process (exporter_for)
def test_simulated_fresh_pull_is_shaped_like_the_recording(version: str, tmp_path: Path) -> None:
    """The simulator's `fresh_pull` with the real knobs against each release's recording.

    The knobs: the first tick already carries bytes (`latency_ticks=0`), and every blob ends
    with about 1 s of 100% lines (`settle_ticks`). Given the real first tick as its rate, the
    simulated pull makes the exporter report exactly what the real one did.
    """
    real = RELEASES[version]["fresh"]
    layers = _lines_per_layer([line for _, line in real.lines])
    sizes = [json.loads(next(ln for _, ln in real.lines if d in ln))["total"] for d in layers]
    first_tick = next(iter(layers.values()))[2]
    scenario = fresh_pull(
        sizes, rate=first_tick / TICK, latency_ticks=0, settle_ticks=SETTLE_TICKS_0_17
    )
    model = str(real.request["model"])
    body = scenario.expected_body(model).decode().splitlines()
    simulated = dataclasses.replace(real, lines=tuple((0.0, ln) for ln in body))
    assert simulated.statuses()[0] == real.statuses()[0] == "pulling manifest"
    assert simulated.statuses()[-3:] == real.statuses()[-3:]
    shape = _lines_per_layer(body)
    assert [v[2] for v in shape.values()] == [v[2] for v in layers.values()]
    small = [v[1] for v in list(layers.values())[1:]]
    assert [v[1] for v in list(shape.values())[1:]] == small == [SETTLE_TICKS_0_17] * len(small)
    sim = OllamaSimulator({model: [scenario]}, time_scale=0.2, version=real.ollama_version)
    with sim.running() as url, exporter_for(url, model, tmp_path) as exporter:
        wait_runs(exporter, model, 1, 60)
        assert summary(exporter, model) == real.expect


def _sizes(transcript: Transcript) -> list[int]:
    """The `total` of each layer of a recording, in order."""
    sizes: dict[str, int] = {}
    for _, line in transcript.lines:
        value = json.loads(line)
        if "digest" in value:
            sizes[value["digest"]] = value["total"]
    return list(sizes.values())


def _shape(transcript: Transcript) -> list[str]:
    """The statuses with layer digests blanked (the simulator makes its digests up)."""
    out: list[str] = []
    for status in transcript.statuses():
        text = re.sub(r"^pulling [0-9a-f]{12}$", "pulling <layer>", status)
        if not out or out[-1] != text:
            out.append(text)
    return out


def _last_error(transcript: Transcript) -> str:
    return str(json.loads(transcript.lines[-1][1])["error"])


BUILDERS: dict[str, Callable[[Transcript], Scenario]] = {
    "uptodate": lambda t: up_to_date(_sizes(t)),
    "not-found": lambda _: not_found(),
    "registry-down": lambda t: error_after_manifest(_last_error(t)),
    "registry-500": lambda t: error_after_manifest(_last_error(t)),
    "registry-401": lambda t: error_after_manifest(_last_error(t)),
    "registry-basic-auth": lambda t: error_after_manifest(_last_error(t)),
    "secure-vs-http": lambda t: error_after_manifest(_last_error(t)),
    "disk-full": lambda t: error_after_manifest(_last_error(t)),
    "bad-name": lambda _: not_found(),  # never played: the simulator refuses the name itself
}


@pytest.mark.parametrize(
    ("version", "name"), [(v, name) for v in sorted(RELEASES) for name in sorted(BUILDERS)]
)
@pytest.mark.e2e  # starts the exporter process (exporter_for)
def test_simulator_presets_match_the_real_recordings(
    version: str, name: str, tmp_path: Path
) -> None:
    """The simulator's own presets, fed the recorded texts and sizes, report what real Ollama did."""
    real = RELEASES[version][name]
    scenario = BUILDERS[name](real)
    if name != "bad-name":
        body = scenario.expected_body(str(real.request["model"])).decode().splitlines()
        simulated = dataclasses.replace(real, lines=tuple((0.0, ln) for ln in body))
        assert _shape(simulated) == _shape(real)
    model = str(real.request["model"])
    sim = OllamaSimulator({model: [scenario]}, version=real.ollama_version)
    with sim.running() as url, exporter_for(url, model, tmp_path, insecure=True) as exporter:
        wait_runs(exporter, model, 1, 60)
        assert summary(exporter, model) == real.expect
