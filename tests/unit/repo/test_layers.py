"""The layout of exporter/: packages by layer, imports one way, a map that lists every package.

The layer order itself is written once, as import-linter's contract in pyproject.toml, which
tests/e2e/test_layers_process.py runs (`lint-imports`, a process); this file checks in memory
what import-linter does not: no cycle between any two modules, few modules left at the top,
none too long, and docs/architecture.md naming every package.
"""

from __future__ import annotations

import ast
import tomllib
from typing import TYPE_CHECKING

from tests.harness import REPO_ROOT

if TYPE_CHECKING:
    from pathlib import Path

PACKAGE = REPO_ROOT / "exporter"
MAX_TOP_MODULES = 6
MAX_MODULE_LINES = 500


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The exporter modules `path` imports, anywhere in it (TYPE_CHECKING and functions too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                found.add(name if name in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name in modules}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root, root_edges in graph.items():
        if root in index:
            continue
        work = [(root, iter(sorted(root_edges)))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_the_contract_names_every_package() -> None:
    contract = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (layers,) = [c["layers"] for c in contract["tool"]["importlinter"]["contracts"]]
    packages = {f"exporter.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert set(layers) == packages


def test_no_import_cycle_between_modules_or_packages() -> None:
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    assert _cycles(graph) == []
    packages: dict[str, set[str]] = {}
    for name, deps in graph.items():
        top = ".".join(name.split(".")[:2])
        packages.setdefault(top, set()).update(".".join(d.split(".")[:2]) for d in deps)
    assert _cycles({p: deps - {p} for p, deps in packages.items()}) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_few_modules_at_the_top_and_none_too_long() -> None:
    top = [p.name for p in PACKAGE.glob("*.py") if p.name not in {"__init__.py", "__main__.py"}]
    assert len(top) <= MAX_TOP_MODULES, top
    long = {
        str(path.relative_to(REPO_ROOT)): lines
        for path in PACKAGE.rglob("*.py")
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_the_architecture_map_names_every_package_and_module() -> None:
    text = (REPO_ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    named = [f"exporter/{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()]
    named += [
        str(path.relative_to(REPO_ROOT))
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py" and path.parent != PACKAGE
    ]
    assert sorted(name for name in named if f"`{name}`" not in text) == []


def test_the_benchmarks_import_no_test_module() -> None:
    """bench/ and tests/ share process harnesses through testkit/, never through tests/."""
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for path in sorted((REPO_ROOT / "bench").glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if (isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "tests")
        or (
            isinstance(node, ast.Import)
            and any(a.name.split(".")[0] == "tests" for a in node.names)
        )
    ]
    assert offenders == []
