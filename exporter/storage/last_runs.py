"""Persisted last-run state (`--storage.path`): each pair's last finished run survives restarts.

So that the last-run gauges and `ollama_pull_last_success_timestamp_seconds` come back after a
restart, and "no success in two intervals" alerts do not fire just because the exporter restarted.
Counters and the duration histogram are not kept: Prometheus handles counter resets.

One SQLite file (standard library), one row per (server, model), written by one statement (one
transaction) per finished run. WAL with synchronous=NORMAL: a commit appends to the WAL without an
fsync. A killed process loses nothing it committed; a power cut may lose the last few runs, never
the file. The running exporter saves through a `StoreWriter`, on a thread of its own: a save can
wait up to 5 s for another process's lock, and the event loop must never wait with it.

A file that is not ours is reported in the log, moved aside as `<path>.corrupt-<unix-ts>` (a
damaged or non-SQLite file) or `<path>.foreign-<unix-ts>` (another application's database or
another schema), and replaced by a fresh store: losing last-run gauges beats not starting.
`StoreError` means the file cannot be used now (no permission, a read-only or full volume, a lock
held by another process): the exporter then runs without saved state and says so. Only a path
that cannot be right (`StorePathError`: a missing directory, a directory) stops start-up.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

from exporter.ollama.protocol import RUN_PHASES, Reason
from exporter.state.pairs import LastRun

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from types import TracebackType

    from exporter.state.pairs import ExporterState, PairState

log = logging.getLogger("exporter.store")

APPLICATION_ID: Final = 0x4F504558
"""`PRAGMA application_id` of our files ("OPEX"), so that a stranger's database is recognised."""
SCHEMA_VERSION: Final = 1
"""`PRAGMA user_version`; a file with another one is set aside (no migrations exist yet)."""

_INT64_MAX: Final = (1 << 63) - 1
_PHASE_COLUMNS: Final = tuple(f"{phase.value}_seconds" for phase in RUN_PHASES)
_COUNT_COLUMNS: Final = (
    "downloaded_bytes",
    "completed_bytes",
    "expected_bytes",
    "layers",
    "layers_completed",
)
_COLUMNS: Final = (
    "server",
    "model",
    "success",
    "reason",
    "ended_at",
    "duration_seconds",
    *_PHASE_COLUMNS,
    *_COUNT_COLUMNS,
    "last_success_at",
)
_CREATE: Final = f"""CREATE TABLE IF NOT EXISTS last_run (
    server TEXT NOT NULL,
    model TEXT NOT NULL,
    success INTEGER NOT NULL,
    reason TEXT,
    ended_at REAL NOT NULL,
    duration_seconds REAL NOT NULL,
    {", ".join(f"{column} REAL NOT NULL" for column in _PHASE_COLUMNS)},
    {", ".join(f"{column} INTEGER NOT NULL" for column in _COUNT_COLUMNS)},
    last_success_at REAL,
    PRIMARY KEY (server, model)
) WITHOUT ROWID"""
# Built from the constant column names above, never from input: no injection possible.
_NAMES: Final = ", ".join(_COLUMNS)
_PLACEHOLDERS: Final = ", ".join("?" for _ in _COLUMNS)
_UPSERT: Final = f"INSERT OR REPLACE INTO last_run ({_NAMES}) VALUES ({_PLACEHOLDERS})"  # noqa: S608
_SELECT: Final = f"SELECT {_NAMES} FROM last_run"  # noqa: S608
_CREATE_DIGESTS: Final = """CREATE TABLE IF NOT EXISTS model_digest (
    server TEXT NOT NULL,
    model TEXT NOT NULL,
    digest TEXT NOT NULL,
    changed_at REAL,
    PRIMARY KEY (server, model)
) WITHOUT ROWID"""
"""The last digest seen per pair (contract section 6: a change compares with it after a restart)."""
_UPSERT_DIGEST: Final = (
    "INSERT OR REPLACE INTO model_digest (server, model, digest, changed_at) VALUES (?, ?, ?, ?)"
)
_SELECT_DIGESTS: Final = "SELECT server, model, digest, changed_at FROM model_digest"
# Primary result codes (the low byte of extended ones) that mean "this file is damaged".
_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26
_SIDE_FILES: Final = ("-wal", "-shm", "-journal")


