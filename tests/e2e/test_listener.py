"""The listener on the real process: start-up errors, addresses, slow clients, bad requests.

Each test attacks the exporter from outside over 127.0.0.1, as issue 8 did: a port in use,
malformed addresses, malformed requests, and about 1,100 connections that send their
headers slowly while the process has the common 1024-fd limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import resource
import selectors
import signal
import socket
import ssl
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from exporter.web.listener import QuietErrors, connection_cap, format_address
from ollama_sim import OllamaSimulator, up_to_date
from tests.harness import (
    PROMETHEUS_ACCEPT,
    free_port,
    run_cli,
    run_exporter,
    self_signed,
    wait_for,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.harness import Exporter

CONFIG = "servers:\n  - url: http://127.0.0.1:1\n    models: [a]\n"


def _config(tmp_path: Path) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG)
    return f"--config.file={path}"


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_cli(_config(tmp_path), f"--web.listen-address=127.0.0.1:{port}")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in lines[0]


def test_an_unknown_host_is_one_line_and_exit_1(tmp_path: Path) -> None:
    done = run_cli(_config(tmp_path), "--web.listen-address=no-such-host.invalid:11437")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "cannot listen on no-such-host.invalid:11437: unknown host" in lines[0]


@pytest.mark.parametrize(
    "address", ["127.0.0.1:11437:1", "::1:11437", "[]:11437", "127.0.0.1:99999", "127.0.0.1"]
)
def test_a_malformed_address_is_a_usage_error(tmp_path: Path, address: str) -> None:
    done = run_cli(_config(tmp_path), f"--web.listen-address={address}")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert f"invalid listen address {address!r}" in done.stderr


def _started_at(exporter_logs: str) -> str:
    match = re.search(r"msg=starting .*?address=(\S+)", exporter_logs)
    assert match, exporter_logs
    return match.group(1)


def test_port_0_logs_the_real_port(tmp_path: Path) -> None:
    with run_exporter(CONFIG, tmp_path, "--web.listen-address=127.0.0.1:0", ready=False) as exp:
        wait_for(lambda: "msg=starting" in exp.logs(), 20, "the starting line")
        address = _started_at(exp.logs())
        host, port = address.rsplit(":", 1)
        assert host == "127.0.0.1"
        assert int(port) > 0
        with urllib.request.urlopen(f"http://{address}/-/healthy", timeout=10) as response:
            assert response.status == 200


def test_ipv6_addresses_are_logged_in_brackets(tmp_path: Path) -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    port = free_port()
    with run_exporter(CONFIG, tmp_path, f"--web.listen-address=[::1]:{port}", ready=False) as exp:
        wait_for(lambda: "msg=starting" in exp.logs(), 20, "the starting line")
        assert _started_at(exp.logs()) == f"[::1]:{port}"
    assert format_address("::1", 11437) == "[::1]:11437"
    assert format_address("127.0.0.1", 11437) == "127.0.0.1:11437"


MALFORMED = (
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: " + b"b" * 20_000 + b"\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the plain port
    b"GET / HTTP/9.9\r\n\r\n",
)


def _send(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        with contextlib.suppress(OSError):
            while chunk := sock.recv(65536):
                answer += chunk
        return answer


def test_malformed_requests_are_one_debug_line_each(tmp_path: Path) -> None:
    """Defect: each malformed request logged ~750 bytes of traceback at error level."""
    with run_exporter(CONFIG, tmp_path) as exporter:  # the harness runs at debug level
        port = int(exporter.url.rsplit(":", 1)[1])
        before = len(exporter.logs().splitlines())
        for data in MALFORMED:
            answer = _send(port, data)
            assert answer == b"" or answer.split(b" ")[1] == b"400", answer[:100]
        assert exporter.get("/-/healthy")[0] == 200
        exporter.stop()
        new = exporter.logs().splitlines()[before:]
    assert "Traceback" not in "\n".join(new)
    bad = [line for line in new if "bad request" in line]
    assert len(bad) <= len(MALFORMED), bad
    assert all("level=debug" in line for line in bad), bad
    assert not [line for line in new if "level=error" in line], new
    assert all(len(line) < 600 for line in new), max(new, key=len)


def test_malformed_requests_are_silent_at_info(tmp_path: Path) -> None:
    with run_exporter(CONFIG, tmp_path, "--log.level=info") as exporter:
        port = int(exporter.url.rsplit(":", 1)[1])
        for data in MALFORMED:
            _send(port, data)
        assert exporter.get("/-/healthy")[0] == 200
        exporter.stop()
    assert "bad request" not in exporter.logs()
    assert "Traceback" not in exporter.logs()


def test_socket_errors_of_the_loop_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    handler = QuietErrors()
    loop = asyncio.new_event_loop()
    try:
        with caplog.at_level(logging.DEBUG):
            for _ in range(1000):
                handler(
                    loop,
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": OSError(24, "Too many open files"),
                    },
                )
            handler(loop, {"message": "Task exception was never retrieved", "exception": OSError()})
    finally:
        loop.close()
    accept = [r for r in caplog.records if "accept" in r.getMessage()]
    assert len(accept) == 1
    assert accept[0].exc_info is None
    assert [r for r in caplog.records if r.getMessage().startswith("Task exception")]


def test_the_connection_cap_leaves_room_for_the_pulls() -> None:
    assert connection_cap(1024, 10) == 1024 - 128 - 20
    assert connection_cap(1024, 0) <= 1024 - 128
    assert connection_cap(1_048_576, 1000) == 1024  # an upper bound however many fds
    assert connection_cap(256, 1000) == 16  # and a floor


# --------------------------------------------------------------------------- slow clients

SLOW_CLIENTS = 1100
FD_LIMIT = 1024
PAIRS = 4
ATTACK_SECONDS = 13.0  # longer than the header timeout (10 s)
FDS_AFTER = 200  # the exporter's descriptors once the slow clients are dropped (idle: ~40)


def _fds(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


class SlowClients:
    """Connections that send part of a request head, then one more byte now and then."""

    def __init__(self, port: int, count: int, *, silent: bool = False) -> None:
        self.silent = silent
        """Send nothing at all (a TLS handshake that never starts)."""
        self.selector = selectors.DefaultSelector()
        self.sockets: list[socket.socket] = []
        for index in range(count):
            if index % 100 == 99:
                time.sleep(0.05)  # paced a little: a burst overflows the listen backlog
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex(("127.0.0.1", port))
            self.sockets.append(sock)
            self.selector.register(sock, selectors.EVENT_WRITE)
        self.started: set[socket.socket] = set()

    def drip(self) -> None:
        """Start every connected one that has not started; one more header byte for the rest."""
        for key, _ in self.selector.select(timeout=0):
            sock = key.fileobj
            assert isinstance(sock, socket.socket)
            self.selector.unregister(sock)
            with contextlib.suppress(OSError):
                if not self.silent:
                    sock.send(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                self.started.add(sock)
        for sock in () if self.silent else self.started:
            with contextlib.suppress(OSError):
                sock.send(b"a")

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.selector.close()


@contextlib.contextmanager
def slow_clients(port: int, count: int, *, silent: bool = False) -> Iterator[SlowClients]:
    clients = SlowClients(port, count, silent=silent)
    try:
        yield clients
    finally:
        clients.close()


@pytest.fixture
def enough_fds() -> Iterator[None]:
    """This test process holds the slow clients: it needs more than 1,100 descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * SLOW_CLIENTS
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard fd limit ({hard}) is below {wanted}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _scrape(url: str, context: ssl.SSLContext | None = None) -> int:
    request = urllib.request.Request(url + "/metrics", headers={"Accept": PROMETHEUS_ACCEPT})
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as response:
            response.read()
            return int(response.status)
    except OSError:
        return 0


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("tls")
    self_signed(directory)
    (directory / "web.yml").write_text(
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n"
    )
    return directory


