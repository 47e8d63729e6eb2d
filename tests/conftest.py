"""The tiers and the shared fixtures of the suite.

The folders are the tiers. `tests/unit/<package>/` tests one package of `exporter/` on its own:
pure functions, tables and properties. `tests/integration/` runs the real app and the simulator
in the test's own event loop, on real sockets on 127.0.0.1. `tests/e2e/` starts processes: the
exporter, a real Prometheus 2 and 3, a browser, helm, promtool, a real Ollama (`tests/e2e/real/`).
Everything under `tests/e2e/` is marked `e2e` here, so `pytest -m "not e2e"` is the fast tier.
A fast-tier test that starts a process anyway fails (`_no_process_below_e2e`); a unit test that
sleeps or opens a network socket fails too (`_unit_tests_stay_in_memory`); and
tests/unit/repo/test_tiers.py reads the sources to keep the folders true.

The property tests (hypothesis) run on the `ci` profile below wherever they run, the README's
command and CI's alike: the same examples every time, no deadline (a loaded machine is not a
failure). `--hypothesis-profile=explore` searches far more, and new, examples.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, settings

from ollama_sim import OllamaSimulator
from tests.inprocess import Client, exporter_in_process

if TYPE_CHECKING:
    from collections.abc import Callable, Generator, Iterator
    from contextlib import AbstractAsyncContextManager

    from exporter.app import assemble

TESTS = Path(__file__).resolve().parent
E2E = TESTS / "e2e"
"""Every test under this folder is e2e."""
UNIT = TESTS / "unit"
"""Every test under this folder runs in memory: no process, no sleep, no network socket."""

FIXTURE_TOOLS = frozenset({"git", "openssl", "tests.raw_http"})
"""Programs an integration test may run (a unit test runs none), none of them the code under
test: git and openssl make its inputs (the list of tracked files, certificates) in milliseconds;
tests/raw_http.py is a peer that sends fixed hostile bytes, in its own process so that its
floods cost the event loop under test no time (not even the GIL)."""

settings.register_profile(
    "ci",
    max_examples=100,
    derandomize=True,  # the same examples on every run: a run goes red only when the code changed
    database=None,
    deadline=None,  # per-example time depends on the machine's load, not on the code
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(  # on hypothesis's own default: random, its example database
    "explore",
    max_examples=5000,  # new examples each run; a failure is kept in .hypothesis/ and replayed
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")  # `--hypothesis-profile=NAME` loads another after this


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test under tests/e2e/ `e2e`."""
    for item in items:
        if Path(item.path).is_relative_to(E2E):
            item.add_marker(pytest.mark.e2e)


CALL_REPORT = pytest.StashKey[pytest.TestReport]()
"""How the test itself (its call phase) went, for the teardown of the fixtures below."""
REFUSED = pytest.StashKey[list[str]]()
"""What `_unit_tests_stay_in_memory` refused a unit test, on its item."""


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item,
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep the call phase's report on the item (`CALL_REPORT`)."""
    report = yield
    if report.when == "call":
        item.stash[CALL_REPORT] = report
    return report


@pytest.fixture(autouse=True)
def _no_process_below_e2e(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A test outside the e2e tier fails when it starts a process (an integration test may run
    FIXTURE_TOOLS; a unit test runs nothing, git included).

    Every way Python starts a program (subprocess, asyncio's subprocesses, playwright's
    driver) goes through `subprocess.Popen._execute_child`.
    """
    if request.node.get_closest_marker("e2e") is not None:
        return
    unit = Path(request.node.path).is_relative_to(UNIT)
    start = subprocess.Popen._execute_child  # type: ignore[attr-defined]

    def refuse(self: subprocess.Popen[Any], args: Any, *rest: Any, **kwargs: Any) -> None:
        listed = [args] if isinstance(args, str | bytes | os.PathLike) else list(args)
        argv: list[str] = [os.fsdecode(arg) for arg in listed]
        module = argv[2] if argv[1:2] == ["-m"] and len(argv) > 2 else None  # python -m MODULE
        program = module or Path(argv[0].split(" ", 1)[0]).name
        if unit:
            pytest.fail(
                f"{request.node.nodeid} starts {program!r}: a unit test starts no process "
                "(move it into a module under tests/e2e/)",
                pytrace=False,
            )
        if program not in FIXTURE_TOOLS:
            pytest.fail(
                f"{request.node.nodeid} starts {program!r}: mark it e2e "
                "(move it under tests/e2e/, or @pytest.mark.e2e on the test)",
                pytrace=False,
            )
        start(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "_execute_child", refuse)


@pytest.fixture(autouse=True)
def _unit_tests_stay_in_memory(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """A test under tests/unit/ fails when it sleeps or opens a network socket.

    Sleeping is `time.sleep` or `asyncio.sleep` for a positive time, by the test or by the
    code it runs (`exporter.core.clock.SYSTEM_CLOCK` sleeps: give the code a fake clock, or wait
    on the event the test asserts); a socket is a `connect`, `bind` or `sendto` (the event
    loop's own socket pair does none of these). Only the test's own threads are watched, those
    that run it or that it starts: a thread left behind by an earlier test is not its doing. A
    refusal raises at the call, and fails the test at teardown as well, should a task or a
    thread have swallowed it.
    """
    if not Path(request.node.path).is_relative_to(UNIT):
        yield
        return
    elsewhere = frozenset(t for t in threading.enumerate() if t is not threading.current_thread())
    refused = request.node.stash[REFUSED] = []

    def refuse(what: str) -> None:
        message = (
            f"{request.node.nodeid} {what}: a unit test runs in memory (give the code a fake "
            "clock, wait on the event it asserts, or move the test to tests/integration/)"
        )
        refused.append(message)
        pytest.fail(message, pytrace=False)

    def ours() -> bool:
        return threading.current_thread() not in elsewhere

    sleep, async_sleep = time.sleep, asyncio.sleep

    def guarded_sleep(seconds: float) -> None:
        if seconds > 0 and ours():
            refuse(f"sleeps {seconds} s (time.sleep)")
        sleep(seconds)

    async def guarded_async_sleep(delay: float, result: Any = None) -> Any:
        if delay > 0 and ours():
            refuse(f"sleeps {delay} s (asyncio.sleep)")
        return await async_sleep(delay, result)

    monkeypatch.setattr(time, "sleep", guarded_sleep)
    monkeypatch.setattr(asyncio, "sleep", guarded_async_sleep)
    monkeypatch.setattr(asyncio.tasks, "sleep", guarded_async_sleep)
    for name in ("connect", "connect_ex", "bind", "sendto"):
        method = getattr(socket.socket, name)

        def guarded(
            sock: socket.socket, *args: Any, _name: str = name, _method: Any = method
        ) -> Any:
            if ours():
                refuse(f"opens a network socket ({_name} {args[-1]!r})")
            return _method(sock, *args)

        monkeypatch.setattr(socket.socket, name, guarded)
    yield
    call = request.node.stash.get(CALL_REPORT, None)
    if refused and call is not None and call.passed:  # a task or a thread swallowed it
        pytest.fail("\n".join(refused), pytrace=False)


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
