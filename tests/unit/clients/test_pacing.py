"""When the reader pauses the socket (exporter/clients/pacing.py), from tables: no sockets, no clock."""

from __future__ import annotations

import pytest

from exporter.clients.pacing import (
    COALESCE_BELOW_BYTES,
    COALESCE_SECONDS,
    MIN_PAUSE_SECONDS,
    SPEED_UP_MARGIN,
    ReadPacer,
    longest_pause,
)
from exporter.ollama.progress import RunProgress
from exporter.ollama.protocol import ProgressLine

DIGEST = "sha256:" + "cd" * 32
TOTAL = 10_000_000_000
STEP = 100_000  # per 60 ms tick: 1.67 MB/s


def downloading(completed: int, now: float, run: RunProgress | None = None) -> RunProgress:
    run = run or RunProgress(0.0)
    run.apply(ProgressLine("pulling cdcdcdcdcdcd", DIGEST, TOTAL, completed), now)
    return run


def test_no_pause_before_a_rate_is_known_then_pauses_while_far_from_the_end() -> None:
    pacer = ReadPacer()
    run = downloading(STEP, 1.0)
    assert pacer.pause_after(200, run, 1.0) == 0.0  # the first reading: no rate yet
    downloading(2 * STEP, 1.06, run)
    assert pacer.pause_after(200, run, 1.06) == COALESCE_SECONDS


def test_no_pause_after_a_big_read_or_outside_the_download() -> None:
    pacer = ReadPacer()
    run = downloading(STEP, 1.0)
    pacer.pause_after(200, run, 1.0)
    downloading(2 * STEP, 1.06, run)
    assert pacer.pause_after(COALESCE_BELOW_BYTES, run, 1.06) == 0.0
    run.apply(ProgressLine("verifying sha256 digest"), 1.1)
    assert pacer.pause_after(100, run, 1.1) == 0.0


def test_no_pause_while_completed_stands_still() -> None:
    pacer = ReadPacer()
    run = downloading(STEP, 1.0)
    pacer.pause_after(200, run, 1.0)
    downloading(STEP, 1.06, run)
    assert pacer.pause_after(200, run, 1.06) == 0.0


@pytest.mark.parametrize(
    ("seconds_left", "pause"),
    [
        (60.0, COALESCE_SECONDS),
        (SPEED_UP_MARGIN * COALESCE_SECONDS, COALESCE_SECONDS),
        (0.6, 0.6 / SPEED_UP_MARGIN),  # a pause ends well before the predicted end
        (0.21, 0.21 / SPEED_UP_MARGIN),
        (MIN_PAUSE_SECONDS * SPEED_UP_MARGIN * 0.95, 0.0),  # the last ticks are read at once
        (0.05, 0.0),
    ],
)
def test_a_pause_never_reaches_past_the_predicted_end(seconds_left: float, pause: float) -> None:
    rate = STEP / 0.06
    completed = TOTAL - round(seconds_left * rate)
    pacer = ReadPacer()
    run = downloading(completed - STEP, 1.0)
    pacer.pause_after(200, run, 1.0)
    downloading(completed, 1.06, run)
    assert pacer.pause_after(200, run, 1.06) == pytest.approx(pause, rel=1e-6)


@pytest.mark.parametrize(
    ("stall_timeout", "longest"),
    [(600.0, COALESCE_SECONDS), (4 * COALESCE_SECONDS, COALESCE_SECONDS), (1.0, 0.25)],
)
def test_a_pause_stays_well_inside_the_stall_timeout(stall_timeout: float, longest: float) -> None:
    assert longest_pause(stall_timeout) == longest
    pacer = ReadPacer(longest_pause(stall_timeout))
    run = downloading(STEP, 1.0)
    pacer.pause_after(200, run, 1.0)
    downloading(2 * STEP, 1.06, run)
    assert pacer.pause_after(200, run, 1.06) == longest
