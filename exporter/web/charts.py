"""The pages' pictures and the transcript's marks: data in, escaped SVG or rows out.

A run's chart is derived from its transcript alone: every kept line goes through the same fold
the exporter ran live (`exporter.ollama.progress.RunProgress`), so the bytes, phases and
regressions drawn are the ones the metrics counted. The series is downsampled to at most
`MAX_POINTS` points whatever the transcript holds. The fleet page's sparklines draw a server's
ring of throughput samples (`exporter.state.rates`). Every text that came from outside (a model
or server name) is escaped here: the result is `Markup` the templates insert as it is. Styles
are classes of `static/page.css`: the page's Content-Security-Policy allows no inline style.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import msgspec
from markupsafe import Markup, escape

from exporter.ollama.progress import RunProgress
from exporter.ollama.protocol import Phase, ProgressLine
from exporter.state.rates import HISTORY

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

MAX_POINTS: Final = 300
"""Points of a run's series at most, whatever the length of its transcript."""
STALL_SECONDS: Final = 5.0
"""Seconds in the download phase without new bytes that the chart marks as a stall."""
SILENCE_SECONDS: Final = 5.0
"""Seconds between two lines that the transcript marks as a silence."""
WIDTH: Final = 720
HEIGHT: Final = 250
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 14, 44, 26
"""The plot's margins: y labels, room on the right, phase labels (three rows), x labels."""
_CHAR: Final = 6.2
"""Width of a label character at the chart's font size, to keep labels apart."""
SPARK_WIDTH: Final = 150
SPARK_HEIGHT: Final = 28

_decoder: Final = msgspec.json.Decoder(ProgressLine)


def _decode(line: str) -> ProgressLine | None:
    try:
        return _decoder.decode(line)
    except (msgspec.DecodeError, RecursionError):
        return None


def _is_error(line: str) -> bool:
    """Whether a line is a JSON object with an `error` key (shown marked)."""
    try:
        value = msgspec.json.decode(line)
    except (msgspec.DecodeError, RecursionError):
        return False
    return isinstance(value, dict) and "error" in value


@dataclass(frozen=True, slots=True)
class RunSeries:
    """What a run's chart draws, in seconds since the run's start and bytes."""

    points: tuple[tuple[float, int], ...]
    """(t, completed bytes), downsampled, in time order."""
    end: float
    expected: int
    downloaded: int
    layers: int
    phases: tuple[tuple[str, float, float], ...]
    """(phase, from, to) in stream order."""
    stalls: tuple[tuple[float, float], ...]
    regressions: tuple[tuple[float, int, int], ...]
    """(t, completed after, bytes lost)."""
    gap: tuple[float, float, int] | None = None
    """Lines left out of the kept transcript: (from, to, how many)."""

    @property
    def drawable(self) -> bool:
        """Whether there is anything to draw: bytes moved, or a stall or regression."""
        return bool(self.downloaded or self.stalls or self.regressions) and self.end > 0


def run_series(  # noqa: C901, PLR0912 - one pass over the lines, every mark in it
    lines: Iterable[tuple[float, str]],
    *,
    duration: float | None = None,
    gap_at: int | None = None,
    omitted: int = 0,
    max_points: int = MAX_POINTS,
    stall_seconds: float = STALL_SECONDS,
) -> RunSeries:
    """What a run's chart draws, from its transcript: `lines` are (t, raw line).

    The lines are folded as the exporter folded them live. `gap_at` is the index of the first
    line after the `omitted` ones left out of the middle: no stall is claimed across them.
    """
    progress = RunProgress(0.0)
    raw: list[tuple[float, int]] = [(0.0, 0)]
    phases: list[tuple[str, float]] = [(progress.phase.value, 0.0)]
    stalls: list[tuple[float, float]] = []
    regressions: list[tuple[float, int, int]] = []
    gap = None
    quiet_since: float | None = None
    t = previous_t = 0.0
    for index, (t, text) in enumerate(lines):
        if index == gap_at and omitted:
            gap = (previous_t, t, omitted)
            quiet_since = None if quiet_since is None else t
        previous_t = t
        line = _decode(text)
        if line is None:
            continue
        phase, downloaded = progress.phase, progress.downloaded_bytes
        completed, regressed = progress.completed_bytes, progress.regressions
        ended = progress.apply(line, t)
        if ended is not None:
            progress.finish(t, succeeded=ended.reason is None)
        if progress.phase is not phase:
            phases.append((progress.phase.value, t))
        if progress.regressions > regressed:
            regressions.append((t, progress.completed_bytes, completed - progress.completed_bytes))
        if progress.phase is Phase.DOWNLOAD:
            if phase is not Phase.DOWNLOAD:
                quiet_since = t
            elif quiet_since is not None and (
                progress.downloaded_bytes > downloaded or progress.completed_bytes > completed
            ):
                if t - quiet_since > stall_seconds:
                    stalls.append((quiet_since, t))
                quiet_since = t
        elif quiet_since is not None:
            if t - quiet_since > stall_seconds:
                stalls.append((quiet_since, t))
            quiet_since = None
        now = progress.completed_bytes
        if now != raw[-1][1] and t > raw[-1][0]:
            raw.append((t, raw[-1][1]))  # a step: the bytes were known only as lines came
        raw.append((t, now))
        if ended is not None:
            break
    end = max(t, duration or 0.0)
    if quiet_since is not None and end - quiet_since > stall_seconds:
        stalls.append((quiet_since, end))
    if raw[-1][0] < end:
        raw.append((end, raw[-1][1]))
    bounds = [start for _, start in phases[1:]] + [end]
    return RunSeries(
        points=downsample(raw, max_points),
        end=end,
        expected=progress.expected_bytes,
        downloaded=progress.downloaded_bytes,
        layers=progress.layers,
        phases=tuple(
            (name, start, stop) for (name, start), stop in zip(phases, bounds, strict=True)
        ),
        stalls=tuple(stalls),
        regressions=tuple(regressions),
        gap=gap,
    )


