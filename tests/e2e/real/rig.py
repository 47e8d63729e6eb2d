"""The real tier's moving parts together: run the exporter, summarise its metrics, record, replay.

A scenario run starts the real exporter process against the tap in front of `ollama serve`,
waits for its runs to finish and summarises the pair's series (the values the scenarios
assert exactly). The tap's recording becomes a `Transcript`; `replay_summary` runs the same
exporter config against the simulator replaying it, for the differential tests.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from ollama_sim import OllamaSimulator
from ollama_sim.replay import Transcript
from tests.harness import Exporter, run_exporter, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.e2e.real.front import Front
    from tests.e2e.real.ollama import OllamaServer
    from tests.e2e.real.registry import Registry
    from tests.e2e.real.tap import Exchange, Tap

SERVER: Final = "real"
STANDIN_HOST: Final = "registry.test:5000"
"""Recorded lines name the front as this host, so fixtures do not depend on a free port."""
STANDIN_MODELS: Final = "/ollama/models"
TRANSCRIPTS: Final = Path(__file__).resolve().parent / "transcripts"
PHASES: Final = ("manifest", "download", "verify", "write", "prune")


def config_text(
    url: str,
    model: str,
    *,
    insecure: bool = True,
    stall_timeout: float = 60,
    timeout: float = 300,
    interval: float = 3600,
) -> str:
    """An exporter config with one server and one model (durations in seconds)."""
    return (
        f"defaults:\n  interval: {_ms(interval)}\n  jitter: 0\n  timeout: {_ms(timeout)}\n"
        f"  stall_timeout: {_ms(stall_timeout)}\n  insecure: {str(insecure).lower()}\n"
        f"servers:\n  - name: {SERVER}\n    url: {url}\n    models:\n      - {model!r}\n"
    )


def _ms(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def summary(exporter: Exporter, model: str, *, scrape: bool = True) -> dict[str, object]:
    """The pair's series after its runs, as the scenarios and the differential tests compare.

    `scrape=False` summarises the exporter's latest scrape instead of scraping again.
    """
    samples = exporter.scrape() if scrape else exporter._samples
    labels = {"server": SERVER, "model": model}

    def value(name: str, **extra: str) -> float | None:
        return exporter.value(name, **labels, **extra)

    failures = {
        dict(key)["reason"]: int(v)
        for (name, key), v in samples.items()
        if name == "ollama_pull_failures_total" and dict(key).get("model") == model and v
    }
    current = [p for p in ("idle", *PHASES) if value("ollama_pull_phase", phase=p) == 1]
    return {
        "runs": _int(value("ollama_pull_runs_total")),
        "last_success": _int(value("ollama_pull_last_success")),
        "failures": failures,
        "downloaded_total": _int(value("ollama_pull_downloaded_bytes_total")),
        "last_downloaded": _int(value("ollama_pull_last_downloaded_bytes")),
        "expected_bytes": _int(value("ollama_pull_expected_bytes")),
        "completed_bytes": _int(value("ollama_pull_completed_bytes")),
        "layers": _int(value("ollama_pull_layers")),
        "layers_completed": _int(value("ollama_pull_layers_completed")),
        "regressions": _int(value("ollama_pull_progress_regressions_total")),
        "phase": current,
        "server_up": _int(exporter.value("ollama_pull_server_up", server=SERVER)),
    }


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def wait_runs(exporter: Exporter, model: str, runs: int, timeout: float) -> None:
    """Until `runs` runs of the pair have finished (and no run is going)."""

    def done() -> bool:
        exporter.scrape()
        labels = {"server": SERVER, "model": model}
        started = exporter.value("ollama_pull_runs_total", **labels) or 0
        going = exporter.value("ollama_pull_in_progress", **labels) or 0
        ended = exporter.value("ollama_pull_last_run_timestamp_seconds", **labels)
        return started >= runs and not going and ended is not None

    wait_for(done, timeout, f"{runs} finished run(s) of {model}", step=0.1)


@contextlib.contextmanager
def exporter_for(
    url: str, model: str, workdir: Path, **settings: float | bool
) -> Iterator[Exporter]:
    """The real exporter process pulling `model` from the server at `url`."""
    workdir.mkdir(parents=True, exist_ok=True)
    with run_exporter(config_text(url, model, **settings), workdir) as exporter:  # type: ignore[arg-type]
        yield exporter


@dataclass
class Rig:
    """The registry, the front, one `ollama serve` and the tap, for one test."""

    registry: Registry
    front: Front
    ollama: OllamaServer
    tap: Tap
    workdir: Path

    def name(self, repo: str, tag: str = "latest") -> str:
        """A model name on the front (Ollama's `host/namespace/model:tag`)."""
        return f"{self.front.host}/{repo}:{tag}"

    def run(
        self, model: str, label: str, *, wait: float = 120, insecure: bool = True, **settings: float
    ) -> tuple[dict[str, object], Transcript]:
        """Start an exporter, wait for its run, return the summary and the recorded answer."""
        workdir = self.workdir / label
        with exporter_for(self.tap.url, model, workdir, insecure=insecure, **settings) as exporter:
            wait_runs(exporter, model, 1, wait)
            result = summary(exporter, model)
        return result, self.transcript(label, self.tap.pulls()[-1], result, settings)

    def transcript(
        self,
        scenario: str,
        exchange: Exchange,
        expect: dict[str, object],
        settings: dict[str, float] | None = None,
    ) -> Transcript:
        """The recording of `exchange`, stand-ins for the front's port and the models path."""

        def clean(text: str) -> str:
            return text.replace(self.front.host, STANDIN_HOST).replace(
                str(self.ollama.models), STANDIN_MODELS
            )

        request = _request_of(exchange)
        end = exchange.end or "cut"
        if end == "left" and exchange.lines and _final(exchange.lines[-1][1]):
            end = "complete"  # the exporter hung up after the last line, before the last chunk
        if isinstance(request.get("model"), str):
            request["model"] = clean(str(request["model"]))
        transcript = Transcript(
            ollama_version=self.ollama_version,
            scenario=scenario,
            request=request,
            status=exchange.status or 0,
            content_type=exchange.content_type,
            lines=tuple((t, clean(line.decode())) for t, line in exchange.lines),
            end=end,
            expect=expect,
            settings=settings or {},
        )
        save_transcript(transcript, self.workdir / "transcripts")
        if os.environ.get("RECORD_TRANSCRIPTS") == "1":
            save_transcript(transcript, TRANSCRIPTS)
        return transcript

    @property
    def ollama_version(self) -> str:
        """What `/api/version` says (or said, once the server has stopped)."""
        version = self.ollama.version() or self.ollama.last_version
        assert version is not None, "ollama serve never answered"
        return version


def _final(line: bytes) -> bool:
    """A `success` or `error` line: nothing follows it."""
    try:
        value = json.loads(line)
    except ValueError:
        return False
    return isinstance(value, dict) and ("error" in value or value.get("status") == "success")


def contract_downloaded(transcript: Transcript) -> int:
    """Downloaded bytes by the rule of contract section 3, worked out from the recorded lines.

    Per layer: the growth of `completed` from its first line (absent: 0; a first line with
    `completed == total` counts 0, "already on disk", unless another line for that layer
    follows: Ollama sends one line for a blob it has and many 100% lines after fetching one),
    up to `total` for a layer the stream moved past (a later layer or phase, or `success`),
    else up to its last `completed`. The oracle the scenarios compare the exporter's counters with.
    """
    seen: dict[str, int] = {}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    totals: dict[str, int] = {}
    passed: set[str] = set()
    current: str | None = None
    for _, line in transcript.lines:
        value = json.loads(line)
        if not isinstance(value, dict) or "error" in value:
            continue
        digest = value.get("digest")
        if not isinstance(digest, str):
            if current is not None:
                passed.update(first)
            continue
        if current is not None and digest != current:
            passed.add(current)
        current = digest
        total = int(value.get("total", 0))
        completed = int(value.get("completed", 0))
        seen[digest] = seen.get(digest, 0) + 1
        if digest not in first:
            first[digest] = total if total and completed >= total else completed
        elif seen[digest] == 2 and total and first[digest] == total:
            first[digest] = 0  # fetched within the first tick, not on disk
        totals[digest] = total
        last[digest] = max(last.get(digest, 0), completed)
    return sum((totals[d] if d in passed else min(last[d], totals[d])) - first[d] for d in first)


def _request_of(exchange: Exchange) -> dict[str, object]:
    value = json.loads(exchange.request_body or b"{}")
    assert isinstance(value, dict)
    return value


def save_transcript(transcript: Transcript, root: Path) -> Path:
    """Write `root/<version>/<scenario>.json`."""
    directory = root / transcript.ollama_version
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{transcript.scenario}.json"
    path.write_text(transcript.to_json(), encoding="utf-8")
    return path


def replay_summary(
    transcript: Transcript, workdir: Path, *, time_scale: float = 1.0
) -> dict[str, object]:
    """The exporter's summary against the simulator replaying `transcript` (one run).

    The recorded exporter settings (seconds) are scaled like the replay's clock.
    """
    model = str(transcript.request.get("model"))
    scaled = {k: v * time_scale for k, v in transcript.settings.items()}
    sim = OllamaSimulator(
        {model: [transcript.replay()]}, time_scale=time_scale, version=transcript.ollama_version
    )
    with sim.running() as url:
        insecure = bool(transcript.request.get("insecure", False))
        with exporter_for(url, model, workdir, insecure=insecure, **scaled) as exporter:
            wait_runs(exporter, model, 1, transcript.duration * time_scale + 60)
            return summary(exporter, model)
