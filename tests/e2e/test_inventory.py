"""Inventory and check mode end to end: the real exporter process, the simulator's
`/api/tags` and its Docker v2 registry, over real sockets (contract section 6).
"""

from __future__ import annotations

import json
import re
import urllib.request
from typing import TYPE_CHECKING

import pytest

from ollama_sim import (
    CannedAnswer,
    OllamaSimulator,
    RegistrySimulator,
    error_after_manifest,
    fresh_pull,
    up_to_date,
)
from tests.harness import Exporter, free_port, run_cli, run_exporter, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

PRESENT = "ollama_pull_model_present"
CHANGES = "ollama_pull_model_changes_total"
REQUESTS = "ollama_pull_inventory_requests_total"
UPDATE = "ollama_pull_update_available"


@pytest.fixture
def registry() -> Iterator[RegistrySimulator]:
    sim = RegistrySimulator()
    with sim.running():
        yield sim


def _config(url: str, models: str, *, inventory: str = "1h", extra: str = "") -> str:
    return f"""\
inventory_interval: {inventory}
defaults: {{interval: 1h, jitter: 0, run_on_start: false}}
servers:
  - name: a
    url: {url}
    models: {models}
{extra}"""


def _digest_label(exporter: Exporter, model: str) -> str | None:
    for name, labels in exporter.scrape():
        found = dict(labels)
        if name == "ollama_pull_model_info" and found["model"] == model:
            return found["digest"]
    return None


def test_what_a_server_holds(tmp_path: Path) -> None:
    sim = OllamaSimulator()
    with sim.running() as url:
        digest = sim.hold("llama3.2:1b", size=1234)
        sim.hold("gemma3")  # listed as gemma3:latest
        long_name = "registry.ollama.ai/library/gemma3:latest"
        config = _config(url, f"[llama3.2:1b, {long_name}, qwen3]")
        with run_exporter(config, tmp_path) as exporter:
            exporter.wait_value(REQUESTS, lambda v: v == 1, server="a", result="ok")
            held = {"server": "a", "model": "llama3.2:1b"}
            missing = {"server": "a", "model": "qwen3"}
            assert exporter.value(PRESENT, **held) == 1
            assert exporter.value(PRESENT, server="a", model=long_name) == 1
            assert exporter.value(PRESENT, **missing) == 0
            assert exporter.value("ollama_pull_model_size_bytes", **held) == 1234
            assert exporter.value("ollama_pull_model_size_bytes", **missing) is None
            assert exporter.value(CHANGES, **held) == 0  # the first observation is no change
            assert exporter.value("ollama_pull_model_last_change_timestamp_seconds", **held) is None
            assert _digest_label(exporter, "llama3.2:1b") == digest[:12]
            assert _digest_label(exporter, "qwen3") is None
        assert sim.tags_requests == 1  # one request per server per interval, not per model


def test_a_successful_pull_refreshes_at_once_and_counts_a_change(
    tmp_path: Path, registry: RegistrySimulator
) -> None:
    model = f"{registry.host}/library/tiny:1b"
    first = registry.push(model)
    sim = OllamaSimulator({model: [fresh_pull([2000, 100])]}, registry=registry, time_scale=0.1)
    with sim.running() as url:
        sim.hold(model, first)
        second = registry.push(model)
        config = _config(url, f"[{{name: {model}, insecure: true, run_on_start: true}}]")
        with run_exporter(config, tmp_path) as exporter:
            pair = {"server": "a", "model": model}
            exporter.wait_value(CHANGES, lambda v: v == 1, server="a", model=model)
            assert _digest_label(exporter, model) == second[:12]
            assert exporter.value("ollama_pull_model_last_change_timestamp_seconds", **pair)
            assert exporter.value("ollama_pull_reused_bytes_total", **pair) == 0
            assert "model changed" in exporter.logs()
        assert sim.tags_requests == 2  # at start, and right after the successful run


