"""The process harnesses of testkit/, under the name the test modules import them by.

They live in testkit/ so that bench/ imports no test module; this shim keeps
`from tests.harness import run_exporter` working until the test tree moves into its tiers.
"""

from testkit.process import (
    PROMETHEUS_ACCEPT,
    REPO_ROOT,
    Exporter,
    Samples,
    exporter_command,
    free_port,
    parse_samples,
    run_cli,
    run_exporter,
    wait_for,
)
from testkit.prometheus import Prometheus, run_prometheus
from testkit.tls import openssl, self_signed

__all__ = [
    "PROMETHEUS_ACCEPT",
    "REPO_ROOT",
    "Exporter",
    "Prometheus",
    "Samples",
    "exporter_command",
    "free_port",
    "openssl",
    "parse_samples",
    "run_cli",
    "run_exporter",
    "run_prometheus",
    "self_signed",
    "wait_for",
]
