"""The command line in process: `cli.main` with real files, as a user types it.

What a user sees: `--config.check`'s summary or the config's errors (exit 1), one usage line
(exit 2), `--version`, and `--once` through the whole command line against the simulator.
Not the serving path (that binds and runs until a signal: the e2e tier's job).
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING

import pytest

from exporter import __version__
from exporter.app import cli
from ollama_sim import OllamaSimulator, fresh_pull

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)


@pytest.fixture(autouse=True)
def _keep_process_state() -> Iterator[None]:
    """`main` installs signal handlers and the root log handler; pytest's come back after."""
    saved = {signum: signal.getsignal(signum) for signum in SIGNALS}
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    access = logging.getLogger("aiohttp.access")
    access_level = access.level
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    root.handlers[:] = handlers
    root.setLevel(level)
    access.setLevel(access_level)


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


GOOD = (
    "defaults: {interval: 1h, jitter: 0, timeout: 5m, stall_timeout: 1m}\n"
    "servers:\n"
    "  - name: a\n    url: http://127.0.0.1:9\n    models: [{name: m1}, {name: m2}]\n"
    "  - name: b\n    url: http://127.0.0.1:9\n    models: [{name: m1}]\n"
)


def test_config_check_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "c.yml", GOOD)
    assert cli.main([f"--config.file={path}", "--config.check"]) == 0
    assert capsys.readouterr().out == "config OK: 2 servers, 3 models\n"


def test_config_check_counts_in_the_singular(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = "servers:\n  - name: a\n    url: http://127.0.0.1:9\n    models: [{name: m}]\n"
    path = write(tmp_path / "c.yml", one)
    assert cli.main(["--config.file", path, "--config.check"]) == 0
    assert capsys.readouterr().out == "config OK: 1 server, 1 model\n"


def test_a_bad_config_prints_its_errors_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = "servers:\n  - name: a\n    url: ftp://nowhere\n    models: [{name: m}]\n"
    path = write(tmp_path / "bad.yml", bad)
    assert cli.main([f"--config.file={path}", "--config.check"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert f"{path}:3" in captured.err


def test_a_missing_config_file_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "absent.yml")
    assert cli.main([f"--config.file={path}", "--config.check"]) == 1
    assert path in capsys.readouterr().err


def test_a_bad_web_config_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "c.yml", GOOD)
    web = write(tmp_path / "web.yml", "tls_server_config: {cert_file: /nonexistent.crt}\n")
    code = cli.main([f"--config.file={path}", f"--web.config.file={web}", "--config.check"])
    assert code == 1
    assert capsys.readouterr().err.strip() != ""


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["--demo", "--config.file=x.yml"], "--demo runs without a config file"),
        (["--shard=3", "--total-shards=2"], "shard"),
    ],
)
def test_contradicting_flags_are_one_line_and_exit_2(
    argv: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(argv) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("ollama-pull-exporter: ")
    assert said in line


@pytest.mark.parametrize(
    "flag",
    [
        "--web.listen-address=nowhere",
        "--web.listen-address=::1:80",
        "--web.listen-address=[]:80",
        "--web.listen-address=:99999",
        "--shard=x",
        "--web.allowed-hosts=example.com:8080",
        "--log.level=loud",
        "--no-such-flag",
    ],
)
def test_a_usage_error_is_one_line_naming_the_flag(
    flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main([flag])
    assert exited.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("ollama-pull-exporter: error: ")
    assert line.endswith("(see --help)")


def test_listen_addresses_parse_as_documented() -> None:
    assert cli.parse_listen_address(":11435") == (None, 11435)
    assert cli.parse_listen_address("[::1]:9100") == ("::1", 9100)
    assert cli.parse_listen_address("0.0.0.0:80") == ("0.0.0.0", 80)
    assert cli.parse_shard("auto") == "auto"
    assert cli.parse_shard("7") == "7"


def test_version_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out == f"ollama-pull-exporter {__version__}\n"


def test_help_shows_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "--config.check" in out
    assert "(default: logfmt)" in out


def test_once_through_the_command_line(
    tmp_path: Path, simulator: OllamaSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--once --config.file=...`: the line per pair on stdout, exit 0, the state file kept."""
    simulator.set_runs("small", [fresh_pull([5000, 5000], rate=50_000)])
    text = (
        "defaults: {interval: 1h, jitter: 0, timeout: 5m, stall_timeout: 1m}\n"
        f"servers:\n  - name: sim\n    url: {simulator.url}\n    models: [{{name: small}}]\n"
    )
    path = write(tmp_path / "c.yml", text)
    store = tmp_path / "state.db"
    code = cli.main([f"--config.file={path}", "--once", f"--storage.path={store}"])
    (line,) = capsys.readouterr().out.splitlines()
    assert code == 0
    assert line.startswith("server=sim model=small result=success")
    assert line.endswith("downloaded_bytes=10000")
    assert store.exists()


def test_a_storage_path_that_is_a_directory_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path / "c.yml", GOOD)
    code = cli.main([f"--config.file={path}", "--once", f"--storage.path={tmp_path}"])
    assert code == 1
    assert capsys.readouterr().err.startswith("--storage.path: ")


def test_allowed_hosts_take_names_and_addresses() -> None:
    assert cli.parse_allowed_hosts("Example.COM, 10.0.0.1,") == ("example.com", "10.0.0.1")