@pytest.mark.slow
@pytest.mark.usefixtures("enough_fds")
@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
def test_slow_connections_starve_neither_scrapes_nor_pulls(
    tmp_path: Path, tls: bool, request: pytest.FixtureRequest
) -> None:
    """Defect: ~1,100 half-sent requests held every fd of a 1024-fd exporter for 75 s.

    Over TLS the slow clients connect and send nothing: a handshake that never starts.
    """
    args: list[str] = []
    context = None
    if tls:
        certs = request.getfixturevalue("tls_files")
        args.append(f"--web.config.file={certs / 'web.yml'}")
        context = ssl.create_default_context(cafile=str(certs / "server.crt"))
    models = [f"m{i}" for i in range(PAIRS)]
    sim = OllamaSimulator({m: [up_to_date([1000])] * 200 for m in models}, time_scale=0.01)
    with sim.running() as url:
        config = (
            "defaults: {interval: 1s, jitter: 0, stall_timeout: 5s, timeout: 10s}\n"
            f"servers:\n  - name: sim\n    url: {url}\n    max_concurrent_pulls: {PAIRS}\n"
            f"    models: [{', '.join(models)}]\n"
        )
        with run_exporter(
            config, tmp_path, "--log.level=info", *args, fd_limit=FD_LIMIT, context=context
        ) as exporter:
            port = int(exporter.url.rsplit(":", 1)[1])
            samples = exporter.scrape()
            runs_before = sum(v for (n, _), v in samples.items() if n == "ollama_pull_runs_total")
            statuses = []
            with slow_clients(port, SLOW_CLIENTS, silent=tls) as clients:
                deadline = time.monotonic() + ATTACK_SECONDS
                while time.monotonic() < deadline:
                    clients.drip()
                    statuses.append(_scrape(exporter.url, context))
                    time.sleep(0.3)
                assert len(clients.started) > FD_LIMIT, "the attack did not get going"
                # Each has REQUEST_TIMEOUT from its accept, and the exporter lets them go: its
                # descriptors come back while the slow clients still hold their ends.
                with contextlib.suppress(AssertionError):
                    wait_for(lambda: _fds(exporter.process.pid) < FDS_AFTER, 15, "fds to come back")
                left = _fds(exporter.process.pid)
            samples = exporter.scrape()
            logs = exporter.logs()
        assert exporter.process.returncode is None or exporter.process.returncode == 0
    failures = {
        dict(labels)["reason"]: value
        for (name, labels), value in samples.items()
        if name == "ollama_pull_failures_total" and value
    }
    runs_after = sum(v for (n, _), v in samples.items() if n == "ollama_pull_runs_total")
    assert statuses.count(200) == len(statuses), statuses
    assert failures == {}, failures
    assert samples["ollama_pull_server_up", frozenset({("server", "sim")})] == 1
    assert runs_after >= runs_before + PAIRS * 5, (runs_before, runs_after)
    assert left < FDS_AFTER, f"the exporter still holds {left} fds after the slow clients' timeout"
    assert "Traceback" not in logs
    # Not the flood this is about: the pulls' own lines, and the scheduler's skips when a
    # starved machine runs late (at most one per pair and interval).
    routine = ("logger=exporter.pull ", 'msg="run skipped: previous run still going"')
    others = [line for line in logs.splitlines() if not any(r in line for r in routine)]
    assert len(others) < 20, "\n".join(others[-20:])


