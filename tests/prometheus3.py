"""Where the tests find Prometheus 3 and its promtool (besides Debian's 2.42 on PATH).

`.ci/setup/15-prometheus3.sh` builds them from the Go module and exports OPE_PROMETHEUS3 (the
directory). Without that variable the same cache directory is looked up, so a machine that ran
CI once has them; otherwise the Prometheus 3 variants of the tests are skipped. With the
variable set, a missing binary is an error: CI must never skip them silently.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

MODULE_VERSION = "v0.309.1"
"""The module version `.ci/setup/15-prometheus3.sh` builds (Prometheus 3.9.1)."""


def _directory() -> Path:
    configured = os.environ.get("OPE_PROMETHEUS3")
    if configured:
        return Path(configured)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "ollama-pull-exporter" / f"prometheus3-{MODULE_VERSION}"


def binary(name: str) -> str:
    """The path of `name` (`prometheus` or `promtool`) of Prometheus 3, or skip the test."""
    path = _directory() / name
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    if os.environ.get("OPE_PROMETHEUS3"):
        pytest.fail(f"OPE_PROMETHEUS3 is set but {path} is missing")
    pytest.skip(f"Prometheus 3 is not built ({path}); .ci/setup/15-prometheus3.sh builds it")


def debian_binary(name: str) -> str:
    """Debian's Prometheus 2 binary `name` on PATH, or skip the test."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (CI installs Debian's prometheus package)")
    return path


def find(name: str, flavour: str) -> str:
    """`name` of the flavour `"2"` (Debian's) or `"3"` (built from the Go module)."""
    return debian_binary(name) if flavour == "2" else binary(name)
