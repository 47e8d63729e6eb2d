"""Recorded real-Ollama answers, replayed by the simulator, give the exporter's real numbers.

The transcripts under tests/e2e/real/transcripts/<version>/ were recorded by the real tier
(`RECORD_TRANSCRIPTS=1 pytest -m real`), one folder per Ollama release CI builds. Each carries
what the exporter reported against the real server; here the simulator replays the recording
(sped up) and the real exporter process must report exactly that again, for every release. This keeps the fast suite honest about real streams
without needing Ollama.

The tests that start processes are in tests/e2e/test_replay_process.py.
"""

from __future__ import annotations

import pytest

from ollama_sim import (
    TICK,
    Disconnect,
    HttpError,
    Layer,
    Raw,
    Sleep,
    Stall,
)
from ollama_sim.replay import Transcript, load_transcripts
from ollama_sim.steps import ScenarioError
from tests.e2e.real.ollama import CI_VERSIONS
from tests.e2e.real.rig import TRANSCRIPTS

RELEASES = {d.name: load_transcripts(d) for d in sorted(TRANSCRIPTS.iterdir()) if d.is_dir()}
"""Release -> scenario -> transcript: every recorded release."""
SCENARIOS = frozenset({
    "fresh", "uptodate", "moved", "not-found", "bad-name", "registry-down", "registry-500",
    "registry-401", "registry-basic-auth", "stalled", "cut", "corrupt", "disk-full",
    "killed", "resumed", "secure-vs-http",
})  # fmt: skip
"""What the real tier records for each release."""


@pytest.mark.parametrize("version", CI_VERSIONS)
def test_transcripts_of_every_release_ci_builds_exist(version: str) -> None:
    assert version in RELEASES, f"no transcripts of Ollama {version}"
    assert RELEASES[version].keys() >= SCENARIOS
    assert {t.ollama_version for t in RELEASES[version].values()} == {version}


def _transcript(**changes: object) -> Transcript:
    fields: dict[str, object] = {
        "ollama_version": "0.17.4",
        "scenario": "t",
        "request": {"model": "m", "insecure": True, "stream": True},
        "status": 200,
        "content_type": "application/x-ndjson",
        "lines": ((0.01, '{"status":"pulling manifest"}'), (0.5, '{"status":"success"}')),
        "end": "complete",
    }
    fields.update(changes)
    return Transcript(**fields)  # type: ignore[arg-type]


def test_replay_steps_keep_lines_and_gaps() -> None:
    steps = _transcript().replay().steps
    assert steps == (
        Sleep(0.01),
        Raw(b'{"status":"pulling manifest"}\n'),
        Sleep(0.49),
        Raw(b'{"status":"success"}\n'),
    )


def test_replay_ends_like_the_recording() -> None:
    assert _transcript(end="cut").replay().steps[-1] == Disconnect(reset=True)
    assert _transcript(end="left").replay().steps[-1] == Stall()
    answer = _transcript(status=400, content_type="application/json; charset=utf-8",
                         lines=((0.002, '{"error":"invalid model name"}'),))  # fmt: skip
    assert answer.replay().steps == (
        Sleep(0.002),
        HttpError(400, '{"error":"invalid model name"}', "application/json; charset=utf-8"),
    )


def test_file_form_round_trips() -> None:
    transcript = _transcript(expect={"runs": 1}, settings={"stall_timeout": 3.0})
    assert Transcript.from_json(transcript.to_json()) == transcript
    assert transcript.to_json().count("\n") == len(transcript.lines) + 2


def test_bad_transcripts_are_refused() -> None:
    with pytest.raises(ScenarioError, match="end must be one of"):
        _transcript(end="gone")
    with pytest.raises(ScenarioError, match="never go backwards"):
        _transcript(lines=((1.0, "{}"), (0.5, "{}")))
    with pytest.raises(ScenarioError, match=r"x\.json: not a transcript"):
        Transcript.from_json('{"lines": 3}', "x.json")


def test_statuses_collapse_runs_of_one_status() -> None:
    transcript = _transcript(
        lines=(
            (0.0, '{"status":"pulling manifest"}'),
            (0.1, '{"status":"pulling ab","digest":"sha256:ab","total":2}'),
            (0.2, '{"status":"pulling ab","digest":"sha256:ab","total":2,"completed":2}'),
            (0.3, '{"error":"boom"}'),
        )
    )
    assert transcript.statuses() == ["pulling manifest", "pulling ab", "error: boom"]


def test_settle_ticks_end_a_blob_with_full_lines_on_the_tick_grid() -> None:
    small = Layer(1000, rate=1e6, settle_ticks=3)  # fits in the first tick
    assert tuple(small.wire_values()) == (1000, 1000, 1000)
    assert small.nominal_seconds() == pytest.approx(3 * TICK)
    big = Layer(250, ticks=2, latency_ticks=0, settle_ticks=2)
    assert tuple(big.wire_values()) == (125, 250, 250)
    assert big.nominal_seconds() == pytest.approx(3 * TICK)
    assert tuple(Layer(250, ticks=2).wire_values()) == (0, 125)  # the default: no 100% line
    with pytest.raises(ScenarioError, match="settle_ticks"):
        Layer(10, settle_ticks=-1)
