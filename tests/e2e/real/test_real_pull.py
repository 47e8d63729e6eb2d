"""Successful pulls against real Ollama: fresh, up to date, tag moved (issue 9 scenarios 1-3).

Each run is the real exporter process against real `ollama serve` pulling from the real
registry through the front; the answer is recorded as a transcript, and the simulator
replaying that transcript must make the exporter report the same numbers.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from tests.e2e.real.registry import TEMPLATE, Blob, Model, filler
from tests.e2e.real.rig import (
    SERVER,
    contract_downloaded,
    exporter_for,
    replay_summary,
    summary,
    wait_runs,
)
from tests.harness import wait_for

if TYPE_CHECKING:
    from tests.e2e.real.rig import Rig

BIG = 64 * 1024 * 1024
THROTTLE = 16 * 1024 * 1024  # bytes/s: the big layer takes about 4 s
REPLAY_SCALE = 0.5


def _success(model: Model, downloaded: int) -> dict[str, object]:
    return {
        "runs": 1,
        "last_success": 1,
        "failures": {},
        "downloaded_total": downloaded,
        "last_downloaded": downloaded,
        "expected_bytes": model.total,
        "completed_bytes": model.total,
        "layers": len(model.blobs),
        "layers_completed": len(model.blobs),
        "regressions": 0,
        "phase": ["idle"],
        "server_up": 1,
    }


def test_fresh_then_up_to_date_then_moved_tag(rig: Rig) -> None:
    model = Model.build("fresh", BIG)
    rig.registry.push("library/fresh", "latest", model)
    name = rig.name("library/fresh")
    big = model.layers[0]
    rig.front.faults.digest = big.digest
    rig.front.faults.throttle = THROTTLE

    # 1. Fresh pull, throttled: live progress in /metrics, then exact totals.
    labels = {"server": SERVER, "model": name}
    with exporter_for(rig.tap.url, name, rig.workdir / "fresh") as exporter:
        live = exporter.wait_value(
            "ollama_pull_completed_bytes", lambda v: 0 < v < big.size, timeout=60, **labels
        )
        assert exporter.value("ollama_pull_in_progress", **labels) == 1
        assert exporter.value("ollama_pull_phase", phase="download", **labels) == 1
        assert exporter.value("ollama_pull_expected_bytes", **labels) == big.size
        assert 0 < live < big.size
        wait_runs(exporter, name, 1, 120)
        fresh = summary(exporter, name)
    recorded = rig.transcript("fresh", rig.tap.pulls()[-1], fresh)
    counted = contract_downloaded(recorded)
    assert fresh == _success(model, counted)
    gets = rig.front.blob_gets(big.digest)
    assert len(gets) == 1
    assert gets[0].headers["Range"] == f"bytes=0-{big.size - 1}"
    assert "Authorization" not in gets[0].headers
    manifest = next(r for r in rig.front.requests if "/manifests/" in r.path)
    assert manifest.headers["Accept"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest.headers["User-Agent"].startswith(f"ollama/{rig.ollama_version} (")
    shapes = [(r.method, r.host.partition(":")[0]) for r in rig.front.requests[1:]]
    assert shapes == [("HEAD", "127.0.0.1"), ("GET", "127.0.0.1"), ("GET", "localhost")] * len(
        model.blobs
    )
    assert recorded.statuses() == [
        "pulling manifest",
        *(f"pulling {b.digest[7:19]}" for b in model.blobs),
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    assert recorded.duration > big.size / THROTTLE
    assert replay_summary(recorded, rig.workdir / "fresh-sim", time_scale=REPLAY_SCALE) == fresh

    # 2. The same pull again: nothing downloaded, every layer present.
    rig.front.faults.throttle = None
    again, recorded = rig.run(name, "uptodate")
    assert again == _success(model, 0)
    assert recorded.statuses()[0] == "pulling manifest"
    assert replay_summary(recorded, rig.workdir / "uptodate-sim", time_scale=REPLAY_SCALE) == again

    # 3. The tag moves to a manifest with one changed layer: exactly that layer is downloaded.
    changed = Blob(TEMPLATE, filler("moved-template", 1_500_000))
    moved_model = model.with_layer(1, changed)
    rig.registry.push("library/fresh", "latest", moved_model)
    moved, recorded = rig.run(name, "moved")
    assert moved == _success(moved_model, contract_downloaded(recorded))
    digests = {json.loads(line).get("digest") for _, line in recorded.lines}
    assert digests - {None} == {b.digest for b in moved_model.blobs}
    assert [r.path.rsplit("/", 1)[-1] for r in rig.front.requests[-1:]] == [changed.digest]
    assert "removing unused layers" in recorded.statuses()
    assert replay_summary(recorded, rig.workdir / "moved-sim", time_scale=REPLAY_SCALE) == moved
    held = {m["name"]: m for m in rig.ollama.tags()}
    assert held[name]["size"] == moved_model.total
    wait_for(lambda: rig.ollama.version() is not None, 5, "ollama to answer")


def test_fresh_pull_counts_every_downloaded_byte(rig: Rig) -> None:
    model = Model.build("every-byte", 1_000_000)
    rig.registry.push("library/every-byte", "latest", model)
    result, _ = rig.run(rig.name("library/every-byte"), "every-byte")
    assert result["last_success"] == 1
    assert result["downloaded_total"] == model.total
