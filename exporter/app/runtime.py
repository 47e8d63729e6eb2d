"""The config in force and the one path that changes it, at start-up and on every reload.

`Runtime.apply` is that path: the state's pairs, the scheduler's loops and limits, the
inventory, the connection cap, the reload gauges and the server probes all follow a new
`Config` in one call (start-up, a reload, a discovery change). `reload` reads and checks the
file in a child process (`exporter.config.reader`) with a deadline: the event loop only
unpickles the answer, and a file that blocks (a FIFO, a hung mount) fails the reload instead of
holding it, and never delays shutdown. Reload requests that arrive while one is going are
coalesced: a burst of SIGHUPs costs at most one more reload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pickle
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from exporter.config.loader import ConfigError
from exporter.config.types import Config
from exporter.core import collector
from exporter.core.clock import SYSTEM_CLOCK

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine, Mapping

    from exporter.clients.inventory import Inventory
    from exporter.config.types import ServerConfig
    from exporter.fleet.servers import Fleet
    from exporter.schedule.scheduler import Scheduler
    from exporter.state.history import History
    from exporter.state.pairs import ExporterState
    from exporter.storage.last_runs import StoredPair
    from exporter.web.listener import ConnectionGuard

log = logging.getLogger("exporter")

READ_TIMEOUT: Final = 10.0
"""Seconds a reload waits for the file to be read and checked (a 1 MiB file takes ~2 s of CPU);
past it the reader is killed and the reload fails."""


@dataclass(frozen=True, slots=True)
class Followers:
    """What follows the config in force, built once by `exporter.app.assemble`.

    `--once` has no inventory loops, scheduler loops or probes: those stay None there.
    """

    fleet: Fleet
    """Discovery and sharding, between the file's config and the one in force."""
    history: History
    stored: Mapping[tuple[str, str], StoredPair]
    """`--storage.path` contents at start-up: a pair gets its stored last run when it joins."""
    connections: ConnectionGuard | None = None
    """The HTTP server's connection cap, fitted to the pairs in force."""
    inventory: Inventory | None = None
    scheduler: Scheduler | None = None
    probe: Callable[[list[ServerConfig]], Coroutine[object, object, None]] | None = None
    """Asks new servers `GET /api/version`."""


class Runtime:
    """The config in force and the one path that replaces it: `apply`, and `reload` into it."""

    def __init__(
        self,
        config_path: str,
        loaded: Config,
        state: ExporterState,
        followers: Followers,
        source: Callable[[], Config] | None = None,
    ) -> None:
        """`source`: where a reload gets the config (None: the file, in a child process).

        `--demo` has no file: it builds its config again in memory.
        """
        self.config_path = config_path
        self.loaded = loaded
        """The config file as last loaded, before discovery and sharding (`config` is after)."""
        self.config = loaded
        self.state = state
        self._followers = followers
        self._source = source
        self._pending: asyncio.Future[tuple[str, ...]] | None = None
        """The next reload, requested and not started yet; later requests share it."""
        self._worker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def apply(self, config: Config) -> None:
        """Put `config` in force: pairs, schedule, limits, connection cap, gauges, probes."""
        follow = self._followers
        self.loaded = config
        follow.fleet.sync(config)
        config = follow.fleet.effective(config)
        if follow.connections is not None:  # first: a lower cap frees descriptors for new pulls
            follow.connections.fit(config.model_count)
        known = set(self.state.servers)
        known_pairs = set(self.state.pairs)
        self.state.sync(config)
        if follow.inventory is not None:
            follow.inventory.apply(config)
        joined = {key for key in self.state.pairs if key not in known_pairs}
        if stored := {key: follow.stored[key] for key in joined if key in follow.stored}:
            # Only with --storage.path, which loaded the storage modules (not at every start).
            from exporter.storage.last_runs import restore  # noqa: PLC0415

            restore(self.state, stored)
        follow.history.configure(config)
        if follow.scheduler is not None:
            follow.scheduler.apply(config)
        self.config = config
        self.state.config_loaded(SYSTEM_CLOCK.time())
        added = [server for server in config.servers if server.name not in known]
        if added and follow.probe is not None:
            self._spawn(follow.probe(added))

    def rediscovered(self) -> None:
        """A discovery list changed: apply the loaded config again with the new servers."""
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
            config = self._source() if self._source is not None else await self._read()
        except ConfigError as exc:
            self.state.config_failed()
            log.error(  # noqa: TRY400 - the errors are the message, no traceback helps
                "config reload failed, keeping the old config",
                extra={"config": self.config_path, "errors": "; ".join(exc.errors)},
            )
            return exc.errors
        self.apply(config)
        collector.settle()
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

    async def stop(self) -> None:
        """Cancel the reloads and probes still going, and wait for them."""
        tasks = list(self._tasks)
        if self._worker is not None:
            tasks.append(self._worker)
        for task in tasks:
            task.cancel()
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        await asyncio.gather(*tasks, return_exceptions=True)


def _kill(process: asyncio.subprocess.Process) -> None:
    """Kill a config reader that is still going; it is reaped in the background."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
