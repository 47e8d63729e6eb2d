"""The servers this exporter schedules: the file's, plus the discovered ones, then its shard.

`Fleet.effective` turns the config file's `Config` into the one the runtime puts in force:
`servers` first, then each `server_discovery` entry's last good list (each server is the
entry's `template` with the discovered name and URL), then only the servers of this shard.
It also sets the numbers the shard and discovery gauges show. The discovery watchers run
while the runtime runs; a change of any list calls back into the runtime, which applies the
config again through its one path (`Runtime.apply`).

Two bounds keep what DNS or a file says from growing the exporter without end: each entry
gives at most `max_servers` servers (the first in name order; one warning when the cap starts
to bite), and a discovered server that left has its run history kept for `forget_after` in
case it comes back (a pod restarting under the same name), then forgotten (`forget`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from typing import TYPE_CHECKING, Final

from exporter.config.parsers import credentials_clash
from exporter.config.types import ServerConfig
from exporter.core.clock import SYSTEM_CLOCK

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Coroutine

    from exporter.config.types import Config, DiscoveryConfig
    from exporter.fleet.discovery import Target, Watcher
    from exporter.fleet.sharding import Shard
    from exporter.state.pairs import FleetStatus

log = logging.getLogger("exporter.fleet")

FIRST_REFRESH_TIMEOUT: Final = 10.0
"""Seconds start-up waits for the first answer of every discovery before scheduling."""
_NO_TEMPLATE: Final = ServerConfig("", "", (), 1, ())


def _source_key(entry: DiscoveryConfig) -> DiscoveryConfig:
    """The entry's source only: a reload that changes the template or the limits keeps the list."""
    return dataclasses.replace(entry, template=_NO_TEMPLATE, max_servers=0, forget_after=0.0)


def _forget_nothing(servers: Collection[str]) -> None:
    del servers


class Fleet:
    """Discovery watchers and the shard, between the config file and the runtime."""

    def __init__(
        self,
        shard: Shard,
        status: FleetStatus,
        *,
        forget: Callable[[Collection[str]], object] = _forget_nothing,
        remembered: Callable[[], Collection[str]] = tuple,
    ) -> None:
        self.shard = shard
        self.status = status
        status.shard, status.total_shards = shard.index, shard.total
        self._watchers: dict[DiscoveryConfig, Watcher] = {}
        self._on_change: Callable[[], None] = lambda: None
        self._running = False
        self._tasks: set[asyncio.Task[None]] = set()
        self.forget = forget
        """Drops the run history of servers that left more than `forget_after` ago."""
        self.remembered = remembered
        """Servers the run history holds runs of (after a restart: those stored)."""
        self._seeded = False
        self._present: dict[str, float] = {}
        """Discovered servers in force now, with their entry's `forget_after`."""
        self._departed: dict[str, float] = {}
        """Discovered servers that left, with the monotonic time to forget them at."""
        self._wake = asyncio.Event()
        self._capped: set[str] = set()
        """Entries whose last list was over `max_servers` (warned once until it is not)."""

    def effective(self, config: Config) -> Config:
        """The file's servers and the discovered ones, of this shard only."""
        servers: list[ServerConfig] = list(config.servers)
        names = {server.name for server in servers}
        discovered: dict[str, int] = {}
        present: dict[str, float] = {}
        for entry in config.discovery:
            watcher = self._watchers.get(_source_key(entry))
            count = 0
            for target in self._capped_list(entry, watcher):
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
                present[target.name] = entry.forget_after
                servers.append(
                    dataclasses.replace(entry.template, name=target.name, url=target.url)
                )
                count += 1
            discovered[entry.name] = count
        status = self.status
        status.configured_pairs = sum(len(server.models) for server in servers)
        status.discovered = discovered
        for counter in (status.failures, status.rejected, status.dropped):
            for name in [name for name in counter if name not in discovered]:
                del counter[name]  # in place: the watchers count into these dicts
            for name in discovered:
                counter.setdefault(name, 0)
        if self._running and not self._seeded:
            self._seed(config, names)
        self._track_departures(present, names)
        owned = tuple(server for server in servers if self.shard.owns(server))
        return dataclasses.replace(config, servers=owned)

    def _capped_list(self, entry: DiscoveryConfig, watcher: Watcher | None) -> tuple[Target, ...]:
        """The watcher's list cut to `max_servers` (it is sorted: the same cut on every shard)."""
        targets = watcher.targets if watcher is not None else ()
        over = max(0, len(targets) - entry.max_servers)
        self.status.dropped[entry.name] = over
        if not over:
            self._capped.discard(entry.name)
            return targets
        if entry.name not in self._capped:
            self._capped.add(entry.name)
            log.warning(
                "server discovery over max_servers: the first servers by name are taken",
                extra={
                    "discovery": entry.name,
                    "servers": len(targets),
                    "max_servers": entry.max_servers,
                    "dropped": over,
                },
            )
        return targets[: entry.max_servers]

    def _seed(self, config: Config, names: set[str]) -> None:
        """Stored servers a DNS entry named that are gone now: departed from now on.

        Without this, servers that left before a restart would never be forgotten.
        """
        self._seeded = True
        now = SYSTEM_CLOCK.monotonic()
        prefixes = [(f"{e.dns}/", e.forget_after) for e in config.discovery if e.dns is not None]
        for server in self.remembered():
            if server in names or server in self._departed:
                continue
            for prefix, forget_after in prefixes:
                if server.startswith(prefix):
                    self._departed[server] = now + forget_after
                    break

    def _track_departures(self, present: dict[str, float], names: set[str]) -> None:
        """Note discovered servers that left (any server named so now is back), then prune."""
        now = SYSTEM_CLOCK.monotonic()
        for name, forget_after in self._present.items():
            if name not in names and name not in self._departed:
                self._departed[name] = now + forget_after
        for name in names:
            self._departed.pop(name, None)
        self._present = present
        self.prune(now)
        self._wake.set()

    def prune(self, now: float | None = None) -> None:
        """Forget the history of servers that left more than their `forget_after` ago."""
        now = SYSTEM_CLOCK.monotonic() if now is None else now
        expired = [name for name, at in self._departed.items() if at <= now]
        for name in expired:
            del self._departed[name]
        self.status.departed = len(self._departed)
        if expired:
            try:
                self.forget(expired)
            except Exception:
                log.exception("forgetting departed servers failed")
            else:
                log.info("departed servers forgotten", extra={"servers": len(expired)})

    async def _prune_loop(self) -> None:
        """Prune when the first departed server is due, or when the departures change."""
        while True:
            due = min(self._departed.values(), default=None)
            timeout = None if due is None else max(0.0, due - SYSTEM_CLOCK.monotonic())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self.prune()

    def sync(self, config: Config) -> None:
        """Watchers for exactly the entries of `config` (a reload adds and removes them)."""
        wanted = {_source_key(entry): entry for entry in config.discovery}
        for key in [key for key in self._watchers if key not in wanted]:
            self._spawn(self._watchers.pop(key).stop())
        for key, entry in wanted.items():
            if key not in self._watchers:
                # With a server_discovery entry only: ~0.1 MiB that static configs never use.
                from exporter.fleet.discovery import Watcher  # noqa: PLC0415

                watcher = Watcher(
                    entry, self._on_change_now, self.status.failures, self.status.rejected
                )
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
        self._spawn(self._prune_loop())

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
            watcher.notify()

    def _spawn(self, coroutine: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
