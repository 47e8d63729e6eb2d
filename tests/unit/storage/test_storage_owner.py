"""The one owner of the state file: format compatibility, one writer thread, reads off the loop."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from exporter.ollama.protocol import RUN_PHASES, Reason
from exporter.state.history import ActiveRun, History, RunRecord, pack, unpack
from exporter.state.pairs import ExporterState, LastRun, PairState
from exporter.state.transcript import TranscriptLine, TranscriptText
from exporter.storage import database as database_module
from exporter.storage import writer as writer_module
from exporter.storage.last_runs import restore, restore_digests
from exporter.storage.schema import APPLICATION_ID
from exporter.storage.store import Storage
from exporter.storage.writer import THREAD_NAME
from tests.unit.state.test_history import run_once

if TYPE_CHECKING:
    from pathlib import Path

# The format as the exporter wrote it before the storage had one owner (schema version 1),
# frozen here: a file written then must open and restore now.
V1_TABLES = {
    "last_run": """CREATE TABLE last_run (
    server TEXT NOT NULL,
    model TEXT NOT NULL,
    success INTEGER NOT NULL,
    reason TEXT,
    ended_at REAL NOT NULL,
    duration_seconds REAL NOT NULL,
    manifest_seconds REAL NOT NULL, download_seconds REAL NOT NULL, verify_seconds REAL NOT NULL, write_seconds REAL NOT NULL, prune_seconds REAL NOT NULL,
    downloaded_bytes INTEGER NOT NULL, completed_bytes INTEGER NOT NULL, expected_bytes INTEGER NOT NULL, layers INTEGER NOT NULL, layers_completed INTEGER NOT NULL,
    last_success_at REAL,
    PRIMARY KEY (server, model)
) WITHOUT ROWID""",
    "model_digest": """CREATE TABLE model_digest (
    server TEXT NOT NULL,
    model TEXT NOT NULL,
    digest TEXT NOT NULL,
    changed_at REAL,
    PRIMARY KEY (server, model)
) WITHOUT ROWID""",
    "run_history": """CREATE TABLE run_history (
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
)""",
    "run_history_pair": "CREATE INDEX run_history_pair ON run_history (server, model, id)",
}
TEXT = TranscriptText((TranscriptLine(0.5, '{"status":"pulling manifest"}'),), 0)


def _v1_file(path: Path, *tables: str) -> None:
    """A file as the exporter wrote it at schema version 1, with one row in each table."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute(f"PRAGMA application_id={APPLICATION_ID}")
        connection.execute("PRAGMA user_version=1")
        for name in tables:
            connection.execute(V1_TABLES[name])
        phases = ", ".join(str(1.5 + i) for i in range(len(RUN_PHASES)))
        connection.execute(
            "INSERT INTO last_run VALUES "
            f"('gpu', 'qwen3', 0, 'stalled', 1700000100.0, 12.5, {phases}, 10, 11, 12, 3, 2, 1700000000.0)"
        )
        if "model_digest" in tables:
            connection.execute(
                "INSERT INTO model_digest VALUES ('gpu', 'qwen3', 'sha256:abc', 1.5)"
            )
        if "run_history" in tables:
            connection.execute(
                "INSERT INTO run_history VALUES (7, 'gpu', 'qwen3', 'schedule', 1700000087.5, "
                "1700000100.0, 12.5, 0, 'stalled', 'no bytes for 60s', 10, 4, "
                "'{\"manifest\": 1.5}', ?)",
                (pack(TEXT),),
            )
    finally:
        connection.close()


def _schema(path: Path) -> dict[str, str]:
    connection = sqlite3.connect(path)
    try:
        rows = connection.execute("SELECT name, sql FROM sqlite_master").fetchall()
    finally:
        connection.close()
    return {str(name): str(sql) for name, sql in rows}


