"""Reload (SIGHUP, POST /-/reload) and shutdown (SIGTERM, SIGINT) of the real process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from exporter.ollama.protocol import Reason
from ollama_sim import OllamaSimulator, Scenario, Stall, fresh_pull, stalled, up_to_date
from tests.harness import Exporter, exporter_command, free_port, run_exporter, wait_for

if TYPE_CHECKING:
    from ollama_sim import RequestRecord

TIME_SCALE = 0.05
QUICK = up_to_date([1000, 200])


def post(exporter: Exporter, path: str) -> tuple[int, str]:
    request = urllib.request.Request(exporter.url + path, method="POST", data=b"")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def config(url: str, models: str, *, interval: str = "1h") -> str:
    return (
        f"defaults: {{interval: {interval}, jitter: 0, stall_timeout: 1m}}\n"
        f"servers:\n  - name: sim\n    url: {url}\n    max_concurrent_pulls: 5\n"
        f"    models:\n{models}"
    )


def pair_series(exporter: Exporter, model: str) -> list[str]:
    exporter.scrape()
    return sorted(name for (name, labels) in exporter._samples if ("model", model) in labels)


def test_reload_is_forbidden_without_the_lifecycle_flag(tmp_path: Path) -> None:
    sim = OllamaSimulator({"a": [QUICK]}, time_scale=TIME_SCALE)
    with sim.running() as url, run_exporter(config(url, "      - a\n"), tmp_path) as exporter:
        status, body = post(exporter, "/-/reload")
        assert status == 403
        assert "not enabled" in body


def test_reload_adds_removes_and_changes_pairs(tmp_path: Path) -> None:
    sim = OllamaSimulator(
        {"keep": [QUICK], "gone": [stalled(10_000_000)], "new": [QUICK]}, time_scale=TIME_SCALE
    )
    with sim.running() as url:
        first = config(url, "      - keep\n      - gone\n")
        with run_exporter(first, tmp_path, "--web.enable-lifecycle") as exporter:
            exporter.wait_value(
                "ollama_pull_last_success", lambda v: v == 1, model="keep", server="sim"
            )
            # `gone` is mid-pull (stalled stream) when the reload removes it.
            exporter.wait_value(
                "ollama_pull_in_progress", lambda v: v == 1, model="gone", server="sim"
            )
            before = exporter.value(
                "ollama_pull_exporter_config_last_reload_success_timestamp_seconds"
            )
            exporter.config_path.write_text(
                config(
                    url,
                    "      - name: keep\n        interval: 2h\n      - name: new\n        run_on_start: false\n",
                )
            )
            assert post(exporter, "/-/reload") == (200, "OK\n")
            exporter.scrape()
            assert pair_series(exporter, "gone") == []
            record = wait_for(
                lambda: next(
                    (r for r in sim.requests if r.model == "gone" and r.outcome != "open"), None
                ),
                5,
                "the removed pair's stream to close",
            )
            assert record.client_disconnected
            # The added pair exists at once with every series at zero (it has not run).
            assert exporter.value("ollama_pull_runs_total", server="sim", model="new") == 0
            for reason in Reason:
                assert (
                    exporter.value(
                        "ollama_pull_failures_total", server="sim", model="new", reason=reason.value
                    )
                    == 0
                )
            assert exporter.value("ollama_pull_last_success", server="sim", model="new") is None
            assert exporter.value("ollama_pull_interval_seconds", server="sim", model="new") == 3600
            # The kept pair keeps its counters and takes the new interval for its next run.
            assert exporter.value("ollama_pull_runs_total", server="sim", model="keep") == 1
            assert (
                exporter.value("ollama_pull_interval_seconds", server="sim", model="keep") == 7200
            )
            last = exporter.value(
                "ollama_pull_last_run_timestamp_seconds", server="sim", model="keep"
            )
            next_run = exporter.value(
                "ollama_pull_next_run_timestamp_seconds", server="sim", model="keep"
            )
            assert last is not None
            assert next_run is not None
            assert 7200 - 30 < next_run - last <= 7200
            assert exporter.value("ollama_pull_exporter_config_last_reload_successful") == 1
            after = exporter.value(
                "ollama_pull_exporter_config_last_reload_success_timestamp_seconds"
            )
            assert before is not None
            assert after is not None
            assert after > before
            assert sim.run_count("new") == 0


def test_bad_reload_keeps_the_old_config(tmp_path: Path) -> None:
    sim = OllamaSimulator({"a": [QUICK]}, time_scale=TIME_SCALE)
    with sim.running() as url:
        good = config(url, "      - a\n")
        with run_exporter(good, tmp_path, "--web.enable-lifecycle") as exporter:
            exporter.wait_value(
                "ollama_pull_last_success", lambda v: v == 1, model="a", server="sim"
            )
            exporter.config_path.write_text(
                good.replace("interval: 1h", "interval: 5 minutes") + "      - b\n"
            )
            status, body = post(exporter, "/-/reload")
            assert status == 500
            assert 'defaults.interval: invalid duration "5 minutes"' in body
            exporter.scrape()
            assert exporter.value("ollama_pull_exporter_config_last_reload_successful") == 0
            assert exporter.value("ollama_pull_runs_total", server="sim", model="a") == 1
            assert pair_series(exporter, "b") == []
            assert "config reload failed" in exporter.logs()
            # SIGHUP reloads too; a fixed file brings the gauge back to 1.
            exporter.config_path.write_text(good + "      - b\n")
            exporter.process.send_signal(signal.SIGHUP)
            exporter.wait_value(
                "ollama_pull_exporter_config_last_reload_successful", lambda v: v == 1
            )
            exporter.wait_value("ollama_pull_runs_total", lambda v: v >= 0, server="sim", model="b")


def test_concurrent_reloads_all_succeed_and_agree(tmp_path: Path) -> None:
    sim = OllamaSimulator({"a": [QUICK]}, time_scale=TIME_SCALE)
    with sim.running() as url:
        models = "".join(f"      - name: m{i}\n        run_on_start: false\n" for i in range(50))
        with run_exporter(
            config(url, "      - a\n"), tmp_path, "--web.enable-lifecycle"
        ) as exporter:
            exporter.config_path.write_text(config(url, models))
            results: list[tuple[int, str]] = []
            threads = [
                threading.Thread(target=lambda: results.append(post(exporter, "/-/reload")))
                for _ in range(8)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(20)
            assert results == [(200, "OK\n")] * 8
            exporter.scrape()
            runs = [name for name in exporter._samples if name[0] == "ollama_pull_runs_total"]
            assert len(runs) == 50


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_shutdown_during_a_live_pull_is_clean_and_fast(tmp_path: Path, sig: signal.Signals) -> None:
    sim = OllamaSimulator(
        {"live": [fresh_pull([500_000_000], rate=1_000_000)], "hang": [Scenario(Stall())]},
        time_scale=TIME_SCALE,
    )
    with sim.running() as url:
        with run_exporter(config(url, "      - live\n      - hang\n"), tmp_path) as exporter:
            exporter.wait_value(
                "ollama_pull_downloaded_bytes_total", lambda v: v > 0, server="sim", model="live"
            )
            exporter.wait_value(
                "ollama_pull_in_progress", lambda v: v == 1, server="sim", model="hang"
            )
            started = time.monotonic()
            code = exporter.stop(sig, timeout=10)
            elapsed = time.monotonic() - started
        assert code == 0, exporter.logs()
        assert elapsed < 5, f"took {elapsed:.2f}s"
        records = wait_for(
            lambda: (
                [r for r in sim.requests if r.outcome != "open"]
                if all(r.outcome != "open" for r in sim.requests)
                else None
            ),
            5,
            "every stream to be closed",
        )
        assert {r.model for r in records} == {"live", "hang"}
        assert all(r.client_disconnected for r in records)
        assert "Traceback" not in exporter.logs()


# --------------------------------------------------------------------------- issue 8


def open_at(records: list[RequestRecord], moment: float) -> int:
    """How many pulls the simulator had open at `moment` (monotonic)."""
    return sum(1 for r in records if r.started <= moment and (r.ended is None or r.ended > moment))


def test_a_lower_max_concurrent_pulls_holds_for_runs_already_queued(tmp_path: Path) -> None:
    # Six pulls of ~1.5 s, two at a time; then the limit drops to 1 while four wait.
    slow = fresh_pull([30_000_000], rate=1_000_000)  # 30 s nominal, 1.5 s at TIME_SCALE
    models = [f"m{i}" for i in range(6)]
    sim = OllamaSimulator({m: [slow] for m in models}, time_scale=TIME_SCALE)
    entries = "".join(f"      - {m}\n" for m in models)
    with sim.running() as url:
        two = config(url, entries).replace("max_concurrent_pulls: 5", "max_concurrent_pulls: 2")
        with run_exporter(two, tmp_path, "--web.enable-lifecycle") as exporter:
            wait_for(lambda: open_at(sim.requests, time.monotonic()) == 2, 10, "two open pulls")
            exporter.config_path.write_text(two.replace("pulls: 2", "pulls: 1"))
            assert post(exporter, "/-/reload") == (200, "OK\n")
            reloaded = time.monotonic()
            wait_for(lambda: len(sim.requests) == 6 and sim.requests[-1].ended, 40, "all runs")
    # A starved machine may let a run end, and the next start under the old limit, before
    # the reload is in force: so the runs started after it are at least 2 (not exactly 4).
    later = [r for r in sim.requests if r.started > reloaded]
    assert len(later) >= 2
    assert max(open_at(sim.requests, r.started) for r in sim.requests) <= 2
    # Runs going at the reload may finish; nothing new starts until under the new limit.
    assert [open_at(sim.requests, r.started) for r in later] == [1] * len(later)


def blocked_on_fifo(pid: int) -> bool:
    """True while `pid` or a child of it waits in open() for the other end of a FIFO (Linux)."""
    for process in [pid, *children(pid)]:
        for wchan in Path(f"/proc/{process}/task").glob("*/wchan"):
            with contextlib.suppress(OSError):
                if wchan.read_text() == "wait_for_partner":
                    return True
    return False


def children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def feed_fifo(path: Path, text: str) -> threading.Thread:
    """Write `text` into the FIFO at `path` once a reader opens it (in a thread)."""
    thread = threading.Thread(target=path.write_text, args=(text,), daemon=True)
    thread.start()
    return thread


def swap_in_fifo(config_path: Path) -> Path:
    fifo = config_path.with_name("config.fifo")
    os.mkfifo(fifo)
    fifo.replace(config_path)
    return config_path


def test_sigterm_while_a_reload_blocks_on_the_config_exits_in_time(tmp_path: Path) -> None:
    sim = OllamaSimulator({"a": [QUICK]}, time_scale=TIME_SCALE)
    with sim.running() as url, run_exporter(config(url, "      - a\n"), tmp_path) as exporter:
        swap_in_fifo(exporter.config_path)  # a FIFO nobody writes: reading it never ends
        exporter.process.send_signal(signal.SIGHUP)
        wait_for(lambda: blocked_on_fifo(exporter.process.pid), 10, "the reload to block")
        started = time.monotonic()
        code = exporter.stop(signal.SIGTERM, timeout=10)
        elapsed = time.monotonic() - started
    assert code == 0, exporter.logs()
    assert elapsed < 5, f"took {elapsed:.2f}s"  # the contract's bound on shutdown


def test_a_reload_blocked_on_the_config_does_not_block_later_ones(tmp_path: Path) -> None:
    sim = OllamaSimulator({"a": [QUICK], "b": [QUICK]}, time_scale=TIME_SCALE)
    with sim.running() as url:
        good = config(url, "      - a\n")
        with run_exporter(good, tmp_path, "--web.enable-lifecycle") as exporter:
            swap_in_fifo(exporter.config_path)
            exporter.process.send_signal(signal.SIGHUP)
            wait_for(lambda: blocked_on_fifo(exporter.process.pid), 10, "the reload to block")
            fixed = tmp_path / "fixed.yaml"
            fixed.write_text(config(url, "      - a\n      - b\n"))
            fixed.replace(exporter.config_path)
            request = urllib.request.Request(exporter.url + "/-/reload", method="POST", data=b"")
            with urllib.request.urlopen(request, timeout=60) as response:
                assert response.status == 200
            exporter.scrape()
            assert exporter.value("ollama_pull_runs_total", server="sim", model="b") is not None
            assert exporter.value("ollama_pull_exporter_config_last_reload_successful") == 1
            assert "reading the config took longer than" in exporter.logs()


def start_on_fifo(tmp_path: Path) -> tuple[subprocess.Popen[bytes], Path, Path, int]:
    """Start the exporter on a config FIFO: it waits in start-up until the test writes it."""
    config_path = tmp_path / "config.yaml"
    os.mkfifo(config_path)
    log_path = tmp_path / "exporter.log"
    port = free_port()
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            exporter_command(
                f"--config.file={config_path}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=debug",
            ),
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    return process, config_path, log_path, port


def test_sighup_during_start_up_is_a_reload_not_death(tmp_path: Path) -> None:
    sim = OllamaSimulator({"a": [QUICK]}, time_scale=TIME_SCALE)
    with sim.running() as url:
        process, config_path, log_path, port = start_on_fifo(tmp_path)
        try:
            wait_for(lambda: blocked_on_fifo(process.pid), 20, "start-up to read the config")
            process.send_signal(signal.SIGHUP)  # Python's default here: the process dies
            text = config(url, "      - a\n")
            feed_fifo(config_path, text).join(10)
            # The SIGHUP was remembered: once running, the exporter reads the file again.
            wait_for(
                lambda: blocked_on_fifo(process.pid) or process.poll() is not None, 20, "reload"
            )
            assert process.poll() is None, log_path.read_text()
            feed_fifo(config_path, text).join(10)
            wait_for(lambda: "config reloaded" in log_path.read_text(), 20, "the reload")
            exporter = Exporter(process, f"http://127.0.0.1:{port}", log_path, config_path)
            assert exporter.get("/-/ready")[0] == 200
        finally:
            process.send_signal(signal.SIGTERM)
            code = process.wait(10)
    assert code == 0, log_path.read_text()


def test_sigterm_during_start_up_exits_cleanly(tmp_path: Path) -> None:
    process, _, log_path, _ = start_on_fifo(tmp_path)
    try:
        wait_for(lambda: blocked_on_fifo(process.pid), 20, "start-up to read the config")
        process.send_signal(signal.SIGTERM)
        code = process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    logs = log_path.read_text()
    assert code == 0, logs
    assert logs.strip() == "stopped by SIGTERM during start-up"


def test_a_burst_of_sighups_is_one_or_two_reloads(tmp_path: Path) -> None:
    sim = OllamaSimulator({"a": [QUICK]}, time_scale=TIME_SCALE)
    with sim.running() as url:
        good = config(url, "      - a\n")
        with run_exporter(good, tmp_path) as exporter:
            # Hold the first reload on a FIFO so that the whole burst arrives while it runs.
            fifo = swap_in_fifo(exporter.config_path)
            held = tmp_path / "held.fifo"
            held.hardlink_to(fifo)
            exporter.process.send_signal(signal.SIGHUP)
            wait_for(lambda: blocked_on_fifo(exporter.process.pid), 10, "the reload to block")
            for _ in range(20):  # 5 ms apart: each one is delivered, none merged by the kernel
                exporter.process.send_signal(signal.SIGHUP)
                time.sleep(0.005)
            regular = tmp_path / "regular.yaml"
            regular.write_text(good)
            regular.replace(exporter.config_path)
            feed_fifo(held, good).join(10)  # the first reload ends
            wait_for(lambda: exporter.logs().count("config reloaded") >= 2, 20, "two reloads")
            time.sleep(1)  # reloads queued one per signal (20 of them) would show by now
            assert exporter.logs().count("config reloaded") == 2
            assert exporter.get("/-/ready")[0] == 200
