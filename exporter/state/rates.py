"""Throughput of running pulls over the last 10 seconds, for the status API and the page.

A background task samples every running pair's downloaded bytes once a second; a rate is the
growth from the oldest sample in the window to the live value now. The stream path is not
touched: sampling reads the same integers the metrics read.
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


class RateTracker:
    """Samples of (monotonic time, downloaded bytes) per running pair."""

    def __init__(self) -> None:
        self._samples: dict[tuple[str, str], tuple[RunProgress, deque[tuple[float, int]]]] = {}

    def sample(self, state: ExporterState, now: float) -> None:
        """Take one sample of every running pair; forget pairs that stopped running."""
        samples = self._samples
        for key, pair in state.pairs.items():
            run = pair.current
            if run is None:
                samples.pop(key, None)
                continue
            entry = samples.get(key)
            if entry is None or entry[0] is not run:
                entry = samples[key] = (run, deque())
            points = entry[1]
            points.append((now, run.downloaded_bytes))
            while len(points) > 1 and points[1][0] <= now - WINDOW:
                points.popleft()
        for key in [key for key in samples if key not in state.pairs]:
            del samples[key]

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
