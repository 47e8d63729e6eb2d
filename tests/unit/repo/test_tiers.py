"""The tiers stay true: a module that starts processes is e2e, and the fast tier starts none.

The folders are the tiers (tests/conftest.py): everything under tests/e2e/ is e2e, and nothing
under tests/unit/ or tests/integration/ is, not even by a hand-set mark. Read here from the source, statically: which module-level
functions reach a process starter (directly or through other functions and fixtures of the
same module), and which tests do. At run time `_no_process_below_e2e` catches what this reading
misses (a starter reached through another module), and `_unit_tests_stay_in_memory` fails a
unit test that sleeps or opens a network socket.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, TypeGuard

import pytest

from tests.conftest import E2E, FIXTURE_TOOLS, REFUSED, TESTS, UNIT
from tests.harness import REPO_ROOT

if TYPE_CHECKING:
    from pathlib import Path

STARTERS = frozenset(
    {
        "subprocess",
        "create_subprocess_exec",
        "create_subprocess_shell",
        "run_exporter",
        "run_cli",
        "run_prometheus",
        "exporter_command",
        "exporter_for",  # tests/e2e/real/rig.py: the exporter process over the real tier's config
        "sync_playwright",
        "async_playwright",
    }
)
"""Names whose use starts a process; not `subprocess.run(["git", ...])` nor `self_signed`
(openssl): the fixture tools make a test's inputs."""


def _tool_call(node: ast.AST) -> TypeGuard[ast.Call]:
    """`subprocess.run(["git", ...])`: a fixture tool (conftest's FIXTURE_TOOLS) runs."""
    return (
        isinstance(node, ast.Call)
        and bool(node.args)
        and isinstance(node.args[0], ast.List)
        and bool(node.args[0].elts)
        and isinstance(first := node.args[0].elts[0], ast.Constant)
        and first.value in FIXTURE_TOOLS
    )


def _names(node: ast.AST) -> set[str]:
    tools = {id(sub.func) for sub in ast.walk(node) if _tool_call(sub)}
    tool_modules = {
        id(sub.value)
        for sub in ast.walk(node)
        if isinstance(sub, ast.Attribute) and id(sub) in tools
    }
    found: set[str] = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and id(sub) not in tool_modules:
            found.add(sub.id)
        elif isinstance(sub, ast.arg):
            found.add(sub.arg)  # a fixture of the module, asked for by parameter
    return found


@functools.cache  # the same modules are read by several tests here (which only read the trees)
def _tree(source: str) -> ast.Module:
    return ast.parse(source)


