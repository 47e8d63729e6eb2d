"""Tests for exporter.storage: round trips, damaged and foreign files.

A kill -9 in the middle of saves is in tests/e2e/test_store_process.py (it kills a process).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import pytest

from exporter.ollama.protocol import RUN_PHASES, Phase, Reason
from exporter.state.pairs import ExporterState, LastRun, PairState
from exporter.storage import schema
from exporter.storage.database import Database
from exporter.storage.errors import StorePathError
from exporter.storage.last_runs import LastRuns, StoredPair, restore
from exporter.storage.schema import APPLICATION_ID, SCHEMA_VERSION

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


@contextlib.contextmanager
def _open(path: Path) -> Iterator[LastRuns]:
    """The last-run tables of the file at `path`, closed on the way out."""
    with Database.open(path) as database:
        yield LastRuns(database)


def _last(n: int, *, reason: Reason | None = None) -> LastRun:
    """A run whose every number derives from `n`, so a half-written row would show."""
    return LastRun(
        success=reason is None,
        reason=reason,
        ended_at=1_700_000_000.0 + n,
        duration=n / 4,
        phase_durations={phase: n + index / 8 for index, phase in enumerate(RUN_PHASES)},
        downloaded_bytes=n * 10,
        completed_bytes=n * 10 + 1,
        expected_bytes=n * 10 + 2,
        layers=n % 7,
        layers_completed=n % 5,
    )


def _pair(server: str, model: str, last: LastRun | None, success_at: float | None) -> PairState:
    pair = PairState(server=server, model=model, interval=60.0)
    pair.last, pair.last_success_at = last, success_at
    return pair


def _state(*keys: tuple[str, str]) -> ExporterState:
    state = ExporterState()
    for server, model in keys:
        state.pairs[server, model] = PairState(server=server, model=model, interval=60.0)
    return state


def _moved(path: Path, kind: str) -> list[Path]:
    return sorted(path.parent.glob(f"{path.name}.{kind}-*"))


def test_missing_file_is_created_with_our_ids(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    with _open(path) as store:
        assert store.load() == {}
    assert path.is_file()
    connection = sqlite3.connect(path)
    try:
        assert connection.execute("PRAGMA application_id").fetchone() == (APPLICATION_ID,)
        assert connection.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert connection.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    finally:
        connection.close()


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    success = _pair("local", "llama3.2:1b", _last(3), 1_700_000_003.0)
    failure = _pair("gpu-1", "gemma3:270m", _last(5, reason=Reason.DISK_FULL), 1_699_000_000.0)
    never_succeeded = _pair("gpu-1", "qwen3", _last(7, reason=Reason.TIMEOUT), None)
    with _open(path) as store:
        for pair in (success, failure, never_succeeded):
            assert store.save(pair)
        assert not store.save(_pair("gpu-1", "unfinished", None, None))
    with _open(path) as store:
        stored = store.load()
    assert stored == {
        ("local", "llama3.2:1b"): StoredPair(_last(3), 1_700_000_003.0),
        ("gpu-1", "gemma3:270m"): StoredPair(_last(5, reason=Reason.DISK_FULL), 1_699_000_000.0),
        ("gpu-1", "qwen3"): StoredPair(_last(7, reason=Reason.TIMEOUT), None),
    }
    assert not _moved(path, "corrupt")
    assert not _moved(path, "foreign")


def test_save_replaces_the_previous_run(tmp_path: Path) -> None:
    with _open(tmp_path / "state.db") as store:
        store.save(_pair("s", "m", _last(1), 1.0))
        store.save(_pair("s", "m", _last(2, reason=Reason.STALLED), 1.0))
        assert store.load() == {("s", "m"): StoredPair(_last(2, reason=Reason.STALLED), 1.0)}


def test_every_reason_and_phase_survives(tmp_path: Path) -> None:
    with _open(tmp_path / "state.db") as store:
        for index, reason in enumerate(Reason):
            assert store.save(_pair("s", reason.value, _last(index, reason=reason), None))
        stored = store.load()
    assert {key[1]: entry.last.reason for key, entry in stored.items()} == {
        reason.value: reason for reason in Reason
    }
    assert all(set(entry.last.phase_durations) == set(RUN_PHASES) for entry in stored.values())


def test_huge_counts_are_clamped(tmp_path: Path) -> None:
    huge = dataclasses.replace(_last(1), expected_bytes=1 << 70)
    with _open(tmp_path / "state.db") as store:
        assert store.save(_pair("s", "m", huge, None))
        assert store.load()["s", "m"].last.expected_bytes == (1 << 63) - 1


def test_a_failed_save_is_a_warning_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    not_a_number = dataclasses.replace(_last(1), duration=float("nan"))
    database = Database.open(tmp_path / "state.db")
    store = LastRuns(database)
    assert not store.save(_pair("s", "m", not_a_number, None))  # NaN is NULL to SQLite
    database.close()
    database.close()
    assert not store.save(_pair("s", "m", _last(1), None))
    assert store.load() == {}
    warnings = [r for r in caplog.records if r.name == "exporter.store"]
    assert [r.getMessage() for r in warnings] == [
        "cannot save the last run",
        "cannot save the last run",
        "cannot read the stored state, starting without it",
    ]
    assert warnings[0].__dict__["server"] == "s"


def test_rows_that_make_no_sense_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    with _open(path) as store:
        store.save(_pair("s", "good", _last(1), None))
        for name in ("bad-reason", "bad-success", "bad-count", "bad-time", "bad-success-at"):
            store.save(_pair("s", name, _last(2, reason=Reason.OTHER), None))
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        for sql in (
            "UPDATE last_run SET reason = 'gone' WHERE model = 'bad-reason'",
            "UPDATE last_run SET success = 1 WHERE model = 'bad-success'",
            "UPDATE last_run SET layers = -1 WHERE model = 'bad-count'",
            "UPDATE last_run SET ended_at = 'soon' WHERE model = 'bad-time'",
            "UPDATE last_run SET last_success_at = 'x' WHERE model = 'bad-success-at'",
        ):
            connection.execute(sql)
    finally:
        connection.close()
    with _open(path) as store:
        assert list(store.load()) == [("s", "good")]
    assert "skipped stored rows that make no sense" in caplog.messages


def _assert_moved_aside(
    path: Path, kind: str, original: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """`path` was set aside as `kind` with its bytes intact, and a fresh store works there."""
    with _open(path) as store:
        assert store.load() == {}
        assert store.save(_pair("s", "m", _last(1), None))
    (moved,) = _moved(path, kind)
    assert moved.read_bytes() == original
    assert int(moved.name.rsplit("-", 1)[1]) == pytest.approx(time.time(), abs=60)
    (record,) = [r for r in caplog.records if r.name == "exporter.store"]
    assert record.levelno == logging.WARNING
    assert record.__dict__["path"] == str(path)
    assert record.__dict__["moved_to"] == str(moved)
    assert record.__dict__["problem"].startswith(f"{kind}: ")
    with _open(path) as store:
        assert list(store.load()) == [("s", "m")]


def test_random_bytes_are_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.db"
    original = os.urandom(10_000)
    path.write_bytes(original)
    _assert_moved_aside(path, "corrupt", original, caplog)


def test_a_text_file_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.db"
    original = b"servers:\n  - url: http://127.0.0.1:11434\n" * 50
    path.write_bytes(original)
    _assert_moved_aside(path, "corrupt", original, caplog)


@pytest.mark.parametrize("keep", [50, 100, 4096, 0.5])
def test_a_truncated_store_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, keep: float
) -> None:
    path = tmp_path / "state.db"
    with _open(path) as store:
        for n in range(300):
            store.save(_pair("s", f"model-{n}", _last(n), None))
    whole = path.read_bytes()
    assert len(whole) > 3 * 4096
    original = whole[: int(len(whole) * keep) if isinstance(keep, float) else keep]
    path.write_bytes(original)
    _assert_moved_aside(path, "corrupt", original, caplog)


def test_a_damaged_page_is_moved_aside(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.db"
    with _open(path) as store:
        for n in range(300):
            store.save(_pair("s", f"model-{n}", _last(n), None))
    damaged = bytearray(path.read_bytes())
    page = 4096 * 3
    damaged[page : page + 512] = bytes(range(256)) * 2
    path.write_bytes(bytes(damaged))
    _assert_moved_aside(path, "corrupt", bytes(damaged), caplog)


def _sqlite_file(path: Path, *statements: str) -> bytes:
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            connection.execute(statement)
    finally:
        connection.close()
    return path.read_bytes()


def test_another_applications_database_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    original = _sqlite_file(
        path, "CREATE TABLE users (name TEXT)", "INSERT INTO users VALUES ('a')"
    )
    _assert_moved_aside(path, "foreign", original, caplog)


def test_another_schema_version_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    original = _sqlite_file(
        path,
        f"PRAGMA application_id={APPLICATION_ID}",
        f"PRAGMA user_version={SCHEMA_VERSION + 1}",
        "CREATE TABLE last_run (server TEXT, model TEXT, data BLOB)",
    )
    _assert_moved_aside(path, "foreign", original, caplog)


def test_our_ids_with_other_columns_are_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    original = _sqlite_file(
        path,
        f"PRAGMA application_id={APPLICATION_ID}",
        f"PRAGMA user_version={SCHEMA_VERSION}",
        "CREATE TABLE last_run (server TEXT, model TEXT)",
    )
    _assert_moved_aside(path, "foreign", original, caplog)


def test_an_empty_file_is_simply_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.db"
    path.touch()
    with _open(path) as store:
        assert store.save(_pair("s", "m", _last(1), None))
    assert not _moved(path, "corrupt")
    assert not caplog.records


def test_moving_aside_never_overwrites(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "state.db"
    for attempt in range(3):
        path.write_bytes(b"garbage %d" % attempt * 100)
        Database.open(path).close()
    assert len(_moved(path, "corrupt")) == 3
    assert len(caplog.records) == 3


def test_a_wal_without_its_database_is_moved_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "state.db"
    wal = tmp_path / "state.db-wal"
    wal.write_bytes(b"stale")
    with _open(path) as store:
        assert store.save(_pair("s", "m", _last(1), None))
    assert [p.read_bytes() for p in tmp_path.glob("state.db.orphan-*-wal")] == [b"stale"]
    assert "storage side file without its database, moved it aside" in caplog.messages


def test_paths_that_cannot_be_right_are_errors(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    with pytest.raises(StorePathError, match=r"dir: is a directory; give the path of a file"):
        Database.open(tmp_path / "dir")
    (tmp_path / "file").write_text("x")
    with pytest.raises(StorePathError, match=r"file/state\.db: the directory .*file' is not a"):
        Database.open(tmp_path / "file" / "state.db")
    # A missing directory is not created (a typo in --storage.path would go unnoticed).
    with pytest.raises(StorePathError, match=r"missing/state\.db: the directory .* does not exist"):
        Database.open(tmp_path / "missing" / "state.db")
    assert not (tmp_path / "missing").exists()


def test_restore_fills_configured_pairs_only() -> None:
    state = _state(("s", "a"), ("s", "b"), ("s", "c"))
    newer = _last(9)
    state.pairs["s", "c"].last = newer
    state.pairs["s", "c"].last_success_at = newer.ended_at
    stored = {
        ("s", "a"): StoredPair(_last(1, reason=Reason.STALLED), 1_600_000_000.0),
        ("s", "c"): StoredPair(_last(2), 1_700_000_002.0),
        ("gone", "x"): StoredPair(_last(3), 3.0),
    }
    assert restore(state, stored) == 2
    a, b, c = (state.pairs["s", name] for name in "abc")
    assert (a.last, a.last_success_at) == (_last(1, reason=Reason.STALLED), 1_600_000_000.0)
    assert (b.last, b.last_success_at) == (None, None)
    assert (c.last, c.last_success_at) == (newer, newer.ended_at)  # it knows a newer run
    assert ("gone", "x") not in state.pairs
    assert a.runs_total == 0  # counters start over, as Prometheus expects after a restart


def test_saves_are_cheap(tmp_path: Path) -> None:
    """A save is one statement in WAL mode without an fsync (synchronous=NORMAL): what keeps
    1000 of them at ~20 ms. Read from the connection, not timed (a busy machine is no failure)."""
    with Database.open(tmp_path / "state.db") as database:
        assert database.select("PRAGMA journal_mode") == [("wal",)]
        assert database.select("PRAGMA synchronous") == [(1,)]  # NORMAL
        statements: list[str] = []
        database._connection.set_trace_callback(statements.append)
        store = LastRuns(database)
        for n in range(100):
            assert store.save(_pair("s", f"m{n % 50}", _last(n), None))
        database._connection.set_trace_callback(None)
    assert len(statements) == 100
    assert all(sql.lstrip().upper().startswith("INSERT") for sql in statements)


def test_saves_from_worker_threads(tmp_path: Path) -> None:
    with _open(tmp_path / "state.db") as store, ThreadPoolExecutor(4) as pool:
        pairs = [_pair("s", f"m{n % 8}", _last(n), None) for n in range(400)]
        assert all(pool.map(store.save, pairs))
        stored = store.load()
    assert len(stored) == 8
    for (_, model), entry in stored.items():
        n = round(entry.last.ended_at - 1_700_000_000.0)
        assert model == f"m{n % 8}"
        assert entry.last == _last(n)


def test_phase_columns_follow_the_run_phases() -> None:
    assert tuple(f"{p.value}_seconds" for p in RUN_PHASES) == schema.PHASE_COLUMNS
    assert Phase.IDLE not in RUN_PHASES
