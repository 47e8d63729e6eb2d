"""Why the `--storage.path` file cannot be used, importable without loading SQLite.

The CLI names `StorePathError` on every start, with or without a storage path; SQLite (its
library is about 0.9 MiB of RSS) loads with the other storage modules, which the app imports
only when `--storage.path` is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


class StoreError(Exception):
    """The store cannot be used (now); `path` is where, `reason` why (without the path)."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


class StorePathError(StoreError):
    """The storage path cannot be right (its directory is missing, it is a directory)."""
