"""Each pair's last finished run and last seen digest, kept across restarts (`--storage.path`).

So that the last-run gauges and `ollama_pull_last_success_timestamp_seconds` come back after a
restart, and "no success in two intervals" alerts do not fire just because the exporter restarted.
Counters and the duration histogram are not kept: Prometheus handles counter resets.

One row per (server, model) in table `last_run`, written by one statement (one transaction) per
finished run; the running exporter writes through the storage writer thread
(`exporter.storage.writer`), start-up reads here directly.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from exporter.ollama.protocol import RUN_PHASES
from exporter.state.pairs import LastRun
from exporter.storage.rows import BadRowError, Row, decode_rows
from exporter.storage.schema import (
    COUNT_COLUMNS,
    INT64_MAX,
    LAST_RUN,
    MODEL_DIGEST,
    PHASE_COLUMNS,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from exporter.state.pairs import ExporterState, PairState
    from exporter.storage.database import Database

log = logging.getLogger("exporter.store")

# Built from the constant column names of the schema, never from input: no injection possible.
_NAMES: Final = ", ".join(LAST_RUN.columns)
_UPSERT: Final = (
    f"INSERT OR REPLACE INTO last_run ({_NAMES}) "  # noqa: S608
    f"VALUES ({', '.join('?' for _ in LAST_RUN.columns)})"
)
_SELECT: Final = f"SELECT {_NAMES} FROM last_run"  # noqa: S608
_UPSERT_DIGEST: Final = (
    "INSERT OR REPLACE INTO model_digest (server, model, digest, changed_at) VALUES (?, ?, ?, ?)"
)
_SELECT_DIGESTS: Final = f"SELECT {', '.join(MODEL_DIGEST.columns)} FROM model_digest"  # noqa: S608


@dataclass(frozen=True, slots=True)
class StoredPair:
    """What the file keeps of one pair."""

    last: LastRun
    last_success_at: float | None


class LastRuns:
    """Tables `last_run` and `model_digest` of an open file."""

    def __init__(self, database: Database) -> None:
        self.database = database

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
                    "path": str(self.database.path),
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
                min(max(count, 0), INT64_MAX)
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
        self.database.execute(_UPSERT, values)
        return True

    def write_digest(self, server: str, model: str, digest: str, changed_at: float | None) -> None:
        """Keep the last digest seen for a pair and when it last changed; raises sqlite3.Error."""
        self.database.execute(_UPSERT_DIGEST, (server, model, digest, changed_at))

    def load(self) -> dict[tuple[str, str], StoredPair]:
        """Every stored pair; rows that do not make sense are skipped with a warning."""
        try:
            rows = self.database.select(_SELECT)
        except sqlite3.Error as exc:
            log.warning(
                "cannot read the stored state, starting without it",
                extra={"path": str(self.database.path), "error": str(exc)},
            )
            return {}
        decoded = decode_rows(
            LAST_RUN.columns, rows, _decode, table=LAST_RUN.name, path=str(self.database.path)
        )
        return dict(decoded)

    def load_digests(self) -> dict[tuple[str, str], tuple[str, float | None]]:
        """Every stored (digest, changed_at) by pair; rows that make no sense are skipped."""
        try:
            rows = self.database.select(_SELECT_DIGESTS)
        except sqlite3.Error as exc:
            log.warning(
                "cannot read the stored digests, starting without them",
                extra={"path": str(self.database.path), "error": str(exc)},
            )
            return {}
        decoded = decode_rows(
            MODEL_DIGEST.columns,
            rows,
            _decode_digest,
            table=MODEL_DIGEST.name,
            path=str(self.database.path),
        )
        return dict(decoded)


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


def _decode(row: Row) -> tuple[tuple[str, str], StoredPair]:
    """A row as a StoredPair; BadRowError when it is not one we could have written."""
    reason = row.reason("reason")
    success = row.flag("success")
    if success != (reason is None):
        raise BadRowError("success")
    downloaded, completed, expected, layers, layers_completed = (
        row.count(column) for column in COUNT_COLUMNS
    )
    last = LastRun(
        success=success,
        reason=reason,
        ended_at=row.number("ended_at"),
        duration=row.number("duration_seconds"),
        phase_durations={
            phase: row.number(column)
            for phase, column in zip(RUN_PHASES, PHASE_COLUMNS, strict=True)
        },
        downloaded_bytes=downloaded,
        completed_bytes=completed,
        expected_bytes=expected,
        layers=layers,
        layers_completed=layers_completed,
    )
    key = (row.text("server"), row.text("model"))
    return key, StoredPair(last=last, last_success_at=row.optional_number("last_success_at"))


def _decode_digest(row: Row) -> tuple[tuple[str, str], tuple[str, float | None]]:
    key = (row.text("server"), row.text("model"))
    return key, (row.text("digest"), row.optional_number("changed_at"))
