"""Log lines that an outsider can trigger at will, at most one per interval.

A flood of bad connections or wrong passwords must not become a flood of log lines (disk,
CPU, and the real lines lost in the noise): each kind of event logs one warning per
`INTERVAL`, saying how many like it were left out since the last one.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import logging

INTERVAL: Final = 10.0
"""Seconds between two lines about the same kind of event."""


class RateLimitedLog:
    """One warning line per `INTERVAL` at most, with a `suppressed` count."""

    def __init__(self, logger: logging.Logger, message: str) -> None:
        self._logger = logger
        self._message = message
        self._next = 0.0
        self._suppressed = 0

    def log(self, **fields: object) -> None:
        """Log the event now, or count it if a line went out less than `INTERVAL` ago."""
        now = time.monotonic()
        if now < self._next:
            self._suppressed += 1
            return
        self._logger.warning(self._message, extra={**fields, "suppressed": self._suppressed})
        self._next = now + INTERVAL
        self._suppressed = 0