class StoreError(Exception):
    """The store cannot be used (now); `path` is where, `reason` why (without the path)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


class StorePathError(StoreError):
    """The storage path cannot be right (its directory is missing, it is a directory)."""


@dataclass(frozen=True, slots=True)
class StoredPair:
    """What the store keeps of one pair."""

    last: LastRun
    last_success_at: float | None


class _NotOursError(Exception):
    """The file is damaged ("corrupt") or someone else's ("foreign")."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind, self.detail = kind, detail


class Store:
    """An open store; make one with `Store.open`, and `close` it on the way out."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._connection = connection
        self._lock = threading.Lock()  # callers may be on several threads: one at a time
        self.path = path

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Self:
        """Open the store at `path`, creating the file (not its directory) when missing.

        A damaged or foreign file is logged, moved aside and replaced by an empty store.
        Raises StorePathError when the path cannot be right, StoreError when it cannot be
        used now.
        """
        file = Path(path)
        if not file.parent.is_dir():
            problem = "is not a directory" if file.parent.exists() else "does not exist"
            raise StorePathError(file, f"the directory {str(file.parent)!r} {problem}")
        if file.is_dir():
            raise StorePathError(file, "is a directory; give the path of a file in it")
        try:
            _inspect(file)
        except _NotOursError as exc:
            moved = _move_aside(file, exc.kind)
            log.warning(
                "storage file is damaged or not ours; moved it aside, starting empty",
                extra={
                    "path": str(file),
                    "moved_to": str(moved),
                    "problem": f"{exc.kind}: {exc.detail}",
                },
            )
        else:
            _set_aside_orphans(file)
        try:
            connection = _connect(file)
        except sqlite3.Error as exc:
            raise StoreError(file, _why("cannot open", file, exc)) from None
        try:
            _initialize(connection, file)
        except sqlite3.Error as exc:
            connection.close()
            raise StoreError(file, _why("cannot initialise", file, exc)) from None
        return cls(connection, file)

    def save(self, pair: PairState) -> bool:
        """Write `pair`'s last run and last success time, replacing the previous ones.

        One statement, so one transaction: a crash keeps either the old row or the new one.
        Returns False (after a warning) when it could not; a run never fails because of it.
        """
        try:
            return self.write(pair.server, pair.model, pair.last, pair.last_success_at)
        except sqlite3.Error as exc:
            log.warning(
                "cannot save the last run",
                extra={
                    "path": str(self.path),
                    "server": pair.server,
                    "model": pair.model,
                    "error": str(exc),
                },
            )
            return False

    def write(
        self, server: str, model: str, last: LastRun | None, last_success_at: float | None
    ) -> bool:
        """`save` without the warning: raises sqlite3.Error; False when there is nothing to save."""
        if last is None:
            return False
        values = (
            server,
            model,
            int(last.success),
            None if last.reason is None else last.reason.value,
            last.ended_at,
            last.duration,
            *(last.phase_durations.get(phase, 0.0) for phase in RUN_PHASES),
            *(
                min(max(count, 0), _INT64_MAX)
                for count in (
                    last.downloaded_bytes,
                    last.completed_bytes,
                    last.expected_bytes,
                    last.layers,
                    last.layers_completed,
                )
            ),
            last_success_at,
        )
        with self._lock:
            self._connection.execute(_UPSERT, values)  # the statement cache keeps it prepared
        return True

    def write_digest(self, server: str, model: str, digest: str, changed_at: float | None) -> None:
        """Keep the last digest seen for a pair and when it last changed; raises sqlite3.Error."""
        with self._lock:
            self._connection.execute(_UPSERT_DIGEST, (server, model, digest, changed_at))

    def load_digests(self) -> dict[tuple[str, str], tuple[str, float | None]]:
        """Every stored (digest, changed_at) by pair; rows that make no sense are skipped."""
        try:
            with self._lock:
                rows = self._connection.execute(_SELECT_DIGESTS).fetchall()
        except sqlite3.Error as exc:
            log.warning(
                "cannot read the stored digests, starting without them",
                extra={"path": str(self.path), "error": str(exc)},
            )
            return {}
        digests: dict[tuple[str, str], tuple[str, float | None]] = {}
        for server, model, digest, changed_at in rows:
            if not all(isinstance(text, str) for text in (server, model, digest)):
                continue
            if changed_at is not None and _number(changed_at) is None:
                continue
            digests[server, model] = (digest, None if changed_at is None else float(changed_at))
        return digests

    def load(self) -> dict[tuple[str, str], StoredPair]:
        """Every stored pair; rows that do not make sense are skipped with a warning."""
        try:
            with self._lock:
                rows = self._connection.execute(_SELECT).fetchall()
        except sqlite3.Error as exc:
            log.warning(
                "cannot read the stored state, starting without it",
                extra={"path": str(self.path), "error": str(exc)},
            )
            return {}
        stored: dict[tuple[str, str], StoredPair] = {}
        for row in rows:
            entry = _decode(row)
            if entry is not None:
                stored[row[0], row[1]] = entry
        if skipped := len(rows) - len(stored):
            log.warning(
                "skipped stored rows that make no sense",
                extra={"path": str(self.path), "rows": skipped},
            )
        return stored

    def close(self) -> None:
        """Close the file (SQLite checkpoints the WAL into it); closing twice is fine."""
        with self._lock:
            self._connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


RETRY_OPEN_SECONDS: Final = 60.0
"""How often a `StoreWriter` without a usable store tries to open it again."""


class StoreWriter:
    """Saves finished runs on a thread of its own; the event loop only hands them over.

    A save may wait 5 s for another process's lock, or fail on a full or read-only volume:
    that costs the saved state, never a run, a scrape or the loop. Saves waiting for the
    thread are coalesced per pair (only the newest run of a pair matters). Failures are
    counted in `ExporterState.storage_failures` and logged when saving starts or stops
    failing, not once per run. Without a usable store it tries to open one again every
    RETRY_OPEN_SECONDS (the volume may come back).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        store: Store | None,
        on_failure: Callable[[], object] | None = None,
    ) -> None:
        self.path = Path(path)
        self._store = store
        self._on_failure = on_failure
        self._pending: dict[tuple[str, str], tuple[LastRun, float | None]] = {}
        self._digests: dict[tuple[str, str], tuple[str, float | None]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closing = False
        self._failing = store is None
        self._next_open = time.monotonic() + RETRY_OPEN_SECONDS
        self._thread = threading.Thread(target=self._work, name="state writer", daemon=True)
        self._thread.start()

    def save(self, pair: PairState) -> None:
        """Queue `pair`'s last run for saving; returns at once (call it from the loop)."""
        if pair.last is None:
            return
        with self._lock:
            self._pending[pair.server, pair.model] = (pair.last, pair.last_success_at)
            self._wake.notify()

    def save_digest(self, pair: PairState) -> None:
        """Queue the last digest seen for `pair` (contract section 6); returns at once."""
        digest = pair.holding.known_digest
        if digest is None:
            return
        with self._lock:
            self._digests[pair.server, pair.model] = (digest, pair.holding.last_change_at)
            self._wake.notify()

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (for up to `timeout` seconds) and close the store."""
        with self._lock:
            self._closing = True
            self._wake.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning(
                "state writer did not finish in time; the last runs may not be saved",
                extra={"path": str(self.path), "queued": len(self._pending)},
            )
            return
        if self._store is not None:
            self._store.close()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._digests and not self._closing:
                    self._wake.wait()
                batch, self._pending = self._pending, {}
                digests, self._digests = self._digests, {}
                closing = self._closing
            if batch:
                self._write(batch)
            if digests:
                self._write_digests(digests)
            if closing and not self._pending and not self._digests:
                return

    def _write_digests(self, batch: dict[tuple[str, str], tuple[str, float | None]]) -> None:
        store = self._usable()
        if store is None:
            self._failed(f"{len(batch)} digests not saved: the store is not open")
            return
        for (server, model), (digest, changed_at) in batch.items():
            try:
                store.write_digest(server, model, digest, changed_at)
            except sqlite3.Error as exc:
                self._failed(str(exc), server=server, model=model)

    def _write(self, batch: dict[tuple[str, str], tuple[LastRun, float | None]]) -> None:
        store = self._usable()
        if store is None:
            self._failed(f"{len(batch)} runs not saved: the store is not open")
            return
        for (server, model), (last, success_at) in batch.items():
            try:
                store.write(server, model, last, success_at)
            except sqlite3.Error as exc:
                self._failed(str(exc), server=server, model=model)
            else:
                if self._failing:
                    self._failing = False
                    log.info("saving the state works again", extra={"path": str(self.path)})

    def _usable(self) -> Store | None:
        if self._store is None and time.monotonic() >= self._next_open:
            self._next_open = time.monotonic() + RETRY_OPEN_SECONDS
            try:
                self._store = Store.open(self.path)
            except StoreError as exc:
                log.debug("state file still unusable", extra={"error": str(exc)})
        return self._store

    def _failed(self, error: str, **extra: str) -> None:
        if self._on_failure is not None:
            self._on_failure()
        if not self._failing:
            self._failing = True
            log.error(
                "cannot save the state file; runs go on, their last results are not kept",
                extra={"path": str(self.path), "error": error, **extra},
            )


def restore(state: ExporterState, stored: Mapping[tuple[str, str], StoredPair]) -> int:
    """Give the configured pairs of `state` their stored last run; returns how many got one.

    Pairs no longer in the config are ignored (their rows stay, in case they come back). A pair
    that already knows a newer run than the stored one keeps it.
    """
    restored = 0
    for key, entry in stored.items():
        pair = state.pairs.get(key)
        if pair is None:
            continue
        pair.restore(entry.last, entry.last_success_at)
        restored += 1
    return restored


def restore_digests(
    state: ExporterState, stored: Mapping[tuple[str, str], tuple[str, float | None]]
) -> int:
    """Give the configured pairs their stored last digest; returns how many got one."""
    restored = 0
    for key, (digest, changed_at) in stored.items():
        pair = state.pairs.get(key)
        if pair is not None:
            pair.holding.restore(digest, changed_at)
            restored += 1
    return restored


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit: each statement is its own transaction; `timeout` waits out a brief lock.
    # Any thread may use it (Store serialises calls), e.g. a save from asyncio.to_thread.
    return sqlite3.connect(path, timeout=5.0, isolation_level=None, check_same_thread=False)


def _inspect(path: Path) -> None:
    """Raise _NotOursError unless `path` is missing, empty, or a sound store of ours."""
    if not path.exists():
        return
    try:
        connection = _connect(path)
    except sqlite3.Error as exc:
        raise StoreError(path, _why("cannot open", path, exc)) from None
    try:
        _check(connection)
    except sqlite3.DatabaseError as exc:
        if exc.sqlite_errorcode & 0xFF in {_SQLITE_CORRUPT, _SQLITE_NOTADB}:
            raise _NotOursError("corrupt", str(exc)) from None
        raise StoreError(path, _why("cannot read", path, exc)) from None
    except sqlite3.Error as exc:
        raise StoreError(path, _why("cannot read", path, exc)) from None
    finally:
        connection.close()


def _check(connection: sqlite3.Connection) -> None:
    application_id = connection.execute("PRAGMA application_id").fetchone()[0]
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    tables = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    if application_id == 0 and version == 0 and not tables:
        return  # an empty SQLite file (e.g. made by `touch`): ours to fill
    if application_id != APPLICATION_ID:
        detail = f"application_id is {application_id:#x}, expected {APPLICATION_ID:#x}"
        raise _NotOursError("foreign", detail)
    if version != SCHEMA_VERSION:
        raise _NotOursError("foreign", f"schema version is {version}, expected {SCHEMA_VERSION}")
    problems = [row[0] for row in connection.execute("PRAGMA quick_check").fetchall()]
    if problems != ["ok"]:
        raise _NotOursError("corrupt", f"quick_check: {problems[0]}")
    columns = tuple(row[1] for row in connection.execute("PRAGMA table_info(last_run)"))
    if columns != _COLUMNS:
        raise _NotOursError("foreign", "table last_run is missing or has other columns")


def _initialize(connection: sqlite3.Connection, path: Path) -> None:
    mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":  # e.g. a file system without shared memory; slower, still safe
        log.warning("SQLite cannot use WAL here", extra={"path": str(path), "mode": mode})
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute(_CREATE)
        connection.execute(_CREATE_DIGESTS)
        connection.execute(f"PRAGMA application_id={APPLICATION_ID}")
        connection.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:  # SQLite already rolled back e.g. on a full disk
            connection.execute("ROLLBACK")
        raise


def _why(what: str, path: Path, exc: sqlite3.Error) -> str:
    """SQLite's reason, plus what it hides: a full or read-only file system."""
    try:
        volume = os.statvfs(path.parent)
    except OSError:
        return f"{what}: {exc}"
    if volume.f_flag & os.ST_RDONLY:
        return f"{what}: the file system is read-only ({exc})"
    if volume.f_bavail == 0 or volume.f_favail == 0:
        return f"{what}: the file system is full ({exc})"
    return f"{what}: {exc}"


def _move_aside(path: Path, kind: str) -> Path:
    """Rename `path` (and its WAL side files) to `<path>.<kind>-<unix-ts>`; returns the new path."""
    stamp = int(time.time())
    target = path.with_name(f"{path.name}.{kind}-{stamp}")
    attempt = 1
    while target.exists():
        target = path.with_name(f"{path.name}.{kind}-{stamp}.{attempt}")
        attempt += 1
    try:
        path.rename(target)
        for suffix in _SIDE_FILES:
            side = path.with_name(path.name + suffix)
            if side.exists():
                side.rename(target.with_name(target.name + suffix))
    except OSError as exc:
        raise StoreError(path, f"cannot move it aside: {exc.strerror}") from None
    return target


def _set_aside_orphans(path: Path) -> None:
    """A WAL left without its database would be replayed into the new one: move it away."""
    if path.exists() or not any(path.with_name(path.name + s).exists() for s in _SIDE_FILES):
        return
    stamp = int(time.time())
    for suffix in _SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.exists():
            target = path.with_name(f"{path.name}.orphan-{stamp}{suffix}")
            try:
                side.rename(target)
            except OSError as exc:
                raise StoreError(side, f"cannot move it aside: {exc.strerror}") from None
            log.warning(
                "storage side file without its database, moved it aside",
                extra={"path": str(side), "moved_to": str(target)},
            )


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _count(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _decode(row: tuple[object, ...]) -> StoredPair | None:
    """A row as a StoredPair, or None when it is not one we could have written."""
    fields = dict(zip(_COLUMNS, row, strict=True))
    if not isinstance(fields["server"], str) or not isinstance(fields["model"], str):
        return None
    reasons = {reason.value: reason for reason in Reason}
    reason_text = fields["reason"]
    if reason_text is not None and (not isinstance(reason_text, str) or reason_text not in reasons):
        return None
    reason = None if reason_text is None else reasons[reason_text]
    if fields["success"] not in {0, 1} or bool(fields["success"]) != (reason is None):
        return None
    ended_at, duration = _number(fields["ended_at"]), _number(fields["duration_seconds"])
    phases = [_number(fields[column]) for column in _PHASE_COLUMNS]
    counts = [_count(fields[column]) for column in _COUNT_COLUMNS]
    success_at = fields["last_success_at"]
    last_success_at = None if success_at is None else _number(success_at)
    if (
        ended_at is None
        or duration is None
        or None in phases
        or None in counts
        or (success_at is not None and last_success_at is None)
    ):
        return None
    downloaded, completed, expected, layers, layers_completed = (int(c or 0) for c in counts)
    last = LastRun(
        success=reason is None,
        reason=reason,
        ended_at=ended_at,
        duration=duration,
        phase_durations={
            phase: float(seconds or 0.0) for phase, seconds in zip(RUN_PHASES, phases, strict=True)
        },
        downloaded_bytes=downloaded,
        completed_bytes=completed,
        expected_bytes=expected,
        layers=layers,
        layers_completed=layers_completed,
    )
    return StoredPair(last=last, last_success_at=last_success_at)
