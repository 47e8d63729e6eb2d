"""`server_discovery` against hostile answers: what DNS says is input, bounded and checked.

A real DNS server on 127.0.0.1 (dnslib, as in tests/integration/test_discovery.py) answers SRV targets that
are no host names (a `:`, a path, user info), an answer of 1,500 records, and servers that churn;
the real exporter must keep running, count what it drops, cap the list, and forget departed
servers' history after `forget_after`.

This module holds the tests that start processes; tests/integration/test_discovery_limits.py holds the
in-process ones and the helpers both use.
"""

from __future__ import annotations

import json
import urllib.parse
from typing import TYPE_CHECKING

import pytest

from ollama_sim import OllamaSimulator, up_to_date
from tests.harness import Exporter, run_exporter, wait_for
from tests.integration.test_discovery import SRV_NAME, Answers, dns_server

if TYPE_CHECKING:
    from pathlib import Path

from tests.integration.test_discovery_limits import _config, _srv


def _servers(exporter: Exporter) -> set[str]:
    return {
        dict(labels)["server"]
        for name, labels in exporter.scrape()
        if name == "ollama_pull_runs_total"
    }


# ------------------------------------------------------------------ the real exporter


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
