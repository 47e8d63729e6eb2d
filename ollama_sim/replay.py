"""Recorded answers of a real Ollama server, and their replay by the simulator.

A transcript is one `POST /api/pull` answer as it arrived from a real `ollama serve`: the
status and content type, every line with its arrival time (seconds after the request), and
how the answer ended (`complete`; `cut`: the server died mid-answer; `left`: the client gave
up first). `Transcript.replay()` turns it into simulator steps that send the same lines,
one chunk each, at the same times (scaled by the simulator's `time_scale`), then end the same
way. Transcripts are JSON files, one line of the answer per line of the file, named by the
Ollama version that produced them (`tests/e2e/real/transcripts/<version>/<scenario>.json`).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from ollama_sim.scenario import Scenario
from ollama_sim.steps import Disconnect, HttpError, Raw, ScenarioError, Sleep, Stall, Step

ENDS: Final = ("complete", "cut", "left")


@dataclass(frozen=True, slots=True)
class Transcript:
    """One recorded answer. `expect` holds what the exporter reported for the real run."""

    ollama_version: str
    scenario: str
    request: dict[str, object]
    status: int
    content_type: str | None
    lines: tuple[tuple[float, str], ...]
    end: str
    expect: dict[str, object] = field(default_factory=dict)
    settings: dict[str, float] = field(default_factory=dict)
    """The exporter settings of the recorded run, in seconds (`stall_timeout`, `timeout`)."""

    def __post_init__(self) -> None:
        if self.end not in ENDS:
            raise ScenarioError(f"transcript end must be one of {ENDS}, not {self.end!r}")
        times = [t for t, _ in self.lines]
        if any(b < a for a, b in itertools.pairwise(times)) or any(t < 0 for t in times):
            raise ScenarioError("transcript times must be >= 0 and never go backwards")

    def replay(self) -> Scenario:
        """Simulator steps that answer like the recording did."""
        if self.status != 200:
            body = "\n".join(line for _, line in self.lines)
            delay = self.lines[0][0] if self.lines else 0.0
            before: list[Step] = [Sleep(delay)] if delay > 0 else []
            return Scenario(
                *before,
                HttpError(self.status, body, self.content_type),
                name=self.scenario_name,
            )
        steps: list[Step] = []
        previous = 0.0
        for at, line in self.lines:
            if at > previous:
                steps.append(Sleep(round(at - previous, 6)))
                previous = at
            steps.append(Raw(line.encode() + b"\n"))
        if self.end == "cut":
            steps.append(Disconnect(reset=True))
        elif self.end == "left":
            steps.append(Stall())
        return Scenario(*steps, name=self.scenario_name)

    @property
    def scenario_name(self) -> str:
        """`<version>/<scenario>`: where the recording came from."""
        return f"{self.ollama_version}/{self.scenario}"

    @property
    def duration(self) -> float:
        """Seconds from the request to the last line."""
        return self.lines[-1][0] if self.lines else 0.0

    def statuses(self) -> list[str]:
        """The `status` of each line in order (`error: …` for an error line), runs collapsed."""
        out: list[str] = []
        for _, line in self.lines:
            try:
                value = json.loads(line)
            except ValueError:
                value = {"status": line}
            if not isinstance(value, dict):
                continue
            text = f"error: {value['error']}" if "error" in value else str(value.get("status"))
            if not out or out[-1] != text:
                out.append(text)
        return out

    def to_json(self) -> str:
        """The file form: a JSON object with one answer line per line, diff-friendly."""
        head = {
            "ollama_version": self.ollama_version,
            "scenario": self.scenario,
            "request": self.request,
            "status": self.status,
            "content_type": self.content_type,
            "end": self.end,
            "expect": self.expect,
            "settings": self.settings,
        }
        parts = [json.dumps(head, sort_keys=True)[:-1], ', "lines": [']
        parts.append(",".join(f"\n  {json.dumps([t, line])}" for t, line in self.lines))
        parts.append("\n]}\n")
        return "".join(parts)

    @classmethod
    def from_json(cls, text: str, source: str = "<transcript>") -> Transcript:
        """Parse the file form; a malformed file raises ScenarioError naming `source`."""
        try:
            doc = json.loads(text)
            lines = tuple((float(t), str(line)) for t, line in doc["lines"])
            return cls(
                ollama_version=str(doc["ollama_version"]),
                scenario=str(doc["scenario"]),
                request=dict(doc["request"]),
                status=int(doc["status"]),
                content_type=doc["content_type"],
                lines=lines,
                end=str(doc["end"]),
                expect=dict(doc.get("expect", {})),
                settings={str(k): float(v) for k, v in doc.get("settings", {}).items()},
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ScenarioError(f"{source}: not a transcript: {exc}") from exc


def load_transcript(path: str | Path) -> Transcript:
    """Read one transcript file."""
    return Transcript.from_json(Path(path).read_text(encoding="utf-8"), str(path))


def load_transcripts(directory: str | Path) -> dict[str, Transcript]:
    """Every `*.json` transcript in `directory`, by scenario name."""
    out: dict[str, Transcript] = {}
    for path in sorted(Path(directory).glob("*.json")):
        transcript = load_transcript(path)
        out[transcript.scenario] = transcript
    return out