def _e2e_marked(function: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> bool:
    return any("e2e" in ast.unparse(decorator) for decorator in function.decorator_list)


def e2e_marks(source: str) -> list[str]:
    """What a module marks e2e by hand: its tests, classes, or all of it (`pytestmark`)."""
    marked = []
    for node in ast.walk(_tree(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if _e2e_marked(node):
                marked.append(node.name)
        elif (
            isinstance(node, ast.Assign | ast.AnnAssign)
            and "pytestmark"
            in ast.unparse(node.targets[0] if isinstance(node, ast.Assign) else node.target)
            and node.value is not None
            and "e2e" in ast.unparse(node.value)
        ):
            marked.append("pytestmark")
    return marked


def process_tests(source: str) -> tuple[set[str], set[str]]:
    """(tests that start a process, those of them marked e2e), read from a module's source."""
    tree = _tree(source)
    functions = {
        node.name: node
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }
    uses = {name: _names(node) for name, node in functions.items()}
    starting = {name for name, used in uses.items() if used & STARTERS}
    grew = True
    while grew:  # through the module's own helpers and fixtures
        reached = {name for name, used in uses.items() if used & starting} - starting
        starting |= reached
        grew = bool(reached)
    tests = {name for name in starting if name.startswith("test_")}
    return tests, {name for name in tests if _e2e_marked(functions[name])}


def _modules() -> dict[Path, str]:
    """Every test module, by its path under tests/."""
    return {
        path.relative_to(TESTS): path.read_text(encoding="utf-8")
        for path in TESTS.rglob("test_*.py")
    }


def _is_e2e(module: Path) -> bool:
    return (TESTS / module).is_relative_to(E2E)


def _is_unit(module: Path) -> bool:
    return (TESTS / module).is_relative_to(UNIT)


def test_a_module_that_starts_processes_is_e2e_or_marks_its_process_tests() -> None:
    unmarked = {}
    for module, source in _modules().items():
        if _is_e2e(module) or module.stem == "test_tiers":  # it starts one to see it refused
            continue
        starting, _ = process_tests(source)
        if starting:  # below e2e no test is e2e (the test below), so none may start one
            unmarked[str(module)] = sorted(starting)
    assert unmarked == {}, "tests that start a process in the fast tier: move them under tests/e2e/"


def test_no_module_below_e2e_marks_a_test_e2e_by_hand() -> None:
    marked = {
        str(module): names
        for module, source in _modules().items()
        if not _is_e2e(module) and module.stem != "test_tiers" and (names := e2e_marks(source))
    }
    assert marked == {}, "the folder is the tier: move these into a new module under tests/e2e/"


def _imports_bench(source: str) -> bool:
    """bench/ starts the exporter and the simulator as processes (bench/common.py)."""
    return any(
        isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "bench"
        for node in ast.walk(_tree(source))
    )


def test_every_e2e_module_starts_processes() -> None:
    in_process = {
        str(module)
        for module, source in _modules().items()
        if _is_e2e(module)
        and module.parts[1] != "real"  # its conftest's fixtures start Ollama for every test
        and not process_tests(source)[0]
        and not _imports_bench(source)
    }
    assert in_process == set(), "these start no process: move them out of tests/e2e/"


def test_every_test_module_sits_in_a_tier_folder() -> None:
    """unit/<package>/ mirrors exporter/; integration/ and e2e/ are flat (e2e/real/ aside)."""
    packages = {path.name for path in (REPO_ROOT / "exporter").iterdir() if path.is_dir()}
    misplaced = []
    for module in _modules():
        tier, *rest = module.parts
        if tier == "unit":
            ok = len(rest) == 2 and rest[0] in packages | {"repo"}
        elif tier == "integration":
            ok = len(rest) == 1
        else:
            ok = tier == "e2e" and (len(rest) == 1 or rest[:1] == ["real"])
        if not ok:
            misplaced.append(str(module))
    assert misplaced == []


def test_the_reading_follows_helpers_and_fixtures() -> None:
    source = (
        "import subprocess\n"
        "def _run(): subprocess.run(['x'])\n"
        "def started(): return _run()\n"
        "def test_direct(): subprocess.run(['x'])\n"
        "def test_through_a_helper(): started()\n"
        "def test_through_a_fixture(started): pass\n"
        "@pytest.mark.e2e\ndef test_marked(): _run()\n"
        "def test_in_process(): pass\n"
        "def test_a_tool(): subprocess.run(['git', 'ls-files'])\n"
    )
    starting, marked = process_tests(source)
    assert starting == {
        "test_direct",
        "test_through_a_helper",
        "test_through_a_fixture",
        "test_marked",
    }
    assert marked == {"test_marked"}


def test_the_reading_finds_every_hand_set_e2e_mark() -> None:
    source = (
        "import pytest\n"
        "pytestmark = [pytest.mark.slow, pytest.mark.e2e]\n"
        "@pytest.mark.e2e\ndef test_marked(): pass\n"
        "@pytest.mark.e2e\nclass TestMarked:\n    def test_in_it(self): pass\n"
        "class TestPlain:\n    @pytest.mark.e2e\n    async def test_method(self): pass\n"
        "@pytest.mark.slow\ndef test_slow(): '@pytest.mark.e2e'\n"
    )
    assert sorted(e2e_marks(source)) == ["TestMarked", "pytestmark", "test_marked", "test_method"]
    assert e2e_marks("pytestmark: object = pytest.mark.e2e\n") == ["pytestmark"]


def test_a_unit_test_that_starts_a_process_fails() -> None:
    """Refused before it starts. (An integration test may run the fixture tools:
    tests/integration/test_shared_fixtures.py.)"""
    with pytest.raises(pytest.fail.Exception, match="a unit test starts no process"):
        subprocess.run([sys.executable, "-c", "pass"], check=False)
    with pytest.raises(pytest.fail.Exception, match="starts 'git': a unit test starts no"):
        subprocess.run(["git", "--version"], capture_output=True, check=False)


def test_a_unit_test_that_sleeps_fails(request: pytest.FixtureRequest) -> None:
    with pytest.raises(pytest.fail.Exception, match=r"sleeps 0\.01 s \(time\.sleep\)"):
        time.sleep(0.01)
    with pytest.raises(pytest.fail.Exception, match=r"sleeps 0\.01 s \(asyncio\.sleep\)"):
        asyncio.run(asyncio.sleep(0.01))
    # A thread the test starts is the test's own: it is refused there too.
    caught: list[BaseException] = []

    def nap() -> None:
        try:
            time.sleep(1)
        except BaseException as exc:  # noqa: BLE001 - pytest.fail raises a BaseException
            caught.append(exc)

    thread = threading.Thread(target=nap)
    thread.start()
    thread.join()
    assert [type(exc) for exc in caught] == [pytest.fail.Exception]
    # A zero sleep is a yield, not a wait.
    time.sleep(0)
    asyncio.run(asyncio.sleep(0))
    assert len(request.node.stash[REFUSED]) == 3
    request.node.stash[REFUSED].clear()  # seen: else the teardown fails the test for them


def test_a_unit_test_that_opens_a_network_socket_fails(request: pytest.FixtureRequest) -> None:
    with socket.socket() as sock:
        with pytest.raises(pytest.fail.Exception, match=r"opens a network socket \(bind "):
            sock.bind(("127.0.0.1", 0))
        with pytest.raises(pytest.fail.Exception, match=r"opens a network socket \(connect "):
            sock.connect(("127.0.0.1", 9))
    with (
        socket.socket(type=socket.SOCK_DGRAM) as sock,
        pytest.raises(pytest.fail.Exception, match=r"opens a network socket \(sendto "),
    ):
        sock.sendto(b"x", ("127.0.0.1", 9))
    # An event loop's own socket pair, and a socket pair of the test, are no network.
    asyncio.run(asyncio.sleep(0))
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"x")
        assert right.recv(1) == b"x"
    assert len(request.node.stash[REFUSED]) == 3
    request.node.stash[REFUSED].clear()
