"""When pulls run: pure next-run math plus the loop that starts runs.

Starts follow fixed-rate slots (`first slot + k * interval`) so a slow run never
drifts the schedule; each start adds its own random jitter. A pair never runs
twice at once (a start that finds it busy is skipped and counted) and a server
never sees more than `max_concurrent_pulls` of our pulls at once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from exporter.pull import run_pull

if TYPE_CHECKING:
    from collections.abc import Callable

    import aiohttp

    from exporter.config import Config, ModelConfig, PullSettings, ServerConfig
    from exporter.state import ExporterState, PairState, RunResult

log = logging.getLogger("exporter.scheduler")


@dataclass(frozen=True, slots=True)
class Plan:
    """One scheduled start: the slot it belongs to and when it really starts."""

    slot: float
    start: float


def first_plan(now: float, settings: PullSettings, rand: float) -> Plan:
    """The first start after `now`: at once with `run_on_start`, else one interval later.

    `rand` is uniform in [0, 1); jitter adds up to `jitter * interval` to the start.
    """
    slot = now if settings.run_on_start else now + settings.interval
    return Plan(slot, slot + settings.jitter * settings.interval * rand)


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


class Scheduler:
    """Owns one loop task per pair and the run tasks they start."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        state: ExporterState,
        rand: Callable[[], float] = random.random,
        on_finished: Callable[[PairState], object] | None = None,
    ) -> None:
        self._session = session
        self._state = state
        self._rand = rand
        self._on_finished = on_finished
        """Called with the pair after each finished run (e.g. to persist it)."""
        self._limits: dict[str, asyncio.Semaphore] = {}
        self._loops: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._runs: dict[tuple[str, str], asyncio.Task[RunResult]] = {}
        self._plans: dict[tuple[str, str], Plan] = {}
        """The next start of each pair."""
        self._fired: dict[tuple[str, str], Plan] = {}
        """The last start (run or skip) of each pair: reloads schedule from it."""
        self._configs: dict[tuple[str, str], tuple[ServerConfig, ModelConfig]] = {}

    def start(self, config: Config) -> None:
        """Start a loop for every pair of `config`."""
        self.apply(config)

    def apply(self, config: Config) -> None:
        """Make the running schedule match `config` (start-up and every reload).

        Removed pairs: loop and running pull cancelled. Added pairs: a fresh loop
        (honouring `run_on_start`). Changed pairs: the running pull goes on, and the
        new settings take effect from the next start.
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
        old_limits = {
            server.name: server.max_concurrent_pulls for server, _ in self._configs.values()
        }
        for server in config.servers:
            if old_limits.get(server.name) != server.max_concurrent_pulls:
                self._limits[server.name] = asyncio.Semaphore(server.max_concurrent_pulls)
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

    async def run_once(self, config: Config) -> list[tuple[ServerConfig, ModelConfig, RunResult]]:
        """Run every pair once, honouring `max_concurrent_pulls`; for `--once`."""
        jobs = []
        for server in config.servers:
            limit = asyncio.Semaphore(server.max_concurrent_pulls)
            for model in server.models:
                pair = self._state.pairs[server.name, model.name]
                jobs.append((server, model, self._limited(limit, server, model, pair)))
        results = await asyncio.gather(*(job for _, _, job in jobs))
        return [(s, m, r) for (s, m, _), r in zip(jobs, results, strict=True)]

    async def _pair_loop(self, server: ServerConfig, model: ModelConfig, pair: PairState) -> None:
        settings = model.settings
        key = (server.name, model.name)
        now = time.monotonic()
        fired = self._fired.get(key)
        pending = self._plans.get(key)
        if fired is not None:  # reloaded: the new interval counts from the last start
            plan = next_plan(fired, now, settings, self._rand())
        elif pending is not None:  # reloaded before its first start: keep that start
            plan = pending
        else:
            plan = first_plan(now, settings, self._rand())
        while True:
            self._plans[key] = plan
            now = time.monotonic()
            pair.next_run_at = wall_time(plan.start, now_monotonic=now, now_wall=time.time())
            await asyncio.sleep(max(0.0, plan.start - now))
            self._fired[key] = plan
            running = self._runs.get(key)
            if running is not None and not running.done():
                pair.skipped_total += 1
                log.info(
                    "run skipped: previous run still going",
                    extra={"server": server.name, "model": model.name},
                )
            else:
                limit = self._limits[server.name]
                self._runs[key] = asyncio.create_task(
                    self._limited(limit, server, model, pair), name=f"pull {key}"
                )
            plan = next_plan(plan, time.monotonic(), settings, self._rand())

    async def _limited(
        self,
        limit: asyncio.Semaphore,
        server: ServerConfig,
        model: ModelConfig,
        pair: PairState,
    ) -> RunResult:
        async with limit:
            result = await run_pull(self._session, server, model, self._state, pair)
        if self._on_finished is not None:
            self._on_finished(pair)
        return result
