"""`server_discovery`: the config keys, file discovery and DNS discovery, end to end.

File discovery: the real exporter watches a file that the test rewrites atomically; servers
join and leave with their series, and a broken file keeps the last good list with a clear log
line. DNS discovery: a real DNS server on 127.0.0.1 (dnslib) whose answers the test changes;
servers join and leave, a running pull of a leaving server is cancelled by closing its stream,
and when the DNS server goes away the exporter keeps the last list and counts the failures.

This module holds the tests that start processes; tests/integration/test_discovery.py holds the
in-process ones and the helpers both use.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

from dnslib import AAAA, QTYPE, RR, SRV, A

from ollama_sim import OllamaSimulator, fresh_pull, up_to_date
from tests.harness import Exporter, run_exporter, wait_for
from tests.integration.test_discovery import SRV_NAME, Answers, dns_server

if TYPE_CHECKING:
    from pathlib import Path


# ------------------------------------------------------------------ helpers


def _pairs(exporter: Exporter) -> set[tuple[str, str]]:
    return {
        (labels["server"], labels["model"])
        for (name, label_set) in exporter.scrape()
        if name == "ollama_pull_runs_total"
        for labels in [dict(label_set)]
    }


def _write_atomically(path: Path, text: str) -> None:
    """Write a sibling, then rename it over `path`: readers see the old or the new file."""
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)  # noqa: PTH105


def _servers_file(urls: dict[str, str]) -> str:
    return "".join(f"- name: {name}\n  url: {url}\n" for name, url in urls.items())


# ------------------------------------------------------------------ file discovery


def test_file_discovery_follows_atomic_rewrites_and_keeps_the_list_when_broken(
    tmp_path: Path,
) -> None:
    servers = tmp_path / "servers.yaml"
    sim = OllamaSimulator(unknown=up_to_date([1000]))
    config = """\
defaults: {interval: 1h, jitter: 0}
servers:
  - name: static
    url: http://127.0.0.1:1
    models: [m:1b]
server_discovery:
  - name: lab
    file: servers.yaml
    refresh_interval: 100ms
    template:
      models: [m:1b, n:1b]
"""
    with sim.running() as url:
        servers.write_text(_servers_file({"a": url, "b": url}))
        with run_exporter(config, tmp_path) as exporter:
            assert _pairs(exporter) == {
                ("static", "m:1b"),
                *((s, m) for s in "ab" for m in ("m:1b", "n:1b")),
            }
            assert exporter.value("ollama_pull_exporter_discovered_servers", discovery="lab") == 2
            assert exporter.value("ollama_pull_exporter_configured_pairs") == 5
            # Discovered servers are pulled like the others (run_on_start).
            exporter.wait_value(
                "ollama_pull_last_success", lambda v: v == 1, server="a", model="n:1b"
            )

            _write_atomically(servers, _servers_file({"b": url, "c": url}))
            wait_for(
                lambda: ("c", "m:1b") in _pairs(exporter) and ("a", "m:1b") not in _pairs(exporter),
                10,
                "a to leave and c to join",
            )
            assert exporter.value("ollama_pull_exporter_discovered_servers", discovery="lab") == 2
            b_runs = exporter.value("ollama_pull_runs_total", server="b", model="m:1b")
            assert b_runs == 1  # b stayed: its counters go on, no second run-on-start

            _write_atomically(servers, "- name: d\n  url: ftp://nope\n")
            exporter.wait_value(
                "ollama_pull_exporter_discovery_failures_total", lambda v: v == 1, discovery="lab"
            )
            assert {s for s, _ in _pairs(exporter)} == {"static", "b", "c"}
            log = exporter.logs()
            assert "server discovery failed, keeping the last good list" in log
            assert "servers.yaml:2: [0].url: the URL must start with http:// or https://" in log

            servers.unlink()  # gone: a failure too, counted once, the list stays
            exporter.wait_value(
                "ollama_pull_exporter_discovery_failures_total", lambda v: v == 2, discovery="lab"
            )
            assert {s for s, _ in _pairs(exporter)} == {"static", "b", "c"}

            _write_atomically(servers, "[]\n")
            wait_for(lambda: {s for s, _ in _pairs(exporter)} == {"static"}, 10, "an empty list")
            assert exporter.value("ollama_pull_exporter_discovered_servers", discovery="lab") == 0
            assert (
                exporter.value("ollama_pull_exporter_discovery_failures_total", discovery="lab")
                == 2
            )
            assert "Traceback" not in exporter.logs()


# ------------------------------------------------------------------ DNS discovery


def _srv(*ports: int) -> list[RR]:
    return [
        RR(f"{SRV_NAME}.", QTYPE.SRV, ttl=1, rdata=SRV(0, 0, port, "127.0.0.1.")) for port in ports
    ]


def _name(port: int) -> str:
    return f"{SRV_NAME}/127.0.0.1:{port}"


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_a_discovered_url_with_user_info_is_ignored_when_the_template_sets_authorization(
    tmp_path: Path,
) -> None:
    """Both would be sent; aiohttp refuses that, so every run would fail. Say so, skip it."""
    servers = tmp_path / "servers.yaml"
    sim = OllamaSimulator(unknown=up_to_date([1000]))
    config = """\
