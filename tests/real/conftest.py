"""Fixtures of the real tier: registry and front per module, `ollama serve` and tap per test.

The tier needs the `ollama` binary (`.ci/setup/60-ollama.sh` builds it) and Debian's
`docker-registry`. Without them it is skipped with the reason, except where
`OPE_REQUIRE_REAL=1` (CI sets it): there a missing part fails every test of the tier.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from tests.real.front import running_front
from tests.real.ollama import OllamaServer, ollama_binary, wanted_version
from tests.real.registry import Registry, registry_binary, running_registry
from tests.real.rig import Rig
from tests.real.tap import running_tap

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.real.front import Front


def _missing() -> str | None:
    if ollama_binary() is None:
        return (
            f"no ollama {wanted_version()} binary (run .ci/setup/60-ollama.sh, or set OLLAMA_BIN)"
        )
    if registry_binary() is None:
        return "no docker-registry (apt-get install docker-registry)"
    return None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/real carries the `real` mark."""
    for item in items:
        if "/tests/real/" in str(item.path):
            item.add_marker(pytest.mark.real)


@pytest.fixture(scope="session", autouse=True)
def _real_parts_present() -> None:
    missing = _missing()
    if missing is None:
        return
    if os.environ.get("OPE_REQUIRE_REAL") == "1":
        pytest.fail(f"the real tier cannot run: {missing}")
    pytest.skip(f"real tier: {missing}")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def front(registry: Registry) -> Iterator[Front]:
    with running_front(registry.url) as running:
        yield running


@pytest.fixture
def rig(registry: Registry, front: Front, tmp_path: Path) -> Iterator[Rig]:
    """A fresh `ollama serve` (empty models directory) behind a tap, faults cleared."""
    binary = ollama_binary()
    assert binary is not None
    front.faults = type(front.faults)()
    server = OllamaServer(binary, tmp_path / "ollama")
    server.start()
    try:
        with running_tap(server.port) as tap:
            yield Rig(registry, front, server, tap, tmp_path)
    finally:
        server.stop()
