"""The one owner of the `--storage.path` file for a running exporter.

Opens and checks it once (`exporter.storage.database`), reads what it holds for the start,
then keeps two connections: one for the writer thread (`exporter.storage.writer`, every write)
and one for the reader thread (history reads for the API and the page). `close` stops both.
"""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING, Self

from exporter.storage.database import Database
from exporter.storage.errors import StoreError, StorePathError
from exporter.storage.last_runs import LastRuns, StoredPair
from exporter.storage.run_history import RunHistory
from exporter.storage.writer import StorageWriter

if TYPE_CHECKING:
    import os
    from collections.abc import Callable

    from exporter.state.pairs import PairState

log = logging.getLogger("exporter.store")


class Storage:
    """The file, open for a run of the exporter; make one with `open`, `close` it at the end."""

    def __init__(
        self,
        writer: StorageWriter,
        history: RunHistory | None,
        stored: dict[tuple[str, str], StoredPair],
        digests: dict[tuple[str, str], tuple[str, float | None]],
    ) -> None:
        self.writer = writer
        self.path = writer.path
        self.history = history
        """The run history's backend, None when the file could not be opened at start."""
        self.stored = stored
        """Each pair's last run as the file held it at start-up."""
        self.digests = digests
        """Each pair's last digest as the file held it at start-up."""

    @classmethod
    def open(
        cls, path: str | os.PathLike[str], on_failure: Callable[[], object] | None = None
    ) -> Self:
        """Open the file at `path`; a file that cannot be used now costs the saved state.

        Raises StorePathError (only) when the path cannot be right. `on_failure` is called for
        every failed open or write (the storage self-metric).
        """
        try:
            database = Database.open(path)
        except StorePathError:
            raise
        except StoreError as exc:
            if on_failure is not None:
                on_failure()
            log.error(  # noqa: TRY400 - the message says it all
                "cannot use the state file; running without saved state",
                extra={"path": str(path), "error": exc.reason},
            )
            return cls(StorageWriter(path, None, on_failure), None, {}, {})
        table = LastRuns(database)
        stored, digests = table.load(), table.load_digests()
        writer = StorageWriter(path, database, on_failure)
        try:
            history = RunHistory(database.reader(), writer)
        except sqlite3.Error as exc:
            history = None
            log.warning(
                "cannot keep the run history in the state file; keeping it in memory",
                extra={"path": str(path), "error": str(exc)},
            )
        return cls(writer, history, stored, digests)

    def save(self, pair: PairState) -> None:
        """Queue `pair`'s last run for the writer thread; returns at once."""
        self.writer.save(pair)

    def save_digest(self, pair: PairState) -> None:
        """Queue `pair`'s last seen digest for the writer thread; returns at once."""
        self.writer.save_digest(pair)

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (for up to `timeout` seconds), then close both connections."""
        self.writer.close(timeout)
        if self.history is not None:
            self.history.close()
