"""import-linter's `lint-imports` holds the layer contract of pyproject.toml on exporter/.

The process test of tests/unit/repo/test_layers.py, which checks in memory what import-linter
does not (cycles between modules, the map of docs/architecture.md, module lengths).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.harness import REPO_ROOT


def test_the_layer_contract_holds() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
