"""Throughput of running pulls over the last 10 seconds, and each server's last minute of it.

A background task samples every running pair's downloaded bytes once a second; a rate is the
growth from the oldest sample in the window to the live value now. The stream path is not
touched: sampling reads the same integers the metrics read.

The same samples feed a small ring per server (`HISTORY` values of bytes per second, one per
sample), drawn as the sparkline of the fleet page: fixed memory per server, forgotten with it.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from exporter.ollama.progress import RunProgress
    from exporter.state.pairs import ExporterState

WINDOW: Final = 10.0
"""Seconds a rate looks back."""
STEP: Final = 1.0
"""Seconds between two samples."""
MIN_SPAN: Final = 0.9
"""A rate needs samples this far apart, else it is unknown (a run that just started)."""
HISTORY: Final = 60
"""Samples of each server's throughput kept (a minute at one sample a second)."""


class RateTracker:
    """Samples of (monotonic time, downloaded bytes) per running pair; a ring per server."""

    def __init__(self) -> None:
        self._samples: dict[tuple[str, str], tuple[RunProgress, deque[tuple[float, int]]]] = {}
        self._servers: dict[str, deque[float]] = {}
        self._last_at: float | None = None

    def sample(self, state: ExporterState, now: float) -> None:
        """Take one sample of every running pair; forget pairs that stopped running.

        Each server's ring gets the bytes its pairs downloaded since the last sample, per
        second: a run that ended since counts up to its end; one that began and ended
        between two samples is not seen.
        """
        samples = self._samples
        moved = dict.fromkeys(state.servers, 0)
        for key, pair in state.pairs.items():
            run = pair.current
            entry = samples.get(key)
            grown = 0
            if entry is not None:
                grown = entry[0].downloaded_bytes - entry[1][-1][1]
            if run is None:
                samples.pop(key, None)
            else:
                if entry is None or entry[0] is not run:
                    entry = samples[key] = (run, deque())
                    grown += run.downloaded_bytes
                points = entry[1]
                points.append((now, run.downloaded_bytes))
                while len(points) > 1 and points[1][0] <= now - WINDOW:
                    points.popleft()
            if grown and pair.server in moved:
                moved[pair.server] += grown
        for key in [key for key in samples if key not in state.pairs]:
            del samples[key]
        self._record(moved, now)

    def _record(self, moved: dict[str, int], now: float) -> None:
        """Append bytes per second since the last sample to every server's ring."""
        rings = self._servers
        for name in [name for name in rings if name not in moved]:
            del rings[name]
        last, self._last_at = self._last_at, now
        if last is None or now <= last:
            return
        elapsed = now - last
        for name, grown in moved.items():
            ring = rings.get(name)
            if ring is None:
                ring = rings[name] = deque(maxlen=HISTORY)
            ring.append(max(0, grown) / elapsed)

    def throughput(self, server: str) -> tuple[float, ...]:
        """`server`'s bytes per second, oldest first, one per sample (at most HISTORY)."""
        ring = self._servers.get(server)
        return tuple(ring) if ring is not None else ()

    def rate(self, key: tuple[str, str], run: RunProgress, now: float) -> float | None:
        """Bytes per second of `run` over the last WINDOW seconds, None while unknown."""
        entry = self._samples.get(key)
        if entry is None or entry[0] is not run:
            return None
        since, downloaded = entry[1][0]
        span = now - since
        if span < MIN_SPAN:
            return None
        return max(0.0, (run.downloaded_bytes - downloaded) / span)