def test_an_up_to_date_pull_counts_reused_bytes(tmp_path: Path) -> None:
    sim = OllamaSimulator({"m:1b": [up_to_date([3000, 40])]}, time_scale=0.1)
    with sim.running() as url:
        config = _config(url, "[{name: m:1b, run_on_start: true}]")
        with run_exporter(config, tmp_path) as exporter:
            pair = {"server": "a", "model": "m:1b"}
            exporter.wait_value(
                "ollama_pull_runs_total", lambda v: v == 1, server="a", model="m:1b"
            )
            exporter.wait_value(
                "ollama_pull_reused_bytes_total", lambda v: v == 3040, server="a", model="m:1b"
            )
            assert exporter.value("ollama_pull_downloaded_bytes_total", **pair) == 0


BAD_ANSWERS = {
    "not-json": (CannedAnswer(200, b"<html>502 Bad Gateway</html>"), "protocol_error", "not JSON"),
    "wrong-types": (
        CannedAnswer(200, b'{"models": [{"name": "m", "digest": 5, "size": 1}]}'),
        "protocol_error",
        "unexpected JSON: Expected `str`, got `int` - at `$.models[0].digest`",
    ),
    "huge": (
        CannedAnswer(200, b'{"models": [' + b" " * (17 * 1024 * 1024) + b"]}"),
        "protocol_error",
        "answer larger than 16777216 bytes",
    ),
    "http-error": (CannedAnswer(500, b'{"error":"boom"}'), "ollama_http_error", "HTTP 500"),
}


@pytest.mark.parametrize("case", sorted(BAD_ANSWERS))
def test_a_bad_answer_is_an_inventory_failure_and_keeps_the_last_good_one(
    tmp_path: Path, case: str
) -> None:
    answer, result, detail = BAD_ANSWERS[case]
    sim = OllamaSimulator()
    with sim.running() as url:
        digest = sim.hold("m:1b")
        with run_exporter(_config(url, "[m:1b]", inventory="1s"), tmp_path) as exporter:
            exporter.wait_value(REQUESTS, lambda v: v >= 1, server="a", result="ok")
            sim.answer_tags_with(answer)
            exporter.wait_value(REQUESTS, lambda v: v >= 2, server="a", result=result)
            assert exporter.value(PRESENT, server="a", model="m:1b") == 1
            assert _digest_label(exporter, "m:1b") == digest[:12]
            assert exporter.value("ollama_pull_server_up", server="a") == 1
            logs = exporter.logs()
            assert "inventory failed, keeping the last good one" in logs
            assert detail in logs
            warnings = [line for line in logs.splitlines() if "level=warning" in line]
            assert len([line for line in warnings if "inventory failed" in line]) == 1
            sim.answer_tags_with(None)
            wait_for(lambda: "inventory works again" in exporter.logs(), 10, "recovery")


def test_an_unreachable_server_is_counted_and_never_fails_a_run(tmp_path: Path) -> None:
    config = _config(f"http://127.0.0.1:{free_port()}", "[m:1b]", inventory="1s")
    with run_exporter(config, tmp_path) as exporter:
        exporter.wait_value(REQUESTS, lambda v: v >= 2, server="a", result="ollama_unreachable")
        assert exporter.value(PRESENT, server="a", model="m:1b") is None
        assert exporter.value("ollama_pull_runs_total", server="a", model="m:1b") == 0
        assert exporter.value("ollama_pull_server_up", server="a") == 0


def test_inventory_interval_0s_disables_it(tmp_path: Path) -> None:
    sim = OllamaSimulator()
    with sim.running() as url:
        sim.hold("m:1b")
        config = _config(url, "[m:1b]", inventory="0s")
        with run_exporter(config, tmp_path) as exporter:
            samples = exporter.scrape()
            assert not [name for name, _ in samples if "model_" in name or "inventory" in name]
        assert sim.tags_requests == 0


