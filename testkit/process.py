"""Run the real `ollama-pull-exporter` process and read its `/metrics` like Prometheus.

The e2e tests and the benchmarks of bench/ start the exporter against the simulator over real
sockets with this (a package of its own so that bench/ imports no test module). Every process
started here is stopped (SIGTERM, then SIGKILL) on exit. `/metrics` is fetched with Prometheus'
own `Accept` header (so OpenMetrics comes back), because a scrape without it takes a different
path than real scrapes do.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

if TYPE_CHECKING:
    import ssl
    from collections.abc import Callable, Iterator

T = TypeVar("T")
REPO_ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=underscores;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=1.0.0;escaping=underscores;q=0.3,"
    "text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)
"""What Prometheus 3 sends with every scrape (scrape_protocols' default order)."""


def free_port() -> int:
    """A port that was free a moment ago on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(check: Callable[[], T | None], timeout: float, what: str, step: float = 0.05) -> T:
    """Poll `check` until it returns something truthy, or fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_samples(text: str) -> Samples:
    """All samples of an exposition (text or OpenMetrics), keyed by name and label set."""
    samples: Samples = {}
    parse = openmetrics_families if text.endswith("# EOF\n") else text_string_to_metric_families
    for family in parse(text):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


@dataclass
class Exporter:
    """A running exporter process and how to talk to it."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path
    config_path: Path
    context: ssl.SSLContext | None = None
    """Trust for an https exporter (`--web.config.file` with TLS)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Sent with every request (e.g. basic auth)."""
    _samples: Samples = field(default_factory=dict)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        """GET a path; returns (status, body) and never raises on HTTP errors.

        `/metrics` goes with Prometheus' `Accept` unless `headers` gives one.
        """
        scrape = {"Accept": PROMETHEUS_ACCEPT} if path.startswith("/metrics") else {}
        request = urllib.request.Request(
            self.url + path, headers={**scrape, **self.headers, **(headers or {})}
        )
        try:
            # A bound, not an assertion: a 3 MB scrape on a loaded 2-core CI machine may take
            # seconds, and what the tests assert is the answer.
            with urllib.request.urlopen(request, timeout=30, context=self.context) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def scrape(self) -> Samples:
        """Fetch and parse `/metrics` as Prometheus asks for it (OpenMetrics)."""
        status, body = self.get("/metrics")
        assert status == 200, body
        self._samples = parse_samples(body)
        return self._samples

    def value(self, name: str, **labels: str) -> float | None:
        """A sample from the latest scrape, or None when the series does not exist."""
        return self._samples.get((name, frozenset(labels.items())))

    def wait_value(
        self, name: str, predicate: Callable[[float], bool], timeout: float = 20, **labels: str
    ) -> float:
        """Scrape until the series exists and satisfies `predicate`; return its value."""

        def check() -> float | None:
            value = self.scrape().get((name, frozenset(labels.items())))
            return value if value is not None and predicate(value) else None

        wait_for(lambda: check() is not None, timeout, f"{name}{labels} to match")
        value = self.value(name, **labels)
        assert value is not None
        return value

    def logs(self) -> str:
        """Everything the process wrote to stderr and stdout so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Signal the process and wait for it; kill it if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def exporter_command(*args: str) -> list[str]:
    """How tests start the real exporter (the installed package, run as a module)."""
    return [sys.executable, "-m", "exporter", *args]


def run_cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run the exporter to completion (`--once`, `--config.check`, a failing start-up)."""
    return subprocess.run(
        exporter_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


@contextlib.contextmanager
def run_exporter(
    config: str,
    workdir: Path,
    *args: str,
    env: dict[str, str] | None = None,
    ready: bool = True,
    context: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
    fd_limit: int | None = None,
) -> Iterator[Exporter]:
    """Write `config`, start the exporter on a free port, wait for `/-/ready`.

    With `context` the exporter is reached over https (its web config must enable TLS).
    `fd_limit` sets its RLIMIT_NOFILE, soft and hard (`ulimit -n`), with util-linux `prlimit`.
    """
    config_path = workdir / "config.yaml"
    config_path.write_text(config)
    log_path = workdir / "exporter.log"
    port = free_port()
    with log_path.open("wb") as log_file:
        limit = [] if fd_limit is None else ["prlimit", f"--nofile={fd_limit}:{fd_limit}", "--"]
        process = subprocess.Popen(
            [
                *limit,
                *exporter_command(
                    f"--config.file={config_path}",
                    f"--web.listen-address=127.0.0.1:{port}",
                    "--log.level=debug",
                    *args,
                ),
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=workdir,
        )
    scheme = "https" if context is not None else "http"
    exporter = Exporter(
        process,
        f"{scheme}://127.0.0.1:{port}",
        log_path,
        config_path,
        context=context,
        headers=headers or {},
    )
    try:
        if ready:
            wait_for(
                lambda: _is_ready(exporter),
                20,
                "the exporter to be ready",
            )
        yield exporter
    finally:
        exporter.stop()


def _is_ready(exporter: Exporter) -> bool:
    if exporter.process.poll() is not None:
        raise AssertionError(f"exporter exited early:\n{exporter.logs()}")
    try:
        return exporter.get("/-/ready")[0] == 200
    except OSError:
        return False
