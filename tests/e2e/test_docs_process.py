"""The command line's own `--help`, as a user's shell shows it, against docs/contract.md.

The process tests of tests/unit/repo/test_docs.py (which reads the documents in memory).
"""

from __future__ import annotations

import re
import subprocess
import sys

from tests.harness import REPO_ROOT

CONTRACT = REPO_ROOT / "docs" / "contract.md"
FLAG = re.compile(r"--[a-z][a-z0-9.-]*[a-z0-9]")


def _help() -> str:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout


def _help_flags() -> set[str]:
    return set(FLAG.findall(_help())) - {"--help"}


def _contract_flags() -> set[str]:
    """The first column of the flag table of docs/contract.md section 1."""
    section = CONTRACT.read_text(encoding="utf-8").split("## 1.", 1)[1].split("\n## 2.", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `--")]
    return {line.split("`")[1] for line in rows}


def test_every_help_flag_is_in_the_contract_flag_table_and_no_other() -> None:
    shown, documented = _help_flags(), _contract_flags()
    assert shown, "no flags found in --help"
    assert shown - documented == set(), "flags in --help but not in docs/contract.md section 1"
    assert documented - shown == set(), "flags in docs/contract.md section 1 but not in --help"


def test_help_shows_the_defaults() -> None:
    flat = " ".join(_help().split())
    for default in ("config.yaml", ":11435", "info", "logfmt"):
        assert f"(default: {default}" in flat, default