# --------------------------------------------------------------------------- cap on reload

RELOAD_FD_LIMIT = 512
FEW_PAIRS = 2
MANY_PAIRS = 150
CAP_CHANGED = re.compile(
    r'msg="connection cap changed" max_connections=(\d+) was=(\d+) pairs=(\d+)'
)


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(path)


def _keepalive_connections(port: int, count: int) -> list[socket.socket]:
    """`count` connections that each got one answer (`/-/healthy`) and then stay idle.

    Idle keep-alive connections live for KEEPALIVE_TIMEOUT (60 s), so what closes them within
    a test is the cap; one the exporter refused or closed at once is returned too.
    """
    held = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        held.append(sock)
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = b""
            while not answer.endswith(b"\r\n\r\nOK\n") and (chunk := sock.recv(4096)):
                answer += chunk
    return held


def _still_open(sockets: list[socket.socket]) -> int:
    """How many of `sockets` the exporter has not closed, after a moment to close any.

    For "none was closed": a closing that came later than the moment would go unseen, never
    fail the test. Where sockets must go, `_open_settles_at_most` waits for them instead.
    """
    time.sleep(0.5)
    return _open_now(sockets)


def _open_settles_at_most(sockets: list[socket.socket], most: int) -> int:
    """How many of `sockets` are open once at most `most` are: the closing of the others is
    waited for (a starved machine sends its RSTs late), not given a fixed moment."""

    def settled() -> int | None:
        left = _open_now(sockets)
        return left + 1 if left <= most else None  # +1: zero left is settled too

    return wait_for(settled, 30, f"at most {most} of {len(sockets)} connections open") - 1


def _open_now(sockets: list[socket.socket]) -> int:
    """How many of `sockets` the exporter has not closed (yet)."""
    left = 0
    for sock in sockets:
        sock.setblocking(False)
        try:
            left += sock.recv(1) != b""  # an unasked byte would be a bug: count it as open
        except BlockingIOError:
            left += 1
        except OSError:
            pass
    return left


def _pairs_config(url: str, pairs: int) -> str:
    models = ", ".join(f"m{i}" for i in range(pairs))
    return (
        "defaults: {interval: 5s, jitter: 0, stall_timeout: 5s, timeout: 10s}\n"
        "inventory_interval: 0s\n"
        f"servers:\n  - name: sim\n    url: {url}\n    max_concurrent_pulls: {MANY_PAIRS}\n"
        f"    models: [{models}]\n"
    )


