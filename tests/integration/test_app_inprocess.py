"""The app's edges in process: the reload path, the health check, the config reader, signals.

Each runs against real parts in this process: the assembled exporter serving on 127.0.0.1, real
config files, real signals sent to this process. What is asserted is what a user sees: metric
values, the health check's line and exit code, the reader's answer, a reload remembered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import re
import signal
import socket
import threading
from typing import TYPE_CHECKING

import bcrypt
import pytest
from aiohttp.test_utils import TestServer

from exporter.app import assemble, healthcheck
from exporter.app.runtime import Followers, Runtime
from exporter.config import reader
from exporter.config.loader import load_config, parse_config
from exporter.config.types import Config
from exporter.config.webconfig import load_web_config
from exporter.core import signals
from exporter.fleet.sharding import Shard
from tests.inprocess import Client, exporter_in_process

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from exporter.app.assemble import Program

SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
RELOAD_OK = "ollama_pull_exporter_config_last_reload_successful"


@pytest.fixture(autouse=True)
def _keep_signal_handlers() -> Iterator[None]:
    """The exporter's handlers go in for a test; pytest's come back after it."""
    saved = {signum: signal.getsignal(signum) for signum in SIGNALS}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def config_text(*models: str) -> str:
    names = ", ".join(f"{{name: {model}, run_on_start: false}}" for model in models)
    return (
        "defaults: {interval: 1h, jitter: 0, timeout: 5m, stall_timeout: 1m}\n"
        f"servers:\n  - name: s\n    url: http://127.0.0.1:9\n    models: [{names}]\n"
    )


def free_port() -> int:
    """A port with nothing listening on it (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ------------------------------------------------------------------ reload (Runtime)


def file_runtime(program: Program, path: Path) -> Runtime:
    """A runtime over the program's state that reloads `path` in process (as `--demo` does)."""
    followers = Followers(program.fleet, program.history, program.stored)
    return Runtime(
        str(path), program.config, program.state, followers, lambda: load_config(str(path))
    )


async def metrics(client: Client) -> str:
    answer = await client.get("/metrics")
    assert answer.status == 200
    return await answer.text()


def test_a_reload_puts_the_new_pairs_in_force_and_a_bad_file_changes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.yml"
    path.write_text(config_text("m1"), encoding="utf-8")

    async def test() -> None:
        async with exporter_in_process(path.read_text()) as (client, program):
            runtime = file_runtime(program, path)
            runtime.apply(program.config)
            assert 'model="m2"' not in await metrics(client)

            path.write_text(config_text("m1", "m2"), encoding="utf-8")
            assert await runtime.reload() == ()
            text = await metrics(client)
            assert 'model="m2"' in text
            assert f"{RELOAD_OK} 1.0" in text
            assert runtime.config.model_count == 2

            path.write_text(config_text("m1") + "  - oops\n", encoding="utf-8")
            errors = await runtime.reload()
            assert errors
            assert all(error.startswith(str(path)) for error in errors)
            text = await metrics(client)
            assert f"{RELOAD_OK} 0.0" in text
            assert 'model="m2"' in text, "a failed reload keeps the old config in force"
            assert runtime.config.model_count == 2

            runtime.rediscovered()
            assert runtime.config.model_count == 2
            await runtime.stop()

    with caplog.at_level(logging.INFO, logger="exporter"):
        asyncio.run(test())
    messages = [record.getMessage() for record in caplog.records]
    assert "config reloaded" in messages
    assert "config reload failed, keeping the old config" in messages
    assert "servers rediscovered" in messages


def test_reload_requests_during_a_reload_share_the_next_one(tmp_path: Path) -> None:
    """A burst of requests costs at most one more read of the file, and all see its answer."""
    path = tmp_path / "c.yml"
    path.write_text(config_text("m1"), encoding="utf-8")
    reads: list[int] = []

    def source() -> Config:
        reads.append(1)
        return load_config(str(path))

    async def test() -> None:
        async with exporter_in_process(path.read_text()) as (_, program):
            followers = Followers(program.fleet, program.history, program.stored)
            runtime = Runtime(str(path), program.config, program.state, followers, source)
            answers = await asyncio.gather(*(runtime.reload() for _ in range(5)))
            assert answers == [()] * 5
            runtime.request_reload()
            await runtime.stop()

    asyncio.run(test())
    assert 1 <= len(reads) <= 2


# ------------------------------------------------------------------ healthcheck


def test_the_health_check_says_healthy_for_a_serving_exporter(
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def test() -> tuple[int, int]:
        async with exporter_in_process(config_text("m1")) as (client, _):
            port = client.port
            assert port is not None
            flags = ["--", f"--web.listen-address=127.0.0.1:{port}"]
            return await asyncio.to_thread(healthcheck.main, flags), port

    code, port = asyncio.run(test())
    assert code == 0
    assert capsys.readouterr().out == f"healthy: http://127.0.0.1:{port}/-/healthy: 200 OK\n"


def test_the_health_check_says_unhealthy_when_nothing_listens(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    assert healthcheck.main(["--", f"--web.listen-address=:{port}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"unhealthy: http://127.0.0.1:{port}/-/healthy: ")


@pytest.mark.parametrize(
    ("flags", "said"),
    [
        (["--web.listen-address=:0"], "port of the system's choice"),
        (["--demo", "--config.file=c.yml"], "--demo runs without a config file"),
        (["--web.config.file=absent.yml"], "absent.yml"),
    ],
)
def test_the_health_check_explains_flags_it_cannot_follow(
    flags: list[str], said: str, tmp_path: Path
) -> None:
    with pytest.raises(healthcheck.CheckError, match=re.escape(said)):
        healthcheck.check(flags, tmp_path)


def test_the_health_check_finds_the_exporter_flags_in_a_command_line() -> None:
    flags = ["--web.listen-address=:9100"]
    assert healthcheck.exporter_flags(["python3", "-m", "exporter", *flags]) == flags
    assert healthcheck.exporter_flags(["/usr/bin/ollama-pull-exporter", *flags]) == flags
    with pytest.raises(healthcheck.CheckError, match="not an ollama-pull-exporter"):
        healthcheck.exporter_flags(["nginx", "-g", "daemon off;"])


def test_the_health_check_of_a_process_that_is_not_the_exporter_fails(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """This process is pytest: its flags are not the exporter's, and the line says so."""
    assert healthcheck.main([f"--pid={os.getpid()}"]) == 1
    assert capsys.readouterr().err.startswith("unhealthy: not an ollama-pull-exporter")
    with pytest.raises(healthcheck.CheckError, match="cannot read the flags of process"):
        healthcheck.process_flags(2**22 + 1)  # above Linux's pid_max


# ------------------------------------------------------------------ the config reader


def test_the_reader_answers_the_config_or_its_errors(
    tmp_path: Path, capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its stdout is the pickle a reload unpickles: a `Config`, or the tuple of errors."""
    niced: list[int] = []
    monkeypatch.setattr(os, "nice", niced.append)  # this is pytest's process: stay at its nice
    good, bad = tmp_path / "good.yml", tmp_path / "bad.yml"
    good.write_text(config_text("m1", "m2"), encoding="utf-8")
    bad.write_text("servers: 3\n", encoding="utf-8")

    assert reader.main([str(good)]) == 0
    config = pickle.loads(capsysbinary.readouterr().out)
    assert isinstance(config, Config)
    assert config.model_count == 2

    assert reader.main([str(bad)]) == 0
    errors = pickle.loads(capsysbinary.readouterr().out)
    assert isinstance(errors, tuple)
    assert errors[0].startswith(str(bad))
    assert niced == [10, 10]

    assert reader.main([]) == 2
    assert capsysbinary.readouterr().err.startswith(b"usage: python -m exporter.config.reader")


# ------------------------------------------------------------------ signals


def test_a_sighup_before_the_loop_is_one_reload_request() -> None:
    signals.install()
    signals.take_reload_request()
    for _ in range(3):
        os.kill(os.getpid(), signal.SIGHUP)
    assert signals.take_reload_request() is True, "a burst is one request"
    assert signals.take_reload_request() is False
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signals.remember_reloads()
    os.kill(os.getpid(), signal.SIGHUP)
    assert signals.take_reload_request() is True


def test_sigterm_before_the_loop_interrupts_start_up() -> None:
    signals.install()
    with pytest.raises(signals.Interrupted) as raised:
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs as the call returns
    assert raised.value.name == "SIGTERM"


def test_install_off_the_main_thread_leaves_the_handlers_alone() -> None:
    before = signal.getsignal(signal.SIGHUP)
    thread = threading.Thread(target=signals.install)
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGHUP) is before


def test_the_shutdown_deadline_is_a_daemon_timer_that_can_be_cancelled() -> None:
    timer = signals.exit_after(3600, code=1)
    try:
        assert timer.daemon
        assert timer.name == "shutdown deadline"
        assert timer.is_alive()
    finally:
        timer.cancel()
    timer.join(5)
    assert not timer.is_alive()


def test_the_health_check_counts_the_exporters_own_401_as_serving(tmp_path: Path) -> None:
    """With basic auth on, the check has no password: the exporter's 401 with its realm is an
    answer (healthy); without the web config it expects a 200 and says what it got."""
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    web_file = tmp_path / "web.yml"
    web_file.write_text(f"basic_auth_users:\n  admin: '{hashed}'\n", encoding="utf-8")
    web_config = load_web_config(str(web_file))
    options = assemble.Options(config_path="test.yml", shard=Shard())

    async def test() -> tuple[str, str]:
        config = parse_config(config_text("m1"), "test.yml")
        with assemble.open_program(options, config) as program:
            async with assemble.scheduling(program) as running:
                app = assemble.web_app(program, running, web_config)
                async with TestServer(app, host="127.0.0.1") as server:
                    address = f"--web.listen-address=127.0.0.1:{server.port}"
                    flags = [address, "--web.config.file=web.yml"]
                    said = await asyncio.to_thread(healthcheck.check, flags, tmp_path)
                    with pytest.raises(healthcheck.CheckError) as refused:
                        await asyncio.to_thread(healthcheck.check, [address], tmp_path)
        return said, str(refused.value)

    said, refused = asyncio.run(test())
    assert said.endswith("401 from the exporter (basic auth on; the check has no password)")
    assert refused.endswith("/-/healthy: 401 Unauthorized")
