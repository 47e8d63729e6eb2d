"""One run's bookkeeping: layers, bytes, phases and regressions (contract §3).

Pure: the events of `protocol` and timestamps go in, numbers and the run's verdict come
out. The metrics read the fields directly while the run streams, so every number here
is kept incrementally and `apply_lines` stays O(1) per line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from exporter.ollama.protocol import (
    MAX_LAYERS,
    RUN_PHASES,
    Phase,
    PhaseStarted,
    ProgressLine,
    RunEnded,
    event_of,
    follows_previous_layer,
    too_many_layers,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

_DOWNLOAD: Final = Phase.DOWNLOAD
"""A module constant: reading `Phase.DOWNLOAD` goes through the enum class (slow on 3.11)."""


class Layer:
    """A distinct digest seen in this run."""

    __slots__ = ("completed", "done", "maybe_cached", "total")

    def __init__(self, total: int, completed: int) -> None:
        self.total = total
        self.completed = completed
        self.done = False
        self.maybe_cached = False
        """First seen complete: on disk already, unless another line for it follows."""


_NO_LAYER: Final = Layer(0, 0)
"""Stands in for the last layer before there is one (never read: no digest equals None)."""


class RunProgress:
    """Folds the events of one run into the numbers the contract names.

    Timestamps are monotonic seconds passed in by the caller, so tests drive
    the clock by hand. What a line means is decided by `protocol.event_of`; the
    hot loop only inlines its first two rules (`protocol.is_layer_progress`).
    """

    __slots__ = (
        "_current",
        "_last_digest",
        "_last_layer",
        "_layers",
        "_maybe_cached",
        "completed_bytes",
        "downloaded_bytes",
        "expected_bytes",
        "last_progress_at",
        "layers_completed",
        "phase",
        "phase_durations",
        "phase_started_at",
        "regressions",
        "reused_bytes",
        "started_at",
        "wall_offset",
    )

    def __init__(self, now: float, wall: float | None = None) -> None:
        self.started_at = now
        self.wall_offset = 0.0 if wall is None else wall - now
        """Unix time minus the monotonic clock at the start (`wall`: Unix time of `now`)."""
        self.phase = Phase.MANIFEST
        self.phase_started_at = now
        self.phase_durations: dict[Phase, float] = dict.fromkeys(RUN_PHASES, 0.0)
        self.last_progress_at = now
        self.downloaded_bytes = 0
        self.completed_bytes = 0
        self.expected_bytes = 0
        self.layers_completed = 0
        self.regressions = 0
        self.reused_bytes = 0
        """Bytes of layers that were already on disk: first seen complete and never again."""
        self._layers: dict[str, Layer] = {}
        self._maybe_cached: list[Layer] = []
        """Layers first seen complete whose fate (cached or fetched within one tick) is open."""
        self._current: Layer | None = None
        self._last_digest: str | None = None
        self._last_layer = _NO_LAYER
        """The layer of the last line that found one (layers are never replaced in a run)."""

    @property
    def layers(self) -> int:
        """Distinct digests seen so far."""
        return len(self._layers)

    @property
    def last_progress_wall(self) -> float:
        """`last_progress_at` as Unix time: `ollama_pull_last_progress_timestamp_seconds`.

        The stall watchdog's clock: the run's start, then each time its bytes grow (a new
        layer or phase starts the clock again too). Lines without new bytes leave it alone.
        """
        return self.last_progress_at + self.wall_offset

    @property
    def remaining_bytes(self) -> int:
        """Bytes the layers seen so far still lack (0 outside the download phase)."""
        if self.phase is not _DOWNLOAD:
            return 0
        return self.expected_bytes - self.completed_bytes

    def apply(self, line: ProgressLine, now: float) -> RunEnded | None:
        """Fold one line in; see `apply_lines`."""
        return self.apply_lines((line,), now)

    def apply_lines(  # noqa: C901, PLR0912 - the hot loop, inlined on purpose (performance.md)
        self, lines: Iterable[ProgressLine], now: float
    ) -> RunEnded | None:
        """Fold the lines of one chunk in; `now` is when the chunk arrived.

        Returns the verdict when a line ends the run (success, an error line, too many
        layers); the lines after it are not folded. This runs for every line of every
        stream, so the common case (a known layer whose `completed` grew) is inlined
        here; the rare cases live in helpers.
        """
        for line in lines:
            digest = line.digest
            if digest is None or line.error is not None:
                ended = self._rare(line, now)
                if ended is not None:
                    return ended
                continue
            if self.phase is not _DOWNLOAD:
                self._enter(_DOWNLOAD, now)
            if digest == self._last_digest:  # lines of one layer come in runs: skip the hashing
                layer = self._last_layer
            else:
                found = self._layers.get(digest)
                if found is None:
                    if len(self._layers) >= MAX_LAYERS:
                        return too_many_layers()
                    self._new_layer(digest, line, now)
                    continue
                layer = self._last_layer = found
                self._last_digest = digest
            if layer.done:
                if layer.maybe_cached:
                    self._fetched_after_all(layer, now)
                continue
            new_total = line.total
            if new_total is not None and new_total != layer.total:
                self._retotal(layer, new_total)
            completed = line.completed or 0
            old = layer.completed
            if completed > old:
                self.downloaded_bytes += completed - old
                layer.completed = completed
                self.last_progress_at = now
                if completed < layer.total:
                    self.completed_bytes += completed - old
                else:
                    self._reached_total(layer, old)
            elif completed < old:
                self._rolled_back(layer, completed)
        return None

    def finish(self, now: float, *, succeeded: bool) -> None:
        """Close the last phase; a success means every layer made it to disk."""
        if succeeded:
            self._complete_open_layers()
        self._settle_cached()
        self.phase_durations[self.phase] += now - self.phase_started_at
        self.phase_started_at = now

    def _enter(self, phase: Phase, now: float) -> None:
        self.phase_durations[self.phase] += now - self.phase_started_at
        self.phase = phase
        self.phase_started_at = now
        self.last_progress_at = now

    def _rare(self, line: ProgressLine, now: float) -> RunEnded | None:
        """A line that is not plain layer progress: ask `protocol` what it means."""
        event = event_of(line)
        if isinstance(event, PhaseStarted):
            if event.phase is not self.phase:
                self._complete_open_layers()
                self._settle_cached()
                self._enter(event.phase, now)
            return None
        if isinstance(event, RunEnded):
            return event
        return None  # an unknown status (a line with a digest never comes here)

    def _new_layer(self, digest: str, line: ProgressLine, now: float) -> None:
        # Legacy path: layers come one at a time, so a new digest means the one
        # before finished (Ollama sends no final 100% line). client2 lines have
        # no status and interleave, so they never complete a neighbour.
        if self._current is not None and follows_previous_layer(line):
            self._complete(self._current)
        completed = line.completed or 0
        total = line.total or 0
        layer = Layer(total, completed)
        self._layers[digest] = layer
        self.expected_bytes += total
        self.completed_bytes += min(completed, total)
        self._current = layer
        self.last_progress_at = now
        if total and completed >= total:
            self._mark_done(layer)
            if completed == total:
                layer.maybe_cached = True
                self._maybe_cached.append(layer)

    def _fetched_after_all(self, layer: Layer, now: float) -> None:
        """A second line for a layer first seen complete: it was downloaded in this run.

        Ollama sends exactly one line for a blob it already has, but after a download it
        keeps sending 100% lines (0.17.4: about 1 s of them), so a blob that arrived within
        the first 60 ms tick also starts at `completed == total`. Its bytes count now.
        """
        layer.maybe_cached = False
        self.downloaded_bytes += layer.total
        self.last_progress_at = now

    def _settle_cached(self) -> None:
        """The download phase is over: layers first seen complete and never again were on disk."""
        for layer in self._maybe_cached:
            if layer.maybe_cached:
                layer.maybe_cached = False
                self.reused_bytes += layer.total
        self._maybe_cached.clear()

    def _retotal(self, layer: Layer, new_total: int) -> None:
        """A layer's `total` changed: its size is its latest `total`."""
        self.expected_bytes += new_total - layer.total
        self.completed_bytes += min(layer.completed, new_total) - min(layer.completed, layer.total)
        layer.total = new_total

    def _reached_total(self, layer: Layer, old: int) -> None:
        """`completed` grew from `old` to at least `total` (or `total` is still unknown)."""
        total = layer.total
        if old < total:  # min(completed, total) - min(old, total), with old < completed
            self.completed_bytes += total - old
        if total:
            self._mark_done(layer)

    def _rolled_back(self, layer: Layer, completed: int) -> None:
        """Ollama rolled back a failed part: count it and re-base, never un-count bytes."""
        self.regressions += 1
        total = layer.total
        self.completed_bytes += min(completed, total) - min(layer.completed, total)
        layer.completed = completed

    def _complete(self, layer: Layer) -> None:
        """The stream moved past `layer`: its remaining bytes arrived unreported."""
        if layer.done:
            return
        remaining = layer.total - layer.completed
        if remaining > 0:
            self.downloaded_bytes += remaining
            self.completed_bytes += remaining
            layer.completed = layer.total
        self._mark_done(layer)

    def _mark_done(self, layer: Layer) -> None:
        layer.done = True
        self.layers_completed += 1

    def _complete_open_layers(self) -> None:
        if self.layers_completed == len(self._layers):
            return
        for layer in self._layers.values():
            self._complete(layer)