def test_the_last_digest_survives_a_restart(tmp_path: Path) -> None:
    sim = OllamaSimulator()
    storage = f"--storage.path={tmp_path / 'state.db'}"
    with sim.running() as url:
        sim.hold("m:1b", "1" * 64)
        with run_exporter(_config(url, "[m:1b]"), tmp_path, storage) as exporter:
            exporter.wait_value(PRESENT, lambda v: v == 1, server="a", model="m:1b")
        sim.hold("m:1b", "2" * 64)  # pulled by someone else while the exporter was down
        with run_exporter(_config(url, "[m:1b]"), tmp_path, storage) as exporter:
            exporter.wait_value(CHANGES, lambda v: v == 1, server="a", model="m:1b")
            assert _digest_label(exporter, "m:1b") == "2" * 12
        with run_exporter(_config(url, "[m:1b]"), tmp_path, storage) as exporter:
            exporter.wait_value(PRESENT, lambda v: v == 1, server="a", model="m:1b")
            assert exporter.value(CHANGES, server="a", model="m:1b") == 0  # nothing new


def test_check_mode_shows_an_update_then_a_pull_clears_it(
    tmp_path: Path, registry: RegistrySimulator
) -> None:
    model = f"{registry.host}/library/tiny:1b"
    first = registry.push(model)
    sim = OllamaSimulator({model: [fresh_pull([500])]}, registry=registry, time_scale=0.1)
    with sim.running() as url:
        sim.hold(model, first)
        entry = f"[{{name: {model}, insecure: true, mode: check, interval: 1s}}]"
        config = _config(url, entry, inventory="1s")
        with run_exporter(config, tmp_path) as exporter:
            pair = {"server": "a", "model": model}
            exporter.wait_value(UPDATE, lambda v: v == 0, server="a", model=model)
            first_checks = _checks(exporter, model)["ok"]
            registry.push(model)  # a new manifest for the tag
            exporter.wait_value(UPDATE, lambda v: v == 1, server="a", model=model)
            assert exporter.value(CHANGES, **pair) == 0
            # Only a check after the push can know the new manifest.
            assert _checks(exporter, model)["ok"] > first_checks
            _pull(url, model)  # an operator pulls it (check mode itself never does)
            exporter.wait_value(UPDATE, lambda v: v == 0, server="a", model=model)
            exporter.wait_value(CHANGES, lambda v: v == 1, server="a", model=model)
            # The inventory saw the pull; a registry check after it agrees (whichever of the
            # two 1 s loops came first: wait for the check rather than count on the order).
            pulled_checks = _checks(exporter, model)["ok"]
            ok = "ollama_pull_registry_checks_total"
            exporter.wait_value(
                ok, lambda v: v > pulled_checks, server="a", model=model, result="ok"
            )
            assert exporter.value(UPDATE, **pair) == 0
            assert exporter.value(CHANGES, **pair) == 1
            assert exporter.value("ollama_pull_runs_total", **pair) == 0
            checks = _checks(exporter, model)
            assert checks == {
                "ok": checks["ok"],
                "unreachable": 0,
                "unauthorized": 0,
                "not_found": 0,
                "error": 0,
            }
            assert checks["ok"] >= 3
        assert not [r for r in sim.requests if r.model == model and r.outcome != "completed"]


def test_check_mode_survives_a_registry_answering_garbage(
    tmp_path: Path, registry: RegistrySimulator
) -> None:
    model = f"{registry.host}/library/tiny:1b"
    sim = OllamaSimulator({model: [error_after_manifest("never pulled")]})
    with sim.running() as url:
        registry.answer_with(CannedAnswer(200, b"\x00\xff garbage"))
        entry = f"[{{name: {model}, insecure: true, mode: check, interval: 1s}}]"
        with run_exporter(_config(url, entry), tmp_path) as exporter:
            exporter.wait_value(
                "ollama_pull_registry_checks_total",
                lambda v: v >= 2,
                server="a",
                model=model,
                result="error",
            )
            assert exporter.value(UPDATE, server="a", model=model) is None
            assert "registry check failed" in exporter.logs()
            assert exporter.process.poll() is None
        assert sim.run_count(model) == 0


