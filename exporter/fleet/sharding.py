"""Which servers this exporter schedules: `--shard=I --total-shards=N`, Prometheus' way.

A server belongs to shard `hashmod(name, N)`, the function of Prometheus' `hashmod` relabel
action (md5 of the value, the last 8 bytes read as a big-endian unsigned integer, modulo N),
so a Prometheus relabel rule can compute the same split, and N exporters over one config
schedule every server exactly once with no coordination. `--shard=auto` reads I from the
trailing `-<number>` of the host name: the ordinal of a Kubernetes StatefulSet pod.
"""

from __future__ import annotations

import hashlib
import re
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from exporter.config.types import ServerConfig

_ORDINAL: Final = re.compile(r"-([0-9]+)$")


def hashmod(value: str, modulus: int) -> int:
    """Prometheus' `hashmod`: md5 of the UTF-8 value, last 8 bytes big-endian, mod `modulus`."""
    digest = hashlib.md5(value.encode(), usedforsecurity=False).digest()
    return int.from_bytes(digest[8:], "big") % modulus


class ShardError(ValueError):
    """A shard flag that cannot work; the message is ready for the user."""


@dataclass(frozen=True, slots=True)
class Shard:
    """The part of the servers one exporter schedules: `index` of `total`."""

    index: int = 0
    total: int = 1

    def owns(self, server: ServerConfig) -> bool:
        """True if `server` is scheduled here."""
        return self.total == 1 or hashmod(server.name, self.total) == self.index


def ordinal_of(hostname: str) -> int:
    """The trailing `-<number>` of a host name (`pulls-exporter-2` -> 2); ShardError if none."""
    short = hostname.split(".", 1)[0]
    match = _ORDINAL.search(short)
    if match is None:
        raise ShardError(
            f"--shard=auto: the host name {hostname!r} does not end in -<number>"
            " (as a StatefulSet pod's does); pass --shard=<number> instead"
        )
    return int(match.group(1))


def resolve_shard(shard: str, total: int, hostname: str | None = None) -> Shard:
    """The `Shard` of the flags `--shard` (a number or `auto`) and `--total-shards`."""
    if total < 1:
        raise ShardError(f"--total-shards must be at least 1, got {total}")
    if shard == "auto":
        index = ordinal_of(socket.gethostname() if hostname is None else hostname)
    elif shard.isdigit():
        index = int(shard)
    else:
        raise ShardError(f"--shard must be a number from 0 to N-1 or auto, got {shard!r}")
    if index >= total:
        source = " (from the host name)" if shard == "auto" else ""
        raise ShardError(
            f"--shard={index}{source} is not below --total-shards={total}:"
            f" shards are 0..{total - 1}"
        )
    return Shard(index, total)
