"""Failing pulls against real Ollama, each fault made real (issue 9 scenarios 4-9 and 11).

Every test asserts the exporter's series exactly, keeps the recorded answer as a transcript,
and checks that the simulator replaying it makes the exporter report the same. The error
texts asserted are the ones real Ollama sends; they are the same in 0.17.4 and 0.13.5 except
for a registry that asks for Basic auth (see that test).
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

from tests.e2e.real.ollama import OllamaServer, release
from tests.e2e.real.registry import Model, running_registry
from tests.e2e.real.rig import Rig, contract_downloaded, replay_summary
from tests.e2e.real.tap import running_tap
from tests.harness import free_port

if TYPE_CHECKING:
    from pathlib import Path

    from ollama_sim.replay import Transcript
    from tests.e2e.real.front import Front
    from tests.e2e.real.registry import Registry

REPLAY_SCALE = 0.5


def _failed(reason: str, **values: int) -> dict[str, object]:
    """The summary of one failed run; `values` override the byte and layer counts."""
    out: dict[str, object] = {
        "runs": 1,
        "last_success": 0,
        "failures": {reason: 1},
        "downloaded_total": 0,
        "last_downloaded": 0,
        "expected_bytes": 0,
        "completed_bytes": 0,
        "layers": 0,
        "layers_completed": 0,
        "regressions": 0,
        "phase": ["idle"],
        "server_up": 1,
    }
    out.update(values)
    return out


def _error(transcript: Transcript) -> str:
    """The text of the final `error` line."""
    value = json.loads(transcript.lines[-1][1])
    assert isinstance(value, dict)
    assert "error" in value, transcript.lines[-1]
    return str(value["error"])


def _same_in_replay(
    transcript: Transcript, real: dict[str, object], workdir: Path, scale: float = REPLAY_SCALE
) -> None:
    assert replay_summary(transcript, workdir / "sim", time_scale=scale) == real


def test_tag_not_found(rig: Rig) -> None:
    rig.registry.push("library/small", "latest", Model.build("small", 100_000))
    result, recorded = rig.run(rig.name("library/small", "nope"), "not-found")
    assert result == _failed("manifest_not_found")
    assert recorded.statuses() == [
        "pulling manifest",
        "error: pull model manifest: file does not exist",
    ]
    _same_in_replay(recorded, result, rig.workdir)


def test_malformed_name(rig: Rig) -> None:
    result, recorded = rig.run("bad!name", "bad-name")
    assert result == _failed("invalid_request")
    assert (recorded.status, recorded.content_type) == (400, "application/json; charset=utf-8")
    assert [line for _, line in recorded.lines] == ['{"error":"invalid model name"}']
    _same_in_replay(recorded, result, rig.workdir)


def test_registry_down(rig: Rig) -> None:
    closed = free_port()
    result, recorded = rig.run(f"127.0.0.1:{closed}/library/small:latest", "registry-down")
    assert result == _failed("registry_unreachable")
    assert _error(recorded) == (
        f'pull model manifest: Get "http://127.0.0.1:{closed}/v2/library/small/manifests/latest"'
        f": dial tcp 127.0.0.1:{closed}: connect: connection refused"
    )
    _same_in_replay(recorded, result, rig.workdir)


def test_registry_500(rig: Rig) -> None:
    rig.front.faults.manifest_status = 500
    result, recorded = rig.run(rig.name("library/small"), "registry-500")
    assert result == _failed("registry_error")
    assert _error(recorded) == (
        'pull model manifest: 500: {"errors": [{"code": "INTERNAL_ERROR", '
        '"message": "internal error"}]}'
    )
    _same_in_replay(recorded, result, rig.workdir)


def test_registry_demands_a_bearer_token(rig: Rig) -> None:
    rig.front.faults.manifest_status = 401
    result, recorded = rig.run(rig.name("library/small"), "registry-401")
    assert result == _failed("unauthorized")
    assert _error(recorded) == 'pull model manifest: 401: {"errors": [{"code": "UNAUTHORIZED"}]}'
    token_requests = [r for r in rig.front.requests if r.path.startswith("/token")]
    assert len(token_requests) == 1
    assert token_requests[0].headers["Authorization"].count(":") >= 1  # Ollama's signed key
    _same_in_replay(recorded, result, rig.workdir)


def test_registry_demands_basic_auth(rig: Rig, tmp_path: Path) -> None:
    """A stock registry with htpasswd auth: Ollama cannot follow a Basic challenge at all.

    The releases fail differently. 0.16.2 and later check the challenge's realm against the
    registry's host first, and refuse it (the text names the realm: `unauthorized`). 0.13.5
    has no such check: it asks the realm, which has no scheme, for a token, and the error
    names neither a 401 nor a realm, so the contract counts it as a `registry_error`.
    """
    with running_registry(tmp_path / "auth-registry", htpasswd=("user", "secret")) as locked:
        name = f"127.0.0.1:{locked.port}/library/small:latest"
        result, recorded = rig.run(name, "registry-basic-auth")
    if release(rig.ollama_version) >= (0, 16):
        assert result == _failed("unauthorized")
        assert _error(recorded) == (
            f'pull model manifest: realm host "" does not match original host '
            f'"127.0.0.1:{locked.port}"'
        )
    else:
        assert result == _failed("registry_error")
        assert re.fullmatch(
            r'pull model manifest: Get "basic-realm\?nonce=[\w-]+&scope=&service=&ts=\d+": '
            r'unsupported protocol scheme ""',
            _error(recorded),
        ), _error(recorded)
    _same_in_replay(recorded, result, rig.workdir)


def test_stall_mid_blob(rig: Rig) -> None:
    model = Model.build("stall", 4_000_000)
    rig.registry.push("library/stall", "latest", model)
    blob = model.layers[0]
    rig.front.faults = type(rig.front.faults)(digest=blob.digest, throttle=2e6, stall_at=1_000_000)
    result, recorded = rig.run(rig.name("library/stall"), "stalled", stall_timeout=3)
    downloaded = contract_downloaded(recorded)
    assert 0 < downloaded <= 1_000_000
    assert result == _failed(
        "stalled",
        downloaded_total=downloaded,
        last_downloaded=downloaded,
        expected_bytes=blob.size,
        completed_bytes=1_000_000,
        layers=1,
    )
    assert recorded.end == "left"  # the exporter hung up; Ollama was still sending ticks
    assert rig.front.stalls == 1
    # Ollama stays healthy: it answers, and once the front behaves the pull completes.
    assert rig.ollama.version() == rig.ollama_version
    rig.front.faults = type(rig.front.faults)()
    again, _ = rig.run(rig.name("library/stall"), "after-stall")
    assert again["last_success"] == 1
    _same_in_replay(recorded, result, rig.workdir)


def test_connection_cut_again_and_again(rig: Rig) -> None:
    """Each attempt gets 64 KiB; Ollama sleeps 1+2+4+8+16+32 s between 6 tries, then gives up."""
    model = Model.build("cut", 1_000_000)
    rig.registry.push("library/cut", "latest", model)
    blob = model.layers[0]
    rig.front.faults = type(rig.front.faults)(digest=blob.digest, cut_after=65536)
    result, recorded = rig.run(
        rig.name("library/cut"), "cut", stall_timeout=45, timeout=150, wait=150
    )
    assert rig.front.cuts == 6
    ranges = [r.headers["Range"] for r in rig.front.blob_gets(blob.digest)]
    assert ranges == [f"bytes={i * 65536}-{blob.size - 1}" for i in range(6)]
    assert _error(recorded) == "max retries exceeded: unexpected EOF"
    downloaded = contract_downloaded(recorded)
    assert result == _failed(
        "download_failed",
        downloaded_total=downloaded,
        last_downloaded=downloaded,
        expected_bytes=blob.size,
        completed_bytes=6 * 65536,
        layers=1,
    )
    _same_in_replay(recorded, result, rig.workdir, scale=0.2)


def test_corrupt_bytes(rig: Rig) -> None:
    model = Model.build("corrupt", 2_000_000)
    rig.registry.push("library/corrupt", "latest", model)
    blob = model.layers[0]
    rig.front.faults = type(rig.front.faults)(digest=blob.digest, corrupt_at=1234)
    result, recorded = rig.run(rig.name("library/corrupt"), "corrupt")
    bad = _error(recorded)
    assert bad.startswith(
        f"digest mismatch, file must be downloaded again: want {blob.digest}, got sha256:"
    )
    assert recorded.statuses()[-2:] == ["verifying sha256 digest", f"error: {bad}"]
    downloaded = contract_downloaded(recorded)
    assert result == _failed(
        "digest_mismatch",
        downloaded_total=downloaded,
        last_downloaded=downloaded,
        expected_bytes=model.total,
        completed_bytes=model.total,
        layers=len(model.blobs),
        layers_completed=len(model.blobs),
    )
    assert not (rig.ollama.models / "blobs" / blob.digest.replace(":", "-")).exists()
    _same_in_replay(recorded, result, rig.workdir)


def test_disk_full(registry: Registry, front: Front, ollama_bin: Path, tmp_path: Path) -> None:
    model = Model.build("big-for-tmpfs", 12_000_000)
    registry.push("library/disk", "latest", model)
    front.faults = type(front.faults)()
    server = OllamaServer(ollama_bin, tmp_path / "ollama", tmpfs_bytes=4 * 1024 * 1024)
    server.start()
    try:
        with running_tap(server.port) as tap:
            rig = Rig(registry, front, server, tap, tmp_path)
            result, recorded = rig.run(rig.name("library/disk"), "disk-full")
    finally:
        server.stop()
    blob = model.layers[0]
    assert _error(recorded) == (
        f"write /ollama/models/blobs/{blob.digest.replace(':', '-')}-partial: "
        "no space left on device"
    )
    # The write fails at once: usually before Ollama's first 60 ms tick, so no progress line
    # precedes the error; on a loaded machine one tick may get out first.
    ticks = [json.loads(line) for _, line in recorded.lines if blob.digest in line]
    assert recorded.statuses()[0] == "pulling manifest"
    assert recorded.statuses()[-1] == f"error: {_error(recorded)}"
    if not ticks:
        assert result == _failed("disk_full")
    else:
        completed = ticks[-1].get("completed", 0)
        assert result == _failed(
            "disk_full",
            downloaded_total=contract_downloaded(recorded),
            last_downloaded=contract_downloaded(recorded),
            expected_bytes=blob.size,
            completed_bytes=completed,
            layers=1,
        )
    _same_in_replay(recorded, result, tmp_path)


def test_secure_pull_from_a_plain_http_registry(rig: Rig) -> None:
    """`insecure: false`: Ollama speaks TLS to the plain-HTTP front."""
    rig.registry.push("library/small", "latest", Model.build("small", 100_000))
    result, recorded = rig.run(rig.name("library/small"), "secure-vs-http", insecure=False)
    assert recorded.request["insecure"] is False
    assert _error(recorded) == (
        'pull model manifest: Get "https://registry.test:5000/v2/library/small/manifests/latest"'
        ": http: server gave HTTP response to HTTPS client"
    )
    assert result == _failed("registry_unreachable")
    _same_in_replay(recorded, result, rig.workdir)
