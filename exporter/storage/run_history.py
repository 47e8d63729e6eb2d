"""Run history in the `--storage.path` file: table `run_history`, one row per finished run.

Writes (one INSERT and one bounded DELETE per finished run, one transaction) are queued for the
storage writer thread (`exporter.storage.writer`); `written` tells the loop how far it got. Reads
for the API and the page run on a reader thread with a connection of their own, never on the
event loop: in WAL mode a reader does not wait for our writer, but it may wait seconds for
another process that holds the file, and every read is bounded (`LIMIT`, one row by key).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Final, Protocol

import msgspec

from exporter.ollama.protocol import Phase
from exporter.state.runs import RunRecord, Trigger
from exporter.storage.rows import BadRowError, Row, decode_rows
from exporter.storage.schema import INT64_MAX, RUN_HISTORY

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Sequence

    from exporter.storage.database import Database

log = logging.getLogger("exporter.store")

READER_THREAD: Final = "storage reader"
_COLUMNS: Final = RUN_HISTORY.columns
_TRIGGERS: Final = {trigger.value: trigger for trigger in Trigger}
_phases: Final = msgspec.json.Decoder(dict[Phase, float])
"""`phase_seconds` as `json.dumps` wrote it: phase values to seconds (an integer is taken)."""
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
# A listing leaves the transcript out (NULL in its place): it can be megabytes per run.
_SELECT_LISTED: Final = f"SELECT {', '.join(_COLUMNS[:-1])}, NULL FROM run_history"  # noqa: S608
_SELECT_ONE: Final = f"SELECT {', '.join(_COLUMNS)} FROM run_history WHERE id = ?"  # noqa: S608
_LATEST: Final = (
    f"{_SELECT_LISTED} WHERE id IN (SELECT max(id) FROM run_history GROUP BY server, model)"  # noqa: S608
)


class RunQueue(Protocol):
    """What this table needs from the writer thread (`exporter.storage.writer`)."""

    @property
    def history_written(self) -> int:
        """Records stored or given up on: every place below it is done."""
        ...

    def insert_run(self, record: RunRecord, keep: int) -> int:
        """Queue `record`; returns its place."""
        ...

    def delete_runs(self, statements: list[tuple[str, Sequence[object]]]) -> int:
        """Queue `statements` after every record queued before; returns their place."""
        ...


def insert_statements(record: RunRecord, keep: int) -> list[tuple[str, Sequence[object]]]:
    """The statements that store `record` and drop its pair's runs beyond the newest `keep`.

    The row is what schema version 1 wrote, byte for byte: enums as their values and
    `phase_seconds` as `json.dumps` of a `{phase: seconds}` object.
    """
    phases = {phase.value: seconds for phase, seconds in record.phase_seconds.items()}
    values = (
        record.id,
        record.server,
        record.model,
        record.trigger.value,
        record.started_at,
        record.ended_at,
        record.duration_seconds,
        int(record.success),
        None if record.reason is None else record.reason.value,
        record.error,
        min(max(record.downloaded_bytes, 0), INT64_MAX),
        min(max(record.reused_bytes, 0), INT64_MAX),
        json.dumps(phases),
        record.transcript,
    )
    pair = (record.server, record.model)
    return [(_INSERT, values), (_PRUNE, (*pair, *pair, keep))]


class RunHistory:
    """The history's backend in the file (`exporter.state.history.HistoryBackend`)."""

    def __init__(self, reader: Database, writer: RunQueue) -> None:
        self._reader = reader
        self._writer = writer
        self._reads = ThreadPoolExecutor(1, thread_name_prefix=READER_THREAD)

    @property
    def written(self) -> int:
        """Records the writer thread has stored (or given up on): every place below it."""
        return self._writer.history_written

    def insert(self, record: RunRecord, *, keep: int) -> int:
        """Queue `record` for storing; returns its place (stored once `written` exceeds it)."""
        return self._writer.insert_run(record, keep)

    def forget_servers(self, servers: Collection[str]) -> None:
        """Queue deleting every run of `servers` (after the records queued before them)."""
        self._writer.delete_runs([(_FORGET, (server,)) for server in sorted(servers)])

    def latest_per_pair(self) -> list[RunRecord]:
        """The last run of every pair in the table (at start-up, before the loop runs)."""
        return self._select(_LATEST, ())

    def max_id(self) -> int:
        """The largest id stored, 0 when empty: new ids continue after it (at start-up)."""
        try:
            rows = self._reader.select("SELECT max(id) FROM run_history")
        except sqlite3.Error:
            return 0
        value = rows[0][0]
        return value if isinstance(value, int) and value > 0 else 0

    async def query(
        self, *, server: str | None, model: str | None, success: bool | None, limit: int
    ) -> list[RunRecord]:
        """The newest runs matching the filters, without transcripts; off the event loop."""
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
        return await self._off_loop(lambda: self._select(sql, (*args, limit)))

    async def get(self, run_id: int) -> RunRecord | None:
        """One run with its transcript; off the event loop."""
        if not 0 <= run_id <= INT64_MAX:
            return None
        rows = await self._off_loop(lambda: self._select(_SELECT_ONE, (run_id,)))
        return rows[0] if rows else None

    def close(self) -> None:
        """Stop the reader thread and close its connection (the writer closes its own)."""
        self._reads.shutdown(wait=False, cancel_futures=True)
        self._reader.close()

    async def _off_loop(self, read: Callable[[], list[RunRecord]]) -> list[RunRecord]:
        # One reader thread: reads queue behind each other instead of taking a thread each.
        return await asyncio.get_running_loop().run_in_executor(self._reads, read)

    def _select(self, sql: str, args: Sequence[object]) -> list[RunRecord]:
        try:
            rows = self._reader.select(sql, args)
        except sqlite3.Error as exc:
            log.warning(
                "cannot read the run history",
                extra={"path": str(self._reader.path), "error": str(exc)},
            )
            return []
        return decode_rows(
            _COLUMNS, rows, _decode, table=RUN_HISTORY.name, path=str(self._reader.path)
        )


def _decode(row: Row) -> RunRecord:
    """A row as a record; BadRowError when it is not one we could have written."""
    reason = row.reason("reason")
    success = row.flag("success")
    run_id = row.count("id")
    trigger = _TRIGGERS.get(row.text("trigger"))
    if success != (reason is None) or run_id == 0 or trigger is None:
        raise BadRowError("success, id or trigger")
    try:
        phases = _phases.decode(row.text("phase_seconds"))
    except msgspec.DecodeError:
        raise BadRowError("phase_seconds") from None
    if Phase.IDLE in phases or not all(math.isfinite(s) for s in phases.values()):
        raise BadRowError("phase_seconds")
    return RunRecord(
        id=run_id,
        server=row.text("server"),
        model=row.text("model"),
        trigger=trigger,
        started_at=row.number("started_at"),
        ended_at=row.number("ended_at"),
        duration_seconds=row.number("duration_seconds"),
        success=success,
        reason=reason,
        error=row.text("error"),
        downloaded_bytes=row.count("downloaded_bytes"),
        reused_bytes=row.count("reused_bytes"),
        phase_seconds=phases,
        transcript=row.blob("transcript"),
    )
