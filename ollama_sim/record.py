"""What the simulator observed of one `POST /api/pull`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from multidict import CIMultiDictProxy


OUTCOME_OPEN = "open"
OUTCOME_COMPLETED = "completed"
OUTCOME_BAD_REQUEST = "bad_request"
OUTCOME_HTTP_ERROR = "http_error"
OUTCOME_CLIENT_DISCONNECTED = "client_disconnected"
OUTCOME_SERVER_DISCONNECTED = "server_disconnected"
OUTCOME_STOPPED = "stopped"

PHASE_LINES: Final = tuple(
    (status, b'{"status":"%s"}' % status.encode())
    for status in (
        "pulling manifest",
        "verifying sha256 digest",
        "writing manifest",
        "removing unused layers",
        "success",
    )
)
"""The lines that start or end a phase, with how each begins on the wire."""


@dataclass(slots=True)
class RequestRecord:
    """One `POST /api/pull` as the simulator saw it.

    `outcome`: `open` while it runs, then `completed` (scenario played to its end),
    `bad_request` (400 from body or name checks), `http_error` (an HttpError step),
    `client_disconnected` (the client left early), `server_disconnected` (a Disconnect step)
    or `stopped` (the simulator stopped). Times are `time.monotonic()`.
    """

    body: object
    raw_body: bytes
    headers: CIMultiDictProxy[str]
    started: float
    model: str | None = None
    run_index: int | None = None
    stream: bool = True
    ended: float | None = None
    outcome: str = OUTCOME_OPEN
    status: int | None = None
    lines_sent: int = 0
    bytes_sent: int = 0
    sent_at: dict[str, float] = field(default_factory=dict)
    """When each line of `PHASE_LINES` was last written (`time.monotonic()`): a phase as the
    simulator really played it, late wake-ups included, to measure a client against."""

    def sent(self, data: bytes) -> None:
        """Note the time if `data` is one of `PHASE_LINES`."""
        if data.startswith(b'{"status":"') and b'"digest"' not in data:
            for status, line in PHASE_LINES:
                if data.startswith(line):
                    self.sent_at[status] = time.monotonic()
                    return

    def finish(self, outcome: str) -> None:
        """End the record with `outcome` and the time now, unless it has ended already."""
        if self.outcome == OUTCOME_OPEN:
            self.outcome, self.ended = outcome, time.monotonic()

    @property
    def client_disconnected(self) -> bool:
        """True if the client went away before the run ended."""
        return self.outcome == OUTCOME_CLIENT_DISCONNECTED

    @property
    def duration(self) -> float | None:
        """Seconds from request to end, None while open."""
        return None if self.ended is None else self.ended - self.started

    def to_json(self) -> dict[str, object]:
        """Return the record as a JSON object (headers as a list of pairs)."""
        return {
            "model": self.model,
            "body": self.body,
            "headers": [[k, v] for k, v in self.headers.items()],
            "run_index": self.run_index,
            "stream": self.stream,
            "started": self.started,
            "ended": self.ended,
            "outcome": self.outcome,
            "status": self.status,
            "lines_sent": self.lines_sent,
            "bytes_sent": self.bytes_sent,
        }
