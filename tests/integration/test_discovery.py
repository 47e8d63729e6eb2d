"""`server_discovery`: the config keys, file discovery and DNS discovery, end to end.

File discovery: the real exporter watches a file that the test rewrites atomically; servers
join and leave with their series, and a broken file keeps the last good list with a clear log
line. DNS discovery: a real DNS server on 127.0.0.1 (dnslib) whose answers the test changes;
servers join and leave, a running pull of a leaving server is cancelled by closing its stream,
and when the DNS server goes away the exporter keeps the last list and counts the failures.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import TYPE_CHECKING, Any

import pytest
from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A
from dnslib.server import BaseResolver, DNSServer

from exporter.config.loader import ConfigError, parse_config
from exporter.fleet.discovery import DiscoveryError, parse_targets
from ollama_sim import OllamaSimulator, fresh_pull, up_to_date
from tests.harness import Exporter, free_port, run_exporter, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from dnslib import DNSRecord

# ------------------------------------------------------------------ config


def _errors(text: str) -> tuple[str, ...]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml", {})
    return info.value.errors


def test_discovery_entries_parse_with_defaults() -> None:
    config = parse_config(
        """\
defaults: {interval: 1h}
server_discovery:
  - dns: _http._tcp.ollama.default.svc.cluster.local.
    template:
      max_concurrent_pulls: 2
      models: [llama3.2:1b]
  - name: extra
    file: servers/extra.json
    template: {models: [gemma3]}
  - dns: ollama.lab
    type: AAAA
    port: 11434
    nameserver: "[::1]:5353"
    scheme: https
    refresh_interval: 1m
    template: {models: [gemma3]}
""",
        "/etc/ope/config.yaml",
        {},
    )
    assert config.servers == ()
    srv, extra, aaaa = config.discovery
    assert (srv.name, srv.dns, srv.type, srv.port, srv.refresh_interval) == (
        "0",
        "_http._tcp.ollama.default.svc.cluster.local",
        "SRV",
        None,
        30.0,
    )
    assert srv.template.max_concurrent_pulls == 2
    assert srv.template.models[0].settings.interval == 3600
    assert (extra.name, extra.file, extra.refresh_interval) == (
        "extra",
        "/etc/ope/servers/extra.json",
        5.0,
    )
    assert (aaaa.type, aaaa.port, aaaa.nameserver, aaaa.scheme, aaaa.refresh_interval) == (
        "AAAA",
        11434,
        ("::1", 5353),
        "https",
        60.0,
    )


def test_discovery_errors_name_file_line_and_key() -> None:
    assert _errors(
        """\
server_discovery:
  - dns: ollama.lab
    type: A
    nameserver: resolver
    scheme: ftp
    refresh_interval: 30
    template: {models: [a], url: "http://x"}
  - file: a.yaml
    dns: b
    template: {models: [a]}
  - port: 3
  - file: x.yaml
    type: SRV
  - name: dup
    file: y.yaml
    template: {models: [a]}
  - name: dup
    dns: srv.lab
    port: 80
    template: {models: [a]}
"""
    ) == (
        "c.yaml:2: server_discovery[0].port: required key is missing (type A)",
        'c.yaml:4: server_discovery[0].nameserver: expected HOST:PORT, got "resolver"',
        'c.yaml:5: server_discovery[0].scheme: expected http or https, got "ftp"',
        'c.yaml:6: server_discovery[0].refresh_interval: invalid duration 30: a unit is required (e.g. "30s")',
        "c.yaml:7: server_discovery[0].template.url: unknown key (allowed: headers, max_concurrent_pulls, models, inventory_interval, window, window_timezone)",
        "c.yaml:9: server_discovery[1].dns: set only one of file and dns",
        "c.yaml:11: server_discovery[2]: needs a source: file: PATH or dns: NAME",
        "c.yaml:12: server_discovery[3].template: required key is missing",
        'c.yaml:17: server_discovery[5].name: duplicate name "dup" (same as server_discovery[4])',
        "c.yaml:19: server_discovery[5].port: not for type SRV: the answers carry the port",
    )


def test_servers_may_be_absent_only_with_discovery() -> None:
    assert _errors("defaults: {interval: 1h}\n") == ("c.yaml:1: servers: required key is missing",)
    assert _errors("server_discovery: []\n") == (
        "c.yaml:1: server_discovery: expected a non-empty list, got an empty list",
    )


def test_discovery_file_format() -> None:
    assert parse_targets("- {url: 'http://h:1'}\n- {name: b, url: 'https://b/'}\n", "f") == [
        *[type(t)(t.name, t.url) for t in parse_targets("- {url: 'http://h:1'}", "f")],
        *parse_targets('[{"name": "b", "url": "https://b"}]', "f"),
    ]
    assert [t.name for t in parse_targets("- {url: 'http://h:1'}", "f")] == ["h:1"]
    assert parse_targets("", "f") == []
    with pytest.raises(DiscoveryError) as info:
        parse_targets("- {name: a, url: ftp://x}\n- {name: a, url: 'http://y'}\n- 3\n", "f.yaml")
    assert str(info.value) == (
        "f.yaml:1: [0].url: the URL must start with http:// or https://; "
        "f.yaml:3: [2]: expected a mapping with keys name, url, got integer 3"
    )
    with pytest.raises(DiscoveryError, match=r"f.yaml:1: invalid YAML"):
        parse_targets("[{name: a", "f.yaml")


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


@pytest.mark.e2e  # starts a process
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


class Answers(BaseResolver):  # type: ignore[misc]
    """A zone the test edits while the server runs: name -> records."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: list[RR] = []
        self.queries = 0

    def set(self, records: list[RR]) -> None:
        with self.lock:
            self.records = records

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        del handler
        reply = request.reply()
        with self.lock:
            self.queries += 1
            matching = [
                rr
                for rr in self.records
                if rr.rname == request.q.qname and rr.rtype == request.q.qtype
            ]
            names = {rr.rname for rr in self.records}
        for rr in matching:
            reply.add_answer(rr)
        if request.q.qname not in names:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


class _Quiet:
    """A dnslib logger that logs nothing (pytest treats stray output as noise)."""

    def __getattr__(self, name: str) -> Any:
        return _nothing


def _nothing(*_: object, **__: object) -> None:
    return None


@contextlib.contextmanager
def dns_server(answers: Answers) -> Iterator[tuple[DNSServer, int]]:
    port = free_port()
    server = DNSServer(answers, address="127.0.0.1", port=port, logger=_Quiet())
    server.start_thread()
    try:
        yield server, port
    finally:
        if server.isAlive():
            server.stop()
        server.server.server_close()  # stop() only ends the thread; the socket stays open


SRV_NAME = "_ollama._tcp.pulls.test"


def _srv(*ports: int) -> list[RR]:
    return [
        RR(f"{SRV_NAME}.", QTYPE.SRV, ttl=1, rdata=SRV(0, 0, port, "127.0.0.1.")) for port in ports
    ]


def _name(port: int) -> str:
    return f"{SRV_NAME}/127.0.0.1:{port}"


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


@pytest.mark.e2e  # starts a process
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


@pytest.mark.e2e  # starts a process
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


@pytest.mark.e2e  # starts a process
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


@pytest.mark.e2e  # starts a process
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


@pytest.mark.e2e  # starts a process
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


@pytest.mark.e2e  # starts a process
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
