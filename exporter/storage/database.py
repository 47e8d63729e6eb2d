"""The `--storage.path` SQLite file: opened, checked and brought up to date here, and only here.

One SQLite file (standard library), WAL with synchronous=NORMAL: a commit appends to the WAL
without an fsync. A killed process loses nothing it committed; a power cut may lose the last few
runs, never the file.

A file that is not ours is reported in the log, moved aside as `<path>.corrupt-<unix-ts>` (a
damaged or non-SQLite file) or `<path>.foreign-<unix-ts>` (another application's database,
another schema version, or one of our tables with other columns), and replaced by a fresh
file: losing the saved state beats not starting, and moving aside (never dropping) keeps what
was there for whoever wants to look. A table an older file lacks is created.
`StoreError` means the file cannot be used now (no permission, a read-only or full volume, a
lock held by another process): the exporter then runs without saved state and says so. Only a
path that cannot be right (`StorePathError`: a missing directory, a directory) stops start-up.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

from exporter.storage.errors import StoreError, StorePathError
from exporter.storage.schema import APPLICATION_ID, SCHEMA_VERSION, TABLES

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import TracebackType

log = logging.getLogger("exporter.store")

# Primary result codes (the low byte of extended ones) that mean "this file is damaged".
_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26
_SIDE_FILES: Final = ("-wal", "-shm", "-journal")
BUSY_TIMEOUT: Final = 5.0
"""Seconds a statement waits for another process's lock before it fails."""


class _NotOursError(Exception):
    """The file is damaged ("corrupt") or someone else's ("foreign")."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind, self.detail = kind, detail


class Database:
    """One connection to the file, one statement at a time; make one with `open` or `reader`."""

    def __init__(self, connection: sqlite3.Connection, path: Path) -> None:
        self._connection = connection
        self._lock = threading.Lock()
        self.path = path

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Self:
        """Open the file at `path`, creating it (not its directory) when missing.

        A damaged or foreign file is logged, moved aside and replaced by an empty one.
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

    def reader(self) -> Database:
        """A second connection to the same file, for reads on another thread.

        In WAL mode it is never blocked by this one's writes. Raises sqlite3.Error.
        """
        return Database(_connect(self.path), self.path)

    def execute(self, sql: str, args: Sequence[object] = ()) -> None:
        """One statement, its own transaction; raises sqlite3.Error."""
        with self._lock:
            self._connection.execute(sql, args)  # the statement cache keeps it prepared

    def transaction(self, statements: Sequence[tuple[str, Sequence[object]]]) -> None:
        """Several statements as one transaction: all or none; raises sqlite3.Error."""
        with self._lock:
            connection = self._connection
            connection.execute("BEGIN IMMEDIATE")
            try:
                for sql, args in statements:
                    connection.execute(sql, args)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:  # SQLite already rolled back e.g. on a full disk
                    connection.execute("ROLLBACK")
                raise

    def select(self, sql: str, args: Sequence[object] = ()) -> list[tuple[object, ...]]:
        """Every row `sql` yields; raises sqlite3.Error."""
        with self._lock:
            rows: list[tuple[object, ...]] = self._connection.execute(sql, args).fetchall()
        return rows

    def close(self) -> None:
        """Close the connection (the last one checkpoints the WAL); closing twice is fine."""
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


def _connect(path: Path) -> sqlite3.Connection:
    # Autocommit: each statement is its own transaction; `timeout` waits out a brief lock.
    # Any thread may use it (Database serialises calls): the writer's or the reader's thread.
    connection = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False
    )
    try:
        connection.execute("PRAGMA synchronous=NORMAL")
    except sqlite3.Error:
        connection.close()
        raise
    return connection


def _inspect(path: Path) -> None:
    """Raise _NotOursError unless `path` is missing, empty, or a sound file of ours."""
    if not path.exists():
        return
    try:
        connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT, isolation_level=None)
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
    for table in TABLES:
        # The name comes from the constant table list above, never from input.
        info = connection.execute(f"PRAGMA table_info({table.name})").fetchall()
        columns = tuple(row[1] for row in info)
        if columns == table.columns or (not columns and not table.required):
            continue  # ours, or missing from a file of an older version: created below
        raise _NotOursError("foreign", f"table {table.name} is missing or has other columns")


def _initialize(connection: sqlite3.Connection, path: Path) -> None:
    mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":  # e.g. a file system without shared memory; slower, still safe
        log.warning("SQLite cannot use WAL here", extra={"path": str(path), "mode": mode})
    connection.execute("BEGIN IMMEDIATE")
    try:
        for table in TABLES:
            for statement in table.create:
                connection.execute(statement)
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