defaults: {interval: 1h, jitter: 0}
server_discovery:
  - name: lab
    file: servers.yaml
    template:
      headers: {Authorization: Bearer tok-123456}
      models: [m:1b]
"""
    with sim.running() as url:
        port = url.rsplit(":", 1)[1]
        with_user = f"http://ops:pw-123456@127.0.0.1:{port}"
        servers.write_text(_servers_file({"plain": url, "creds": with_user}))
        with run_exporter(config, tmp_path) as exporter:
            exporter.wait_value(
                "ollama_pull_last_success", lambda v: v == 1, server="plain", model="m:1b"
            )
            assert _pairs(exporter) == {("plain", "m:1b")}
            assert exporter.value("ollama_pull_exporter_discovered_servers", discovery="lab") == 1
            log = exporter.logs()
            assert "discovered server ignored: its url has user info" in log
            assert "server=creds" in log
            assert "pw-123456" not in log


def test_dns_discovery_servers_join_and_leave_and_survive_the_dns_server(tmp_path: Path) -> None:
    answers = Answers()
    fast = OllamaSimulator(unknown=up_to_date([1000]))
    slow = OllamaSimulator(unknown=fresh_pull([10_000_000_000], rate=1_000_000))  # hours
    late = OllamaSimulator(unknown=up_to_date([1000]))
    with (
        fast.running() as fast_url,
        slow.running() as slow_url,
        late.running() as late_url,
        dns_server(answers) as (server, dns_port),
    ):
        ports = {
            name: _port(url)
            for name, url in (("fast", fast_url), ("slow", slow_url), ("late", late_url))
        }
        answers.set(_srv(ports["fast"], ports["slow"]))
        config = f"""\
defaults: {{interval: 1h, jitter: 0, timeout: 1h, stall_timeout: 30m}}
server_discovery:
  - name: pods
    dns: {SRV_NAME}
    type: SRV
    nameserver: 127.0.0.1:{dns_port}
    refresh_interval: 200ms
    template:
      models: [m:1b]
"""
        with run_exporter(config, tmp_path) as exporter:
            # Both answers are servers from the first scrape on, named NAME/ADDRESS:PORT.
            assert _pairs(exporter) == {
                (_name(ports["fast"]), "m:1b"),
                (_name(ports["slow"]), "m:1b"),
            }
            assert exporter.value("ollama_pull_exporter_discovered_servers", discovery="pods") == 2
            exporter.wait_value(
                "ollama_pull_last_success",
                lambda v: v == 1,
                server=_name(ports["fast"]),
                model="m:1b",
            )
            slow.wait_for(lambda: slow.active.get("m:1b", 0) == 1, 10)
            exporter.wait_value(
                "ollama_pull_in_progress",
                lambda v: v == 1,
                server=_name(ports["slow"]),
                model="m:1b",
            )

            # The slow server leaves while its pull streams, and another one joins.
            answers.set(_srv(ports["fast"], ports["late"]))
            wait_for(
                lambda: (
                    _pairs(exporter)
                    == {(_name(ports["fast"]), "m:1b"), (_name(ports["late"]), "m:1b")}
                ),
                10,
                "the DNS change to apply",
            )
            slow.wait_for(lambda: slow.active.get("m:1b", 0) == 0, 10)
            (record,) = slow.requests
            assert record.outcome == "client_disconnected"  # the stream was closed, not left
            cancelled = [line for line in exporter.logs().splitlines() if "pull cancelled" in line]
            assert len(cancelled) == 1, cancelled
            assert _name(ports["slow"]) in cancelled[0]
            exporter.wait_value(
                "ollama_pull_last_success",
                lambda v: v == 1,
                server=_name(ports["late"]),
                model="m:1b",
            )
            samples = exporter.scrape()
            assert not any(_name(ports["slow"]) in str(labels) for _, labels in samples)
            assert (
                exporter.value("ollama_pull_exporter_discovery_failures_total", discovery="pods")
                == 0
            )

            # No answers at all (NXDOMAIN): every discovered server leaves; not a failure.
            answers.set([RR("other.test.", QTYPE.A, rdata=A("127.0.0.1"))])
            wait_for(lambda: not _pairs(exporter), 10, "an empty answer to empty the list")
            answers.set(_srv(ports["fast"], ports["late"]))
            wait_for(lambda: len(_pairs(exporter)) == 2, 10, "the servers to come back")

            # The DNS server goes away: refreshes fail, are counted, and the list stays.
            server.stop()
            server.server.server_close()
            exporter.wait_value(
                "ollama_pull_exporter_discovery_failures_total",
                lambda v: v >= 2,
                timeout=30,
                discovery="pods",
            )
            assert len(_pairs(exporter)) == 2
            assert exporter.value("ollama_pull_exporter_discovered_servers", discovery="pods") == 2
            log = exporter.logs()
            assert "server discovery failed, keeping the last good list" in log
            assert f"DNS SRV {SRV_NAME}" in log
            assert "Traceback" not in log
            assert exporter.get("/-/healthy")[0] == 200


def test_dns_a_records_use_the_configured_port(tmp_path: Path) -> None:
    answers = Answers()
    sim = OllamaSimulator(unknown=up_to_date([1000]))
    with sim.running() as url, dns_server(answers) as (_, dns_port):
        answers.set([RR("ollama.pulls.test.", QTYPE.A, ttl=1, rdata=A("127.0.0.1"))])
        config = f"""\
