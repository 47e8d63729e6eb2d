"""The garbage collector, tuned for a daemon whose state is built once and lives long.

The exporter builds its state at start-up (pairs, their rendered series, the config) and keeps
it, then makes many short-lived objects for every line it reads and every scrape. CPython's
default collector walks every tracked object at each full collection, and under that stream of
allocations full collections come often: at 1,000 pairs with 200 pulls streaming they cost
about a tenth of the exporter's CPU and pause the event loop for tens of milliseconds, which
lands on phase timings and on scrapes (docs/performance.md). So what start-up built is frozen
out of the collector's way, and the young generation is collected less often.
"""

from __future__ import annotations

import gc
from typing import Final

THRESHOLDS: Final = (50_000, 20, 100)
"""Allocations before a young collection (CPython: 700), young collections before a middle one
(10), middle ones before a full one (10). Cycles are still found, only in fewer, larger sweeps."""


_tuned = False


def tune() -> None:
    """Let `settle` tune this process's collector: the daemon's entry point asks for it.

    A program assembled in a test runner's process (tests/inprocess.py) leaves the runner's
    collector alone.
    """
    global _tuned  # noqa: PLW0603 - one switch for the whole process, as the collector is
    _tuned = True


def settle() -> None:
    """After start-up or a reload: collect once, then keep what survived out of later sweeps.

    What a reload replaced was frozen by the previous call; it is thawed first, so the
    collection finds any cycle among the old config's objects. Does nothing until `tune`.
    """
    if not _tuned:
        return
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