def _checks(exporter: Exporter, model: str) -> dict[str, float]:
    """The pair's registry checks by result, from the latest scrape."""
    return {
        dict(labels)["result"]: value
        for (name, labels), value in exporter.scrape().items()
        if name == "ollama_pull_registry_checks_total" and dict(labels)["model"] == model
    }


def _pull(url: str, model: str) -> None:
    body = json.dumps({"model": model, "insecure": True}).encode()
    request = urllib.request.Request(f"{url}/api/pull", data=body, method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert b'"success"' in response.read()


def _once_lines(stdout: str) -> list[str]:
    """`--once` lines without their durations (and cut after an unreachable's `detail=`)."""
    lines = [re.sub(r" duration=\S+", "", line) for line in stdout.splitlines()]
    return [re.sub(r'(reason=ollama_unreachable detail=)".*"', r"\1...", line) for line in lines]


def test_once_checks_check_mode_pairs_and_fails_on_a_failed_check(
    tmp_path: Path, registry: RegistrySimulator
) -> None:
    """`--once` skipped `check` models: no line, no check, exit 0 whatever the registry said."""
    current, behind, gone = (f"{registry.host}/library/{name}:1b" for name in ("a", "b", "c"))
    held = registry.push(current)
    old = registry.push(behind)
    new = registry.push(behind)  # the tag moved on after the server pulled it
    sim = OllamaSimulator({"good": [up_to_date([1000])] * 2}, registry=registry, time_scale=0.1)
    with sim.running() as url:
        sim.hold(current, held)
        sim.hold(behind, old)
        checks = "".join(f"      - {{name: {m}, mode: check}}\n" for m in (current, behind, gone))
        down = f"  - name: down\n    url: http://127.0.0.1:{free_port()}\n"
        config = tmp_path / "config.yaml"
        head = "inventory_interval: 1h\ndefaults: {interval: 1h, jitter: 0, insecure: true}\n"
        config.write_text(
            f"{head}servers:\n  - name: a\n    url: {url}\n    models:\n      - good\n{checks}"
            f"{down}    models: [{{name: {current}, mode: check}}]\n"
        )
        done = run_cli(f"--config.file={config}", "--once")
        assert done.returncode == 1, (done.stdout, done.stderr)
        lines = _once_lines(done.stdout)
        assert lines[0] == "server=a model=good result=success downloaded_bytes=0"
        not_known = '{\\"code\\": \\"NAME_UNKNOWN\\", \\"message\\": \\"repository name not known'
        assert lines[1:] == [
            f"server=a model={current} mode=check result=up_to_date"
            f" held={held[:12]} registry={held[:12]}",
            f"server=a model={behind} mode=check result=update_available"
            f" held={old[:12]} registry={new[:12]}",
            f'server=a model={gone} mode=check result=check_failed reason=not_found detail="HTTP'
            f' 404: {{\\"errors\\": [{not_known} to registry\\", \\"detail\\": null}}]}}"',
            f"server=down model={current} mode=check result=check_failed"
            " reason=ollama_unreachable detail=...",
        ]
        assert sim.tags.requests == 1  # one inventory request for the server's three checks
        assert [sim.run_count(model) for model in (current, behind, gone)] == [0, 0, 0]

        # An update waiting is news, not a failure: without the failing checks, exit 0.
        config.write_text(
            f"{head}servers:\n  - name: a\n    url: {url}\n    models:\n"
            f"      - {{name: {current}, mode: check}}\n      - {{name: {behind}, mode: check}}\n"
        )
        done = run_cli(f"--config.file={config}", "--once")
        assert done.returncode == 0, (done.stdout, done.stderr)
        assert [line.split(" result=")[1] for line in _once_lines(done.stdout)] == [
            f"up_to_date held={held[:12]} registry={held[:12]}",
            f"update_available held={old[:12]} registry={new[:12]}",
        ]