def test_a_file_of_the_previous_version_opens_and_restores(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _v1_file(path, "last_run", "model_digest", "run_history", "run_history_pair")
    state = ExporterState()
    pair = state.pairs["gpu", "qwen3"] = PairState("gpu", "qwen3", 60.0)
    storage = Storage.open(path)
    try:
        assert restore(state, storage.stored) == 1
        assert restore_digests(state, storage.digests) == 1
        history = History(10, storage.history)
        listed = asyncio.run(history.runs())
        record = asyncio.run(history.run(7))
    finally:
        storage.close()
    assert pair.last == LastRun(
        success=False,
        reason=Reason.STALLED,
        ended_at=1_700_000_100.0,
        duration=12.5,
        phase_durations={phase: 1.5 + i for i, phase in enumerate(RUN_PHASES)},
        downloaded_bytes=10,
        completed_bytes=11,
        expected_bytes=12,
        layers=3,
        layers_completed=2,
    )
    assert pair.last_success_at == 1_700_000_000.0
    assert pair.holding.known_digest == "sha256:abc"
    assert [run.id for run in listed] == [7]
    assert history.last_record("gpu", "qwen3") == listed[0]
    assert isinstance(record, RunRecord)
    assert (record.reason, record.error, record.reused_bytes) == (
        Reason.STALLED,
        "no bytes for 60s",
        4,
    )
    assert record.transcript is not None
    assert unpack(record.transcript) == TEXT
    assert not list(tmp_path.glob("state.db.*-*"))  # nothing moved aside
    # And what a fresh file gets is that same format, table for table.
    assert _schema(path) == V1_TABLES
    Storage.open(tmp_path / "fresh.db").close()
    assert _schema(tmp_path / "fresh.db") == V1_TABLES


def test_tables_an_older_file_lacks_are_created(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    _v1_file(path, "last_run")
    storage = Storage.open(path)
    storage.close()
    assert list(storage.stored) == [("gpu", "qwen3")]
    assert storage.history is not None
    assert _schema(path) == V1_TABLES
    assert not list(tmp_path.glob("state.db.*-*"))


@pytest.mark.parametrize("table", ["last_run", "model_digest", "run_history"])
def test_a_table_of_ours_with_other_columns_moves_the_file_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, table: str
) -> None:
    """One policy for the whole file: nothing is dropped, what was there is kept aside."""
    path = tmp_path / "state.db"
    tables = [name for name in V1_TABLES if name != "run_history_pair"]
    _v1_file(path, *tables)
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute(f"ALTER TABLE {table} RENAME TO old")
        connection.execute(f"CREATE TABLE {table} (server TEXT, other TEXT)")
    finally:
        connection.close()
    storage = Storage.open(path)
    storage.close()
    assert storage.stored == {}
    (moved,) = tmp_path.glob("state.db.foreign-*")
    assert "old" in _schema(moved)  # the rows are still there, in the file set aside
    (record,) = [r for r in caplog.records if "moved it aside" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.__dict__["moved_to"] == str(moved)
    assert record.__dict__["problem"] == f"foreign: table {table} is missing or has other columns"
    assert _schema(path) == V1_TABLES


def _writers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "writer" in t.name]


def _written(storage: Storage, records: int, what: str) -> None:
    """Wait until the writer thread has done the first `records` history writes (it tells)."""
    if not storage.writer.wait_written(records - 1, timeout=30):  # a bound on a hang only
        pytest.fail(f"the writer never got done with {what}")


def test_one_writer_thread_serves_last_runs_digests_and_history(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    before = _writers()
    storage = Storage.open(path)
    try:
        history = History(10, storage.history)
        pair = PairState("s", "a", 60.0)
        for _ in range(3):
            run_once(history, pair)
            storage.save(pair)
        pair.holding.restore("sha256:abc", None)
        storage.save_digest(pair)
        _written(storage, 3, "the history writes")
        assert [t.name for t in _writers() if t not in before] == [THREAD_NAME]
    finally:
        storage.close()
    assert [t for t in _writers() if t not in before] == []
    reopened = Storage.open(path)
    reopened.close()
    assert list(reopened.stored) == [("s", "a")]
    assert reopened.digests == {("s", "a"): ("sha256:abc", None)}


def test_a_locked_file_fails_saves_then_recovers_with_history(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "exporter.store")
    monkeypatch.setattr(database_module, "BUSY_TIMEOUT", 0)  # a locked file fails at once
    monkeypatch.setattr(writer_module, "HISTORY_QUEUE_LIMIT", 2)
    path = tmp_path / "state.db"
    state = ExporterState()
    storage = Storage.open(path, on_failure=state.storage_failed)
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        history = History(10, storage.history)
        pair = PairState("s", "a", 60.0)
        locker.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        for _ in range(6):
            run_once(history, pair)
            storage.save(pair)
        _written(storage, 6, "the failed writes")
        assert state.storage_failures >= 1
        locker.execute("ROLLBACK")
        run_once(history, pair)
        storage.save(pair)
        _written(storage, 7, "the write after the lock")
        assert [run.id for run in asyncio.run(history.runs())] == [7]
    finally:
        locker.close()
        storage.close()
    assert "cannot save the state file; runs go on, their last results are not kept" in (
        caplog.messages
    )
    assert "saving the state works again" in caplog.messages
    reopened = Storage.open(path)
    reopened.close()
    assert pair.last is not None
    # The file does not keep when the bytes last grew (`LastRun.last_progress_at`).
    assert reopened.stored["s", "a"].last == replace(pair.last, last_progress_at=None)


@pytest.mark.parametrize("read", ["runs", "run"])
def test_history_reads_do_not_hold_up_the_event_loop(tmp_path: Path, read: str) -> None:
    """A read that takes long (a cold disk, another process's lock) leaves the loop running."""
    storage = Storage.open(tmp_path / "state.db")
    try:
        assert storage.history is not None
        history = History(10, storage.history)
        run_once(history, PairState("s", "a", 60.0))
        _written(storage, 1, "the history write")
        entered, release = threading.Event(), threading.Event()
        readers: list[threading.Thread] = []

        def hold() -> int:
            """SQLite calls this while the read runs: the read takes until `release`."""
            readers.append(threading.current_thread())
            if not entered.is_set():
                entered.set()
                release.wait(10)
            return 0

        storage.history._reader._connection.set_progress_handler(hold, 1)

        async def one_read() -> list[RunRecord | ActiveRun]:
            if read == "runs":
                return await history.runs()
            record = await history.run(1)
            return [] if record is None else [record]

        async def scenario() -> tuple[int, list[int]]:
            reading = asyncio.create_task(one_read())
            await asyncio.wait_for(asyncio.to_thread(entered.wait, 30), 60)
            beats = 0
            while beats < 1000 and not reading.done():  # the heartbeat goes on meanwhile
                await asyncio.sleep(0)
                beats += 1
            release.set()
            listed = await asyncio.wait_for(reading, 30)
            return beats, [run.id for run in listed]

        beats, ids = asyncio.run(scenario())
        storage.history._reader._connection.set_progress_handler(None, 1)
    finally:
        release.set()
        storage.close()
    assert beats == 1000, "the read held up the event loop"
    assert ids == [1]
    assert readers
    assert all(thread is not threading.main_thread() for thread in readers)


def test_history_rows_are_read_as_strictly_as_last_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """One strictness for the whole file: a row we could not have written is skipped, logged."""
    path = tmp_path / "state.db"
    _v1_file(path, *[name for name in V1_TABLES if name != "run_history_pair"])
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        good = "SELECT {id}, server, model, trigger, started_at, ended_at, duration_seconds, "
        good += "success, reason, error, downloaded_bytes, reused_bytes, phase_seconds, NULL "
        good += "FROM run_history WHERE id = 7"
        for run_id, column, value in (
            (8, "trigger", "'cron'"),
            (9, "success", "1"),  # a success with a failure reason
            (10, "phase_seconds", "'not json'"),
            (11, "downloaded_bytes", "-1"),
            (12, "started_at", "'soon'"),
            (13, "phase_seconds", """'{"idle": 1.0}'"""),  # not a phase a run passes through
            (14, "phase_seconds", """'{"unpacking": 1.0}'"""),
            (15, "phase_seconds", """'{"manifest": "1.0"}'"""),
        ):
            connection.execute(f"INSERT INTO run_history {good.format(id=run_id)}")
            connection.execute(f"UPDATE run_history SET {column} = {value} WHERE id = {run_id}")
    finally:
        connection.close()
    storage = Storage.open(path)
    try:
        history = History(10, storage.history)
        listed = [run.id for run in asyncio.run(history.runs())]
        missing = asyncio.run(history.run(8))
    finally:
        storage.close()
    assert listed == [7]
    assert missing is None
    skipped = [
        r for r in caplog.records if r.getMessage() == "skipped stored rows that make no sense"
    ]
    assert {r.__dict__["table"] for r in skipped} == {"run_history"}
    assert max(r.__dict__["rows"] for r in skipped) == 8
