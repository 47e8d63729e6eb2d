"""The repository's documents stand on their own: every file they point to is in the repository.

A user reads the README, docs/ and the code from a clone; a link or a path in backticks that
leads nowhere is a dead end for them.
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from typing import TYPE_CHECKING

import pytest

from tests.harness import REPO_ROOT

if TYPE_CHECKING:
    from pathlib import Path

TOP_LEVEL = (
    "bench",
    "demo",
    "deploy",
    "docs",
    "exporter",
    "grafana",
    "ollama_sim",
    "prometheus",
    "testkit",
    "tests",
)
MD_LINK = re.compile(r"\]\(([^)\s]+)\)")
CODE_PATH = re.compile(rf"`((?:{'|'.join(TOP_LEVEL)})/[\w./-]*\.[a-z]+)`")
PLACEHOLDER = re.compile(r"[*…<>{}$]|NN|\.\.\.")


def _tracked_files() -> list[str]:
    """The repository's files, listed by git once, when the module is collected (a unit test
    starts no process, git included)."""
    return subprocess.run(
        ["git", "ls-files", "-z"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")


TRACKED = _tracked_files()


def tracked(*patterns: str) -> list[Path]:
    """The tracked files that match a pattern as git's pathspecs do (`*` crosses `/` too)."""
    return [
        REPO_ROOT / name
        for name in TRACKED
        if name
        and any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)
        and (REPO_ROOT / name).is_file()
    ]


def test_the_repository_lists_its_files() -> None:
    assert REPO_ROOT / "README.md" in tracked("*.md")
    assert REPO_ROOT / "ollama_sim" / "server.py" in tracked("*.py")


@pytest.mark.parametrize("path", tracked("*.md"), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_of_a_document_resolves(path: Path) -> None:
    for target in MD_LINK.findall(path.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue  # a URL, or an anchor in the same page
        file = target.split("#", 1)[0]
        assert (path.parent / file).exists(), f"{path.name}: link to missing {target}"


@pytest.mark.parametrize(
    "path", tracked("*.md", "*.py", "*.yaml", "*.yml"), ids=lambda p: str(p.relative_to(REPO_ROOT))
)
def test_every_repository_path_in_backticks_exists(path: Path) -> None:
    text = path.read_text(encoding="utf-8", errors="replace")
    for name in CODE_PATH.findall(text):
        if PLACEHOLDER.search(name):
            continue
        assert (REPO_ROOT / name).exists(), f"{path.relative_to(REPO_ROOT)}: `{name}` is missing"


def test_no_file_points_outside_the_repository() -> None:
    outside = re.compile(r"\.\./(?:shared|reference)\b|/work/shared|\bshared/(?:reference|spec)/")
    offenders = [
        str(path.relative_to(REPO_ROOT))
        for path in tracked("*")
        if path.suffix not in {".png", ".svg", ".ico", ".gz"}
        and path.name != "test_docs.py"  # it has to name what it looks for
        and outside.search(path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert offenders == []


# ------------------------------------------------------------------ docs that stay true
# (`--help` against docs/contract.md's flag table starts the exporter: tests/e2e/test_docs_process.py)


def test_no_document_calls_a_shipped_part_planned() -> None:
    for path in [REPO_ROOT / "README.md", *tracked("docs/*.md")]:
        text = path.read_text(encoding="utf-8")
        assert "(planned)" not in text, path
        assert "do not exist" not in " ".join(text.split()), path


def test_the_readme_is_short_and_the_alert_table_lives_in_monitoring_md() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    assert "| `OllamaPull" not in readme
    assert "| `OllamaPullFailing` |" in (REPO_ROOT / "docs/monitoring.md").read_text("utf-8")
    assert re.search(r"^## Dependencies\n\n(- `[\w-]+`: .*\n(  .*\n)*)+", readme, re.MULTILINE)
