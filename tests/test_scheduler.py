"""Next-run arithmetic from tables, with the clock passed in (no sleeps)."""

from __future__ import annotations

import pytest

from exporter.config import PullSettings
from exporter.scheduler import Plan, first_plan, next_plan, wall_time


def settings(
    interval: float = 60.0, jitter: float = 0.0, *, run_on_start: bool = True
) -> PullSettings:
    return PullSettings(
        interval=interval,
        jitter=jitter,
        timeout=3600.0,
        stall_timeout=600.0,
        insecure=False,
        run_on_start=run_on_start,
    )


@pytest.mark.parametrize(
    ("now", "cfg", "rand", "expected"),
    [
        (100.0, settings(), 0.0, Plan(100.0, 100.0)),
        (100.0, settings(run_on_start=False), 0.0, Plan(160.0, 160.0)),
        (100.0, settings(jitter=0.1), 0.5, Plan(100.0, 103.0)),
        (100.0, settings(jitter=0.1, run_on_start=False), 0.999, Plan(160.0, 165.994)),
        # run_on_start spreads first runs over at most FIRST_RUN_SPREAD (30 s) ...
        (100.0, settings(jitter=1.0), 0.25, Plan(100.0, 107.5)),
        # ... even for the default 6h interval with jitter 0.1 (a 36 min spread otherwise) ...
        (100.0, settings(interval=21600.0, jitter=0.1), 0.999, Plan(100.0, 129.97)),
        # ... while later runs keep the whole jitter.
        (
            100.0,
            settings(interval=21600.0, jitter=0.1, run_on_start=False),
            0.5,
            Plan(21700.0, 22780.0),
        ),
    ],
)
def test_first_plan(now: float, cfg: PullSettings, rand: float, expected: Plan) -> None:
    plan = first_plan(now, cfg, rand)
    assert plan.slot == expected.slot
    assert plan.start == pytest.approx(expected.start)


@pytest.mark.parametrize(
    ("previous", "now", "cfg", "rand", "expected"),
    [
        # Ordinary: next slot one interval on, whatever the jitter of the last start.
        (Plan(100.0, 100.0), 100.0, settings(), 0.0, Plan(160.0, 160.0)),
        (Plan(100.0, 105.0), 105.0, settings(jitter=0.1), 0.0, Plan(160.0, 160.0)),
        (Plan(100.0, 105.0), 105.0, settings(jitter=0.1), 0.5, Plan(160.0, 163.0)),
        # Woken a little late: still the next slot, no drift.
        (Plan(100.0, 100.0), 100.2, settings(), 0.0, Plan(160.0, 160.0)),
        # Woken exactly on the next slot: the slot after it (never the past).
        (Plan(100.0, 100.0), 160.0, settings(), 0.0, Plan(220.0, 220.0)),
        # The host slept through three slots: resume on the grid, do not replay.
        (Plan(100.0, 100.0), 290.0, settings(), 0.0, Plan(340.0, 340.0)),
        # Jitter of 1 interval never reaches the slot after next.
        (Plan(0.0, 0.0), 0.0, settings(jitter=1.0), 0.999, Plan(60.0, 119.94)),
    ],
)
def test_next_plan(
    previous: Plan, now: float, cfg: PullSettings, rand: float, expected: Plan
) -> None:
    plan = next_plan(previous, now, cfg, rand)
    assert plan.slot == pytest.approx(expected.slot)
    assert plan.start == pytest.approx(expected.start)
    assert plan.start > now


def test_schedule_over_many_runs_keeps_the_interval_without_drift() -> None:
    cfg = settings(interval=10.0, jitter=0.2)
    rands = iter([0.3, 0.9, 0.0, 0.5, 0.7])
    plan = first_plan(1000.0, cfg, next(rands))
    starts = [plan.start]
    for _ in range(4):
        plan = next_plan(plan, plan.start + 0.05, cfg, next(rands))  # wakes 50 ms late
        starts.append(plan.start)
    assert starts == pytest.approx([1000.6, 1011.8, 1020.0, 1031.0, 1041.4])


def test_wall_time() -> None:
    assert wall_time(150.0, now_monotonic=100.0, now_wall=1_700_000_000.0) == 1_700_000_050.0
