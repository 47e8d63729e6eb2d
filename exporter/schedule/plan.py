"""When a pair's runs start: pure math on the clock's numbers, tested from tables.

Starts follow fixed-rate slots (`first slot + k * interval`), so a slow run never drifts the
schedule; each start adds its own random jitter (`rand`, uniform in [0, 1), is passed in).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from exporter.config.types import PullSettings

FIRST_RUN_SPREAD: Final = 30.0
"""Seconds over which `run_on_start` spreads the first runs (at most; less when
`jitter * interval` is smaller): a new user sees a pull within a minute, and a restart
of a big fleet still does not start every pull in the same instant."""


@dataclass(frozen=True, slots=True)
class Plan:
    """One scheduled start: the slot it belongs to and when it really starts."""

    slot: float
    start: float


def first_plan(now: float, settings: PullSettings, rand: float) -> Plan:
    """The first start after `now`: soon with `run_on_start`, else one interval later.

    `rand` is uniform in [0, 1); jitter adds up to `jitter * interval` to the start, and
    with `run_on_start` at most FIRST_RUN_SPREAD seconds.
    """
    spread = settings.jitter * settings.interval
    if settings.run_on_start:
        return Plan(now, now + min(spread, FIRST_RUN_SPREAD) * rand)
    slot = now + settings.interval
    return Plan(slot, slot + spread * rand)


def next_plan(previous: Plan, now: float, settings: PullSettings, rand: float) -> Plan:
    """The first slot after `now` on the grid of `previous.slot`, plus fresh jitter.

    Slots that passed while the loop was not looking (a suspended host, a long
    event-loop stall) are not replayed: the schedule resumes on the grid.
    """
    interval = settings.interval
    steps = max(1, math.floor((now - previous.slot) / interval) + 1)
    slot = previous.slot + steps * interval
    return Plan(slot, slot + settings.jitter * interval * rand)


def wall_time(monotonic_at: float, *, now_monotonic: float, now_wall: float) -> float:
    """Convert a monotonic deadline to Unix time for `ollama_pull_next_run_timestamp_seconds`."""
    return now_wall + (monotonic_at - now_monotonic)
