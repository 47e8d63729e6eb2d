"""`server_discovery`: the config keys, file discovery and DNS discovery, end to end.

File discovery: the real exporter watches a file that the test rewrites atomically; servers
join and leave with their series, and a broken file keeps the last good list with a clear log
line. DNS discovery: a real DNS server on 127.0.0.1 (dnslib) whose answers the test changes;
servers join and leave, a running pull of a leaving server is cancelled by closing its stream,
and when the DNS server goes away the exporter keeps the last list and counts the failures.

The tests that start processes are in tests/e2e/test_discovery_process.py.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

import pytest
from dnslib import RCODE, RR
from dnslib.server import BaseResolver, DNSServer

from exporter.config.loader import ConfigError, parse_config
from exporter.fleet.discovery import DiscoveryError, parse_targets
from tests.harness import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

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


# ------------------------------------------------------------------ a DNS server in process


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
