"""Signal handling from the first moment of the process, before the heavy imports.

Python's defaults kill the process on SIGHUP and SIGTERM until the event loop installs its
own handlers, which happens only after the config is loaded. `install` (the first thing
`python -m exporter` and the console script do) replaces them: a SIGHUP is remembered and
becomes one reload once the loop runs, and SIGTERM/SIGINT raise `Interrupted`, so start-up
stops cleanly whatever it is doing (even a read of a config FIFO that nobody writes).

`exit_after` is the backstop of every shutdown: if cleanup has not ended the process within
its deadline (a thread stuck on a hung mount, a slow DNS lookup), it ends it anyway.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from types import FrameType

log = logging.getLogger("exporter")

STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)

_reload_requested = threading.Event()


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived while no event loop handled them."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        """`SIGTERM` or `SIGINT`."""
        return signal.Signals(self.signum).name


def _remember_reload(signum: int, frame: FrameType | None) -> None:
    del signum, frame
    _reload_requested.set()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    del frame
    raise Interrupted(signum)


def install() -> None:
    """Take over SIGHUP, SIGTERM and SIGINT from Python's defaults (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    signal.signal(signal.SIGHUP, _remember_reload)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _interrupt)


def remember_reloads() -> None:
    """After the loop stops handling SIGHUP: remember it again rather than die of it."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, _remember_reload)


def take_reload_request() -> bool:
    """True once for every burst of SIGHUPs that arrived while no loop handled them."""
    requested = _reload_requested.is_set()
    _reload_requested.clear()
    return requested


def exit_after(seconds: float, code: int = 0) -> threading.Timer:
    """End the process with `code` in `seconds` unless it has exited by then (`cancel` it)."""

    def expire() -> None:
        log.error(
            "shutdown did not finish in time; exiting now",
            extra={"deadline_seconds": seconds},
        )
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.name = "shutdown deadline"
    timer.start()
    return timer
