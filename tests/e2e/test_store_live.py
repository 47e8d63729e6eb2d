"""The running exporter with a state file (`--storage.path`) that is locked, full or read-only.

A state problem may cost the saved state, never the process, a run or the event loop.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import time
import urllib.request
from typing import TYPE_CHECKING

import pytest

from ollama_sim import OllamaSimulator, up_to_date
from tests.harness import Exporter, run_exporter, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


QUICK = up_to_date([1000])
CONFIG = (
    "defaults: {{interval: 1s, jitter: 0}}\n"
    "servers:\n  - name: sim\n    url: {url}\n    max_concurrent_pulls: 2\n    models: [a, b]\n"
)


def _healthy_within(exporter: Exporter, seconds: float) -> bool:
    request = urllib.request.Request(exporter.url + "/-/healthy")
    try:
        with urllib.request.urlopen(request, timeout=seconds) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def test_a_locked_state_file_never_freezes_the_exporter(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    sim = OllamaSimulator({"a": [QUICK], "b": [QUICK]}, time_scale=0.05)
    with (
        sim.running() as url,
        run_exporter(CONFIG.format(url=url), tmp_path, f"--storage.path={path}") as exporter,
    ):
        exporter.wait_value("ollama_pull_last_success", bool, server="sim", model="a")
        locker = sqlite3.connect(path, isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            before = exporter.wait_value("ollama_pull_runs_total", bool, server="sim", model="a")
            # Each save waits 5 s for the lock; while that ran on the event loop, the whole
            # exporter stood still. Now every request is answered while runs go on. The bound
            # is below those 5 s, not a latency target: a starved machine answers late too.
            answered = []
            for _ in range(30):  # over 6 s: runs finish (and are saved) every second meanwhile
                answered.append(_healthy_within(exporter, 4.0))
                time.sleep(0.2)
            assert all(answered), answered
            exporter.wait_value(
                "ollama_pull_runs_total", lambda v: v >= before + 3, server="sim", model="a"
            )
            exporter.wait_value("ollama_pull_exporter_storage_failures_total", bool)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        wait_for(lambda: "saving the state works again" in exporter.logs(), 30, "recovery")
        logs = exporter.logs()
    assert "cannot save the state file; runs go on" in logs
    assert "database is locked" in logs


@contextlib.contextmanager
def _small_volume(where: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted at `where` (needs root); unmounted on exit."""
    where.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=True)


def _fill(volume: Path) -> None:
    fd = os.open(volume / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, b"\0" * 4096):
                pass
    finally:
        os.close(fd)


@pytest.mark.parametrize("problem", ["full", "read-only"])
def test_an_unusable_state_volume_costs_the_saved_state_not_the_start(
    tmp_path: Path, problem: str
) -> None:
    sim = OllamaSimulator({"a": [QUICK], "b": [QUICK]}, time_scale=0.05)
    with sim.running() as url, _small_volume(tmp_path / "volume", "size=256k") as volume:
        path = volume / "state.db"
        if problem == "full":
            _fill(volume)
        else:
            subprocess.run(["mount", "-o", "remount,ro", str(volume)], check=True)
        workdir = tmp_path / "work"
        workdir.mkdir()
        with run_exporter(CONFIG.format(url=url), workdir, f"--storage.path={path}") as exporter:
            exporter.wait_value("ollama_pull_last_success", bool, server="sim", model="a")
            failures = exporter.wait_value("ollama_pull_exporter_storage_failures_total", bool)
            assert failures >= 1
            logs = exporter.logs()
    line = next(line for line in logs.splitlines() if "cannot use the state file" in line)
    assert "running without saved state" in line
    assert "rollback" not in line
    assert line.count(str(path)) == 1, line
