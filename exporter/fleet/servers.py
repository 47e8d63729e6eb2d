"""The servers this exporter schedules: the file's, plus the discovered ones, then its shard.

`Fleet.effective` turns the config file's `Config` into the one the runtime puts in force:
`servers` first, then each `server_discovery` entry's last good list (each server is the
entry's `template` with the discovered name and URL), then only the servers of this shard.
It also sets the numbers the shard and discovery gauges show. The discovery watchers run
while the runtime runs; a change of any list calls back into the runtime, which applies the
config again through its one path (`Runtime.apply`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Final

from exporter.config.parsers import credentials_clash
from exporter.config.types import ServerConfig
from exporter.fleet.discovery import Watcher

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from exporter.config.types import Config, DiscoveryConfig
    from exporter.fleet.sharding import Shard
    from exporter.state.pairs import FleetStatus

log = logging.getLogger("exporter.fleet")

FIRST_REFRESH_TIMEOUT: Final = 10.0
"""Seconds start-up waits for the first answer of every discovery before scheduling."""
_NO_TEMPLATE: Final = ServerConfig("", "", (), 1, ())


def _source_key(entry: DiscoveryConfig) -> DiscoveryConfig:
    """The entry without its template: a reload that changes only the template keeps the list."""
    return dataclasses.replace(entry, template=_NO_TEMPLATE)


class Fleet:
    """Discovery watchers and the shard, between the config file and the runtime."""

    def __init__(self, shard: Shard, status: FleetStatus) -> None:
        self.shard = shard
        self.status = status
        status.shard, status.total_shards = shard.index, shard.total
        self._watchers: dict[DiscoveryConfig, Watcher] = {}
        self._on_change: Callable[[], None] = lambda: None
        self._running = False
        self._tasks: set[asyncio.Task[None]] = set()

    def effective(self, config: Config) -> Config:
        """The file's servers and the discovered ones, of this shard only."""
        servers: list[ServerConfig] = list(config.servers)
        names = {server.name for server in servers}
        discovered: dict[str, int] = {}
        for entry in config.discovery:
            watcher = self._watchers.get(_source_key(entry))
            count = 0
            for target in watcher.targets if watcher is not None else ():
                if target.name in names:
                    log.warning(
                        "discovered server ignored: another server has its name",
                        extra={"discovery": entry.name, "server": target.name},
                    )
                    continue
                if credentials_clash(target.url, entry.template.headers):
                    log.warning(
                        "discovered server ignored: its url has user info and the template's "
                        "headers set Authorization (keep one)",
                        extra={"discovery": entry.name, "server": target.name},
                    )
                    continue
                names.add(target.name)
                servers.append(
                    dataclasses.replace(entry.template, name=target.name, url=target.url)
                )
                count += 1
            discovered[entry.name] = count
        status = self.status
        status.configured_pairs = sum(len(server.models) for server in servers)
        status.discovered = discovered
        for name in [name for name in status.failures if name not in discovered]:
            del status.failures[name]  # in place: the watchers count into this dict
        for name in discovered:
            status.failures.setdefault(name, 0)
        owned = tuple(server for server in servers if self.shard.owns(server))
        return dataclasses.replace(config, servers=owned)

    def sync(self, config: Config) -> None:
        """Watchers for exactly the entries of `config` (a reload adds and removes them)."""
        wanted = {_source_key(entry): entry for entry in config.discovery}
        for key in [key for key in self._watchers if key not in wanted]:
            self._spawn(self._watchers.pop(key).stop())
        for key, entry in wanted.items():
            if key not in self._watchers:
                watcher = Watcher(entry, self._on_change_now, self.status.failures)
                self._watchers[key] = watcher
                if self._running:  # added by a reload: first answer now, then on schedule
                    self._spawn(self._first_then_loop(watcher))

    async def start(self, config: Config, on_change: Callable[[], None]) -> None:
        """First refresh of every entry (bounded), then a watcher task each."""
        self.sync(config)
        await self._first_refresh(list(self._watchers.values()))
        self._on_change = on_change
        self._running = True
        for watcher in self._watchers.values():
            watcher.start()

    async def stop(self) -> None:
        """Stop every watcher and pending task."""
        self._running = False
        self._on_change = lambda: None
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(watcher.stop() for watcher in self._watchers.values()))

    def _on_change_now(self) -> None:
        self._on_change()

    async def _first_refresh(self, watchers: list[Watcher]) -> None:
        if not watchers:
            return
        tasks = [asyncio.create_task(watcher.refresh()) for watcher in watchers]
        _, pending = await asyncio.wait(tasks, timeout=FIRST_REFRESH_TIMEOUT)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _first_then_loop(self, watcher: Watcher) -> None:
        await self._first_refresh([watcher])
        if self._running and watcher in self._watchers.values():
            watcher.start()
            self._on_change()

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
