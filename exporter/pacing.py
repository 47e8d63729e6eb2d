"""When to let a download's progress lines pile up in the socket, and when not to.

While a layer downloads, Ollama sends one line every 60 ms, each in its own TCP segment.
Waking up for every line costs the exporter about twice the CPU of waking up for four
(docs/performance.md), so after a small read the reader pauses the socket for
`COALESCE_SECONDS`. A line that arrives during a pause is seen late, by up to the pause.
For progress lines that is harmless, but the line after a layer's last tick may be a phase
boundary (`verifying sha256 digest`), and a late boundary distorts every phase duration.

The phase boundary can only come once the layers seen so far are complete, and the
progress lines say how far that is: `remaining_bytes` at the rate `completed` grows. So the
reader pauses only while the download is predicted to go on well past the pause, even if
it sped up `SPEED_UP_MARGIN` times, and reads every line at once near the end. Pure: the
caller passes the clock readings, so tests drive it from tables.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from exporter.progress import RunProgress

COALESCE_SECONDS: Final = 0.25
"""How long a pause lasts: about 4 of Ollama's 60 ms ticks per wake-up."""
COALESCE_BELOW_BYTES: Final = 8192
"""Pause only after a small read (the ticker's trickle). A stream that already arrives in big
chunks is read flat out, so a fast sender is never held back by our socket buffer."""
SPEED_UP_MARGIN: Final = 4.0
"""Pause only if the download would still outlast the pause at this many times its rate.

At 4, the last second of a steady download is read line by line, and the end of a download
whose rate jumps up to 4x within that second is still read at once."""


class ReadPacer:
    """Remembers the last reading of a run's progress to estimate its rate."""

    __slots__ = ("_at", "_completed")

    def __init__(self) -> None:
        self._at = 0.0
        self._completed = -1

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
        if remaining < rate * SPEED_UP_MARGIN * COALESCE_SECONDS:
            return 0.0
        return COALESCE_SECONDS
