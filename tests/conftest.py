"""The tiers and the shared fixtures of the suite.

Two tiers, by the `e2e` mark: the fast tier (`pytest -m "not e2e"`) runs everything in one
process, the real exporter and the simulator in the test's own event loop; the e2e tier starts
processes (the exporter, a real Prometheus, a browser, helm, promtool, ollama). The mark is set
here, per module (`E2E_MODULES`, and everything under tests/real/), or by hand on the few
process tests of a module that is otherwise in process. A fast-tier test that starts a process
anyway fails (`_no_process_below_e2e`), and tests/test_tiers.py reads the sources: a module
that starts processes is listed or marks those tests, and a listed one still starts some.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ollama_sim import OllamaSimulator
from tests.inprocess import Client, exporter_in_process

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from contextlib import AbstractAsyncContextManager

    from exporter.app import assemble

E2E_MODULES = frozenset(
    {
        "test_alerts",  # promtool
        "test_api",
        "test_api_fuzz",
        "test_bench_smoke",  # bench/ starts the exporter and the simulator as processes
        "test_browser",  # chromium
        "test_charts_browser",  # chromium
        "test_deploy",  # hadolint, and the exporter under the compose stack's flags
        "test_first_minutes",
        "test_helm",  # helm and kubeconform
        "test_hostile",
        "test_integration",
        "test_inventory",
        "test_lifecycle",  # signals
        "test_listener",
        "test_page",
        "test_production",
        "test_prometheus_e2e",  # Prometheus 2 and 3
        "test_pull_form",
        "test_registry_proxy",
        "test_soak",
        "test_stall_browser",
        "test_store_live",
    }
)
"""Test modules whose every test is e2e: each starts the exporter or another program."""

FIXTURE_TOOLS = frozenset({"git", "openssl", "tests.raw_http"})
"""Programs a fast-tier test may run, none of them the code under test: git and openssl make
its inputs (the list of tracked files, certificates) in milliseconds; tests/raw_http.py is a
peer that sends fixed hostile bytes, in its own process so that its floods cost the event loop
under test no time (not even the GIL)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests of the e2e modules and of tests/real/ `e2e`."""
    for item in items:
        path = Path(item.path)
        if path.stem in E2E_MODULES or path.parent.name == "real":
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(autouse=True)
def _no_process_below_e2e(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test outside the e2e tier fails when it starts a process (other than FIXTURE_TOOLS).

    Every way Python starts a program (subprocess, asyncio's subprocesses, playwright's
    driver) goes through `subprocess.Popen._execute_child`.
    """
    if request.node.get_closest_marker("e2e") is not None:
        return
    start = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def refuse(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        listed = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
        argv: list[str] = [os.fsdecode(arg) for arg in listed]
        module = argv[2] if argv[1:2] == ["-m"] and len(argv) > 2 else None  # python -m MODULE
        program = module or Path(argv[0].split(" ", 1)[0]).name
        if program not in FIXTURE_TOOLS:
            pytest.fail(
                f"{request.node.nodeid} starts {program!r}: mark it e2e "
                "(E2E_MODULES in tests/conftest.py, or @pytest.mark.e2e on the test)",
                pytrace=False,
            )
        start(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)


# ------------------------------------------------------------------ shared fixtures


@pytest.fixture
def simulator() -> Iterator[OllamaSimulator]:
    """The Ollama simulator, serving on 127.0.0.1 from a thread of this process (its `url`).

    It knows no model yet: give it runs with `set_runs`. Stopped, streams closed, after the test.
    """
    sim = OllamaSimulator()
    with sim.running():
        yield sim


@pytest.fixture
def inprocess_exporter() -> Callable[
    ..., AbstractAsyncContextManager[tuple[Client, assemble.Program]]
]:
    """The real exporter in the test's own event loop (tests/inprocess.py), as a fixture.

    `async with inprocess_exporter(config_text, admin=True) as (client, program):`, in a
    coroutine the test runs with `asyncio.run`: assembled as the process assembles it, served
    on 127.0.0.1 until the block ends.
    """
    return exporter_in_process
