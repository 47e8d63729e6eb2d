"""The on-disk format of the `--storage.path` file: its ids and its three tables.

Written down once, here, so that the check on open (`exporter.storage.database`) and the code
that reads and writes each table agree on every column. Files written since version 1 of the
format open unchanged; a table missing from an older file is created when it is opened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from exporter.ollama.protocol import RUN_PHASES

APPLICATION_ID: Final = 0x4F504558
"""`PRAGMA application_id` of our files ("OPEX"), so that a stranger's database is recognised."""
SCHEMA_VERSION: Final = 1
"""`PRAGMA user_version`; a file with another one is set aside (no migrations exist yet)."""
INT64_MAX: Final = (1 << 63) - 1
"""The largest integer SQLite stores; byte counts are clamped to it."""


@dataclass(frozen=True, slots=True)
class Table:
    """One table: its columns in order, and the statements that create it (and its indexes)."""

    name: str
    columns: tuple[str, ...]
    create: tuple[str, ...]
    required: bool = False
    """True: a file of ours without it is not ours (it was there from the first version)."""


PHASE_COLUMNS: Final = tuple(f"{phase.value}_seconds" for phase in RUN_PHASES)
COUNT_COLUMNS: Final = (
    "downloaded_bytes",
    "completed_bytes",
    "expected_bytes",
    "layers",
    "layers_completed",
)
LAST_RUN: Final = Table(
    name="last_run",
    columns=(
        "server",
        "model",
        "success",
        "reason",
        "ended_at",
        "duration_seconds",
        *PHASE_COLUMNS,
        *COUNT_COLUMNS,
        "last_success_at",
    ),
    create=(
        f"""CREATE TABLE IF NOT EXISTS last_run (
    server TEXT NOT NULL,
    model TEXT NOT NULL,
    success INTEGER NOT NULL,
    reason TEXT,
    ended_at REAL NOT NULL,
    duration_seconds REAL NOT NULL,
    {", ".join(f"{column} REAL NOT NULL" for column in PHASE_COLUMNS)},
    {", ".join(f"{column} INTEGER NOT NULL" for column in COUNT_COLUMNS)},
    last_success_at REAL,
    PRIMARY KEY (server, model)
) WITHOUT ROWID""",
    ),
    required=True,
)
"""Each pair's last finished run, one row per (server, model)."""

MODEL_DIGEST: Final = Table(
    name="model_digest",
    columns=("server", "model", "digest", "changed_at"),
    create=(
        """CREATE TABLE IF NOT EXISTS model_digest (
    server TEXT NOT NULL,
    model TEXT NOT NULL,
    digest TEXT NOT NULL,
    changed_at REAL,
    PRIMARY KEY (server, model)
) WITHOUT ROWID""",
    ),
)
"""The last digest seen per pair (a change compares with it after a restart)."""

RUN_HISTORY: Final = Table(
    name="run_history",
    columns=(
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
    ),
    create=(
        """CREATE TABLE IF NOT EXISTS run_history (
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
        "CREATE INDEX IF NOT EXISTS run_history_pair ON run_history (server, model, id)",
    ),
)
"""The last `history_limit` runs of every pair, with their transcripts; one row per run."""

TABLES: Final = (LAST_RUN, MODEL_DIGEST, RUN_HISTORY)
