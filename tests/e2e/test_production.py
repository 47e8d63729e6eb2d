"""Production features on the real process: TLS and basic auth, persisted state, secrets.

Also the attacks of issue 8 that need the whole process: a flood of wrong passwords, and
scrapes with every odd `Accept` header and query.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import signal
import socket
import sqlite3
import ssl
import time
import urllib.error
import urllib.request
from datetime import datetime
from typing import TYPE_CHECKING

import aiohttp
import bcrypt
import pytest

from ollama_sim import (
    OllamaSimulator,
    error_after_manifest,
    fresh_pull,
    up_to_date,
)
from tests.harness import (
    PROMETHEUS_ACCEPT,
    parse_samples,
    run_cli,
    run_exporter,
    self_signed,
    wait_for,
)

if TYPE_CHECKING:
    from pathlib import Path

TIME_SCALE = 0.05
USER, PASSWORD = "prometheus", "correct horse battery staple"
SECRET = "tok-3f9a1c77e2b54d0a"


def _auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    self_signed(directory)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    (directory / "web.yml").write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
        f"basic_auth_users:\n  {USER}: '{hashed}'\n"
    )
    return directory


def test_tls_and_basic_auth_guard_every_endpoint(tls_dir: Path, tmp_path: Path) -> None:
    sim = OllamaSimulator({"a": [up_to_date([1000])]}, time_scale=TIME_SCALE)
    context = ssl.create_default_context(cafile=str(tls_dir / "server.crt"))
    with sim.running() as url:
        config = f"servers:\n  - name: sim\n    url: {url}\n    models: [a]\n"
        with run_exporter(
            config,
            tmp_path,
            f"--web.config.file={tls_dir / 'web.yml'}",
            "--web.enable-lifecycle",
            context=context,
            headers=_auth(USER, PASSWORD),
        ) as exporter:
            for path in ("/metrics", "/", "/-/healthy", "/-/ready"):
                assert exporter.get(path)[0] == 200, path
                for headers in (
                    {"Authorization": ""},
                    _auth(USER, "wrong"),
                    _auth("eve", PASSWORD),
                ):
                    status, _ = exporter.get(path, headers=headers)
                    assert status == 401, (path, headers)
            assert exporter.get("/nope", headers={"Authorization": ""})[0] == 401
            with pytest.raises(urllib.error.HTTPError) as info:
                urllib.request.urlopen(exporter.url + "/metrics", timeout=5, context=context)
            with info.value:
                assert info.value.code == 401
                assert (
                    info.value.headers["WWW-Authenticate"] == 'Basic realm="ollama-pull-exporter"'
                )
            plain = exporter.url.replace("https://", "http://")
            with pytest.raises(OSError):
                urllib.request.urlopen(plain + "/-/healthy", timeout=5)
            assert PASSWORD not in exporter.logs()


def test_bad_web_config_fails_start_up_with_a_clear_message(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text(
        "servers:\n  - url: http://127.0.0.1:1\n    models: [a]\n"
    )
    (tmp_path / "web.yml").write_text(
        "tls_server_config:\n  cert_file: missing.crt\n  key_file: missing.key\n"
    )
    done = run_cli(
        f"--config.file={tmp_path / 'config.yaml'}", f"--web.config.file={tmp_path / 'web.yml'}"
    )
    assert done.returncode == 1
    assert f"{tmp_path / 'web.yml'}:2: tls_server_config.cert_file" in done.stderr
    assert "Traceback" not in done.stderr


def _last_run_series(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float],
) -> dict[str, float]:
    wanted = (
        "ollama_pull_last_success",
        "ollama_pull_last_run_timestamp_seconds",
        "ollama_pull_last_success_timestamp_seconds",
        "ollama_pull_last_duration_seconds",
        "ollama_pull_last_downloaded_bytes",
        "ollama_pull_last_phase_duration_seconds",
    )
    return {
        f"{name}{sorted(labels)}": value
        for (name, labels), value in samples.items()
        if name in wanted
    }


def test_state_survives_a_restart_and_a_kill_9(tmp_path: Path) -> None:
    sim = OllamaSimulator(
        {
            "good": [fresh_pull([3_000_000], rate=20_000_000), up_to_date([3_000_000])],
            "bad": [error_after_manifest("pull model manifest: file does not exist")],
        },
        time_scale=TIME_SCALE,
    )
    storage = tmp_path / "state" / "exporter.db"
    storage.parent.mkdir()  # the exporter does not create missing directories
    with sim.running() as url:
        config = (
            "defaults: {interval: 1h, jitter: 0}\n"
            f"servers:\n  - name: sim\n    url: {url}\n    models: [good, bad]\n"
        )
        first = tmp_path / "first"
        first.mkdir()
        with run_exporter(config, first, f"--storage.path={storage}") as exporter:
            for model in ("good", "bad"):
                exporter.wait_value(
                    "ollama_pull_last_run_timestamp_seconds",
                    lambda _: True,
                    server="sim",
                    model=model,
                )
            before = _last_run_series(exporter.scrape())
            assert (
                exporter.value("ollama_pull_last_downloaded_bytes", server="sim", model="good")
                == 3_000_000
            )
            assert exporter.stop(signal.SIGKILL) == -signal.SIGKILL
        # Restarted with run_on_start off: nothing runs, the last results come back from disk.
        second = tmp_path / "second"
        second.mkdir()
        quiet = config.replace("jitter: 0", "jitter: 0, run_on_start: false")
        with run_exporter(quiet, second, f"--storage.path={storage}") as exporter:
            after = _last_run_series(exporter.scrape())
            assert after == before
            assert exporter.value("ollama_pull_runs_total", server="sim", model="good") == 0
            assert "state restored" in exporter.logs()
    with contextlib.closing(sqlite3.connect(storage)) as db:
        assert db.execute("select count(*) from last_run").fetchone() == (2,)


def test_corrupt_state_file_is_set_aside_and_the_exporter_starts_fresh(tmp_path: Path) -> None:
    storage = tmp_path / "exporter.db"
    storage.write_bytes(b"\x00garbage, not a database" * 100)
    sim = OllamaSimulator({"a": [up_to_date([1000])]}, time_scale=TIME_SCALE)
    with sim.running() as url:
        config = (
            f"defaults: {{jitter: 0}}\nservers:\n  - name: sim\n    url: {url}\n    models: [a]\n"
        )
        with run_exporter(config, tmp_path, f"--storage.path={storage}") as exporter:
            exporter.wait_value(
                "ollama_pull_last_success", lambda v: v == 1, server="sim", model="a"
            )
            assert "moved_to=" in exporter.logs()
    assert list(tmp_path.glob("exporter.db.corrupt-*"))


def test_a_header_secret_never_leaves_the_process(tmp_path: Path) -> None:
    sim = OllamaSimulator(
        {"a": [up_to_date([1000])], "b": [error_after_manifest("pull model manifest: 401")]},
        time_scale=TIME_SCALE,
    )
    with sim.running() as url:
        config = (
            "defaults: {jitter: 0, interval: 1s}\n"
            f"servers:\n  - name: sim\n    url: {url}\n"
            f"    headers: {{Authorization: 'Bearer ${{TOKEN}}', X-Extra: '{SECRET}-2'}}\n"
            "    models: [a, b]\n"
            f"  - name: dead\n    url: http://127.0.0.1:1\n    headers: {{X-Token: '{SECRET}-3'}}\n"
            "    models: [c]\n"
        )
        with run_exporter(
            config, tmp_path, "--web.enable-lifecycle", "--log.format=json", env={"TOKEN": SECRET}
        ) as exporter:
            exporter.wait_value("ollama_pull_runs_total", lambda v: v >= 2, server="sim", model="b")
            assert sim.requests[0].headers["Authorization"] == f"Bearer {SECRET}"
            outputs = [exporter.get(path)[1] for path in ("/metrics", "/", "/-/ready")]
            # A broken reload (bad header value type) must not echo the old or new value.
            exporter.config_path.write_text(config.replace(f"'{SECRET}-3'", "[1, 2]"))
            request = urllib.request.Request(exporter.url + "/-/reload", method="POST", data=b"")
            try:
                urllib.request.urlopen(request, timeout=10)
            except urllib.error.HTTPError as exc:
                with exc:
                    outputs.append(exc.read().decode())
            exporter.process.send_signal(signal.SIGHUP)
            wait_for(lambda: "config reload failed" in exporter.logs(), 5, "the reload log line")
            exporter.stop()
            outputs.append(exporter.logs())
        assert len(outputs) == 5
        for output in outputs:
            assert SECRET not in output
        check = run_cli(
            f"--config.file={exporter.config_path}",
            "--config.check",
            env={"TOKEN": SECRET, "PATH": "/usr/bin"},
        )
        assert check.returncode == 1
        assert SECRET not in check.stdout + check.stderr


FLOOD = 400


def _loopback_alias() -> str:
    """A second loopback address, so the flood comes from another client than Prometheus."""
    try:
        with socket.socket() as sock:
            sock.bind(("127.0.0.2", 0))
    except OSError:
        pytest.skip("127.0.0.2 is not usable here")
    return "127.0.0.2"


async def _flood_then_login(url: str, attacker: str) -> tuple[list[int], int, float]:
    """FLOOD wrong passwords at once from `attacker`, then one good login from 127.0.0.1.

    Returns the flood's statuses, the login's, and when (Unix time) the login was sent.
    """
    timeout = aiohttp.ClientTimeout(total=120)
    flood_connector = aiohttp.TCPConnector(limit=0, local_addr=(attacker, 0))
    async with (
        aiohttp.ClientSession(connector=flood_connector, timeout=timeout) as flood,
        aiohttp.ClientSession(timeout=timeout) as prometheus,
    ):

        async def guess(index: int) -> int:
            async with flood.get(url + "/metrics", headers=_auth(USER, f"guess{index}")) as r:
                return r.status

        tasks = [asyncio.ensure_future(guess(i)) for i in range(FLOOD)]
        # One answer back: the exporter is busy with the rest now.
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        sent_at = time.time()
        async with prometheus.get(url + "/metrics", headers=_auth(USER, PASSWORD)) as response:
            login = response.status
        return list(await asyncio.gather(*tasks)), login, sent_at


def _logged_at(line: str) -> float:
    """When the exporter wrote a logfmt line (its `ts=`, Unix time, to the millisecond)."""
    stamp = line.removeprefix("ts=").split(" ", 1)[0]
    return datetime.fromisoformat(stamp).timestamp()


def test_a_password_flood_does_not_lock_out_a_new_login(tmp_path: Path) -> None:
    """Defect: 5,000 wrong passwords delayed a new valid login by minutes (one bcrypt each)."""
    attacker = _loopback_alias()
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=10)).decode()
    web = tmp_path / "web.yml"
    web.write_text(f"basic_auth_users:\n  {USER}: '{hashed}'\n")
    config = "servers:\n  - url: http://127.0.0.1:1\n    models: [a]\n"
    with run_exporter(
        config, tmp_path, f"--web.config.file={web}", headers=_auth(USER, PASSWORD), ready=False
    ) as exporter:
        wait_for(lambda: "msg=starting" in exporter.logs(), 20, "the exporter to start")
        wait_for(lambda: _answers(exporter.url), 20, "the exporter to answer")
        statuses, login, sent_at = asyncio.run(_flood_then_login(exporter.url, attacker))
        exporter.stop()
        logs = exporter.logs().splitlines()
    assert login == 200
    assert set(statuses) <= {401, 429}
    assert statuses.count(429) >= FLOOD // 2, statuses
    verified = next(i for i, line in enumerate(logs) if "basic auth verified" in line)
    # The checks that ended between the login's sending and its own check: the one in progress
    # and those queued ahead of it. Not those that ended while this process (400 connections in
    # one loop) got round to sending the login, which a starved machine makes many.
    failed_first = sum(
        "basic auth failed" in line and _logged_at(line) >= sent_at - 0.001
        for line in logs[:verified]
    )
    assert failed_first <= 8, f"{failed_first} bcrypt checks ran before the valid login's"
    assert "Traceback" not in "\n".join(logs)
    assert sum("basic auth queue full" in line for line in logs) <= 2


def _answers(url: str) -> bool:
    try:
        urllib.request.urlopen(url + "/-/healthy", timeout=2)
    except urllib.error.HTTPError:
        return True  # 401: it answers
    except OSError:
        return False
    return True


ODD_SCRAPES = (
    ("/metrics", "application/openmetrics-text;version=2.0.0"),
    ("/metrics", "application/openmetrics-text;version=1.0.0;escaping=values"),
    ("/metrics", "text/plain;version=1.0.0;escaping=values"),
    ("/metrics", "application/openmetrics-text;version=abc"),
    ("/metrics", "text/plain;version=abc;q=abc"),
    ("/metrics", "*/*;q=2,application/openmetrics-text;q=-1"),
    ("/metrics?name[]=ollama_pull_runs_total", PROMETHEUS_ACCEPT),
    ("/metrics?name[]=ollama_pull_runs_total&name[]=ollama_pull_server_up", ""),
    ("/metrics?name[]=", PROMETHEUS_ACCEPT),
    ("/metrics?%ff%fe=%00&x", PROMETHEUS_ACCEPT),
    ("/metrics", PROMETHEUS_ACCEPT),
)


def test_odd_scrapes_are_answered_from_the_cache_or_refused_cleanly(tmp_path: Path) -> None:
    """Defect: OpenMetrics 2.0.0/escaping=values cost 0.6 s each, version=abc was a 500, and
    `?name[]=` answered an empty body."""
    sim = OllamaSimulator({"a": [up_to_date([1000])]}, time_scale=TIME_SCALE)
    with sim.running() as url:
        config = (
            f"defaults: {{jitter: 0}}\nservers:\n  - name: sim\n    url: {url}\n    models: [a]\n"
        )
        with run_exporter(config, tmp_path) as exporter:
            exporter.wait_value(
                "ollama_pull_last_success", lambda v: v == 1, server="sim", model="a"
            )
            answers = []
            for path, accept in ODD_SCRAPES:
                request = urllib.request.Request(exporter.url + path, headers={"Accept": accept})
                with urllib.request.urlopen(request, timeout=10) as response:
                    answers.append((response.headers["Content-Type"], response.read().decode()))
            exporter.stop()
            logs = exporter.logs()
    for (path, accept), (content_type, body) in zip(ODD_SCRAPES, answers, strict=True):
        assert content_type.startswith(
            ("text/plain; version=0.0.4", "application/openmetrics-text; version=1.0.0")
        ), (path, accept, content_type)
        assert "escaping=values" not in content_type
        samples = parse_samples(body)
        if "name[]=ollama_pull_runs_total" in path:
            assert (
                samples[("ollama_pull_runs_total", frozenset({("server", "sim"), ("model", "a")}))]
                >= 1
            )
            names = {name for name, _ in samples}
            assert names <= {"ollama_pull_runs_total", "ollama_pull_server_up"}, names
        elif "name[]" not in path:
            assert (
                "ollama_pull_last_success",
                frozenset({("server", "sim"), ("model", "a")}),
            ) in samples
    assert "Traceback" not in logs
    assert "level=error" not in logs
