"""What the HTTP side may read and do: narrow interfaces, handed in by `exporter.app.assemble`.

Handlers read the state and the run history, and take at most two actions: start a pair's run
now and reload the config. An action the flags leave off (`--web.enable-admin-api`,
`--web.enable-lifecycle`) is not handed in at all, so no handler can reach it by mistake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from exporter.state.history import ActiveRun, History
    from exporter.state.pairs import ExporterState


class PullStarter(Protocol):
    """Starts a pair's run outside its schedule (the scheduler's `pull_now`)."""

    def pull_now(self, server_name: str, model_name: str) -> ActiveRun:
        """Raises KeyError (unknown pair), PairBusyError, NoHistoryError; nothing started."""
        ...


class Reloader(Protocol):
    """Reads the config file again, all or nothing (the runtime's `reload`)."""

    async def reload(self) -> tuple[str, ...]:
        """The errors; empty when the new config is in force."""
        ...


@dataclass(frozen=True, slots=True)
class Site:
    """Everything a handler sees: two things to read, and the actions the flags allow."""

    state: ExporterState
    history: History
    pulls: PullStarter | None = None
    """`POST /api/v1/pulls` and the page's "pull now"; None unless `--web.enable-admin-api`."""
    reloads: Reloader | None = None
    """`POST /-/reload`; None unless `--web.enable-lifecycle`."""
