"""`--once` in process: `once.run` over the real program against the simulator.

What a user of `--once` sees: one line per pair in config order, with its result, and the exit
code that a cron job or CI step acts on. No process: the program is assembled as `cli` does,
and `once.run` runs in this test's own event loop.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import TYPE_CHECKING

import pytest

from exporter.app import assemble, once
from exporter.config.loader import load_config, parse_config
from exporter.fleet.sharding import Shard
from ollama_sim import OllamaSimulator, fresh_pull, pre_stream_error
from ollama_sim.registry import RegistrySimulator

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


@pytest.fixture(autouse=True)
def _keep_signal_handlers() -> Iterator[None]:
    """`once.run` installs the exporter's own handlers on the way out; pytest's come back."""
    saved = {signum: signal.getsignal(signum) for signum in SIGNALS}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def run_once(config_text: str) -> int:
    """`--once` over `config_text`, as `cli` runs it; its exit code."""
    options = assemble.Options(config_path="once.yml", shard=Shard())
    config = parse_config(config_text, "once.yml")
    with assemble.open_program(options, config) as program:
        return asyncio.run(once.run(program))


def config_text(url: str, *models: str) -> str:
    names = ", ".join(f"{{name: {model}}}" for model in models)
    return (
        "defaults: {interval: 1h, jitter: 0, timeout: 5m, stall_timeout: 1m}\n"
        f"servers:\n  - name: sim\n    url: {url}\n    models: [{names}]\n"
    )


def test_a_pull_that_succeeds_prints_success_and_exits_0(
    simulator: OllamaSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert simulator.url is not None
    simulator.set_runs("small", [fresh_pull([5000, 5000], rate=50_000)])
    code = run_once(config_text(simulator.url, "small"))
    out = capsys.readouterr().out.splitlines()
    assert code == 0
    assert len(out) == 1
    assert out[0].startswith("server=sim model=small result=success duration=")
    assert out[0].endswith(" downloaded_bytes=10000")
    assert simulator.run_count("small") == 1


def test_a_failed_pull_prints_its_reason_and_exits_1(
    simulator: OllamaSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """One pair fails, one succeeds: both lines, in config order, and exit 1."""
    assert simulator.url is not None
    simulator.set_runs("good", [fresh_pull([500])])
    simulator.set_runs("bad", [pre_stream_error(500, "disk on fire")])
    code = run_once(config_text(simulator.url, "bad", "good"))
    bad, good = capsys.readouterr().out.splitlines()
    assert code == 1
    assert bad.startswith("server=sim model=bad result=failure reason=")
    assert good.startswith("server=sim model=good result=success")


def test_a_server_that_is_down_fails_every_pair(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing listens: the pair's line says failure, the exit code is 1."""
    code = run_once(config_text("http://127.0.0.1:9", "small"))
    (line,) = capsys.readouterr().out.splitlines()
    assert code == 1
    assert line.startswith("server=sim model=small result=failure reason=")


def check_config(url: str, *models: str) -> str:
    names = ", ".join(f"{{name: '{model}', mode: check, insecure: true}}" for model in models)
    return (
        "defaults: {interval: 1h, jitter: 0, timeout: 5m, stall_timeout: 1m}\n"
        f"servers:\n  - name: sim\n    url: {url}\n    models: [{names}]\n"
    )


def test_check_pairs_compare_digests_and_download_nothing(
    simulator: OllamaSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """Held and current: up_to_date; held and older: update_available; no tag: exit 1."""
    assert simulator.url is not None
    registry = RegistrySimulator()
    with registry.running():
        current, old, missing = (f"{registry.host}/library/{name}:1b" for name in "abc")
        simulator.hold(current, registry.push(current))
        simulator.hold(old, registry.push(old))
        registry.push(old)  # a newer manifest for the tag: the held copy is old now
        code = run_once(check_config(simulator.url, current, old))
        up, waiting = capsys.readouterr().out.splitlines()
        assert code == 0, "an update waiting is not a failure"
        assert f"model={current} mode=check result=up_to_date held=" in up
        assert f"model={old} mode=check result=update_available held=" in waiting
        assert simulator.requests == [], "a check downloads nothing"

        code = run_once(check_config(simulator.url, missing))
        (line,) = capsys.readouterr().out.splitlines()
    assert code == 1
    assert f"model={missing} mode=check result=check_failed reason=" in line


def test_a_check_against_a_server_that_is_down_says_why(
    capsys: pytest.CaptureFixture[str],
) -> None:
    registry = RegistrySimulator()
    with registry.running():
        model = f"{registry.host}/library/tiny:1b"
        registry.push(model)
        code = run_once(check_config("http://127.0.0.1:9", model))
    (line,) = capsys.readouterr().out.splitlines()
    assert code == 1
    assert "mode=check result=check_failed reason=" in line
    assert "detail=" in line


def test_once_asks_discovery_once_and_runs_the_servers_it_found(
    tmp_path: Path, simulator: OllamaSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """`server_discovery` from a file: one answer of it, then a line per discovered pair."""
    simulator.set_runs("small", [fresh_pull([5000, 5000], rate=50_000)])
    (tmp_path / "servers.yaml").write_text(
        f"- {{name: found, url: {simulator.url}}}\n", encoding="utf-8"
    )
    path = tmp_path / "once.yml"
    path.write_text(
        "defaults: {interval: 1h, jitter: 0, timeout: 5m, stall_timeout: 1m}\n"
        "server_discovery:\n"
        "  - {name: lab, file: servers.yaml, template: {models: [{name: small}]}}\n",
        encoding="utf-8",
    )
    options = assemble.Options(config_path=str(path), shard=Shard())
    with assemble.open_program(options, load_config(str(path))) as program:
        code = asyncio.run(once.run(program))
    (line,) = capsys.readouterr().out.splitlines()
    assert code == 0
    assert line.startswith("server=found model=small result=success")


def test_a_run_of_once_is_restored_from_the_state_file(
    tmp_path: Path,
    simulator: OllamaSimulator,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`--storage.path`: the next start shows the last run `--once` made, bytes and all."""
    assert simulator.url is not None
    simulator.set_runs("small", [fresh_pull([5000, 5000], rate=50_000)])
    text = config_text(simulator.url, "small")
    options = assemble.Options(
        config_path="once.yml", shard=Shard(), storage_path=str(tmp_path / "state.db")
    )
    with assemble.open_program(options, parse_config(text, "once.yml")) as program:
        assert asyncio.run(once.run(program)) == 0
    capsys.readouterr()
    with (
        caplog.at_level(logging.INFO, logger="exporter"),
        assemble.open_program(options, parse_config(text, "once.yml")) as program,
    ):
        program.first_apply(program.runtime())
        last = program.state.pairs["sim", "small"].last
    assert last is not None
    assert last.reason is None
    assert last.downloaded_bytes == 10000
    assert "state restored" in [record.getMessage() for record in caplog.records]
