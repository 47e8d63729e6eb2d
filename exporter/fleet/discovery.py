"""`server_discovery`: servers from a file or from DNS, refreshed in the background.

Each entry has one `Watcher` task. A refresh produces a list of targets (name and URL); when
it differs from the last good one the watcher calls back, and the runtime applies the config
again (discovered servers join and leave the way a reload adds and removes pairs). A refresh
that fails (unreadable or invalid file, DNS timeout or server failure) is logged and counted
and keeps the last good list, so a flapping file or resolver never empties the schedule; so
does anything else that goes wrong in a refresh or in applying its list: the loop goes on.

Whatever DNS says is input from outside: an SRV target must be a host name (RFC 1123) or an
IP address before it goes into a URL, else the answer would pick the port and path the
template's headers are sent to. Other targets are dropped, counted, and warned about at most
once a minute per entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import yaml

from exporter.config.parsers import check_url, label_value, name_from_url
from exporter.config.yamlfile import (
    BadYamlError,
    InvalidError,
    NodeWalker,
    compose,
    describe,
)
from exporter.core.clock import SYSTEM_CLOCK

if TYPE_CHECKING:
    from collections.abc import Callable

    from exporter.config.types import DiscoveryConfig

log = logging.getLogger("exporter.discovery")

MAX_FILE_BYTES: Final = 4 * 1024 * 1024
"""A discovery file larger than this is an error (a list of 10,000 servers is ~1 MiB)."""
DNS_TIMEOUT: Final = 10.0
"""Seconds one DNS refresh may take at most (less when `refresh_interval` is shorter)."""
_FILE_KEYS: Final = ("name", "url")
REJECT_LOG_INTERVAL: Final = 60.0
"""Seconds between two warnings about rejected DNS targets of one entry."""
_HOST_LABEL: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SHOWN: Final = 80
"""Characters of a rejected target shown in the log (it comes from outside)."""


@dataclass(frozen=True, slots=True, order=True)
class Target:
    """One discovered server: its label value and its base URL."""

    name: str
    url: str


class DiscoveryError(Exception):
    """A refresh failed; the message says why, ready for the log."""


@dataclass(slots=True)
class Answer:
    """One refresh's outcome: the usable targets and the answers dropped as unusable."""

    targets: list[Target]
    rejected: list[str] = field(default_factory=list)


def valid_host(host: str) -> bool:
    """True for an RFC 1123 host name or an IP address literal: nothing a URL reads as more."""
    if "%" not in host:  # an IPv6 scope id is no address another machine can reach
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            return True
    labels = host.split(".")
    return 0 < len(host) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


# ------------------------------------------------------------------ file


def parse_targets(text: str, source: str) -> list[Target]:
    """A YAML or JSON list of `{name, url}` (name defaults to the URL's host:port)."""
    walker = NodeWalker(source)
    try:
        root = compose(text)
    except BadYamlError as exc:
        raise DiscoveryError(walker.format(exc.line, "", exc.message)) from None
    if root is None:
        return []
    if not isinstance(root, yaml.SequenceNode):
        walker.error(root, "", f"expected a list of {{name, url}}, got {describe(root)}")
        raise DiscoveryError("; ".join(walker.messages()))
    targets: list[Target] = []
    seen: dict[str, int] = {}
    for index, item in enumerate(root.value):
        target = _target(walker, item, f"[{index}]")
        if target is None:
            continue
        if target.name in seen:
            same = f"same as [{seen[target.name]}]"
            walker.error(item, f"[{index}].name", f"duplicate server name ({same})")
            continue
        seen[target.name] = index
        targets.append(target)
    if walker.problems:
        raise DiscoveryError("; ".join(walker.messages()))
    return targets


def _target(walker: NodeWalker, item: yaml.Node, path: str) -> Target | None:
    """One `{name, url}` item, or None after reporting what is wrong with it."""
    fields = walker.mapping(item, path, _FILE_KEYS)
    if not isinstance(item, yaml.MappingNode):
        return None
    if "url" not in fields:
        walker.error(item, f"{path}.url", "required key is missing")
        return None
    url = walker.check(fields["url"], f"{path}.url", _url, "")
    if not url:
        return None
    name = name_from_url(url)
    if "name" in fields:
        name = walker.check(fields["name"], f"{path}.name", label_value, "")
    return Target(name, url) if name else None


