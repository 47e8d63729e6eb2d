"""Inventory and check mode against real `ollama serve` and the real registry (contract section 6).

The exporter reads what real Ollama lists in `/api/tags` and asks the real registry (through
the front) for the tag's manifest: a new manifest pushed makes `update_available` 1, a pull of
it makes it 0 again and counts one change; two servers at different versions show drift.
"""

from __future__ import annotations

import json
import urllib.request
from typing import TYPE_CHECKING

from tests.e2e.real.ollama import OllamaServer
from tests.e2e.real.registry import MODEL, Blob, Model, filler
from tests.harness import Exporter, run_exporter

if TYPE_CHECKING:
    from pathlib import Path

    from tests.e2e.real.rig import Rig

SIZE = 1024 * 1024
UPDATE = "ollama_pull_update_available"
CHANGES = "ollama_pull_model_changes_total"


def _config(model: str, servers: dict[str, str]) -> str:
    entries = "".join(
        f"  - name: {name}\n    url: {url}\n    models: [{{name: {model!r}}}]\n"
        for name, url in servers.items()
    )
    return (
        "inventory_interval: 1s\n"
        "defaults: {interval: 1s, jitter: 0, insecure: true, mode: check}\n"
        f"servers:\n{entries}"
    )


def _pulled(url: str, model: str) -> None:
    """`POST /api/pull` from the test itself (an operator's pull), to its `success`."""
    body = json.dumps({"model": model, "insecure": True}).encode()
    request = urllib.request.Request(url + "/api/pull", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        lines = response.read().decode().splitlines()
    assert lines[-1] == '{"status":"success"}', lines[-3:]


def _digests(exporter: Exporter, model: str) -> dict[str, str]:
    """server -> the digest label of `ollama_pull_model_info` for `model`."""
    return {
        dict(labels)["server"]: dict(labels)["digest"]
        for name, labels in exporter.scrape()
        if name == "ollama_pull_model_info" and dict(labels)["model"] == model
    }


def _held(server: OllamaServer, model: str) -> str:
    short = model.removesuffix(":latest")
    (digest,) = [str(entry["digest"]) for entry in server.tags() if entry["name"] in {model, short}]
    return digest


def test_a_new_manifest_is_an_update_until_it_is_pulled(rig: Rig) -> None:
    first = Model.build("watched", SIZE)
    rig.registry.push("library/watched", "latest", first)
    name = rig.name("library/watched")
    _pulled(rig.ollama.url, name)
    labels = {"server": "real", "model": name}
    with run_exporter(_config(name, {"real": rig.ollama.url}), rig.workdir) as exporter:
        # Ollama (0.13.5 and 0.17.4 alike) stores the manifest re-encoded, so its digest is
        # not the registry's; the check knows both forms and sees the held copy as current.
        exporter.wait_value(UPDATE, lambda v: v == 0, timeout=30, **labels)
        assert _digests(exporter, name) == {"real": _held(rig.ollama, name)[:12]}
        assert exporter.value(CHANGES, **labels) == 0
        moved = first.with_layer(0, Blob(MODEL, filler("watched, second version", SIZE)))
        rig.registry.push("library/watched", "latest", moved)
        exporter.wait_value(UPDATE, lambda v: v == 1, timeout=30, **labels)
        assert exporter.value(CHANGES, **labels) == 0
        assert exporter.value("ollama_pull_runs_total", **labels) == 0  # check never pulls
        _pulled(rig.ollama.url, name)  # the operator pulls the update
        exporter.wait_value(CHANGES, lambda v: v == 1, timeout=30, **labels)
        exporter.wait_value(UPDATE, lambda v: v == 0, timeout=30, **labels)
        assert _digests(exporter, name) == {"real": _held(rig.ollama, name)[:12]}
        assert exporter.value("ollama_pull_registry_checks_total", result="ok", **labels)


def test_two_servers_at_different_versions_show_drift(rig: Rig, ollama_bin: Path) -> None:
    second = OllamaServer(ollama_bin, rig.workdir / "ollama-2")
    second.start()
    try:
        first = Model.build("drift", SIZE)
        rig.registry.push("library/drift", "latest", first)
        name = rig.name("library/drift")
        _pulled(rig.ollama.url, name)
        _pulled(second.url, name)
        moved = first.with_layer(0, Blob(MODEL, filler("drift, second version", SIZE)))
        rig.registry.push("library/drift", "latest", moved)
        _pulled(second.url, name)  # only the second server follows
        servers = {"real": rig.ollama.url, "real-2": second.url}
        with run_exporter(_config(name, servers), rig.workdir) as exporter:
            exporter.wait_value(UPDATE, lambda v: v == 1, timeout=30, server="real", model=name)
            exporter.wait_value(UPDATE, lambda v: v == 0, timeout=30, server="real-2", model=name)
            digests = _digests(exporter, name)
        assert digests == {
            "real": _held(rig.ollama, name)[:12],
            "real-2": _held(second, name)[:12],
        }
        assert len(set(digests.values())) == 2  # what OllamaModelDrift counts
    finally:
        second.stop()
