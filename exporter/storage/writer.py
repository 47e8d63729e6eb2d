"""The one thread that writes the `--storage.path` file: last runs, digests and run history.

A write may wait 5 s for another process's lock, or fail on a full or read-only volume: that
costs saved state, never a run, a scrape or the event loop, which only hands work over. One
thread and one connection do every write, so the writes of a finished run never wait for each
other's locks inside this process, and failure and recovery are reported once for the file.

What waits for the thread is bounded: last runs and digests are coalesced per pair (only the
newest matters), the run history queue holds at most HISTORY_QUEUE_LIMIT records (past that the
oldest is given up). Failures are counted (`on_failure`, the storage self-metric) and logged when
saving starts or stops failing, not once per run. Without a usable file it tries to open one
again every RETRY_OPEN_SECONDS (the volume may come back).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections import deque
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final

from exporter.storage.database import Database
from exporter.storage.errors import StoreError
from exporter.storage.last_runs import LastRuns
from exporter.storage.run_history import insert_statements

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Sequence

    from exporter.state.history import RunRecord
    from exporter.state.pairs import LastRun, PairState

log = logging.getLogger("exporter.store")

RETRY_OPEN_SECONDS: Final = 60.0
"""How often a writer without a usable file tries to open it again."""
HISTORY_QUEUE_LIMIT: Final = 1000
"""Run records waiting for the thread, at most (a locked file holds each write up to 5 s)."""
THREAD_NAME: Final = "storage writer"

Statements = list[tuple[str, "Sequence[object]"]]
_HistoryWrite = tuple[int, Statements, str, str]
"""(place, statements of one transaction, the server and model a failure names)."""


class StorageWriter:
    """Saves on a thread of its own; every public method returns at once (call it from the loop)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        database: Database | None,
        on_failure: Callable[[], object] | None = None,
    ) -> None:
        self.path = Path(path)
        self._database = database
        self._on_failure = on_failure
        self._pending: dict[tuple[str, str], tuple[LastRun, float | None]] = {}
        self._digests: dict[tuple[str, str], tuple[str, float | None]] = {}
        self._history: deque[_HistoryWrite] = deque()
        """Run records to store and departed servers' runs to delete, in the order asked."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._written = threading.Condition(self._lock)
        """Notified when `history_written` grows (a waiter of its own: `_wake` is the thread's)."""
        self._closing = False
        self._failing = database is None
        self._next_open = time.monotonic() + RETRY_OPEN_SECONDS
        self.history_queued = 0
        """Run records handed to `insert_run` so far."""
        self.history_written = 0
        """Run records stored (or given up on) so far: every place below it is done."""
        self._thread = threading.Thread(target=self._work, name=THREAD_NAME, daemon=True)
        self._thread.start()

    def save(self, pair: PairState) -> None:
        """Queue `pair`'s last run for saving."""
        if pair.last is None:
            return
        with self._lock:
            self._pending[pair.server, pair.model] = (pair.last, pair.last_success_at)
            self._wake.notify()

    def save_digest(self, pair: PairState) -> None:
        """Queue the last digest seen for `pair` (contract section 6)."""
        digest = pair.holding.known_digest
        if digest is None:
            return
        with self._lock:
            self._digests[pair.server, pair.model] = (digest, pair.holding.last_change_at)
            self._wake.notify()

    def insert_run(self, record: RunRecord, keep: int) -> int:
        """Queue a finished run for the history (its pair keeps its newest `keep` runs).

        Returns its place: it is stored (or given up on) once `history_written` exceeds it.
        """
        dropped = False
        with self._lock:
            if len(self._history) >= HISTORY_QUEUE_LIMIT:
                self._history.popleft()  # counted as done once a later one is written
                dropped = True
            place = self.history_queued
            statements = insert_statements(record, keep)
            self._history.append((place, statements, record.server, record.model))
            self.history_queued += 1
            self._wake.notify()
        if dropped:
            self._failed(f"more than {HISTORY_QUEUE_LIMIT} runs waiting; the oldest is not kept")
        return place

    def delete_runs(self, statements: Statements) -> int:
        """Queue deleting runs, after every record queued before (none of those comes back)."""
        with self._lock:
            place = self.history_queued
            self._history.append((place, statements, "", ""))
            self.history_queued += 1
            self._wake.notify()
        return place

    def wait_written(self, place: int, timeout: float) -> bool:
        """Wait until the record at `place` is stored or given up on; False after `timeout`.

        For a caller that needs it in the file before it goes on (the tests of this package).
        """
        with self._written:
            return self._written.wait_for(lambda: self.history_written > place, timeout)

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (for up to `timeout` seconds) and close the file."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning(
                "state writer did not finish in time; the last runs may not be saved",
                extra={
                    "path": str(self.path),
                    "queued": len(self._pending) + len(self._history),
                },
            )
            return
        if self._database is not None:
            self._database.close()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not (self._pending or self._digests or self._history or self._closing):
                    self._wake.wait()
                batch, self._pending = self._pending, {}
                digests, self._digests = self._digests, {}
                runs = list(self._history)
                self._history.clear()
                closing = self._closing
            self._write(batch, digests, runs)
            with self._lock:
                if runs:
                    self.history_written = runs[-1][0] + 1
                    self._written.notify_all()
                if closing and not (self._pending or self._digests or self._history):
                    return

    def _write(
        self,
        batch: dict[tuple[str, str], tuple[LastRun, float | None]],
        digests: dict[tuple[str, str], tuple[str, float | None]],
        runs: list[_HistoryWrite],
    ) -> None:
        database = self._usable()
        if database is None:
            if batch or digests or runs:
                count = len(batch) + len(digests) + len(runs)
                self._failed(f"{count} writes not done: the file is not open")
            return
        table = LastRuns(database)
        for (server, model), (last, success_at) in batch.items():
            self._attempt(partial(table.write, server, model, last, success_at), server, model)
        for (server, model), (digest, changed_at) in digests.items():
            write = partial(table.write_digest, server, model, digest, changed_at)
            self._attempt(write, server, model)
        for _, statements, server, model in runs:
            self._attempt(partial(database.transaction, statements), server, model)

    def _attempt(self, write: Callable[[], object], server: str, model: str) -> None:
        try:
            write()
        except sqlite3.Error as exc:
            self._failed(str(exc), server=server, model=model)
        else:
            if self._failing:
                self._failing = False
                log.info("saving the state works again", extra={"path": str(self.path)})

    def _usable(self) -> Database | None:
        if self._database is None and time.monotonic() >= self._next_open:
            self._next_open = time.monotonic() + RETRY_OPEN_SECONDS
            try:
                self._database = Database.open(self.path)
            except StoreError as exc:
                log.debug("state file still unusable", extra={"error": str(exc)})
        return self._database

    def _failed(self, error: str, **extra: str) -> None:
        if self._on_failure is not None:
            self._on_failure()
        if not self._failing:
            self._failing = True
            log.error(
                "cannot save the state file; runs go on, their last results are not kept",
                extra={"path": str(self.path), "error": error, **extra},
            )