def _url(node: yaml.Node) -> str:
    value = node.value if isinstance(node, yaml.ScalarNode) else None
    if not isinstance(value, str) or node.tag != "tag:yaml.org,2002:str":
        raise InvalidError(f"expected a URL string, got {describe(node)}")
    return check_url(value)


def file_signature(path: str) -> tuple[int, int, int] | None:
    """(inode, size, mtime) of `path`, None if it cannot be seen: a change means re-read."""
    try:
        info = os.stat(path)  # noqa: PTH116 - one call, no Path object per poll
    except OSError:
        return None
    return info.st_ino, info.st_size, info.st_mtime_ns


def read_targets_file(path: str) -> list[Target]:
    """Read and parse a discovery file (blocking: run it in a thread)."""
    try:
        info = os.stat(path)  # noqa: PTH116
        if not stat.S_ISREG(info.st_mode):
            raise DiscoveryError(f"{path}: not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise DiscoveryError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
        with open(path, "rb") as handle:  # noqa: PTH123
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise DiscoveryError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DiscoveryError(f"{path}: not valid UTF-8") from None
    return parse_targets(text, path)


# ------------------------------------------------------------------ DNS


async def resolve_targets(entry: DiscoveryConfig) -> Answer:
    """One server per answer of the entry's DNS query, named `NAME/ADDRESS:PORT`.

    No such name, or no record of the type, is an empty list (a Service with no ready pod);
    a timeout or a failing server is a `DiscoveryError`. An SRV target that is not a host
    name or an address, or port 0, is rejected (the root name `.` means "no service" and is
    skipped).
    """
    import dns.asyncresolver  # noqa: PLC0415 - only configs with dns discovery pay for it
    import dns.exception  # noqa: PLC0415
    import dns.name  # noqa: PLC0415
    import dns.resolver  # noqa: PLC0415

    assert entry.dns is not None
    resolver = dns.asyncresolver.Resolver(configure=entry.nameserver is None)
    if entry.nameserver is not None:
        host, port = entry.nameserver
        resolver.nameservers = [await _address_of(host, port)]
        resolver.port = port
    resolver.lifetime = min(DNS_TIMEOUT, max(1.0, entry.refresh_interval))
    try:
        answer = await resolver.resolve(entry.dns, entry.type, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return Answer([])
    except dns.exception.DNSException as exc:
        raise DiscoveryError(f"DNS {entry.type} {entry.dns}: {exc}") from None
    found: set[tuple[str, int]] = set()
    rejected: list[str] = []
    for record in answer:
        if entry.type == "SRV":
            if record.target == dns.name.root:
                continue
            target = record.target.to_text(omit_final_dot=True)
            if not valid_host(target) or record.port == 0:
                rejected.append(f"{target}:{record.port}")
                continue
            found.add((target, int(record.port)))
        else:
            assert entry.port is not None
            found.add((str(record.address), entry.port))
    targets = []
    for host, port in sorted(found):
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        targets.append(Target(f"{entry.dns}/{address}", f"{entry.scheme}://{address}"))
    return Answer(targets, rejected)


async def _address_of(host: str, port: int) -> str:
    """`host` as an IP address (dnspython asks addresses, not names)."""
    with contextlib.suppress(ValueError):
        return str(ipaddress.ip_address(host))
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port)
    except OSError as exc:
        raise DiscoveryError(f"nameserver {host}: {exc}") from None
    return str(infos[0][4][0])


# ------------------------------------------------------------------ the watcher


class Watcher:
    """Keeps one entry's last good list fresh; `on_change` is called when it changes."""

    def __init__(
        self,
        entry: DiscoveryConfig,
        on_change: Callable[[], None],
        failures: dict[str, int],
        rejected: dict[str, int] | None = None,
    ) -> None:
        self.entry = entry
        self.targets: tuple[Target, ...] = ()
        self.failures = failures
        """Failed refreshes by entry name (the state's counter, shared by all watchers)."""
        self.rejected = rejected if rejected is not None else {}
        """Rejected DNS targets by entry name (the state's counter, shared by all watchers)."""
        self.refreshed = False
        """True once a refresh succeeded: the list is known, possibly empty."""
        self._on_change = on_change
        self._signature: tuple[int, int, int] | None = None
        self._attempted = False
        self._task: asyncio.Task[None] | None = None
        self._warned_at: float | None = None
        self._unwarned = 0

    async def refresh(self) -> bool:
        """Refresh once; True if the list changed. Failures are logged and counted."""
        entry = self.entry
        try:
            if entry.file is not None:
                signature = file_signature(entry.file)
                if self._attempted and signature == self._signature:
                    return False  # unchanged (or still broken, or still missing: counted once)
                self._attempted = True
                self._signature = signature
                targets = await asyncio.to_thread(read_targets_file, entry.file)
            else:
                answer = await resolve_targets(entry)
                self._reject(answer.rejected)
                targets = answer.targets
        except Exception as exc:  # noqa: BLE001 - any failure keeps the list, none kills the loop
            self.failed(exc)
            return False
        new = tuple(sorted(targets))
        changed = new != self.targets or not self.refreshed
        if new != self.targets:
            joined = len(set(new) - set(self.targets))
            left = len(set(self.targets) - set(new))
            log.info(
                "server discovery changed",
                extra={
                    "discovery": entry.name,
                    "servers": len(new),
                    "joined": joined,
                    "left": left,
                },
            )
        self.targets = new
        self.refreshed = True
        return changed

    def failed(self, exc: BaseException) -> None:
        """Log and count a failed refresh; the list in force stays."""
        name = self.entry.name
        self.failures[name] = self.failures.get(name, 0) + 1
        error = str(exc) if isinstance(exc, DiscoveryError) else f"{type(exc).__name__}: {exc}"
        log.error(
            "server discovery failed, keeping the last good list",
            extra={"discovery": name, "servers": len(self.targets), "error": error[:2000]},
        )

    def _reject(self, rejected: list[str]) -> None:
        """Count targets that are no host name; warn at most once per REJECT_LOG_INTERVAL."""
        if not rejected:
            return
        name = self.entry.name
        self.rejected[name] = self.rejected.get(name, 0) + len(rejected)
        self._unwarned += len(rejected)
        now = SYSTEM_CLOCK.monotonic()
        if self._warned_at is not None and now - self._warned_at < REJECT_LOG_INTERVAL:
            return
        log.warning(
            "discovered target rejected: not a host name or an IP address",
            extra={
                "discovery": name,
                "target": repr(rejected[0][:_SHOWN]),
                "rejected": self._unwarned,
            },
        )
        self._warned_at, self._unwarned = now, 0

    async def tick(self) -> None:
        """One refresh, and the callback if the list changed; nothing raised gets out.

        If applying the new list fails, the list before it is put back (and applied again,
        so the runtime holds the last good list in full), and the failure is counted.
        """
        previous, refreshed = self.targets, self.refreshed
        try:
            if await self.refresh():
                self._on_change()
        except Exception as exc:  # noqa: BLE001 - the loop must outlive any failure
            self.failed(exc)
            self.targets, self.refreshed = previous, refreshed
            self.notify()

    def notify(self) -> None:
        """Call `on_change`; a failure is logged and counted, never raised."""
        try:
            self._on_change()
        except Exception as exc:  # noqa: BLE001
            self.failed(exc)

    def start(self) -> None:
        """Refresh every `refresh_interval` in a task of its own."""
        self._task = asyncio.create_task(self._loop(), name=f"discovery {self.entry.name}")

    async def stop(self) -> None:
        """Cancel the task and wait for it."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception as exc:  # noqa: BLE001 - a dead loop must not fail the shutdown
            self.failed(exc)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.entry.refresh_interval)
            await self.tick()
