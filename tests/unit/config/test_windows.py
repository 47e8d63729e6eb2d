"""Pull windows (tables over an injected time, no sleeps) and the fleet-wide pull limit."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import TYPE_CHECKING

import pytest

from exporter.config.types import Config, ModelConfig, PullSettings, ServerConfig
from exporter.config.windows import Window, is_open, next_start, parse_window, windowed_start
from exporter.schedule.scheduler import Scheduler
from exporter.state.pairs import ExporterState, RunResult

if TYPE_CHECKING:
    from collections.abc import Callable

UTC = "UTC"
BERLIN = "Europe/Berlin"


def at(text: str, zone: str = UTC) -> float:
    """Unix time of a wall-clock time in `zone`, e.g. at("2026-12-01 22:30")."""
    from zoneinfo import ZoneInfo  # noqa: PLC0415 - only the helper needs it

    return dt.datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("22:00-04:00", (1320, 240)),
        ("00:00-24:00", (0, 1440)),
        ("09:30-17:45", (570, 1065)),
        ("23:59-00:00", (1439, 0)),
    ],
)
def test_parse_window(text: str, expected: tuple[int, int]) -> None:
    assert parse_window(text) == expected


@pytest.mark.parametrize("text", ["22-04", "24:00-01:00", "7:00-8:00", "10:00-10:00", " 1:00-2:00"])
def test_parse_window_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid window"):
        parse_window(text)


NIGHT = Window(22 * 60, 4 * 60, UTC)  # crosses midnight
DAY = Window(9 * 60, 17 * 60, UTC)


@pytest.mark.parametrize(
    ("window", "now", "opens"),
    [
        (NIGHT, "2026-12-01 23:00", "2026-12-01 23:00"),  # inside, before midnight
        (NIGHT, "2026-12-02 03:59", "2026-12-02 03:59"),  # inside, after midnight
        (NIGHT, "2026-12-02 04:00", "2026-12-02 22:00"),  # the end is exclusive
        (NIGHT, "2026-12-01 12:00", "2026-12-01 22:00"),
        (DAY, "2026-12-01 08:59", "2026-12-01 09:00"),
        (DAY, "2026-12-01 17:00", "2026-12-02 09:00"),  # after today's window: tomorrow
        (DAY, "2026-12-01 09:00", "2026-12-01 09:00"),
    ],
)
def test_next_start(window: Window, now: str, opens: str) -> None:
    assert next_start(window, at(now)) == at(opens)
    assert is_open(window, at(opens))


def test_a_window_in_an_iana_zone_follows_daylight_saving() -> None:
    window = Window(2 * 60 + 30, 4 * 60, BERLIN)
    # 2026-03-29 02:30 does not exist in Berlin (clocks jump 02:00 -> 03:00): it opens at once.
    opens = next_start(window, at("2026-03-29 01:00", BERLIN))
    assert opens == at("2026-03-29 03:30", BERLIN)
    assert is_open(window, opens)
    # In summer the same window opens at 00:30 UTC, in winter at 01:30 UTC.
    assert next_start(window, at("2026-07-01 00:00")) == at("2026-07-01 00:30")
    assert next_start(window, at("2026-12-01 00:00")) == at("2026-12-01 01:30")


def test_runs_due_while_closed_keep_their_jitter_inside_the_window() -> None:
    start = at("2026-12-01 12:00")
    assert windowed_start(NIGHT, start, 90.0) == at("2026-12-01 22:01:30")
    assert windowed_start(NIGHT, start, 7 * 3600.0) == at("2026-12-01 22:00")  # past its end
    assert windowed_start(NIGHT, at("2026-12-01 23:00"), 90.0) == at("2026-12-01 23:00")
    assert windowed_start(None, start, 90.0) == start


class VirtualClock:
    """Time that jumps to each sleep's end: one pair loop runs a night in microseconds."""

    def __init__(self, wall: float) -> None:
        self.offset = wall
        self.now = 0.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return self.offset + self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        for _ in range(5):  # let the runs just started read the clock before it jumps
            await asyncio.sleep(0)
        self.now += seconds


def _settings(**overrides: object) -> PullSettings:
    values: dict[str, object] = {
        "interval": 3600.0,
        "jitter": 0.0,
        "timeout": 600.0,
        "stall_timeout": 60.0,
        "insecure": False,
        "run_on_start": True,
    }
    values.update(overrides)
    return PullSettings(**values)  # type: ignore[arg-type]


