"""`ollama serve` killed mid-pull, down for a while, restarted: the next run resumes (scenario 10).

Ollama 0.17.4 writes a part's progress file only when an attempt ends, and prunes partial
files at start-up unless `OLLAMA_NOPRUNE` is set (the one-hour grace came in a later
release). So the front cuts the first attempt at 3 MB (Ollama records 3 MB done), holds the
retry open, and the test kills the server while it waits; the server restarts with
`OLLAMA_NOPRUNE=1`. One exporter runs throughout, every 3 s: one run is interrupted, the runs
while the server is down find nobody listening, the first run after the restart resumes.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tests.e2e.real.front import Faults
from tests.e2e.real.ollama import OllamaServer
from tests.e2e.real.registry import Model
from tests.e2e.real.rig import (
    SERVER,
    Rig,
    contract_downloaded,
    exporter_for,
    replay_summary,
    summary,
)
from tests.e2e.real.tap import running_tap
from tests.harness import wait_for

if TYPE_CHECKING:
    from pathlib import Path

    from tests.e2e.real.front import Front
    from tests.e2e.real.registry import Registry

CUT = 3 * 1024 * 1024


def test_killed_mid_pull_then_resumed(
    registry: Registry, front: Front, ollama_bin: Path, tmp_path: Path
) -> None:
    model = Model.build("crash", 8_000_000)
    registry.push("library/crash", "latest", model)
    blob = model.layers[0]
    front.faults = Faults(
        digest=blob.digest, throttle=4e6, cut_after=CUT, cut_times=1, stall_at=CUT
    )
    server = OllamaServer(ollama_bin, tmp_path / "ollama", env={"OLLAMA_NOPRUNE": "1"})
    server.start()
    name = f"{front.host}/library/crash:latest"
    labels = {"server": SERVER, "model": name}
    try:
        with running_tap(server.port) as tap:
            rig = Rig(registry, front, server, tap, tmp_path)
            settings = {"interval": 3.0, "stall_timeout": 20.0, "timeout": 60.0}
            with exporter_for(tap.url, name, tmp_path / "exporter", **settings) as exporter:
                # Ollama got 3 MB, was cut, and now waits on its retry: kill it there.
                wait_for(lambda: front.stalls == 1, 30, "Ollama's retry to reach the front")
                server.kill()
                exporter.wait_value(
                    "ollama_pull_failures_total", lambda v: v == 1, 20,
                    reason="stream_interrupted", **labels,
                )  # fmt: skip
                killed = summary(exporter, name, scrape=False)
                # Down: the next run finds nobody listening; /metrics keeps answering.
                exporter.wait_value(
                    "ollama_pull_failures_total", lambda v: v >= 1, 20,
                    reason="ollama_unreachable", **labels,
                )  # fmt: skip
                assert exporter.value("ollama_pull_server_up", server=SERVER) == 0
                partials = server.partials()
                assert [p.name.rsplit("-", 1)[-1] for p in partials] == ["partial", "0"]
                front.faults = Faults(digest=blob.digest, throttle=4e6)
                server.start()
                exporter.wait_value("ollama_pull_last_success", lambda v: v == 1, 60, **labels)
                result = summary(exporter, name, scrape=False)
            pulls = tap.pulls()
            refused = tap.refused
    finally:
        server.stop()

    recorded_settings = {"stall_timeout": settings["stall_timeout"], "timeout": settings["timeout"]}
    assert killed["failures"] == {"stream_interrupted": 1}
    assert (killed["runs"], killed["server_up"], killed["layers"]) == (1, 1, 1)
    interrupted = rig.transcript("killed", pulls[0], killed, recorded_settings)
    assert interrupted.end == "cut"
    assert interrupted.statuses()[-1] == f"pulling {blob.digest[7:19]}"
    first_run = contract_downloaded(interrupted)
    assert 0 < first_run <= CUT
    assert killed["last_downloaded"] == killed["downloaded_total"] == first_run

    # The run after the restart, on its own: what one run of it reports.
    resumed = next(p for p in pulls[1:] if p.lines)
    resumed_run = {
        **result,
        "runs": 1,
        "failures": {},
        "downloaded_total": result["last_downloaded"],
    }
    resumed_transcript = rig.transcript("resumed", resumed, resumed_run, recorded_settings)
    first = json.loads(next(line for _, line in resumed_transcript.lines if blob.digest in line))
    assert CUT <= first["completed"] < blob.size  # resumed from the part file, not from 0
    assert result["last_downloaded"] == contract_downloaded(resumed_transcript)
    assert result["last_downloaded"] < model.total - CUT + 1
    ranges = [r.headers["Range"] for r in front.blob_gets(blob.digest)]
    end = blob.size - 1
    assert ranges == [f"bytes=0-{end}", f"bytes={CUT}-{end}", f"bytes={CUT}-{end}"]

    # The whole story in the counters: every run accounted for, every byte counted once.
    assert result["runs"] == len(pulls) + refused
    assert result["failures"] == {"stream_interrupted": 1, "ollama_unreachable": refused}
    assert result["downloaded_total"] == first_run + result["last_downloaded"]
    assert result["server_up"] == 1

    for transcript in (interrupted, resumed_transcript):
        replayed = replay_summary(transcript, tmp_path / f"sim-{transcript.scenario}")
        assert replayed == transcript.expect
