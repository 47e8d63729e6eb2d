"""The one place that builds the exporter: each long-lived object once, started, stopped in order.

`open_program` builds what every mode shares (state, the state file, run history, fleet);
`scheduling` adds what runs in the event loop (sessions, inventory, scheduler, the runtime that
applies configs) and starts it; `serve` puts the HTTP server on top. Each stops what it started,
in reverse order and within bounds. Nothing else constructs these objects or reaches into them
after construction: the HTTP side gets a `Site`, the runtime its `Followers`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple

from exporter.app.runtime import Followers, Runtime
from exporter.clients.inventory import Inventory
from exporter.clients.probe import probe_servers
from exporter.clients.pull import make_session
from exporter.clients.registry import Checker, make_registry_session
from exporter.core import collector, signals
from exporter.fleet.servers import Fleet
from exporter.metrics.families import build_registry
from exporter.schedule.scheduler import Scheduler
from exporter.state.history import History
from exporter.state.pairs import ExporterState
from exporter.web import hosts, listener
from exporter.web.app import make_app
from exporter.web.site import Site

if TYPE_CHECKING:
    import socket
    from collections.abc import AsyncIterator, Coroutine, Iterator

    from aiohttp import web

    from exporter.app.demo import Demo
    from exporter.config.types import Config, ServerConfig
    from exporter.config.webconfig import WebConfig
    from exporter.fleet.sharding import Shard
    from exporter.state.pairs import PairState
    from exporter.storage.last_runs import StoredPair
    from exporter.storage.store import Storage

log = logging.getLogger("exporter")

SHUTDOWN_GRACE: Final = 2.5
"""Seconds the schedule's shutdown may take before the process exits regardless; with the HTTP
server's own 2 s this keeps every exit within the 5 s of the contract."""


@dataclass(frozen=True, slots=True)
class Options:
    """The command line's part in building the program."""

    config_path: str
    shard: Shard
    storage_path: str | None = None
    enable_lifecycle: bool = False
    """`POST /-/reload`."""
    enable_admin_api: bool = False
    """`POST /api/v1/pulls` and the page's "pull now"."""
    exit_on_hang: bool = False
    """End the process if stopping takes longer than SHUTDOWN_GRACE (never in tests in process)."""


@dataclass(frozen=True, slots=True)
class Program:
    """What every mode shares, built once by `open_program`."""

    options: Options
    config: Config
    """The config file as loaded at start-up."""
    state: ExporterState
    history: History
    fleet: Fleet
    storage: Storage | None
    """The `--storage.path` file, when there is one."""
    demo: Demo | None = None
    """`--demo`: the simulated Ollama that runs in this process, before the schedule and after."""

    @property
    def stored(self) -> dict[tuple[str, str], StoredPair]:
        """Each pair's last run as the state file held it at start-up."""
        return self.storage.stored if self.storage is not None else {}

    def save(self, pair: PairState) -> None:
        """Persist a pair's finished run (`--storage.path`); never blocks."""
        if self.storage is not None:
            self.storage.save(pair)

    def save_digest(self, pair: PairState) -> None:
        """Persist a pair's last known digest (`--storage.path`); never blocks."""
        if self.storage is not None:
            self.storage.save_digest(pair)

    def runtime(self, followers: Followers | None = None) -> Runtime:
        """The runtime over this program, with `followers` (none live: `--once`)."""
        followers = followers or Followers(self.fleet, self.history, self.stored)
        source = self.demo.rebuild if self.demo is not None else None
        return Runtime(self.options.config_path, self.config, self.state, followers, source)

    @contextlib.asynccontextmanager
    async def simulated_ollama(self) -> AsyncIterator[None]:
        """With `--demo`, the simulator serves for the duration of the block."""
        if self.demo is None:
            yield
            return
        async with self.demo.running():
            yield

    def first_apply(self, runtime: Runtime) -> None:
        """Put the start-up config in force; stored last runs and digests come back with it."""
        runtime.apply(self.config)
        if self.storage is None:
            return
        from exporter.storage.last_runs import restore_digests  # noqa: PLC0415 - see open_program

        if self.storage.stored:
            restored = sum(1 for key in self.storage.stored if key in self.state.pairs)
            log.info("state restored", extra={"path": str(self.storage.path), "pairs": restored})
        restore_digests(self.state, self.storage.digests)


