"""What the exporter knows of the copy each server holds: inventory and check-mode state.

Pure bookkeeping, read by the metrics at scrape time: the inventory poller and the registry
checks write here through the methods, nothing else does. A *change* is an observation whose
digest differs from the last digest seen for the pair (kept across restarts with
`--storage.path`); the first observation ever is not one.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from exporter.ollama.tags import Held

STAMPS: Final = itertools.count(1)
"""Change stamps: every write to a `PairHolding` or a `PairState` takes the next one, so the
renderer can tell an unchanged pair by its stamp, without reading its values."""


class InventoryResult(StrEnum):
    """`result` of `ollama_pull_inventory_requests_total`."""

    OK = "ok"
    OLLAMA_UNREACHABLE = "ollama_unreachable"
    OLLAMA_HTTP_ERROR = "ollama_http_error"
    PROTOCOL_ERROR = "protocol_error"


class CheckResult(StrEnum):
    """`result` of `ollama_pull_registry_checks_total`."""

    OK = "ok"
    UNREACHABLE = "unreachable"
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    ERROR = "error"


@dataclass(slots=True)
class PairHolding:
    """One pair: the held copy per the last inventory, its changes, and the registry's tag."""

    tracked: bool = False
    """The pair's server has the inventory enabled (its change counter exists)."""
    present: bool | None = None
    """None until the first inventory answer for the pair's server."""
    digest: str | None = None
    """The held copy's digest (64 hex); None when not held or not known yet."""
    size: int | None = None
    known_digest: str | None = None
    """The last digest ever seen for the pair, also while it is not held: changes compare to it."""
    changes_total: int = 0
    last_change_at: float | None = None
    checks: dict[CheckResult, int] | None = None
    """Registry checks by result; None unless the pair is in `check` mode."""
    registry_digest: str | None = None
    """The tag's manifest digest at the registry, from the last successful check."""
    registry_rewritten: str | None = None
    """The same manifest's digest as Ollama before 0.19 stores it (re-encoded)."""
    stamp: int = field(default=0, repr=False, compare=False)
    """Taken from `STAMPS` at every write: equal stamps, nothing written in between."""

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        object.__setattr__(self, "stamp", next(STAMPS))

    def observe(self, held: Held | None, now: float) -> bool:
        """Fold in one inventory observation; returns True when it is a change."""
        self.present = held is not None
        if held is None:
            self.digest = self.size = None
            return False
        self.digest, self.size = held.digest, held.size
        changed = self.known_digest is not None and self.known_digest != held.digest
        self.known_digest = held.digest
        if changed:
            self.changes_total += 1
            self.last_change_at = now
        return changed

    def restore(self, digest: str, changed_at: float | None) -> None:
        """Take the stored last digest (`--storage.path`) unless one was seen since start."""
        if self.known_digest is None:
            self.known_digest = digest
            if self.last_change_at is None:
                self.last_change_at = changed_at

    def set_checking(self, checking: bool) -> None:
        """Enter (counters at 0) or leave `check` mode."""
        if checking and self.checks is None:
            self.checks = dict.fromkeys(CheckResult, 0)
        elif not checking:
            self.checks = None
            self.registry_digest = self.registry_rewritten = None

    def checked(
        self, result: CheckResult, digest: str | None = None, rewritten: str | None = None
    ) -> None:
        """One registry check ended with `result` (and the tag's digests when `ok`)."""
        if self.checks is not None:
            self.checks[result] += 1
            self.stamp = next(STAMPS)  # a write in place: stamped by hand
        if digest is not None:
            self.registry_digest, self.registry_rewritten = digest, rewritten

    @property
    def update_available(self) -> int | None:
        """1 when the registry's digest differs from the held one (or none is held), else 0."""
        if self.checks is None or self.registry_digest is None or self.present is None:
            return None
        current = self.digest is not None and self.digest in {
            self.registry_digest,
            self.registry_rewritten,
        }
        return 0 if self.present and current else 1


@dataclass(slots=True)
class ServerHolding:
    """One server's inventory requests, and what its last good answer listed."""

    requests: dict[InventoryResult, int] = field(
        default_factory=lambda: dict.fromkeys(InventoryResult, 0)
    )
    held: dict[str, Held] | None = None
    """By canonical model name; None until the first good answer."""
    last_ok_at: float | None = None
    problem: str | None = None
    """Why the last request failed, None after a good one (for the log and pages)."""
