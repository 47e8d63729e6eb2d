"""When to let a download's progress lines pile up in the socket, and when not to.

While a layer downloads, Ollama sends one line every 60 ms, each in its own TCP segment.
Each wake-up of the reader (select, recv, parse, resume the task, fold, transcript) costs
more than the lines it brings, so after a small read the reader pauses the socket for
`COALESCE_SECONDS` and then reads the ~16 lines that piled up in one go. A line that arrives
during a pause is seen late, by up to the pause: for progress lines that is harmless (a
scrape every 15 s, a page polling every second), but the line after a layer's last tick may
be a phase boundary (`verifying sha256 digest`), and a late boundary distorts every phase
duration.

The phase boundary can only come once the layers seen so far are complete, and the
progress lines say how far that is: `remaining_bytes` at the rate `completed` grows. So a
pause never reaches past the predicted end of the download, even if the download sped up
`SPEED_UP_MARGIN` times: it lasts `COALESCE_SECONDS`, or a quarter of the time left,
whichever is shorter, and none at all in the last ticks. A run's `stall_timeout` bounds it
too (`longest_pause`). Pure: the caller passes the clock readings, so tests drive it from
tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from exporter.ollama.progress import RunProgress

COALESCE_SECONDS: Final = 1.0
"""How long a pause lasts: about 16 of Ollama's 60 ms ticks per wake-up (docs/performance.md)."""
STALL_SHARE: Final = 4.0
"""A pause lasts at most this share of the run's `stall_timeout`: a short stall timeout (tests,
impatient operators) never fires because of our own pause."""
COALESCE_BELOW_BYTES: Final = 8192
"""Pause only after a small read (the ticker's trickle). A stream that already arrives in big
chunks is read flat out, so a fast sender is never held back by our socket buffer."""
SPEED_UP_MARGIN: Final = 4.0
"""A pause lasts at most the predicted time left divided by this: the end of a download whose
rate jumps up to 4x before it ends is still read at once."""
MIN_PAUSE_SECONDS: Final = 0.05
"""A shorter pause would hold less than one of Ollama's 60 ms ticks: read on instead."""


def longest_pause(stall_timeout: float) -> float:
    """The longest pause of a run with this `stall_timeout`."""
    return min(COALESCE_SECONDS, stall_timeout / STALL_SHARE)


class ReadPacer:
    """Remembers the last reading of a run's progress to estimate its rate."""

    __slots__ = ("_at", "_completed", "_longest")

    def __init__(self, longest: float = COALESCE_SECONDS) -> None:
        self._at = 0.0
        self._completed = -1
        self._longest = longest

    def pause_after(self, read_bytes: int, run: RunProgress, now: float) -> float:
        """Seconds to pause the socket after a read of `read_bytes` at `now` (0: read on)."""
        if read_bytes >= COALESCE_BELOW_BYTES:
            return 0.0
        remaining = run.remaining_bytes
        completed = run.completed_bytes
        at, before = self._at, self._completed
        self._at, self._completed = now, completed
        if remaining <= 0 or before < 0 or completed <= before or now <= at:
            return 0.0  # no download going, or no rate known yet (a first line, a stall)
        rate = (completed - before) / (now - at)
        pause = min(self._longest, remaining / rate / SPEED_UP_MARGIN)
        return pause if pause >= MIN_PAUSE_SECONDS else 0.0
