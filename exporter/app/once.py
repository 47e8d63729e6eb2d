"""`--once`: run every configured pair one time, print one result line each, exit by them.

Pull pairs pull, under `max_concurrent_pulls` as on the schedule. `check` pairs do what their
scheduled check does, and nothing is downloaded: the tag's manifest digest from the registry,
compared with the digest the server holds per one `GET /api/tags` (one request per server,
shared by its check pairs). A check that cannot compare (the registry or the server did not
answer, no such tag) counts as a failure for the exit code; an update waiting does not.
SIGTERM/SIGINT cancel what is left: those pairs print `result=cancelled`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from exporter.clients.inventory import Inventory
from exporter.clients.pull import make_session
from exporter.clients.registry import Checker, Outcome, make_registry_session
from exporter.config.types import Mode
from exporter.core import signals
from exporter.core.logs import logfmt_value
from exporter.schedule.scheduler import Scheduler
from exporter.state.holdings import CheckResult, InventoryResult

if TYPE_CHECKING:
    import signal

    from exporter.app.assemble import Program
    from exporter.config.types import Config, ModelConfig, ServerConfig
    from exporter.state.pairs import ExporterState, LastRun, PairState

SHUTDOWN_DEADLINE: Final = 4.5
"""Seconds after SIGTERM/SIGINT by which `--once` has exited, whatever is still going."""


@dataclass(frozen=True, slots=True)
class Checked:
    """One `check` pair's run: the registry's answer and the server's inventory answer."""

    outcome: Outcome
    inventory: InventoryResult
    duration: float


class OnceChecks:
    """The `check` pairs of one `--once`: an inventory request per server, then the check."""

    def __init__(self, inventory: Inventory, checker: Checker) -> None:
        self._inventory = inventory
        self._checker = checker
        self._polls: dict[str, asyncio.Task[InventoryResult]] = {}
        self.done: dict[tuple[str, str], Checked] = {}

    async def check(self, server: ServerConfig, model: ModelConfig, pair: PairState) -> Outcome:
        """Ask the server what it holds (once per server), then the registry; record both."""
        started = time.monotonic()
        poll = self._polls.get(server.name)
        if poll is None:
            poll = asyncio.create_task(self._inventory.poll(server), name=f"tags {server.name}")
            self._polls[server.name] = poll
        inventory = await asyncio.shield(poll)  # shared: one check cancelled leaves it to `stop`
        outcome = await self._checker.check(server, model, pair)
        duration = time.monotonic() - started
        self.done[server.name, model.name] = Checked(outcome, inventory, duration)
        return outcome

    async def stop(self) -> None:
        """Cancel inventory requests still going (an interrupted run)."""
        for poll in self._polls.values():
            poll.cancel()
        await asyncio.gather(*self._polls.values(), return_exceptions=True)


async def run(program: Program) -> int:
    """Run every pair once and print one line per pair; SIGTERM/SIGINT cancel what is left."""
    if program.config.discovery:
        await program.fleet.start(program.config, lambda: None)  # one answer of each discovery
        await program.fleet.stop()
    runtime = program.runtime()
    program.first_apply(runtime)
    config, state = runtime.config, program.state
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    received: list[signal.Signals] = []

    def interrupt(signum: signal.Signals) -> None:
        if not received and task is not None:
            task.cancel()
            signals.exit_after(SHUTDOWN_DEADLINE, code=1)
        received.append(signum)

    for signum in signals.STOP_SIGNALS:
        loop.add_signal_handler(signum, interrupt, signum)
    before = {key: pair.last for key, pair in state.pairs.items()}
    checked: dict[tuple[str, str], Checked] = {}
    try:
        async with (
            program.simulated_ollama(),
            make_session() as session,
            make_registry_session() as registry,
        ):
            inventory = Inventory(session, state, on_digest=program.save_digest)
            inventory.apply(config, start=False)  # check mode on, no polling loops
            checks = OnceChecks(inventory, Checker(registry))
            checked = checks.done
            scheduler = Scheduler(
                session,
                state,
                on_finished=program.save,
                check=checks.check,
                history=program.history,
            )
            try:
                await scheduler.run_once(config)
            finally:
                await checks.stop()
    except asyncio.CancelledError:
        if not received:
            raise
    finally:
        for signum in signals.STOP_SIGNALS:
            loop.remove_signal_handler(signum)
        signals.install()
    failed, unfinished = report(config, state, before, checked)
    if received:
        name = received[0].name
        print(  # noqa: T201
            f"interrupted by {name}: {unfinished} of {config.model_count} runs did not finish",
            file=sys.stderr,
        )
    return 1 if failed or unfinished else 0


def report(
    config: Config,
    state: ExporterState,
    before: dict[tuple[str, str], LastRun | None],
    checked: dict[tuple[str, str], Checked],
) -> tuple[int, int]:
    """Print one line per pair, in config order; returns (failed, not finished)."""
    failed = unfinished = 0
    for server in config.servers:
        for model in server.models:
            key = (server.name, model.name)
            fields = [f"server={server.name}", f"model={model.name}"]
            if model.settings.mode is Mode.CHECK:
                holding = state.inventory.get(server.name)
                problem = holding.problem if holding is not None else None
                line, ok = _check_line(state.pairs[key], checked.get(key), problem)
            else:
                line, ok = _pull_line(state.pairs[key].last, before.get(key))
            print(" ".join([*fields, *line]))  # noqa: T201 - the CLI's own output
            if ok is None:
                unfinished += 1
            elif not ok:
                failed += 1
    return failed, unfinished


def _pull_line(last: LastRun | None, previous: LastRun | None) -> tuple[list[str], bool | None]:
    """The fields of a pull pair's line, and success (None: it did not finish)."""
    if last is None or last is previous:
        return ["result=cancelled"], None
    result = ["result=success"] if last.reason is None else ["result=failure"]
    if last.reason is not None:
        result.append(f"reason={last.reason.value}")
    times = [f"duration={last.duration:.3f}s", f"downloaded_bytes={last.downloaded_bytes}"]
    return [*result, *times], last.reason is None


def _check_line(
    pair: PairState, checked: Checked | None, problem: str | None
) -> tuple[list[str], bool | None]:
    """The fields of a check pair's line, and whether it could compare (None: cancelled).

    `problem` is why the server's inventory request failed, if it did.
    """
    if checked is None:
        return ["mode=check", "result=cancelled"], None
    outcome, holding = checked.outcome, pair.holding
    duration = f"duration={checked.duration:.3f}s"
    if outcome.result is not CheckResult.OK:
        reason, detail = outcome.result.value, outcome.detail
    elif checked.inventory is not InventoryResult.OK:
        reason, detail = checked.inventory.value, problem or ""
    else:
        waiting = holding.update_available
        result = "update_available" if waiting else "up_to_date"
        held = (holding.digest or "none")[:12]
        digests = [f"held={held}", f"registry={(holding.registry_digest or '')[:12]}"]
        return ["mode=check", f"result={result}", *digests, duration], True
    fields = ["mode=check", "result=check_failed", f"reason={reason}"]
    return [*fields, f"detail={logfmt_value(detail)}", duration], False
