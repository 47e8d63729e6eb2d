"""The tiers and the shared fixtures of the suite.

The folders are the tiers. `tests/unit/<package>/` tests one package of `exporter/` on its own:
pure functions, tables and properties. `tests/integration/` runs the real app and the simulator
in the test's own event loop, on real sockets on 127.0.0.1. `tests/e2e/` starts processes: the
exporter, a real Prometheus 2 and 3, a browser, helm, promtool, a real Ollama (`tests/e2e/real/`).
Everything under `tests/e2e/` is marked `e2e` here, so `pytest -m "not e2e"` is the fast tier;
a few process tests of an otherwise in-process module carry `@pytest.mark.e2e` by hand. A
fast-tier test that starts a process anyway fails (`_no_process_below_e2e`), and
tests/unit/repo/test_tiers.py reads the sources to keep the folders true.
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

TESTS = Path(__file__).resolve().parent
E2E = TESTS / "e2e"
"""Every test under this folder is e2e."""

FIXTURE_TOOLS = frozenset({"git", "openssl", "tests.raw_http"})
"""Programs a fast-tier test may run, none of them the code under test: git and openssl make
its inputs (the list of tracked files, certificates) in milliseconds; tests/raw_http.py is a
peer that sends fixed hostile bytes, in its own process so that its floods cost the event loop
under test no time (not even the GIL)."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e/ `e2e`."""
    for item in items:
        if Path(item.path).is_relative_to(E2E):
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
                "(move it under tests/e2e/, or @pytest.mark.e2e on the test)",
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
