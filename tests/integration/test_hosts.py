"""The `Host` check against DNS rebinding: the parsing rules, then the real exporter.

A rebound page names the attacker's domain in `Host` and passes the cross-origin guard (its
`Origin` matches). The real process, over real sockets, must refuse it on every route that
changes state or returns run data, and keep `/metrics` and the health checks open to any
`Host`.

The tests that start processes are in tests/e2e/test_hosts_process.py.
"""

from __future__ import annotations

import pytest

from exporter.web.hosts import AllowedHosts, HostNameError, allowed_name, host_of

EVIL = "rebind.evil.example"


@pytest.mark.parametrize(
    ("header", "host"),
    [
        ("localhost:11435", "localhost"),
        ("LocalHost.", "localhost"),
        ("127.0.0.1:11435", "127.0.0.1"),
        ("[::1]:11435", "::1"),
        ("[::1]", "::1"),
        ("::1", "::1"),
        ("Exporter.LAN:80", "exporter.lan"),
        (" exporter.lan ", "exporter.lan"),
        ("exporter.lan:", "exporter.lan"),
        ("exporter.lan:x", None),
        ("[exporter.lan]:80", None),
        ("[::1", None),
        ("[::1]x", None),
        ("a b", None),
        ("a:1:2", None),
        ("evil.example/x", None),
        ("", None),
    ],
)
def test_host_of(header: str, host: str | None) -> None:
    assert host_of(header) == host


@pytest.mark.parametrize(
    ("header", "allowed"),
    [
        (None, True),  # no browser sends no Host
        ("localhost:11435", True),
        ("app.localhost:11435", True),  # browsers resolve *.localhost to loopback themselves
        ("127.0.0.1:11435", True),
        ("127.9.9.9", True),
        ("[::1]:11435", True),
        ("10.1.2.3:11435", True),  # an address: no DNS, nothing to rebind
        ("exporter.lan:11435", True),  # --web.allowed-hosts
        ("EXPORTER.LAN.", True),
        ("box.example", True),  # the listen address's host
        (f"{EVIL}:11435", False),
        ("localhost.evil.example", False),
        ("exporter.lan.evil.example", False),
        ("evil-localhost", False),
        ("", False),
        ("a b", False),
    ],
)
def test_allowed_hosts(header: str | None, allowed: bool) -> None:
    hosts = AllowedHosts(["exporter.lan"], listen_host="box.example")
    assert hosts.allows(header) is allowed


def test_allowed_names_are_host_names_or_addresses() -> None:
    assert allowed_name(" Exporter.LAN. ") == "exporter.lan"
    assert allowed_name("[::1]") == "::1"
    assert allowed_name("10.0.0.1") == "10.0.0.1"
    for bad in ("exporter.lan:80", "http://exporter.lan", "a b", "", "*.example"):
        with pytest.raises(HostNameError, match="is not a host name"):
            allowed_name(bad)