defaults: {{interval: 1h, jitter: 0}}
server_discovery:
  - dns: ollama.pulls.test
    type: A
    port: {_port(url)}
    nameserver: 127.0.0.1:{dns_port}
    template:
      models: [m:1b]
"""
        with run_exporter(config, tmp_path) as exporter:
            name = f"ollama.pulls.test/127.0.0.1:{_port(url)}"
            exporter.wait_value(
                "ollama_pull_last_success", lambda v: v == 1, server=name, model="m:1b"
            )
            assert exporter.value("ollama_pull_exporter_discovered_servers", discovery="0") == 1


def test_dns_aaaa_answers_are_named_with_brackets(tmp_path: Path) -> None:
    answers = Answers()
    with dns_server(answers) as (_, dns_port):
        answers.set(
            [
                RR("v6.pulls.test.", QTYPE.AAAA, ttl=1, rdata=AAAA(address))
                for address in ("::1", "fd00::7")
            ]
        )
        config = f"""\
defaults: {{interval: 1h, run_on_start: false}}
server_discovery:
  - name: v6
    dns: v6.pulls.test
    type: AAAA
    port: 11434
    scheme: https
    nameserver: 127.0.0.1:{dns_port}
    template:
      models: [m:1b]
"""
        with run_exporter(config, tmp_path) as exporter:
            assert _pairs(exporter) == {
                ("v6.pulls.test/[::1]:11434", "m:1b"),
                ("v6.pulls.test/[fd00::7]:11434", "m:1b"),
            }
            assert exporter.value("ollama_pull_exporter_discovered_servers", discovery="v6") == 2


def test_a_discovered_pair_gets_its_stored_last_run_back_after_a_restart(tmp_path: Path) -> None:
    sim = OllamaSimulator(unknown=up_to_date([1000]))
    state = tmp_path / "state" / "state.db"
    state.parent.mkdir()
    config = """\
defaults: {interval: 1h, jitter: 0}
server_discovery:
  - file: servers.yaml
    template:
      models: [m:1b]
"""
    with sim.running() as url:
        (tmp_path / "servers.yaml").write_text(_servers_file({"found": url}))
        with run_exporter(config, tmp_path, f"--storage.path={state}") as exporter:
            ended = exporter.wait_value(
                "ollama_pull_last_run_timestamp_seconds",
                lambda v: v > 0,
                server="found",
                model="m:1b",
            )
        run_on_start_off = config.replace("jitter: 0}", "jitter: 0, run_on_start: false}")
        with run_exporter(run_on_start_off, tmp_path, f"--storage.path={state}") as exporter:
            exporter.scrape()
            assert exporter.value("ollama_pull_runs_total", server="found", model="m:1b") == 0
            restored = exporter.value(
                "ollama_pull_last_run_timestamp_seconds", server="found", model="m:1b"
            )
            assert restored == ended
            assert exporter.value("ollama_pull_last_success", server="found", model="m:1b") == 1


def test_a_reload_adds_and_removes_discovery_entries(tmp_path: Path) -> None:
    sim = OllamaSimulator(unknown=up_to_date([1000]))
    static = """\
defaults: {interval: 1h, run_on_start: false}
servers:
  - {name: static, url: "http://127.0.0.1:1", models: [m:1b]}
"""
    with sim.running() as url:
        (tmp_path / "servers.yaml").write_text(_servers_file({"x": url, "y": url}))
        with run_exporter(static, tmp_path) as exporter:
            assert _pairs(exporter) == {("static", "m:1b")}
            assert (
                exporter.value("ollama_pull_exporter_discovered_servers", discovery="lab") is None
            )
            exporter.config_path.write_text(
                static
                + "server_discovery:\n  - {name: lab, file: servers.yaml, template: {models: [m:1b]}}\n"
            )
            exporter.process.send_signal(signal.SIGHUP)
            wait_for(lambda: len(_pairs(exporter)) == 3, 10, "the discovered servers to join")
            assert exporter.value("ollama_pull_exporter_discovered_servers", discovery="lab") == 2
            assert exporter.value("ollama_pull_exporter_configured_pairs") == 3
            exporter.config_path.write_text(static)
            exporter.process.send_signal(signal.SIGHUP)
            wait_for(lambda: _pairs(exporter) == {("static", "m:1b")}, 10, "them to leave")
            assert (
                exporter.value("ollama_pull_exporter_discovered_servers", discovery="lab") is None
            )
