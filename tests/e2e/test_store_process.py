"""A kill -9 in the middle of saves keeps the last committed state (exporter.storage).

The process test of tests/unit/storage/test_store.py, whose helpers it shares: a child saves
runs as fast as it can and is killed mid-write, four times over the same file.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import TYPE_CHECKING

from exporter.ollama.protocol import Reason
from exporter.storage.last_runs import StoredPair
from tests.harness import REPO_ROOT
from tests.unit.storage.test_store import _last, _moved, _open

if TYPE_CHECKING:
    from pathlib import Path

# A child that saves runs as fast as it can and prints each run number once it is committed.
_WRITER = """
import sys
from exporter.ollama.protocol import Reason
from exporter.storage.database import Database
from exporter.storage.last_runs import LastRuns
from tests.unit.storage.test_store import _last, _pair

store = LastRuns(Database.open(sys.argv[1]))
n = int(sys.argv[2])
while True:
    n += 1
    reason = None if n % 3 else Reason.STALLED
    pair = _pair("s", f"m{n % 4}", _last(n, reason=reason), 1_700_000_000.0 + n - n % 3)
    assert store.save(pair)
    print(n, flush=True)
"""


def _check_consistent(stored: dict[tuple[str, str], StoredPair]) -> int:
    """Every row is exactly one whole run; returns the newest run number."""
    newest = 0
    for (server, model), entry in stored.items():
        n = round(entry.last.ended_at - 1_700_000_000.0)
        reason = None if n % 3 else Reason.STALLED
        assert (server, model) == ("s", f"m{n % 4}")
        assert entry == StoredPair(_last(n, reason=reason), 1_700_000_000.0 + n - n % 3)
        newest = max(newest, n)
    return newest


def test_kill_9_in_the_middle_of_runs_keeps_the_last_committed_state(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    newest = 0
    for round_ in range(4):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), str(newest)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        acknowledged = newest
        with child.stdout:
            for line in child.stdout:
                acknowledged = int(line)
                if acknowledged >= newest + 200 + 37 * round_:
                    break
            child.send_signal(signal.SIGKILL)
            for line in child.stdout:  # what it committed before the signal landed
                acknowledged = int(line)
        assert child.wait() == -signal.SIGKILL
        with _open(path) as store:
            stored = store.load()
        newest = _check_consistent(stored)
        # Every acknowledged run is there; at most one more committed but not yet printed.
        assert acknowledged <= newest <= acknowledged + 1
        assert len(stored) == 4
    assert not _moved(path, "corrupt")
    assert not _moved(path, "foreign")
