"""Fixtures of the real tier: registry and front per module, `ollama serve` and tap per test.

Every test that uses `ollama serve` runs once per release in `tested_versions()` (its id
ends in `[0.17.4]`, `[0.13.5]`). The tier needs the `ollama` binaries
(`.ci/setup/60-ollama.sh` builds them) and Debian's `docker-registry`. Without one, the tests
that need it are skipped with the reason, except where `OPE_REQUIRE_REAL=1` (CI sets it):
there a missing part fails them.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from tests.e2e.real.front import running_front
from tests.e2e.real.ollama import OllamaServer, ollama_binary, tested_versions
from tests.e2e.real.registry import Registry, registry_binary, running_registry
from tests.e2e.real.rig import Rig
from tests.e2e.real.tap import running_tap

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from tests.e2e.real.front import Front


def _required(missing: str) -> None:
    """Fail where CI promised the part (`OPE_REQUIRE_REAL=1`), else skip."""
    if os.environ.get("OPE_REQUIRE_REAL") == "1":
        pytest.fail(f"the real tier cannot run: {missing}")
    pytest.skip(f"real tier: {missing}")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each test that needs `ollama serve` runs against every tested release."""
    if "ollama_version" in metafunc.fixturenames:
        metafunc.parametrize("ollama_version", tested_versions(), scope="module")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/e2e/real carries the `real` mark."""
    for item in items:
        if "/tests/e2e/real/" in str(item.path):
            item.add_marker(pytest.mark.real)


@pytest.fixture(scope="session", autouse=True)
def _real_parts_present() -> None:
    if registry_binary() is None:
        _required("no docker-registry (apt-get install docker-registry)")


@pytest.fixture
def ollama_bin(ollama_version: str) -> Path:
    """The `ollama` binary of the release under test."""
    binary = ollama_binary(ollama_version)
    if binary is None:
        _required(
            f"no ollama {ollama_version} binary (run .ci/setup/60-ollama.sh, or set OLLAMA_BIN)"
        )
    assert binary is not None
    return binary


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


@pytest.fixture(scope="module")
def _front(registry: Registry) -> Iterator[Front]:
    with running_front(registry.url) as running:
        yield running


@pytest.fixture
def front(_front: Front) -> Front:
    """The module's front, reset: the same pull on another release sees only its requests."""
    _front.reset()
    return _front


@pytest.fixture
def rig(registry: Registry, front: Front, ollama_bin: Path, tmp_path: Path) -> Iterator[Rig]:
    """A fresh `ollama serve` (empty models directory) behind a tap, the front reset."""
    server = OllamaServer(ollama_bin, tmp_path / "ollama")
    server.start()
    try:
        with running_tap(server.port) as tap:
            yield Rig(registry, front, server, tap, tmp_path)
    finally:
        server.stop()
