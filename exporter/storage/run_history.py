"""Run history in the `--storage.path` SQLite file: table `run_history`, one row per run.

The file itself is opened and vetted by `exporter.storage.last_runs` (ours, sound, WAL); this
module opens two more connections to it for its own table. Writes (one INSERT and one bounded
DELETE per finished run, one transaction) go to a thread of their own, since a write may wait
seconds for another process's lock; `written` tells the loop how far it got. Reads run on the
loop: in WAL mode a reader never waits for a writer, and every read is bounded (`LIMIT`, one row
by key).
A table with other columns (an older layout) is history, not state: it is dropped and recreated
with a warning.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections import deque
from typing import TYPE_CHECKING, Final, Self

from exporter.state.history import RunRecord

if TYPE_CHECKING:
    import os
    from collections.abc import Collection

log = logging.getLogger("exporter.historydb")

_INT64_MAX: Final = (1 << 63) - 1
_COLUMNS: Final = (
    "id",
    "server",
    "model",
    "trigger",
    "started_at",
    "ended_at",
    "duration_seconds",
    "success",
    "reason",
    "error",
    "downloaded_bytes",
    "reused_bytes",
    "phase_seconds",
    "transcript",
)
_LISTED: Final = _COLUMNS[:-1]
_CREATE: Final = """CREATE TABLE IF NOT EXISTS run_history (
    id INTEGER PRIMARY KEY,
    server TEXT NOT NULL,
    model TEXT NOT NULL,
    trigger TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL NOT NULL,
    duration_seconds REAL NOT NULL,
    success INTEGER NOT NULL,
    reason TEXT,
    error TEXT NOT NULL,
    downloaded_bytes INTEGER NOT NULL,
    reused_bytes INTEGER NOT NULL,
    phase_seconds TEXT NOT NULL,
    transcript BLOB
)"""
_INDEX: Final = "CREATE INDEX IF NOT EXISTS run_history_pair ON run_history (server, model, id)"
# Every statement below is built from the constant column names, never from input.
_INSERT: Final = (
    f"INSERT OR REPLACE INTO run_history ({', '.join(_COLUMNS)}) "  # noqa: S608
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)
_PRUNE: Final = (
    "DELETE FROM run_history WHERE server = ? AND model = ? AND id <= "
    "(SELECT id FROM run_history WHERE server = ? AND model = ? ORDER BY id DESC LIMIT 1 OFFSET ?)"
)
_FORGET: Final = "DELETE FROM run_history WHERE server = ?"
_SELECT_LISTED: Final = f"SELECT {', '.join(_LISTED)} FROM run_history"  # noqa: S608
_SELECT_ONE: Final = f"SELECT {', '.join(_COLUMNS)} FROM run_history WHERE id = ?"  # noqa: S608
_LATEST: Final = (
    f"{_SELECT_LISTED} WHERE id IN (SELECT max(id) FROM run_history GROUP BY server, model)"  # noqa: S608
)


class HistoryDB:
    """The `run_history` table of an open store file."""

    def __init__(self, reader: sqlite3.Connection, writer: sqlite3.Connection) -> None:
        self._connection = reader
        self._writer = writer
        self._lock = threading.Lock()
        self._queue: deque[tuple[RunRecord, int] | frozenset[str] | None] = deque()
        self._wake = threading.Condition()
        self.queued = 0
        """Records handed to `insert` so far."""
        self.written = 0
        """Records the writer thread has stored (or given up on), in the order handed over."""
        self._thread = threading.Thread(target=self._work, name="history writer", daemon=True)
        self._thread.start()

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Self:
        """Open the table in the store file at `path` (already vetted by `Store.open`)."""
        reader = _connect(path)
        try:
            columns = tuple(row[1] for row in reader.execute("PRAGMA table_info(run_history)"))
            if columns and columns != _COLUMNS:
                log.warning(
                    "run history table has another layout; starting a new history",
                    extra={"path": str(path)},
                )
                reader.execute("DROP TABLE run_history")
            reader.execute(_CREATE)
            reader.execute(_INDEX)
            writer = _connect(path)
        except sqlite3.Error:
            reader.close()
            raise
        return cls(reader, writer)

    def insert(self, record: RunRecord, *, keep: int) -> int:
        """Queue `record` for storing (the pair's runs beyond the newest `keep` are dropped).

        Returns its place in the queue: it is in the table once `written` exceeds it.
        """
        with self._wake:
            self._queue.append((record, keep))
            self._wake.notify()
        self.queued += 1
        return self.queued - 1

    def forget_servers(self, servers: Collection[str]) -> None:
        """Queue deleting every run of `servers` (after the records queued before)."""
        with self._wake:
            self._queue.append(frozenset(servers))
            self._wake.notify()
        self.queued += 1  # a place in the queue like a record's, so `written` stays in step

    def _work(self) -> None:
        while True:
            with self._wake:
                while not self._queue:
                    self._wake.wait()
                item = self._queue.popleft()
            if item is None:
                return
            if isinstance(item, frozenset):
                self._delete(item)
            else:
                record, keep = item
                self._store(record, keep)
            self.written += 1

    def _delete(self, servers: frozenset[str]) -> None:
        writer = self._writer
        try:
            writer.execute("BEGIN IMMEDIATE")
            try:
                writer.executemany(_FORGET, [(server,) for server in sorted(servers)])
                writer.execute("COMMIT")
            except BaseException:
                writer.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            log.warning("cannot forget departed servers' runs", extra={"error": str(exc)})

    def _store(self, record: RunRecord, keep: int) -> None:
        values = (
            record.id,
            record.server,
            record.model,
            record.trigger,
            record.started_at,
            record.ended_at,
            record.duration_seconds,
            int(record.success),
            record.reason,
            record.error,
            min(max(record.downloaded_bytes, 0), _INT64_MAX),
            min(max(record.reused_bytes, 0), _INT64_MAX),
            json.dumps(record.phase_seconds),
            record.transcript,
        )
        pair = (record.server, record.model)
        writer = self._writer
        try:
            writer.execute("BEGIN IMMEDIATE")
            try:
                writer.execute(_INSERT, values)
                writer.execute(_PRUNE, (*pair, *pair, keep))
                writer.execute("COMMIT")
            except BaseException:
                writer.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            log.warning(
                "cannot save the run in the history",
                extra={"server": record.server, "model": record.model, "error": str(exc)},
            )

    def query(
        self, *, server: str | None, model: str | None, success: bool | None, limit: int
    ) -> list[RunRecord]:
        """The newest runs matching the filters, without transcripts."""
        where: list[str] = []
        args: list[object] = []
        for column, value in (("server", server), ("model", model)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if success is not None:
            where.append("success = ?")
            args.append(int(success))
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        sql = f"{_SELECT_LISTED}{clause} ORDER BY id DESC LIMIT ?"
        return self._select(sql, (*args, limit))

    def get(self, run_id: int) -> RunRecord | None:
        """One run with its transcript."""
        if not 0 <= run_id <= _INT64_MAX:
            return None
        rows = self._select(_SELECT_ONE, (run_id,))
        return rows[0] if rows else None

    def latest_per_pair(self) -> list[RunRecord]:
        """The last run of every pair in the table."""
        return self._select(_LATEST, ())

    def max_id(self) -> int:
        """The largest id stored, 0 when empty: new ids continue after it."""
        try:
            with self._lock:
                row = self._connection.execute("SELECT max(id) FROM run_history").fetchone()
        except sqlite3.Error:
            return 0
        return int(row[0] or 0)

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (for at most `timeout` seconds), then close both connections."""
        with self._wake:
            self._queue.append(None)
            self._wake.notify()
        self._thread.join(timeout)
        with self._lock:
            self._connection.close()
        if not self._thread.is_alive():
            self._writer.close()

    def _select(self, sql: str, args: tuple[object, ...]) -> list[RunRecord]:
        try:
            with self._lock:
                rows = self._connection.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            log.warning("cannot read the run history", extra={"error": str(exc)})
            return []
        records = []
        for row in rows:
            record = _decode(row)
            if record is not None:
                records.append(record)
        return records


def _connect(path: str | os.PathLike[str]) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def _decode(row: tuple[object, ...]) -> RunRecord | None:
    """A row as a record, or None when it is not one we could have written."""
    values = list(row) + [None] * (len(_COLUMNS) - len(row))
    fields = dict(zip(_COLUMNS, values, strict=True))
    try:
        phases = json.loads(str(fields["phase_seconds"]))
        if not isinstance(phases, dict):
            return None
        transcript = fields["transcript"]
        reason = fields["reason"]
        return RunRecord(
            id=int(str(fields["id"])),
            server=str(fields["server"]),
            model=str(fields["model"]),
            trigger=str(fields["trigger"]),
            started_at=float(str(fields["started_at"])),
            ended_at=float(str(fields["ended_at"])),
            duration_seconds=float(str(fields["duration_seconds"])),
            success=bool(fields["success"]),
            reason=None if reason is None else str(reason),
            error=str(fields["error"]),
            downloaded_bytes=int(str(fields["downloaded_bytes"])),
            reused_bytes=int(str(fields["reused_bytes"])),
            phase_seconds={str(k): float(v) for k, v in phases.items()},
            transcript=transcript if isinstance(transcript, bytes) else None,
        )
    except (ValueError, TypeError):
        return None
