"""aiohttp's internals are touched in two modules only: the client transport and the listener.

An aiohttp release may move anything below its public API; with every such hook in
exporter/clients/transport.py (client side) and exporter/web/listener.py (server side), a
release that breaks one breaks those two modules and their tests, nothing else.

aiohttp's public API, as its documentation presents it: the top-level `aiohttp` package (the
client reference), `aiohttp.web` (the server reference), `aiohttp.abc` (the abstract base
classes), `aiohttp.test_utils` (the testing page) and `aiohttp.hdrs` (the header and method
name constants the references use). `aiohttp.typedefs` holds the type aliases the middleware
documentation annotates with (`Handler`, `Middleware`): allowed for types only, under
`TYPE_CHECKING`. Everything else (`aiohttp.helpers`, `aiohttp.connector`,
`aiohttp.http_exceptions`, `aiohttp.web_protocol`, ...) is an internal module.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[3]
PACKAGE: Final = ROOT / "exporter"
HOOK_MODULES: Final = frozenset({"exporter/clients/transport.py", "exporter/web/listener.py"})
PUBLIC: Final = frozenset(
    {"aiohttp", "aiohttp.web", "aiohttp.abc", "aiohttp.test_utils", "aiohttp.hdrs"}
)
TYPES_ONLY: Final = frozenset({"aiohttp.typedefs"})
SOCKET_HOOKS: Final = frozenset(
    {"connection", "protocol", "transport", "get_protocol", "set_protocol", "pause_reading"}
)
"""Attributes that reach from a response down to its socket: client code leaves them to the
transport module."""


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _aiohttp_modules(tree: ast.Module) -> list[tuple[int, str, bool]]:
    """(line, aiohttp module, inside `if TYPE_CHECKING:`) for every aiohttp import."""
    found: list[tuple[int, str, bool]] = []

    def visit(node: ast.AST, typing_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for inner in node.body:
                visit(inner, typing_only=True)
            for other in node.orelse:
                visit(other, typing_only)
            return
        if isinstance(node, ast.Import):
            found.extend(
                (node.lineno, alias.name, typing_only)
                for alias in node.names
                if alias.name.split(".")[0] == "aiohttp"
            )
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "aiohttp":
            module = node.module or ""
            found.append((node.lineno, module, typing_only))
            if module == "aiohttp":  # `from aiohttp import web`: a module too
                found.extend(
                    (node.lineno, f"aiohttp.{alias.name}", typing_only)
                    for alias in node.names
                    if importlib.util.find_spec(f"aiohttp.{alias.name}") is not None
                )
        for grandchild in ast.iter_child_nodes(node):
            visit(grandchild, typing_only)

    visit(tree, typing_only=False)
    return found


@functools.cache  # read once for the tests of this module (which only read the trees)
def _modules() -> list[tuple[str, ast.Module]]:
    return [
        (path.relative_to(ROOT).as_posix(), ast.parse(path.read_text(), str(path)))
        for path in sorted(PACKAGE.rglob("*.py"))
    ]


def private_imports(name: str, tree: ast.Module) -> list[str]:
    """The imports of aiohttp modules below its public API in one module."""
    return [
        f"{name}:{line}: {module}"
        for line, module, typing_only in _aiohttp_modules(tree)
        if module not in PUBLIC and not (typing_only and module in TYPES_ONLY)
    ]


def socket_reaches(name: str, tree: ast.Module) -> list[str]:
    """Attribute reads that go below a response: to its connection, protocol, transport."""
    return [
        f"{name}:{node.lineno}: .{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in SOCKET_HOOKS
    ]


def test_only_the_hook_modules_import_aiohttp_internals() -> None:
    modules = _modules()
    assert {name for name, _ in modules} >= HOOK_MODULES
    offenders = [
        line
        for name, tree in modules
        if name not in HOOK_MODULES
        for line in private_imports(name, tree)
    ]
    assert not offenders, "aiohttp internals outside the hook modules:\n" + "\n".join(offenders)


def test_client_code_leaves_the_socket_to_the_transport_module() -> None:
    offenders = [
        line
        for name, tree in _modules()
        if name.startswith("exporter/clients/") and name not in HOOK_MODULES
        for line in socket_reaches(name, tree)
    ]
    assert not offenders, "client code below the response:\n" + "\n".join(offenders)


def test_the_checks_see_what_they_look_for() -> None:
    """Each check finds the thing it forbids, so a pass means something."""
    tree = ast.parse(
        "import aiohttp.connector\n"
        "from aiohttp import helpers, web\n"
        "from aiohttp.http_exceptions import LineTooLong\n"
        "if TYPE_CHECKING:\n    from aiohttp.typedefs import Handler\n"
        "from aiohttp.typedefs import Middleware\n"
        "transport = response.connection.transport\n"
    )
    assert [line.split(": ")[1] for line in private_imports("m", tree)] == [
        "aiohttp.connector",
        "aiohttp.helpers",
        "aiohttp.http_exceptions",
        "aiohttp.typedefs",
    ]
    assert socket_reaches("m", tree) == ["m:7: .transport", "m:7: .connection"]