@contextlib.contextmanager
def open_program(options: Options, config: Config, demo: Demo | None = None) -> Iterator[Program]:
    """Build the shared parts; the state file is closed on the way out.

    Raises StorePathError for a `--storage.path` that can never work (a directory, say).
    """
    state = ExporterState()
    storage = None
    if options.storage_path:
        # The storage modules, and SQLite with them (~0.9 MiB of RSS), only with a storage path.
        from exporter.storage.store import Storage  # noqa: PLC0415

        storage = Storage.open(options.storage_path, on_failure=state.storage_failed)
    history = History(config.history_limit, storage.history if storage is not None else None)
    fleet = Fleet(
        options.shard, state.fleet, forget=history.forget_servers, remembered=history.servers
    )
    try:
        yield Program(options, config, state, history, fleet, storage, demo)
    finally:
        if storage is not None:
            storage.close()


class Running(NamedTuple):
    """The schedule in motion: the runtime that applies configs, and the scheduler."""

    runtime: Runtime
    scheduler: Scheduler


@contextlib.asynccontextmanager
async def scheduling(
    program: Program, connections: listener.ConnectionGuard | None = None
) -> AsyncIterator[Running]:
    """Start the schedule: sessions, discovery, inventory, scheduler, probes, SIGHUP; ready.

    On the way out, in reverse: not ready, reloads and probes cancelled, discovery, scheduler
    and inventory stopped, sessions closed; past SHUTDOWN_GRACE the process exits anyway.
    """
    state = program.state
    loop = asyncio.get_running_loop()
    async with (
        program.simulated_ollama(),
        make_session() as session,
        make_registry_session() as registry,
    ):
        inventory = Inventory(session, state, on_digest=program.save_digest)

        def finished(pair: PairState) -> None:
            program.save(pair)
            inventory.after_run(pair)  # a success changed what the server holds: ask now

        def probe(servers: list[ServerConfig]) -> Coroutine[object, object, None]:
            return probe_servers(session, servers, state)

        scheduler = Scheduler(
            session,
            state,
            on_finished=finished,
            check=Checker(registry).check,
            history=program.history,
        )
        runtime = program.runtime(
            Followers(
                program.fleet,
                program.history,
                program.stored,
                connections=connections,
                inventory=inventory,
                scheduler=scheduler,
                probe=probe,
            )
        )
        await program.fleet.start(program.config, runtime.rediscovered)  # first lists, bounded
        program.first_apply(runtime)
        loop.add_signal_handler(signal.SIGHUP, runtime.request_reload)
        if signals.take_reload_request():  # a SIGHUP during start-up: the file may have changed
            runtime.request_reload()
        collector.settle()
        state.set_ready(True)
        try:
            yield Running(runtime, scheduler)
        finally:
            state.set_ready(False)
            hang = program.options.exit_on_hang
            deadline = signals.exit_after(SHUTDOWN_GRACE) if hang else None
            loop.remove_signal_handler(signal.SIGHUP)
            signals.remember_reloads()
            await runtime.stop()
            await program.fleet.stop()
            await scheduler.stop()
            await inventory.stop()
            if deadline is not None:
                deadline.cancel()


def web_app(
    program: Program,
    running: Running,
    web_config: WebConfig | None = None,
    allowed_hosts: hosts.AllowedHosts | None = None,
) -> web.Application:
    """The HTTP app over the running schedule: it sees a `Site`, and the actions the flags allow."""
    options = program.options
    site = Site(
        program.state,
        program.history,
        pulls=running.scheduler if options.enable_admin_api else None,
        reloads=running.runtime if options.enable_lifecycle else None,
    )
    return make_app(site, build_registry(program.state), web_config, allowed_hosts)


async def serve(
    program: Program,
    web_config: WebConfig | None,
    sockets: list[socket.socket],
    connections: listener.ConnectionGuard,
    allowed_hosts: hosts.AllowedHosts | None = None,
) -> None:
    """Run the schedule, and the HTTP server over it, until SIGTERM or SIGINT."""
    async with scheduling(program, connections) as running:
        app = web_app(program, running, web_config, allowed_hosts)
        ssl_context = web_config.ssl_context() if web_config is not None else None
        await listener.serve(app, sockets, ssl_context=ssl_context, guard=connections)
