"""`server_discovery` against hostile answers: what DNS says is input, bounded and checked.

A real DNS server on 127.0.0.1 (dnslib, as in tests/integration/test_discovery.py) answers SRV targets that
are no host names (a `:`, a path, user info), an answer of 1,500 records, and servers that churn;
the real exporter must keep running, count what it drops, cap the list, and forget departed
servers' history after `forget_after`.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
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
from ollama_sim import OllamaSimulator, up_to_date
from tests.harness import Exporter, run_exporter, wait_for
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


def _servers(exporter: Exporter) -> set[str]:
    return {
        dict(labels)["server"]
        for name, labels in exporter.scrape()
        if name == "ollama_pull_runs_total"
    }


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


# ------------------------------------------------------------------ the real exporter


@pytest.mark.e2e  # starts a process
def test_srv_targets_that_are_no_host_names_are_dropped_and_counted(tmp_path: Path) -> None:
    """`:` made urlsplit raise (exit 1 at start, a dead loop later); a path or user info
    would have let DNS choose where the template's Authorization header goes."""
    answers = Answers()
    sim = OllamaSimulator(unknown=up_to_date([1000]))
    with sim.running() as url, dns_server(answers) as (_, dns_port):
        port = int(url.rsplit(":", 1)[1])
        good = f"{SRV_NAME}/127.0.0.1:{port}"
        answers.set(
            _srv(
                ("127.0.0.1.", port),
                ("a:b.", port),
                ("127.0.0.1/steal?leak=.", port),
                ("127.0.0.1.", 0),
                (".", port),  # "no service here": skipped, not counted
            )
        )
        with run_exporter(_config(dns_port), tmp_path) as exporter:
            assert _servers(exporter) == {good}
            exporter.wait_value(
                "ollama_pull_exporter_discovery_rejected_targets_total",
                lambda v: v >= 3,
                discovery="pods",
            )
            exporter.wait_value(
                "ollama_pull_last_success", lambda v: v == 1, server=good, model="m:1b"
            )
            requests = len(sim.requests)

            # Later refreshes: user info and a `:` target; the loop lives on, nothing is sent.
            answers.set(_srv(("127.0.0.1.", port), ("ops@127.0.0.1.", port), ("x:1.", port)))
            before = exporter.value(
                "ollama_pull_exporter_discovery_rejected_targets_total", discovery="pods"
            )
            assert before is not None
            exporter.wait_value(
                "ollama_pull_exporter_discovery_rejected_targets_total",
                lambda v: v >= before + 4,
                discovery="pods",
            )
            answers.set(_srv(("127.0.0.1.", port), ("127.0.0.1.", 1)))
            wait_for(lambda: len(_servers(exporter)) == 2, 10, "a later good answer to apply")
            assert len(sim.requests) == requests
            assert (
                exporter.value("ollama_pull_exporter_discovery_failures_total", discovery="pods")
                == 0
            )
            log = exporter.logs()
            warned = [line for line in log.splitlines() if "discovered target rejected" in line]
            assert len(warned) == 1, warned  # at most one a minute
            assert "rejected=3" in warned[0]  # ":", the path, port 0; not "."
            assert "Traceback" not in log
            assert exporter.stop() == 0


@pytest.mark.e2e  # starts a process
def test_a_later_answer_with_a_colon_target_keeps_discovery_running(tmp_path: Path) -> None:
    """This one used to end the watcher's task silently, and SIGTERM then exited 1."""
    answers = Answers()
    with dns_server(answers) as (_, dns_port):
        answers.set(_srv(("127.0.0.1.", 1001)))
        config = _config(dns_port, defaults=", run_on_start: false")
        with run_exporter(config, tmp_path) as exporter:
            assert _servers(exporter) == {f"{SRV_NAME}/127.0.0.1:1001"}
            answers.set(_srv(("127.0.0.1.", 1001), ("a:b.", 1002)))
            asked = answers.queries
            wait_for(lambda: answers.queries >= asked + 2, 10, "the answer to be read")
            answers.set(_srv(("127.0.0.1.", 1001), ("127.0.0.1.", 1003)))
            wait_for(lambda: len(_servers(exporter)) == 2, 10, "the next answer to apply")
            rejected = exporter.value(
                "ollama_pull_exporter_discovery_rejected_targets_total", discovery="pods"
            )
            assert rejected is not None
            assert rejected >= 1
            assert "Traceback" not in exporter.logs()
            assert exporter.stop() == 0


