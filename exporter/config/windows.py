"""Pull windows: `"HH:MM-HH:MM"` in local time or an IANA zone, and when a run may start.

Pure functions over Unix time, so the scheduler can tell the truth in
`ollama_pull_next_run_timestamp_seconds` and the tests can drive the clock by hand.
A window may cross midnight (`"22:00-04:00"`). Wall-clock times that do not exist on a
daylight-saving day open the window at the first instant after them.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Final

_WINDOW: Final = re.compile(
    r"([01][0-9]|2[0-3]):([0-5][0-9])-(?:([01][0-9]|2[0-3]):([0-5][0-9])|(24):(00))"
)
_DAY: Final = 24 * 60


@dataclass(frozen=True, slots=True)
class Window:
    """Runs start only from `start` to `end` (minutes after local midnight) in `timezone`."""

    start: int
    end: int
    """Exclusive; 1440 is midnight at the end of the day. `end < start` crosses midnight."""
    timezone: str | None = None
    """An IANA name; None is the exporter's local time zone."""

    @property
    def text(self) -> str:
        """The window as configured, e.g. `22:00-04:00`."""
        return f"{_clock(self.start)}-{_clock(self.end)}"


def parse_window(text: str) -> tuple[int, int]:
    """`"HH:MM-HH:MM"` -> (start, end) in minutes; raises ValueError with the reason."""
    match = _WINDOW.fullmatch(text)
    if match is None:
        raise ValueError(f'invalid window "{text}": expected "HH:MM-HH:MM" (e.g. "22:00-04:00")')
    hour, minute, end_hour, end_minute, *_ = match.groups()
    start = int(hour) * 60 + int(minute)
    end = _DAY if end_hour is None else int(end_hour) * 60 + int(end_minute)
    if start == end:
        raise ValueError(f'invalid window "{text}": it starts when it ends')
    return start, end


def check_timezone(name: str) -> str:
    """`name` if it is an IANA time zone this machine knows; raises ValueError otherwise."""
    import zoneinfo  # noqa: PLC0415 - see _zone

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        message = f'unknown time zone "{name}" (an IANA name such as "Europe/Berlin")'
        raise ValueError(message) from None
    except OSError as exc:  # a directory or an unreadable file under the zone path
        raise ValueError(f'unknown time zone "{name}": {exc.strerror}') from None
    return name


def is_open(window: Window, at: float) -> bool:
    """Whether a run may start at Unix time `at`."""
    local = _local(window, at)
    minute = local.hour * 60 + local.minute
    if window.start < window.end:
        return window.start <= minute < window.end
    return minute >= window.start or minute < window.end


def next_start(window: Window | None, at: float) -> float:
    """The first instant at or after `at` when a run may start (`at` itself when open)."""
    if window is None or is_open(window, at):
        return at
    day = _local(window, at).date()
    hour, minute = divmod(window.start, 60)
    for offset in range(3):  # today's or tomorrow's opening (a DST fold may skip one)
        opening = _timestamp(window, day + dt.timedelta(days=offset), dt.time(hour, minute))
        if opening > at:
            return opening
    raise AssertionError("unreachable: a window opens within two days")  # pragma: no cover


def windowed_start(window: Window | None, start: float, jitter: float) -> float:
    """When a run planned for Unix time `start` really starts.

    `start` itself inside the window; else when the window next opens plus the run's own
    `jitter` (runs due while it was closed still spread out), if that is still inside it.
    """
    opens = next_start(window, start)
    if opens == start or window is None:
        return start
    spread = opens + max(0.0, jitter)
    return spread if is_open(window, spread) else opens


def _zone(name: str) -> dt.tzinfo:
    # Imported with a `window_timezone` only: zoneinfo is 0.2 MiB that other configs never use.
    import zoneinfo  # noqa: PLC0415

    return zoneinfo.ZoneInfo(name)


def _local(window: Window, at: float) -> dt.datetime:
    if window.timezone is None:
        return dt.datetime.fromtimestamp(at)  # noqa: DTZ006 - the machine's local time on purpose
    return dt.datetime.fromtimestamp(at, _zone(window.timezone))


def _timestamp(window: Window, day: dt.date, clock: dt.time) -> float:
    tz = None if window.timezone is None else _zone(window.timezone)
    return dt.datetime.combine(day, clock, tz).timestamp()


def _clock(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"
