"""The config in force and the one path that changes it, at start-up and on every reload.

`Runtime.apply` is that path: the state's pairs, the scheduler's loops and limits, the
reload gauges and the server probes all follow a new `Config` in one call (a reload, and
later discovery, call it the same way). `reload` reads and checks the file in a child
process (`exporter.config.reader`) with a deadline: the event loop only unpickles the answer, and a
file that blocks (a FIFO, a hung mount) fails the reload instead of holding it, and never
delays shutdown. Reload requests that arrive while
one is going are coalesced: a burst of SIGHUPs costs at most one more reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from exporter.clients.inventory import Inventory
from exporter.clients.probe import probe_servers
from exporter.clients.registry import Checker, make_registry_session
from exporter.config.loader import Config, ConfigError
from exporter.core import signals
from exporter.schedule.scheduler import Scheduler
from exporter.storage.last_runs import restore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Coroutine, Mapping

    import aiohttp

    from exporter.config.loader import ServerConfig
    from exporter.fleet.servers import Fleet
    from exporter.state.history import History
    from exporter.state.pairs import ExporterState, PairState
    from exporter.storage.last_runs import StoredPair
    from exporter.web.listener import ConnectionGuard

log = logging.getLogger("exporter")

READ_TIMEOUT: Final = 10.0
"""Seconds a reload waits for the file to be read and checked (a 1 MiB file takes ~2 s of CPU);
past it the reader is killed and the reload fails."""
SHUTDOWN_GRACE: Final = 2.5
"""Seconds the scheduler's shutdown may take before the process exits regardless (when
`exit_on_hang` is set, as the CLI does); with the HTTP server's own 2 s this keeps every exit
within the 5 s of the contract."""


@dataclass(slots=True)
class Runtime:
    """What the running exporter holds: the config in force and how to replace it."""

    config_path: str
    config: Config
    state: ExporterState
    enable_lifecycle: bool = False
    enable_admin_api: bool = False
    """`--web.enable-admin-api`: allow `POST /api/v1/pulls`."""
    history: History | None = None
    """Runs with their transcripts (`exporter.state.history`), for `/api/v1/runs` and the page."""
    save: Callable[[PairState], object] | None = None
    """Called with a pair after each finished run (`--storage.path`); must not block."""
    save_digest: Callable[[PairState], object] | None = None
    """Called with a pair whose last known digest changed (`--storage.path`); must not block."""
    scheduler: Scheduler | None = None
    inventory: Inventory | None = None
    """The `/api/tags` poller (contract section 6), while the schedule runs."""
    exit_on_hang: bool = False
    """End the process if stopping takes longer than SHUTDOWN_GRACE (never in tests in process)."""
    _session: aiohttp.ClientSession | None = None
    _pending: asyncio.Future[tuple[str, ...]] | None = None
    """The next reload, requested and not started yet; later requests share it."""
    _worker: asyncio.Task[None] | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    fleet: Fleet | None = None
    """Discovery and sharding between the file's config and the one in force."""
    loaded: Config | None = None
    """The config file as last loaded, before discovery and sharding (`config` is after)."""
    stored: Mapping[tuple[str, str], StoredPair] | None = None
    """`--storage.path` contents at start-up, for pairs that join later (discovery)."""
    connections: ConnectionGuard | None = None
    """The HTTP server's connection cap, fitted to the pairs in force on every `apply`."""

    def apply(self, config: Config) -> None:
        """Put `config` in force: pairs, schedule, limits, connection cap, gauges, probes."""
        self.loaded = config
        if self.fleet is not None:
            self.fleet.sync(config)
            config = self.fleet.effective(config)
        if self.connections is not None:  # first: a lower cap frees descriptors for new pulls
            self.connections.fit(config.model_count)
        known = set(self.state.servers)
        known_pairs = set(self.state.pairs)
        self.state.sync(config)
        if self.inventory is not None:
            self.inventory.apply(config)
        if self.stored:
            joined = {key for key in self.state.pairs if key not in known_pairs}
            restore(self.state, {key: self.stored[key] for key in joined if key in self.stored})
        if self.history is not None:
            self.history.configure(config)
        if self.scheduler is not None:
            self.scheduler.apply(config)
        self.config = config
        self.state.config_loaded(time.time())
        if self._session is not None:
            self._probe([server for server in config.servers if server.name not in known])

    def rediscovered(self) -> None:
        """A discovery list changed: apply the loaded config again with the new servers."""
        if self.loaded is not None:
            self.apply(self.loaded)
            log.info("servers rediscovered", extra={"pairs": self.config.model_count})

    async def reload(self) -> tuple[str, ...]:
        """Load the config file again; all or nothing. Returns the errors (empty: applied).

        A request that arrives while a reload runs waits for the next one, which reads the
        file as it is then; every request arriving meanwhile shares that same reload.
        """
        if self._pending is None:
            self._pending = asyncio.get_running_loop().create_future()
            if self._worker is None or self._worker.done():
                self._worker = asyncio.create_task(self._reloads(), name="reload")
        return await asyncio.shield(self._pending)

    def request_reload(self) -> None:
        """`reload` without waiting for it (SIGHUP)."""
        self._spawn(self._reload_quietly())

    async def _reload_quietly(self) -> None:
        await self.reload()

    async def _reloads(self) -> None:
        while (future := self._pending) is not None:
            self._pending = None
            try:
                errors = await self._reload_now()
            except BaseException:
                future.cancel()
                raise
            future.set_result(errors)

    async def _reload_now(self) -> tuple[str, ...]:
        try:
            config = await self._read()
        except ConfigError as exc:
            self.state.config_failed()
            log.error(  # noqa: TRY400 - the errors are the message, no traceback helps
                "config reload failed, keeping the old config",
                extra={"config": self.config_path, "errors": "; ".join(exc.errors)},
            )
            return exc.errors
        self.apply(config)
        log.info("config reloaded", extra={"config": self.config_path, "pairs": config.model_count})
        return ()

    async def _read(self) -> Config:
        """`load_config` in a child process (`exporter.config.reader`), killed past READ_TIMEOUT."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "exporter.config.reader",
            self.config_path,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(process.communicate(), READ_TIMEOUT)
        except TimeoutError:
            _kill(process)
            message = f"reading the config took longer than {READ_TIMEOUT:g}s"
            raise ConfigError(
                [f"{self.config_path}: {message} (a FIFO or a hung mount?)"]
            ) from None
        except BaseException:
            _kill(process)
            raise
        if process.returncode != 0 or not out:
            why = err.decode(errors="replace").strip().splitlines()[-1:] or ["no answer"]
            message = f"checking the config failed (exit {process.returncode}): {why[0][:200]}"
            raise ConfigError([f"{self.config_path}: {message}"])
        outcome = pickle.loads(out)  # noqa: S301 - written by our own child process
        if isinstance(outcome, Config):
            return outcome
        raise ConfigError(outcome)

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _probe(self, servers: list[ServerConfig]) -> None:
        if servers and self._session is not None:
            self._spawn(probe_servers(self._session, servers, self.state))

    @contextlib.asynccontextmanager
    async def running(self, session: aiohttp.ClientSession) -> AsyncIterator[None]:
        """Run the schedule of the config in force, probe servers, reload on SIGHUP."""
        loop = asyncio.get_running_loop()
        if self.fleet is not None and self.loaded is not None:
            if self.history is not None:
                self.fleet.forget = self.history.forget_servers
                self.fleet.remembered = self.history.servers
            await self.fleet.start(self.loaded, self.rediscovered)  # the first lists, bounded
            self.apply(self.loaded)
        self._session = session
        registry_session = make_registry_session()
        inventory = self.inventory = Inventory(session, self.state, on_digest=self.save_digest)
        inventory.apply(self.config)
        self.scheduler = Scheduler(
            session,
            self.state,
            on_finished=self._finished,
            check=Checker(registry_session).check,
            history=self.history,
        )
        self.scheduler.start(self.config)
        self._probe(list(self.config.servers))
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        if signals.take_reload_request():  # a SIGHUP during start-up: the file may have changed
            self.request_reload()
        self.state.set_ready(True)
        try:
            yield
        finally:
            self.state.set_ready(False)
            deadline = signals.exit_after(SHUTDOWN_GRACE)
            loop.remove_signal_handler(signal.SIGHUP)
            signals.remember_reloads()
            await self._stop(self.scheduler)
            await inventory.stop()
            self.inventory = None
            await registry_session.close()
            deadline.cancel()

    def _finished(self, pair: PairState) -> None:
        """After each finished run: persist it, and take a fresh inventory after a success."""
        if self.save is not None:
            self.save(pair)
        if self.inventory is not None:
            self.inventory.after_run(pair)

    async def _stop(self, scheduler: Scheduler) -> None:
        tasks = list(self._tasks)
        if self._worker is not None:
            tasks.append(self._worker)
        for task in tasks:
            task.cancel()
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.fleet is not None:
            await self.fleet.stop()
        await scheduler.stop()
        self.scheduler = None
        self._session = None


def _kill(process: asyncio.subprocess.Process) -> None:
    """Kill a config reader that is still going; it is reaped in the background."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