def downsample(points: Sequence[tuple[float, int]], limit: int) -> tuple[tuple[float, int], ...]:
    """At most `limit` (>= 8) points of a time series, its shape kept.

    The time is cut into `limit // 4` equal buckets; each keeps its first, lowest, highest and
    last point, in time order: flat stretches stay flat, drops and peaks stay.
    """
    if len(points) <= limit:
        return tuple(points)
    start, stop = points[0][0], points[-1][0]
    buckets = max(1, limit // 4)
    width = (stop - start) / buckets or 1.0
    groups: dict[int, list[int]] = {}
    for index, (t, _) in enumerate(points):
        groups.setdefault(min(buckets - 1, int((t - start) / width)), []).append(index)
    kept: list[int] = []
    for members in groups.values():
        low = min(members, key=lambda i: points[i][1])
        high = max(members, key=lambda i: points[i][1])
        kept += sorted({members[0], low, high, members[-1]})
    return tuple(points[i] for i in kept)


def size_label(count: float) -> str:
    """A byte count for an axis: `0 B`, `512 KiB`, `1.5 GiB` (short: one decimal under 10)."""
    size = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.1f} {unit}" if unit != "B" and size < 10 else f"{size:.0f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB" if size < 10 else f"{size:.0f} TiB"


def seconds_label(seconds: float) -> str:
    """A time for an axis: `0s`, `45s`, `1m30s`, `2h05m`."""
    whole = round(seconds)
    if whole < 120:
        return f"{whole}s" if abs(seconds - whole) < 1e-6 or whole >= 10 else f"{seconds:g}s"
    if whole < 7200:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def time_ticks(end: float, most: int = 8) -> list[float]:
    """Round times from 0 to `end`, at most `most` + 1 of them, 1-2-5 steps."""
    if end <= 0:
        return [0.0]
    for step in (x * 10.0**e for e in range(-1, 6) for x in (1, 2, 5)):
        if end / step <= most:
            return [i * step for i in range(int(end / step + 1e-9) + 1)]
    return [0.0, end]  # pragma: no cover - a run of more than 115 days


def _f(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")


def _secs(value: float) -> str:
    return f"{value:.1f} s"


@dataclass(frozen=True, slots=True)
class _Plot:
    """Seconds and bytes to SVG coordinates inside the margins."""

    end: float
    top: float
    width: float = WIDTH - _LEFT - _RIGHT
    height: float = HEIGHT - _TOP - _BOTTOM

    def x(self, t: float) -> float:
        return _LEFT + self.width * min(1.0, max(0.0, t / self.end))

    def y(self, count: float) -> float:
        return _TOP + self.height * (1 - count / self.top)

    def band(self, css: str, start: float, stop: float, tip: str, least: float = 2.0) -> str:
        """A full-height rectangle from `start` to `stop` with a tooltip."""
        left = self.x(start)
        width = max(self.x(stop) - left, least)
        return (
            f'<rect class="{css}" x="{_f(left)}" y="{_TOP}" width="{_f(width)}" '
            f'height="{_f(self.height)}"><title>{escape(tip)}</title></rect>'
        )


def _phases(plot: _Plot, series: RunSeries) -> list[str]:
    """A tinted band per phase, a line at each boundary, names in up to three rows."""
    parts = []
    label_ends = [-math.inf] * 3
    for name, start, stop in series.phases:
        tip = f"{name}: {_secs(start)} to {_secs(stop)} ({_secs(stop - start)})"
        parts.append(plot.band(f"phase phase-{escape(name)}", start, stop, tip, 0.5))
        left = plot.x(start)
        if start > 0:
            parts.append(
                f'<line class="boundary" x1="{_f(left)}" y1="{_TOP - 4}" '
                f'x2="{_f(left)}" y2="{_f(_TOP + plot.height)}"/>'
            )
        at = min(left + 2, WIDTH - _CHAR * len(name))  # a late phase's name stays inside
        row = next((r for r, e in enumerate(label_ends) if e < at), 2)
        label_ends[row] = at + _CHAR * len(name) + 4
        parts.append(
            f'<text class="phase-label" x="{_f(at)}" y="{12 * row + 10}">{escape(name)}</text>'
        )
    return parts


def _axes(plot: _Plot, series: RunSeries) -> list[str]:
    """Grid lines at 0, half and the top in bytes; round times below; the expected total."""
    parts = []
    for tick in (0, plot.top / 2, plot.top):
        at = _f(plot.y(tick))
        parts.append(
            f'<line class="grid" x1="{_LEFT}" y1="{at}" x2="{WIDTH - _RIGHT}" '
            f'y2="{at}"/><text class="y-label" x="{_LEFT - 6}" y="{_f(plot.y(tick) + 4)}">'
            f"{size_label(tick)}</text>"
        )
    parts += [
        f'<text class="x-label" x="{_f(plot.x(tick))}" y="{HEIGHT - 8}">'
        f"{seconds_label(tick)}</text>"
        for tick in time_ticks(series.end)
    ]
    if series.expected:
        at = _f(plot.y(series.expected))
        parts.append(
            f'<line class="total" x1="{_LEFT}" y1="{at}" x2="{WIDTH - _RIGHT}" '
            f'y2="{at}"><title>expected: {size_label(series.expected)}</title></line>'
        )
    return parts


def _marks(plot: _Plot, series: RunSeries) -> list[str]:
    """Stalls as red bands with their length, regressions as rings where bytes fell."""
    parts = []
    for start, stop in series.stalls:
        tip = f"no new bytes for {_secs(stop - start)} from {_secs(start)}"
        parts.append(plot.band("stall", start, stop, tip))
        middle = _f((plot.x(start) + plot.x(stop)) / 2)
        parts.append(
            f'<text class="stall-label" x="{middle}" y="{_TOP + 14}">'
            f"stall {stop - start:.0f} s</text>"
        )
    for t, completed, lost in series.regressions:
        parts.append(
            f'<circle class="regression" cx="{_f(plot.x(t))}" '
            f'cy="{_f(plot.y(completed))}" r="4"><title>completed went down by '
            f"{size_label(lost)} at {_secs(t)}</title></circle>"
        )
    return parts


def run_chart(series: RunSeries, *, title: str) -> Markup:
    """The SVG of a run's bytes over time: phases, stalls, regressions and the series."""
    plot = _Plot(series.end or 1.0, max(series.expected, *(c for _, c in series.points), 1))
    parts = _phases(plot, series)
    if series.gap is not None:
        start, stop, count = series.gap
        parts.append(plot.band("gap", start, stop, f"{count} lines not kept"))
    parts += _axes(plot, series)
    coords = " ".join(f"{_f(plot.x(t))},{_f(plot.y(c))}" for t, c in series.points)
    floor = _f(plot.y(0))
    base = f"{_f(plot.x(series.points[-1][0]))},{floor} {_f(plot.x(0))},{floor}"
    parts.append(f'<polygon class="area" points="{coords} {base}"/>')
    parts.append(f'<polyline class="series" points="{coords}"/>')
    parts += _marks(plot, series)
    name = escape(title)
    head = (
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{name}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{name}</title>'
        f"<desc>{escape(describe(series))}</desc>"
    )
    return Markup(head + "".join(parts) + "</svg>")  # noqa: S704 - every text above is escaped


def describe(series: RunSeries) -> str:
    """The chart in words, for its `<desc>` and screen readers."""
    phases = ", ".join(
        f"{name} {_secs(start)} to {_secs(stop)}" for name, start, stop in series.phases
    )
    text = (
        f"{size_label(series.points[-1][1])} of {size_label(series.expected)} over "
        f"{_secs(series.end)}. Phases: {phases}."
    )
    if series.stalls:
        text += (
            " Stalls: "
            + ", ".join(f"{_secs(b - a)} from {_secs(a)}" for a, b in series.stalls)
            + "."
        )
    if series.regressions:
        text += (
            " Completed went down at " + ", ".join(_secs(t) for t, _, _ in series.regressions) + "."
        )
    if series.gap is not None:
        start, stop, count = series.gap
        text += f" {count} lines from {_secs(start)} to {_secs(stop)} not kept."
    return text


def legend(series: RunSeries) -> list[tuple[str, str]]:
    """The keys under a chart, (class, words): the series, and only the marks it has."""
    keys = [("series", "completed bytes"), ("total", "expected bytes")]
    if series.stalls:
        keys.append(("stall", f"stall: no new bytes for over {STALL_SECONDS:g} s"))
    if series.regressions:
        keys.append(("regression", "completed went down"))
    if series.gap is not None:
        keys.append(("gap", "lines not kept"))
    return keys


def chart_note(series: RunSeries, *, kept: bool, running: bool = False) -> str:
    """Why a run has no chart: one sentence in place of an empty picture."""
    if running:
        return "No chart yet: no bytes so far."
    if not kept:
        return "No chart: the transcript was not kept."
    if series.layers == 0:
        return "No chart: no bytes were reported (the run ended before its first layer)."
    return "No chart: no bytes moved (every layer was on disk already)."


def sparkline(values: Sequence[float], *, server: str, slots: int = HISTORY) -> Markup:
    """A server's throughput samples (bytes/s, oldest first, one a second) as a small line.

    The newest sample is at the right edge and each of the `slots` samples has its place, so
    a ring that is not full yet (the exporter just started) draws from the right. Its peak
    follows as text: every sparkline has its own scale.
    """
    values = values[-slots:]
    peak = max(values, default=0.0)
    scale = (SPARK_HEIGHT - 3) / peak if peak > 0 else 0.0
    bottom = SPARK_HEIGHT - 1.5
    places = _spark_places(slots)[slots - len(values) :]
    coords = " ".join(f"{x},{bottom - v * scale:.1f}" for x, v in zip(places, values, strict=True))
    now = values[-1] if values else 0.0
    label = escape(
        f"Throughput of {server} over the last {len(values)} s: "
        f"now {size_label(now)}/s, peak {size_label(peak)}/s"
    )
    line = f'<polyline class="spark-line" points="{coords}"/>' if len(values) > 1 else ""
    return Markup(  # noqa: S704 - the label is escaped, the rest are numbers
        f'<svg class="spark" viewBox="0 0 {SPARK_WIDTH} {SPARK_HEIGHT}" data-slots="{slots}" '
        f'role="img" '
        f'aria-label="{label}" xmlns="http://www.w3.org/2000/svg"><title>{label}</title>'
        f'<line class="spark-base" x1="0" y1="{SPARK_HEIGHT - 0.5}" x2="{SPARK_WIDTH}" '
        f'y2="{SPARK_HEIGHT - 0.5}"/>{line}</svg>'
        f'<span class="spark-peak" aria-hidden="true">peak {size_label(peak)}/s</span>'
    )


@functools.cache
def _spark_places(slots: int) -> tuple[str, ...]:
    """The x of each of `slots` samples, as text: the same for every sparkline of a page."""
    step = SPARK_WIDTH / max(slots - 1, 1)
    return tuple(_f(i * step) for i in range(slots))


@dataclass(frozen=True, slots=True)
class TranscriptRow:
    """One shown row: a line, or `count` identical consecutive lines from `t` to `last_t`."""

    t: float
    last_t: float
    line: str
    cut: int
    count: int
    error: bool
    silence: float | None
    """Seconds without any line before this one, when more than SILENCE_SECONDS."""
    omitted_before: bool


def transcript_rows(
    lines: Sequence[tuple[float, str, int]], *, omitted_at: int, silence: float = SILENCE_SECONDS
) -> list[TranscriptRow]:
    """The transcript as shown: a run of one repeated line in one row, silences marked.

    Only the rendering: the page shows the count of a folded row, nothing is dropped, and the
    stored lines do not change. A silence or the left-out lines end a run of repeats.
    """
    rows: list[TranscriptRow] = []
    for index, (t, line, cut) in enumerate(lines):
        omitted = index == omitted_at and index > 0
        last = rows[-1] if rows else None
        gap = t - last.last_t if last is not None and not omitted else 0.0
        quiet = gap if gap > silence else None
        if (
            last is not None
            and not omitted
            and quiet is None
            and (line, cut) == (last.line, last.cut)
        ):
            rows[-1] = TranscriptRow(
                last.t, t, line, cut, last.count + 1, last.error, last.silence, last.omitted_before
            )
            continue
        rows.append(TranscriptRow(t, t, line, cut, 1, _is_error(line), quiet, omitted))
    return rows
