"""`server_discovery` against hostile answers: what DNS says is input, bounded and checked.

A real DNS server on 127.0.0.1 (dnslib, as in tests/integration/test_discovery.py) answers SRV targets that
are no host names (a `:`, a path, user info), an answer of 1,500 records, and servers that churn;
the real exporter must keep running, count what it drops, cap the list, and forget departed
servers' history after `forget_after`.

The tests that start processes are in tests/e2e/test_discovery_limits_process.py.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest
from dnslib import QTYPE, RR, SRV

from exporter.config.loader import ConfigError, parse_config
from exporter.fleet.discovery import (
    MAX_FILE_BYTES,
    DiscoveryError,
    Watcher,
    read_targets_file,
    valid_host,
)
from exporter.fleet.servers import Fleet
from exporter.fleet.sharding import Shard
from exporter.state.pairs import FleetStatus
from tests.integration.test_discovery import SRV_NAME, Answers, dns_server

if TYPE_CHECKING:
    from pathlib import Path


def _srv(*targets: tuple[str, int]) -> list[RR]:
    return [
        RR(f"{SRV_NAME}.", QTYPE.SRV, ttl=1, rdata=SRV(0, 0, port, target))
        for target, port in targets
    ]


def _config(dns_port: int, extra: str = "", defaults: str = "") -> str:
    return f"""\
defaults: {{interval: 1h, jitter: 0{defaults}}}
server_discovery:
  - name: pods
    dns: {SRV_NAME}
    nameserver: 127.0.0.1:{dns_port}
    refresh_interval: 100ms
{extra}    template:
      headers: {{Authorization: Bearer tok-0123456789}}
      models: [m:1b]
"""


# ------------------------------------------------------------------ units


@pytest.mark.parametrize(
    ("host", "valid"),
    [
        ("ollama-0.ollama.default.svc.cluster.local", True),
        ("127.0.0.1", True),
        ("::1", True),
        ("fd00::7", True),
        ("a", True),
        ("x" * 63 + ".lab", True),
        ("x" * 64 + ".lab", False),
        (".".join(["abcdefg"] * 32), False),  # 255 characters
        ("", False),
        ("a..b", False),
        ("-a.lab", False),
        ("a-.lab", False),
        ("a_b.lab", False),
        ("a:b", False),
        ("127.0.0.1/steal?leak=", False),
        ("ops@127.0.0.1", False),
        ("h#x", False),
        ("fe80::1%eth0", False),
        ("a\\.b", False),
        ("xn--bcher-kva.example", True),
        ("b\u00fccher.example", False),
    ],
)
def test_a_discovered_host_is_a_host_name_or_an_address(host: str, valid: bool) -> None:
    assert valid_host(host) is valid


def test_max_servers_and_forget_after_parse_with_defaults_and_bounds() -> None:
    base = "server_discovery:\n  - dns: s.lab\n    template: {models: [m]}\n"
    (entry,) = parse_config(base, "c.yaml", {}).discovery
    assert (entry.max_servers, entry.forget_after) == (256, 3600.0)
    text = base + "    max_servers: 10\n    forget_after: 5m\n"
    (entry,) = parse_config(text, "c.yaml", {}).discovery
    assert (entry.max_servers, entry.forget_after) == (10, 300.0)
    with pytest.raises(ConfigError) as info:
        parse_config(base + "    max_servers: 0\n    forget_after: 0s\n", "c.yaml", {})
    assert info.value.errors == (
        "c.yaml:4: server_discovery[0].max_servers: expected an integer from 1 to 100000, "
        "got integer 0",
        'c.yaml:5: server_discovery[0].forget_after: must be greater than 0, got "0s"',
    )


def test_a_discovery_file_over_4_mib_is_refused_unread(tmp_path: Path) -> None:
    path = tmp_path / "servers.yaml"
    with path.open("wb") as handle:
        handle.truncate(MAX_FILE_BYTES + 1)  # sparse: no 4 MiB written
    with pytest.raises(DiscoveryError, match=r"larger than 4194304 bytes"):
        read_targets_file(str(path))
    path.write_text("- {url: 'http://h:1'}\n" + " " * (MAX_FILE_BYTES - 40))
    assert len(read_targets_file(str(path))) == 1


# ------------------------------------------------------------------ the watcher's loop


def test_a_failure_while_applying_a_list_is_counted_and_the_loop_goes_on() -> None:
    """The callback (the runtime's apply) raising once must not end discovery."""
    answers = Answers()
    with dns_server(answers) as (_, dns_port):
        answers.set(_srv(("127.0.0.1.", 1001)))
        (entry,) = parse_config(_config(dns_port), "c.yaml", {}).discovery
        seen: list[tuple[str, ...]] = []
        failures: dict[str, int] = {}

        def on_change() -> None:
            seen.append(tuple(target.name for target in watcher.targets))
            if len(seen) == 2:
                raise RuntimeError("apply failed")

        watcher = Watcher(entry, on_change, failures)

        async def scenario() -> None:
            assert await watcher.refresh()
            on_change()
            answers.set(_srv(("127.0.0.1.", 1001), ("127.0.0.1.", 1002)))
            watcher.start()
            try:
                for _ in range(400):  # 20 s at most
                    if len(seen) >= 4:
                        break
                    await asyncio.sleep(0.05)
            finally:
                await watcher.stop()

        asyncio.run(scenario())
    one = (f"{SRV_NAME}/127.0.0.1:1001",)
    two = (*one, f"{SRV_NAME}/127.0.0.1:1002")
    # The first list; the second, whose apply raised; the first again (the last good list put
    # back in force); the second once more, on the next refresh, applied.
    assert seen[:4] == [one, two, one, two], seen
    assert failures == {"pods": 1}
    assert len(watcher.targets) == 2


def test_max_servers_caps_a_file_entry_and_a_reload_changes_it_without_a_refresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "servers.yaml").write_text(
        "".join(f"- {{name: s{n:03}, url: 'http://127.0.0.1:{n + 1}'}}\n" for n in range(300))
    )
    text = f"""\
server_discovery:
  - name: lab
    file: {tmp_path / "servers.yaml"}
    max_servers: 10
    template: {{models: [m]}}
"""
    config = parse_config(text, str(tmp_path / "c.yaml"), {})
    fleet = Fleet(Shard(0, 1), FleetStatus())

    async def scenario() -> tuple[list[str], list[str]]:
        await fleet.start(config, lambda: None)
        try:
            capped = [server.name for server in fleet.effective(config).servers]
            fleet.effective(config)  # applied again: no second warning
            raised = parse_config(
                text.replace("max_servers: 10", "max_servers: 20"), str(tmp_path / "c.yaml"), {}
            )
            return capped, [server.name for server in fleet.effective(raised).servers]
        finally:
            await fleet.stop()

    capped, raised = asyncio.run(scenario())
    assert capped == [f"s{n:03}" for n in range(10)]
    assert raised == [f"s{n:03}" for n in range(20)]  # the same list, cut anew
    assert fleet.status.dropped == {"lab": 280}
    warnings = [r for r in caplog.records if "over max_servers" in r.getMessage()]
    assert len(warnings) == 1
