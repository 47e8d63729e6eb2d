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


class Scheduler:
    """Owns one loop task per pair, the run tasks they start and one limiter per server."""

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
        self._loops: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._runs: dict[tuple[str, str], asyncio.Task[object]] = {}
        self._plans: dict[tuple[str, str], Plan] = {}
        """The next start of each pair."""
        self._fired: dict[tuple[str, str], Plan] = {}
        """The last start (run or skip) of each pair: reloads schedule from it."""
        self._configs: dict[tuple[str, str], tuple[ServerConfig, ModelConfig]] = {}
        self._check = check
        """Runs a `mode: check` pair's registry check in place of its pull."""

    def _pull_with(self, session: aiohttp.ClientSession) -> Runner:
        async def pull(server: ServerConfig, model: ModelConfig, pair: PairState) -> RunResult:
            active = self._active.get((server.name, model.name))
            return await run_pull(session, server, model, self._state, pair, active=active)

        return pull

    def start(self, config: Config) -> None:
        """Start a loop for every pair of `config`."""
        self.apply(config)

    def apply(self, config: Config) -> None:
        """Make the running schedule match `config` (start-up and every reload).

        Removed pairs: loop and running pull cancelled. Added pairs: a fresh loop
        (honouring `run_on_start`). Changed pairs: the running pull goes on, and the
        new settings take effect from the next start. Changed limits apply at once to
        every run not yet started.
        """
        wanted = {
            (server.name, model.name): (server, model)
            for server in config.servers
            for model in server.models
        }
        for key in [key for key in self._configs if key not in wanted]:
            self._loops.pop(key).cancel()
            run = self._runs.pop(key, None)
            if run is not None:
                run.cancel()
            self._plans.pop(key, None)
            self._fired.pop(key, None)
            del self._configs[key]
        servers = {server.name for server in config.servers}
        for name in [name for name in self.limits if name not in servers]:
            del self.limits[name]  # its pairs were cancelled above
        self.apply_limits(config)
        for key, (server, model) in wanted.items():
            if self._configs.get(key) == (server, model):
                continue
            loop = self._loops.pop(key, None)
            if loop is not None:
                loop.cancel()
            self._configs[key] = (server, model)
            self._loops[key] = asyncio.create_task(
                self._pair_loop(server, model, self._state.pairs[key]), name=f"schedule {key}"
            )

    async def stop(self) -> None:
        """Cancel every loop and running pull (closing their streams) and wait for them."""
        tasks = [*self._loops.values(), *self._runs.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loops.clear()
        self._runs.clear()
        self._configs.clear()
        self._plans.clear()
        self._fired.clear()

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

    async def _pair_loop(self, server: ServerConfig, model: ModelConfig, pair: PairState) -> None:
        settings = model.settings
        key = (server.name, model.name)
        clock = self._clock
        now = clock.monotonic()
        fired = self._fired.get(key)
        pending = self._plans.get(key)
        if fired is not None:  # reloaded: the new interval counts from the last start
            plan = next_plan(fired, now, settings, self._rand())
        elif pending is not None:  # reloaded before its first start: keep that start
            plan = pending
        else:
            plan = first_plan(now, settings, self._rand())
        first_run = fired is None and pending is None and settings.run_on_start
        trigger = Trigger.START if first_run else Trigger.SCHEDULE
        level = logging.INFO
        while True:
            now = clock.monotonic()
            wall = wall_time(plan.start, now_monotonic=now, now_wall=clock.time())
            if settings.window is not None and settings.mode is Mode.PULL:
                opens = windowed_start(settings.window, wall, plan.start - plan.slot)
                plan, wall = Plan(plan.slot, plan.start + (opens - wall)), opens
            self._plans[key] = plan
            pair.schedule(wall)
            if log.isEnabledFor(level):
                at = dt.datetime.fromtimestamp(wall, dt.UTC).isoformat("T", "seconds")
                extra = {"server": server.name, "model": model.name, "at": at}
                log.log(level, "next run", extra={**extra, "in_seconds": round(plan.start - now)})
            level = logging.DEBUG  # the first plan at info, the routine ones at debug
            await clock.sleep(max(0.0, plan.start - now))
            self._fired[key] = plan
            running = self._runs.get(key)
            if running is not None and not running.done():
                pair.skip()
                log.info(
                    "run skipped: previous run still going",
                    extra={"server": server.name, "model": model.name},
                )
            elif settings.mode is Mode.CHECK and self._check is not None:
                self._runs[key] = asyncio.create_task(
                    self._check(server, model, pair), name=f"check {key}"
                )
            else:
                self._runs[key] = asyncio.create_task(
                    self._limited(server, model, pair, trigger), name=f"pull {key}"
                )
            trigger = Trigger.SCHEDULE
            plan = next_plan(plan, clock.monotonic(), settings, self._rand())

    def pull_now(self, server_name: str, model_name: str) -> ActiveRun:
        """Start a run of the pair now, outside its schedule (which stays as it was).

        Returns its history entry. Raises, before anything starts: KeyError for a pair that is
        not configured, PairBusyError while a run of it is going or waiting for its server,
        NoHistoryError without a run history.
        """
        key = (server_name, model_name)
        server, model = self._configs[key]
        running = self._runs.get(key)
        if running is not None and not running.done():
            raise PairBusyError(f"a run of {server_name}/{model_name} is going")
        if self._history is None:
            raise NoHistoryError("the run history is not available")
        active = self._history.reserve(server_name, model_name, Trigger.API)
        pair = self._state.pairs[key]
        self._runs[key] = asyncio.create_task(
            self._limited(server, model, pair, Trigger.API, active=active), name=f"pull {key}"
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