def _config(servers: list[ServerConfig], limit: int | None = None) -> Config:
    return Config("c.yaml", tuple(servers), max_concurrent_pulls=limit)


def _night_starts(wall: str, runs: int) -> tuple[list[float], list[float | None]]:
    """Hourly runs of one pair in the NIGHT window, on a virtual clock from `wall`.

    Returns the wall-clock start of the first `runs` runs, and the pair's `next_run_at`
    as the loop saw it after each step.
    """
    clock = VirtualClock(at(wall))
    model = ModelConfig("m", _settings(window=NIGHT))
    config = _config([ServerConfig("s", "http://x", (), 1, (model,))])
    state = ExporterState()
    state.sync(config)
    started: list[float] = []
    announced: list[float | None] = []

    async def run(server: ServerConfig, model: ModelConfig, pair: object) -> RunResult:
        del server, model, pair
        started.append(clock.time())
        return RunResult(None)

    async def main() -> None:
        scheduler = Scheduler(None, state, clock=clock, run=run)
        scheduler.start(config)
        for _ in range(50 * runs):
            await asyncio.sleep(0)
            announced.append(state.pairs["s", "m"].next_run_at)
            if len(started) >= runs:
                break
        await scheduler.stop()

    asyncio.run(main())
    return started, announced


def test_a_windowed_run_waits_and_the_next_run_gauge_tells_when() -> None:
    started, announced = _night_starts("2026-12-01 12:00", 3)
    assert announced[0] == at("2026-12-01 22:00")  # due at once, but the window is closed
    # Hourly inside the window (22, 23, 0, ... 3), then the next night.
    assert started == [at("2026-12-01 22:00"), at("2026-12-01 23:00"), at("2026-12-02 00:00")]


def test_a_night_of_hourly_runs_keeps_the_grid_and_stops_at_the_window_end() -> None:
    started, _ = _night_starts("2026-12-01 21:30", 8)
    # The first start waits for 22:00; later ones stay on the schedule's grid (:30) until
    # the window closes at 04:00, and the next night starts when it opens again.
    night = ["2026-12-01 22:00", "2026-12-01 22:30", "2026-12-01 23:30"]
    night += [f"2026-12-02 0{h}:30" for h in range(4)]
    assert started == [at(text) for text in night] + [at("2026-12-02 22:00")]


class StillClock:
    """Time that never moves: what is due at once starts, and nothing after it ever does."""

    def monotonic(self) -> float:
        return 0.0

    def time(self) -> float:
        return at("2026-12-01 12:00")

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.Event().wait()  # until the scheduler stops (cancels) the loop
        await asyncio.sleep(0)


async def until(condition: Callable[[], bool], what: str) -> None:
    """Let the loop's tasks run until `condition` holds (no time passes; they never sleep)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    pytest.fail(f"never came: {what}")


def test_the_fleet_wide_limit_bounds_pulls_across_servers() -> None:
    servers = [
        ServerConfig(
            f"s{i}",
            "http://x",
            (),
            2,
            (ModelConfig("a", _settings()), ModelConfig("b", _settings())),
        )
        for i in range(3)
    ]
    state = ExporterState()
    running: set[str] = set()
    most = 0
    finished = 0

    async def main(limit: int | None) -> int:
        nonlocal most, finished
        most = finished = 0
        gate = asyncio.Event()
        config = _config(servers, limit)
        state.sync(config)

        async def run(server: ServerConfig, model: ModelConfig, pair: object) -> RunResult:
            nonlocal most, finished
            del pair
            key = f"{server.name}/{model.name}"
            running.add(key)
            most = max(most, len(running))
            await gate.wait()
            running.discard(key)
            finished += 1
            return RunResult(None)

        scheduler = Scheduler(None, state, clock=StillClock(), run=run)
        scheduler.start(config)
        fleet = scheduler.fleet_limit
        # Every run due at once holds the fleet-wide slot or waits for one.
        await until(lambda: fleet.held + fleet.waiting == 6, "six runs at the fleet limit")
        gate.set()
        await until(lambda: finished == 6, "six runs finished")
        await scheduler.stop()
        return most

    assert asyncio.run(main(None)) == 6  # each server's own limit of 2, three servers
    assert asyncio.run(main(3)) == 3
    assert finished == 6  # the limit queues runs, it never drops them