def _reload_and_wait_for_cap(exporter: Exporter, text: str, changes: int) -> tuple[int, ...]:
    """Rewrite the config atomically, SIGHUP, and return the `changes`-th cap change logged."""
    _write_atomically(exporter.config_path, text)
    exporter.process.send_signal(signal.SIGHUP)

    def changed() -> tuple[str, ...] | None:
        seen: list[tuple[str, ...]] = CAP_CHANGED.findall(exporter.logs())
        return seen[changes - 1] if len(seen) >= changes else None

    found = wait_for(changed, 20, f"cap change {changes} in the log")
    return tuple(int(value) for value in found)


def test_a_reload_fits_the_connection_cap_to_the_pairs_in_force(tmp_path: Path) -> None:
    """Defect: the cap was computed once at start-up from the pairs then.

    After a reload from 2 to 150 pairs a 512-fd exporter kept allowing 380 client connections,
    which with 150 pulls is more descriptors than it has; after shrinking back it stayed low.
    """
    few, many = (connection_cap(RELOAD_FD_LIMIT, n) for n in (FEW_PAIRS, MANY_PAIRS))
    assert (few, many) == (380, 84)
    sim = OllamaSimulator(unknown=up_to_date([1000]), time_scale=0.01)
    with (
        sim.running() as url,
        run_exporter(_pairs_config(url, FEW_PAIRS), tmp_path, fd_limit=RELOAD_FD_LIMIT) as exporter,
    ):
        port = int(exporter.url.rsplit(":", 1)[1])
        assert f"max_connections={few} fd_limit={RELOAD_FD_LIMIT}" in exporter.logs()
        held = _keepalive_connections(port, 300)
        assert _still_open(held) == 300  # under the cap for 2 pairs every one stays

        assert _reload_and_wait_for_cap(exporter, _pairs_config(url, MANY_PAIRS), 1) == (
            many,
            few,
            MANY_PAIRS,
        )
        _open_settles_at_most(held, many)  # the idle ones over the new cap go (or it fails)
        held += _keepalive_connections(port, 100)
        assert many - 2 <= _open_settles_at_most(held, many)  # newcomers make room, up to the cap

        # The pulls of all 150 pairs have their descriptors: each runs, twice, and succeeds.
        def all_ran_twice() -> bool:
            samples = exporter.scrape()
            runs = [
                v for (n, labels), v in samples.items() if n == "ollama_pull_runs_total" and labels
            ]
            return len(runs) == MANY_PAIRS and min(runs) >= 2

        wait_for(all_ran_twice, 60, "every pair to run twice", step=0.5)
        samples = exporter.scrape()
        failures = {
            (dict(labels)["model"], dict(labels)["reason"]): value
            for (name, labels), value in samples.items()
            if name == "ollama_pull_failures_total" and value
        }
        assert failures == {}
        assert samples["ollama_pull_server_up", frozenset({("server", "sim")})] == 1

        # Back to 2 pairs: the cap rises again, and 300 idle connections are welcome.
        assert _reload_and_wait_for_cap(exporter, _pairs_config(url, FEW_PAIRS), 2) == (
            few,
            many,
            FEW_PAIRS,
        )
        for sock in held:
            sock.close()
        held = _keepalive_connections(port, 300)
        assert _still_open(held) == 300
        for sock in held:
            sock.close()
        assert "Traceback" not in exporter.logs()


def test_discovery_fits_the_connection_cap_too(tmp_path: Path) -> None:
    """Servers found by discovery count towards the cap as soon as their list changes."""
    servers = tmp_path / "servers.yaml"
    servers.write_text("[]\n")
    models = ", ".join(f"m{i}" for i in range(50))
    config = (
        "defaults: {interval: 1h, jitter: 0, run_on_start: false}\n"
        "servers:\n  - name: static\n    url: http://127.0.0.1:1\n    models: [a]\n"
        "server_discovery:\n  - name: lab\n    file: servers.yaml\n    refresh_interval: 100ms\n"
        f"    template:\n      models: [{models}]\n"
    )
    with run_exporter(config, tmp_path, fd_limit=RELOAD_FD_LIMIT) as exporter:
        before = connection_cap(RELOAD_FD_LIMIT, 1)
        assert f"max_connections={before} fd_limit={RELOAD_FD_LIMIT}" in exporter.logs()
        listed = "".join(f"- name: s{i}\n  url: http://127.0.0.1:1\n" for i in range(2))
        _write_atomically(servers, listed)
        found = wait_for(lambda: CAP_CHANGED.search(exporter.logs()), 20, "the cap change")
        after = connection_cap(RELOAD_FD_LIMIT, 101)
        assert found.groups() == (str(after), str(before), "101")
