"""A real Prometheus on a free port, and its HTTP API (the e2e tests that scrape the exporter)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from testkit.process import free_port, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@dataclass
class Prometheus:
    """A running Prometheus and its HTTP API (JSON answers, errors included)."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path

    def get(self, path: str, **params: str | list[str]) -> tuple[int, dict[str, Any]]:
        """GET an API path with query parameters; returns (status, decoded JSON)."""
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as response:
                return int(response.status), json.loads(response.read())
        except urllib.error.HTTPError as exc:  # 400/422 carry the PromQL error as JSON
            return exc.code, json.loads(exc.read())

    def query(self, expr: str) -> tuple[int, dict[str, Any]]:
        """An instant query."""
        return self.get("/api/v1/query", query=expr)

    def label_values(self, label: str, match: str | None) -> list[str]:
        """Every value of `label`, among the series `match` selects (all when None)."""
        params: dict[str, str | list[str]] = {"match[]": [match]} if match else {}
        status, body = self.get(f"/api/v1/label/{label}/values", **params)
        assert status == 200, body
        values: list[str] = body["data"]
        return values


@contextlib.contextmanager
def run_prometheus(
    binary: str, config: dict[str, Any], workdir: Path, flags: tuple[str, ...] = ()
) -> Iterator[Prometheus]:
    """Write `config` as prometheus.yml, start `binary` on a free port, wait for `/-/ready`.

    `flags` go to the command line too (`--enable-feature=exemplar-storage`).

    Its TSDB lives in `workdir/tsdb`; it is stopped (SIGTERM, then SIGKILL) on exit.
    """
    config_path = workdir / "prometheus.yml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    port = free_port()
    log_path = workdir / "prometheus.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
                *flags,
            ],
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_for(lambda: _prometheus_ready(prometheus), 30, "Prometheus to be ready")
        yield prometheus
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _prometheus_ready(prometheus: Prometheus) -> bool:
    if prometheus.process.poll() is not None:
        raise AssertionError(f"prometheus exited early:\n{prometheus.log_path.read_text()}")
    try:
        with urllib.request.urlopen(prometheus.url + "/-/ready", timeout=2) as response:
            return int(response.status) == 200
    except OSError:
        return False
