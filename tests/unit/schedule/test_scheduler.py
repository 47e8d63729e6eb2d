"""The scheduler: next-run arithmetic from tables, and its loop in process with a fake clock.

The loop tests inject the clock and the run (no sleeps, no sockets): time moves only when the
test advances it, and each run lasts until the test releases it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
from typing import TYPE_CHECKING

import pytest

from exporter.config.types import Config, ModelConfig, PullSettings, ServerConfig
from exporter.schedule.plan import FIRST_RUN_SPREAD, Plan, first_plan, next_plan, wall_time
from exporter.schedule.scheduler import Scheduler
from exporter.state.pairs import ExporterState, RunResult

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine

    from exporter.state.pairs import PairState


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


# --------------------------------------------------------------------------- the loop, in process


class FakeClock:
    """A monotonic clock that moves only when the test says so; sleepers wake in order."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = 0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return WALL_OFFSET + self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._seq += 1
        heapq.heappush(self._sleepers, (self.now + seconds, self._seq, future))
        await future

    async def advance(self, seconds: float) -> None:
        """Move time on, waking every sleeper due on the way (in deadline order)."""
        target = self.now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= target:
            deadline, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, deadline)
            if not future.done():
                future.set_result(None)
            await settle()
        self.now = target
        await settle()


WALL_OFFSET = 1_700_000_000.0


def in_loop(test: Callable[[], Coroutine[object, object, None]]) -> Callable[[], None]:
    """Run an async test in a fresh event loop (no pytest plugin needed)."""

    @functools.wraps(test)
    def run() -> None:
        asyncio.run(test())

    return run


async def settle() -> None:
    """Let every task that can run, run (the fake runs and the loops never sleep for real)."""
    for _ in range(20):
        await asyncio.sleep(0)


class Runs:
    """The run function of the scheduler under test: each run waits until released."""

    def __init__(self) -> None:
        self.started: list[tuple[str, float]] = []
        self.active = 0
        self.max_active = 0
        self._gates: list[asyncio.Event] = []
        self.clock: FakeClock | None = None

    async def __call__(
        self, server: ServerConfig, model: ModelConfig, pair: PairState
    ) -> RunResult:
        del server, pair
        gate = asyncio.Event()
        self._gates.append(gate)
        self.started.append((model.name, self.clock.now if self.clock else 0.0))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await gate.wait()
        finally:
            self.active -= 1
        return RunResult(None)

    async def release(self, count: int = 1) -> None:
        """Let the `count` oldest running runs finish."""
        waiting = [gate for gate in self._gates if not gate.is_set()]
        for gate in waiting[:count]:
            gate.set()
        await settle()


def one_server(models: int, limit: int, **overrides: object) -> Config:
    values: dict[str, object] = {"interval": 3600.0, "jitter": 0.0} | overrides
    cfg = settings(**values)  # type: ignore[arg-type]
    names = tuple(ModelConfig(f"m{i}", cfg) for i in range(models))
    return Config("test", (ServerConfig("s", "http://127.0.0.1:1", (), limit, names),))


@contextlib.asynccontextmanager
async def scheduling(
    config: Config,
) -> AsyncIterator[tuple[Scheduler, Runs, FakeClock, ExporterState]]:
    state = ExporterState()
    state.sync(config)
    clock, runs = FakeClock(), Runs()
    runs.clock = clock
    scheduler = Scheduler(None, state, rand=lambda: 0.5, clock=clock, run=runs)
    scheduler.start(config)
    try:
        yield scheduler, runs, clock, state
    finally:
        await scheduler.stop()


@in_loop
async def test_lowering_the_limit_holds_for_runs_already_queued() -> None:
    async with scheduling(one_server(4, limit=2)) as (scheduler, runs, clock, _):
        await clock.advance(0)
        assert runs.active == 2  # two run, two wait for the limit
        scheduler.apply(one_server(4, limit=1))
        await runs.release(1)
        assert runs.active == 1  # the one left is over the new limit already: nothing starts
        await runs.release(1)
        assert runs.active == 1
        for _ in range(3):
            await runs.release(1)
            assert runs.active <= 1
        assert len(runs.started) == 4


@in_loop
async def test_raising_the_limit_starts_queued_runs_at_once() -> None:
    async with scheduling(one_server(4, limit=1)) as (scheduler, runs, clock, _):
        await clock.advance(0)
        assert runs.active == 1
        scheduler.apply(one_server(4, limit=3))
        await settle()
        assert runs.active == 3
        assert runs.max_active == 3


@in_loop
async def test_limit_changes_back_and_forth_never_exceed_the_limit_in_force() -> None:
    # The case: each change made a new semaphore, and 2 -> 1 -> 2 let 6 run at once.
    async with scheduling(one_server(6, limit=2)) as (scheduler, runs, clock, _):
        await clock.advance(0)
        for limit in (1, 2, 1, 2):
            scheduler.apply(one_server(6, limit=limit))
            await settle()
            assert runs.active <= 2
        await runs.release(6)
        assert runs.max_active == 2


@in_loop
async def test_first_runs_come_within_the_spread_then_keep_the_grid() -> None:
    config = one_server(1, limit=1, interval=21600.0, jitter=0.1)
    async with scheduling(config) as (_, runs, clock, state):
        pair = state.pairs["s", "m0"]
        start = clock.now
        await settle()
        assert pair.next_run_at == WALL_OFFSET + start + FIRST_RUN_SPREAD * 0.5
        await clock.advance(FIRST_RUN_SPREAD)
        assert runs.started == [("m0", start + FIRST_RUN_SPREAD * 0.5)]
        await runs.release()
        # The next start: one interval after the slot, plus its jitter (0.5 * 0.1 * 6h).
        assert pair.next_run_at == WALL_OFFSET + start + 21600.0 + 1080.0
        await clock.advance(21600.0 + 1080.0)
        assert len(runs.started) == 2


@in_loop
async def test_a_start_that_finds_the_run_going_is_skipped_and_counted() -> None:
    async with scheduling(one_server(1, limit=1, interval=60.0)) as (_, runs, clock, state):
        await clock.advance(0)
        await clock.advance(60.0)
        await clock.advance(60.0)
        assert len(runs.started) == 1
        assert state.pairs["s", "m0"].skipped_total == 2
        await runs.release()
        await clock.advance(60.0)
        assert len(runs.started) == 2


@in_loop
async def test_a_reload_that_changes_the_interval_counts_from_the_last_start() -> None:
    async with scheduling(one_server(1, limit=1, interval=600.0)) as (scheduler, runs, clock, _):
        await clock.advance(0)
        await runs.release()
        first = clock.now
        await clock.advance(100.0)
        scheduler.apply(one_server(1, limit=1, interval=300.0))
        await clock.advance(199.0)
        assert len(runs.started) == 1
        await clock.advance(1.0)
        assert runs.started[1] == ("m0", first + 300.0)


@in_loop
async def test_many_pairs_share_one_timer_and_finished_runs_leave_no_task() -> None:
    async with scheduling(one_server(200, limit=200, interval=60.0)) as (_, runs, clock, _):
        await settle()
        assert len(asyncio.all_tasks()) == 2  # this test and the one timer, not a task a pair
        await clock.advance(0)
        assert len(runs.started) == 200
        await runs.release(200)
        assert len(asyncio.all_tasks()) == 2  # the finished runs are gone, not kept done
        await clock.advance(60.0)
        assert len(runs.started) == 400
