"""The idle connection's budget, counted in a fresh interpreter.

Counted in the test runner's process, the figure depends on what ran before: some earlier
in-process tests of the listener leave aiohttp's response path about 1 KB a connection
dearer (7,157 B alone, 8,190 B after them), so the count runs where nothing ran before it,
as in the exporter's own process. The measurement is `connection_bytes` of
tests/integration/test_memory_budgets.py, whose other budgets do not move with the order.
"""

from __future__ import annotations

import subprocess
import sys

from tests.harness import REPO_ROOT
from tests.integration.test_memory_budgets import CONNECTION_BUDGET


def test_idle_connection_stays_within_its_budget() -> None:
    """Defect: every connection kept aiohttp's empty request deque (760 B) and a dict."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from tests.integration.test_memory_budgets import connection_bytes\n"
            "print(connection_bytes())",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    per_connection = float(done.stdout.strip().splitlines()[-1])
    assert per_connection <= CONNECTION_BUDGET, f"{per_connection:.0f} bytes per connection"


DEFERRED = (
    *("jinja2", "exporter.web.charts", "ollama_sim", "bcrypt", "zoneinfo", "difflib", "sqlite3"),
    *(
        "exporter.app.once",
        "exporter.config.webconfig",
        "exporter.web.auth",
        "exporter.fleet.discovery",
    ),
)
"""Imported on first use only (the first page, `--demo`, basic auth users, a window's time
zone, a misspelt config key, `--storage.path`, `--once`, `--web.config.file`, discovery): about
6 MiB of a 51 MiB process that most never use."""


def test_start_up_leaves_the_optional_parts_unimported() -> None:
    """Defect: every start paid for the pages' Jinja2 and templates and the demo's simulator."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys\n"
            "import exporter.__main__, exporter.app.assemble, exporter.web.app\n"
            "from exporter.config.loader import parse_config\n"
            "parse_config('servers: [{name: a, url: http://127.0.0.1:9, models: [m]}]', 'c')\n"
            "print(' '.join(sorted(sys.modules)))",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded = set(done.stdout.split())
    assert "exporter.web.page" in loaded  # the imports did run
    assert sorted(loaded.intersection(DEFERRED)) == []