@pytest.mark.e2e  # starts a process
def test_an_answer_of_1500_records_is_capped_at_max_servers(tmp_path: Path) -> None:
    answers = Answers()
    with dns_server(answers) as (_, dns_port):
        answers.set(_srv(*(("127.0.0.1.", port) for port in range(20_000, 21_500))))
        config = _config(dns_port, defaults=", run_on_start: false")
        with run_exporter(config, tmp_path) as exporter:
            exporter.wait_value(
                "ollama_pull_exporter_discovered_servers", lambda v: v == 256, discovery="pods"
            )
            assert (
                exporter.value("ollama_pull_exporter_discovery_dropped_servers", discovery="pods")
                == 1244
            )
            servers = _servers(exporter)
            assert len(servers) == 256
            # The first 256 by name: the same cut on every shard and every refresh.
            names = sorted(f"{SRV_NAME}/127.0.0.1:{port}" for port in range(20_000, 21_500))
            assert servers == set(names[:256])
            assert len(exporter.scrape()) < 256 * 80
            capped = [line for line in exporter.logs().splitlines() if "max_servers" in line]
            assert len(capped) == 1, capped
            assert "dropped=1244" in capped[0]
            assert exporter.stop() == 0


def _runs(exporter: Exporter, server: str) -> list[object]:
    query = urllib.parse.urlencode({"server": server})
    status, body = exporter.get(f"/api/v1/runs?{query}")
    assert status == 200, body
    runs: list[object] = json.loads(body)["runs"]
    return runs


@pytest.mark.parametrize("stored", [False, True], ids=["memory", "storage"])
@pytest.mark.e2e  # starts a process
def test_departed_servers_are_forgotten_after_forget_after(tmp_path: Path, stored: bool) -> None:
    """A pod that moves gets a new name; the old name's runs go after `forget_after`."""
    answers = Answers()
    first = OllamaSimulator(unknown=up_to_date([1000]))
    second = OllamaSimulator(unknown=up_to_date([1000]))
    with (
        first.running() as first_url,
        second.running() as second_url,
        dns_server(answers) as (_, dns_port),
    ):
        ports = [int(url.rsplit(":", 1)[1]) for url in (first_url, second_url)]
        old, new = (f"{SRV_NAME}/127.0.0.1:{port}" for port in ports)
        answers.set(_srv(("127.0.0.1.", ports[0])))
        config = _config(dns_port, extra="    forget_after: 2s\n")
        args = [f"--storage.path={tmp_path / 'state.db'}"] if stored else []
        with run_exporter(config, tmp_path, *args) as exporter:
            exporter.wait_value(
                "ollama_pull_last_success", lambda v: v == 1, server=old, model="m:1b"
            )
            assert len(_runs(exporter, old)) == 1

            answers.set(_srv(("127.0.0.1.", ports[1])))  # the pod moved to a new address
            wait_for(lambda: _servers(exporter) == {new}, 10, "the new address to replace it")
            # Its series are gone at once; its history stays for forget_after.
            assert len(_runs(exporter, old)) == 1
            assert exporter.value("ollama_pull_exporter_discovery_departed_servers") == 1
            wait_for(lambda: not _runs(exporter, old), 20, "the departed server to be forgotten")
            exporter.wait_value("ollama_pull_exporter_discovery_departed_servers", lambda v: v == 0)
            exporter.wait_value(
                "ollama_pull_last_success", lambda v: v == 1, server=new, model="m:1b"
            )
            assert len(_runs(exporter, new)) == 1
            assert "departed servers forgotten" in exporter.logs()


@pytest.mark.e2e  # starts a process
def test_servers_that_left_before_a_restart_are_forgotten_after_it(tmp_path: Path) -> None:
    """The departures are not stored; a stored server a DNS entry named and that is not in
    the first answer after the restart counts as departed from then on."""
    answers = Answers()
    sim = OllamaSimulator(unknown=up_to_date([1000]))
    with sim.running() as url, dns_server(answers) as (_, dns_port):
        port = int(url.rsplit(":", 1)[1])
        old = f"{SRV_NAME}/127.0.0.1:{port}"
        state = f"--storage.path={tmp_path / 'state.db'}"
        answers.set(_srv(("127.0.0.1.", port)))
        config = _config(dns_port, extra="    forget_after: 2s\n")
        with run_exporter(config, tmp_path, state) as exporter:
            exporter.wait_value(
                "ollama_pull_last_success", lambda v: v == 1, server=old, model="m:1b"
            )
            assert exporter.stop() == 0
        answers.set(_srv(("127.0.0.1.", 1)))  # it moved while the exporter was down
        with run_exporter(config, tmp_path, state) as exporter:
            assert _servers(exporter) == {f"{SRV_NAME}/127.0.0.1:1"}
            assert len(_runs(exporter, old)) == 1
            wait_for(lambda: not _runs(exporter, old), 20, "the stored server to be forgotten")


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
