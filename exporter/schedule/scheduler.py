"""When pulls run: the loop that starts runs, on the plan of `exporter.schedule.plan`.

Starts follow fixed-rate slots (`first slot + k * interval`) so a slow run never
drifts the schedule; each start adds its own random jitter. A pair never runs
twice at once (a start that finds it busy is skipped and counted) and a server
never sees more than `max_concurrent_pulls` of our pulls at once: one `Limiter`
per server for the life of the process, resized in place by a reload.

The clock and the run are injected, so tests drive the loop with a fake clock.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import heapq
import logging
import random
from typing import TYPE_CHECKING, Any

from exporter.clients.pull import run_pull
from exporter.config.types import Mode
from exporter.config.windows import windowed_start
from exporter.core.clock import SYSTEM_CLOCK
from exporter.core.limiter import Limiter
from exporter.schedule.plan import Plan, first_plan, next_plan, wall_time
from exporter.state.history import Trigger

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    import aiohttp

    from exporter.config.types import Config, ModelConfig, ServerConfig
    from exporter.core.clock import Clock
    from exporter.state.history import ActiveRun, History
    from exporter.state.pairs import ExporterState, PairState, RunResult

    Runner = Callable[[ServerConfig, ModelConfig, PairState], Awaitable[RunResult]]
    """One run of a pair: `run_pull` in the exporter, anything awaitable in tests."""

log = logging.getLogger("exporter.scheduler")


class PairBusyError(Exception):
    """`pull_now` found a run of the pair going (or queued for its server's limit)."""


class NoHistoryError(Exception):
    """`pull_now` without a run history: the run would have no id to answer with."""


class _Pair:
    """One scheduled pair: its config, its next start and its last (one per pair, no task)."""

    __slots__ = ("fired", "level", "model", "pair", "plan", "seq", "server", "trigger")

    def __init__(self, server: ServerConfig, model: ModelConfig, pair: PairState) -> None:
        self.server = server
        self.model = model
        self.pair = pair
        self.plan: Plan | None = None
        """The next start."""
        self.fired: Plan | None = None
        """The last start (run or skip): reloads schedule from it."""
        self.trigger = Trigger.SCHEDULE
        self.level = logging.INFO
        """The first plan of a pair (and of a reload) is logged at info, later ones at debug."""
        self.seq = 0
        """The heap entry in force (0: none); older entries of this pair are stale."""


class Scheduler:
    """Owns one timer for all pairs, the run tasks it starts and one limiter per server.

    The pairs' next starts sit in one heap, and one task sleeps until the earliest: a pair
    costs an entry and a small record, not a task of its own (at 10,000 pairs a task each
    was 23 MB).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None,
        state: ExporterState,
        rand: Callable[[], float] = random.random,
        on_finished: Callable[[PairState], object] | None = None,
        *,
        clock: Clock | None = None,
        run: Runner | None = None,
        check: Callable[[ServerConfig, ModelConfig, PairState], Coroutine[Any, Any, object]]
        | None = None,
        history: History | None = None,
    ) -> None:
        """`run` does one run of a pair (default: `run_pull` over `session`)."""
        self._state = state
        self._rand = rand
        self._on_finished = on_finished
        """Called with the pair after each finished run (e.g. to persist it)."""
        self._clock: Clock = clock or SYSTEM_CLOCK
        self._history = history
        """Gives every run an id, a transcript and a record (`exporter.state.history`)."""
        self._active: dict[tuple[str, str], ActiveRun] = {}
        """The history entry of each pair's run in progress, for `run_pull`."""
        if run is None:
            if session is None:
                raise ValueError("a Scheduler needs a session or a run function")
            run = self._pull_with(session)
        self._run = run
        self.limits: dict[str, Limiter] = {}
        """Each server's `max_concurrent_pulls`, resized in place on reload."""
        self.fleet_limit = Limiter(None)
        """Pulls at once across all servers, taken after the server's slot (unlimited here)."""
        self._pairs: dict[tuple[str, str], _Pair] = {}
        self._runs: dict[tuple[str, str], asyncio.Task[object]] = {}
        """Runs going (or queued for a limit); a run leaves when it ends."""
        self._heap: list[tuple[float, int, _Pair]] = []
        """(start, seq, pair): each pair's next start; entries whose seq is not the pair's
        are stale (replaced by a reload, or the pair removed) and dropped when met."""
        self._seq = 0
        self._timer: asyncio.Task[None] | None = None
        self._wakes_at: float | None = None
        """The start the timer sleeps until (None: not sleeping on one)."""
        self._check = check
        """Runs a `mode: check` pair's registry check in place of its pull."""

    def _pull_with(self, session: aiohttp.ClientSession) -> Runner:
        async def pull(server: ServerConfig, model: ModelConfig, pair: PairState) -> RunResult:
            active = self._active.get((server.name, model.name))
            return await run_pull(session, server, model, self._state, pair, active=active)

        return pull

    def start(self, config: Config) -> None:
        """Schedule every pair of `config`."""
        self.apply(config)

    def apply(self, config: Config) -> None:
        """Make the running schedule match `config` (start-up and every reload).

        Removed pairs: schedule dropped and running pull cancelled. Added pairs: a fresh
        schedule (honouring `run_on_start`). Changed pairs: the running pull goes on, and the
        new settings take effect from the next start. Changed limits apply at once to every
        run not yet started.
        """
        wanted = {
            (server.name, model.name): (server, model)
            for server in config.servers
            for model in server.models
        }
        for key in [key for key in self._pairs if key not in wanted]:
            self._pairs.pop(key).seq = 0
            run = self._runs.pop(key, None)
            if run is not None:
                run.cancel()
        servers = {server.name for server in config.servers}
        for name in [name for name in self.limits if name not in servers]:
            del self.limits[name]  # its pairs were cancelled above
        self.apply_limits(config)
        now = self._clock.monotonic()
        for key, (server, model) in wanted.items():
            entry = self._pairs.get(key)
            if entry is not None and entry.server == server and entry.model == model:
                continue
            settings = model.settings
            if entry is None:
                entry = self._pairs[key] = _Pair(server, model, self._state.pairs[key])
                plan = first_plan(now, settings, self._rand())
                if settings.run_on_start:
                    entry.trigger = Trigger.START
            else:
                entry.server, entry.model, entry.level = server, model, logging.INFO
                entry.trigger = Trigger.SCHEDULE
                if entry.fired is not None:  # the new interval counts from the last start
                    plan = next_plan(entry.fired, now, settings, self._rand())
                else:  # reloaded before its first start: keep that start
                    plan = entry.plan or first_plan(now, settings, self._rand())
            self._plan(entry, plan, now)
        if len(self._heap) > 2 * len(self._pairs) + 64:  # reloads left many stale entries
            self._heap = [item for item in self._heap if item[1] == item[2].seq]
            heapq.heapify(self._heap)
        self._rearm()

    def _plan(self, entry: _Pair, plan: Plan, now: float) -> None:
        """Put `entry`'s next start (`plan`, moved into its window) on the heap."""
        clock, settings, pair = self._clock, entry.model.settings, entry.pair
        wall = wall_time(plan.start, now_monotonic=now, now_wall=clock.time())
        if settings.window is not None and settings.mode is Mode.PULL:
            opens = windowed_start(settings.window, wall, plan.start - plan.slot)
            plan, wall = Plan(plan.slot, plan.start + (opens - wall)), opens
        entry.plan = plan
        pair.schedule(wall)
        level = entry.level
        if log.isEnabledFor(level):
            at = dt.datetime.fromtimestamp(wall, dt.UTC).isoformat("T", "seconds")
            extra = {"server": pair.server, "model": pair.model, "at": at}
            log.log(level, "next run", extra={**extra, "in_seconds": round(plan.start - now)})
        entry.level = logging.DEBUG
        self._seq += 1
        entry.seq = self._seq
        heapq.heappush(self._heap, (plan.start, self._seq, entry))

    def _rearm(self) -> None:
        """(Re)start the timer if the earliest start is not the one it sleeps until."""
        heap = self._heap
        while heap and heap[0][1] != heap[0][2].seq:
            heapq.heappop(heap)
        due = heap[0][0] if heap else None
        if self._timer is not None and not self._timer.done():
            if due == self._wakes_at:
                return
            self._timer.cancel()
        self._wakes_at = due
        self._timer = None if due is None else asyncio.create_task(self._tick(), name="schedule")

    async def _tick(self) -> None:
        """Sleep until the earliest start, start every pair due, and sleep again."""
        clock, heap = self._clock, self._heap
        while True:
            while heap and heap[0][1] != heap[0][2].seq:
                heapq.heappop(heap)
            if not heap:
                self._wakes_at = None
                return
            self._wakes_at = due = heap[0][0]
            await clock.sleep(max(0.0, due - clock.monotonic()))
            heap = self._heap  # a reload may have compacted it
            while heap and heap[0][0] <= clock.monotonic():
                _, seq, entry = heapq.heappop(heap)
                if seq == entry.seq:
                    self._fire(entry)

    def _fire(self, entry: _Pair) -> None:
        """`entry`'s start has come: start its run (or skip it), and plan the next one."""
        server, model, pair, plan = entry.server, entry.model, entry.pair, entry.plan
        assert plan is not None
        key = (server.name, model.name)
        entry.fired = plan
        entry.seq = 0
        running = self._runs.get(key)
        if running is not None and not running.done():
            pair.skip()
            log.info(
                "run skipped: previous run still going",
                extra={"server": server.name, "model": model.name},
            )
        elif model.settings.mode is Mode.CHECK and self._check is not None:
            self._track(key, self._check(server, model, pair), f"check {key}")
        else:
            self._track(key, self._limited(server, model, pair, entry.trigger), f"pull {key}")
        entry.trigger = Trigger.SCHEDULE
        now = self._clock.monotonic()
        self._plan(entry, next_plan(plan, now, model.settings, self._rand()), now)

    def _track(
        self, key: tuple[str, str], job: Coroutine[Any, Any, object], name: str
    ) -> asyncio.Task[object]:
        """Run `job` as the pair's run; it leaves `_runs` when it ends (no idle task kept)."""
        task: asyncio.Task[object] = asyncio.create_task(job, name=name)
        self._runs[key] = task

        def done(_: asyncio.Task[object]) -> None:
            if self._runs.get(key) is task:
                del self._runs[key]

        task.add_done_callback(done)
        return task

    async def stop(self) -> None:
        """Cancel the timer and every running pull (closing their streams) and wait for them."""
        tasks = [*self._runs.values()]
        if self._timer is not None:
            tasks.append(self._timer)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._timer = self._wakes_at = None
        self._runs.clear()
        for entry in self._pairs.values():
            entry.seq = 0
        self._pairs.clear()
        self._heap.clear()

    async def run_once(self, config: Config) -> None:
        """Run every pair once, for `--once`.

        Pulls within `max_concurrent_pulls`; each `check` pair's check (outside the pull
        limits, as on the schedule).
        """
        self.apply_limits(config)
        jobs: list[Awaitable[object]] = []
        for server in config.servers:
            for model in server.models:
                pair = self._state.pairs[server.name, model.name]
                if model.settings.mode is not Mode.CHECK:
                    jobs.append(self._limited(server, model, pair, Trigger.START))
                elif self._check is not None:
                    jobs.append(self._check(server, model, pair))
        await asyncio.gather(*jobs)

    def apply_limits(self, config: Config) -> None:
        """Create or resize each server's limiter to `config` (no loops started)."""
        for server in config.servers:
            limiter = self.limits.get(server.name)
            if limiter is None:
                self.limits[server.name] = Limiter(server.max_concurrent_pulls)
            else:
                limiter.resize(server.max_concurrent_pulls)
        self.fleet_limit.resize(config.max_concurrent_pulls)

    def pull_now(self, server_name: str, model_name: str) -> ActiveRun:
        """Start a run of the pair now, outside its schedule (which stays as it was).

        Returns its history entry. Raises, before anything starts: KeyError for a pair that is
        not configured, PairBusyError while a run of it is going or waiting for its server,
        NoHistoryError without a run history.
        """
        key = (server_name, model_name)
        entry = self._pairs[key]
        server, model = entry.server, entry.model
        running = self._runs.get(key)
        if running is not None and not running.done():
            raise PairBusyError(f"a run of {server_name}/{model_name} is going")
        if self._history is None:
            raise NoHistoryError("the run history is not available")
        active = self._history.reserve(server_name, model_name, Trigger.API)
        pair = self._state.pairs[key]
        self._track(
            key, self._limited(server, model, pair, Trigger.API, active=active), f"pull {key}"
        )
        return active

    async def _limited(
        self,
        server: ServerConfig,
        model: ModelConfig,
        pair: PairState,
        trigger: Trigger,
        *,
        active: ActiveRun | None = None,
    ) -> RunResult:
        history, key = self._history, (server.name, model.name)
        if history is not None and active is None:
            active = history.reserve(server.name, model.name, trigger)
        try:
            # The limiter is looked up now, not when the start was planned: after a reload the
            # run queues on the one limiter in force (resized in place, never replaced).
            async with self.limits[server.name].slot(), self.fleet_limit.slot():
                if active is not None:
                    self._active[key] = active
                result = await self._run(server, model, pair)
        except BaseException:
            if history is not None and active is not None:
                history.abandon(active)
            raise
        finally:
            self._active.pop(key, None)
        if history is not None and active is not None:
            history.finish(active, result, pair)
        if self._on_finished is not None:
            self._on_finished(pair)
        return result
