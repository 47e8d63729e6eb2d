"""The other half of tests/unit/repo/test_tiers.py's self-check: an e2e test may start a process.

The unit half sees a fast-tier test refused when it starts one (`_no_process_below_e2e`); this
one, marked e2e by its folder, starts one and the guard lets it.
"""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest


def test_an_e2e_test_may_start_one(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("e2e") is not None  # set by the folder
    assert subprocess.run([sys.executable, "-c", "pass"], check=False).returncode == 0
