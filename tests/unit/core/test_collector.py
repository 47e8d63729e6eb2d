"""The collector's tuning: the daemon's process gets it, a test runner's process does not."""

from __future__ import annotations

import gc
import weakref
from typing import TYPE_CHECKING

import pytest

from exporter.core import collector

if TYPE_CHECKING:
    from collections.abc import Iterator


@pytest.fixture
def restored() -> Iterator[None]:
    """Put this process's collector back as it was, whatever the test did."""
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)
    collector._tuned = False  # the switch `tune` sets, reset for the next test


@pytest.mark.usefixtures("restored")
def test_settle_leaves_the_collector_alone_until_the_process_asks() -> None:
    before = gc.get_threshold()
    collector.settle()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


@pytest.mark.usefixtures("restored")
def test_a_tuned_process_freezes_what_it_built_and_sweeps_the_young_less_often() -> None:
    collector.tune()
    built = [[index] for index in range(1_000)]  # long-lived state, tracked by the collector
    collector.settle()
    assert gc.get_threshold() == collector.THRESHOLDS
    assert gc.get_freeze_count() >= len(built)


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


@pytest.mark.usefixtures("restored")
def test_a_reload_thaws_what_the_last_settle_froze() -> None:
    collector.tune()
    old = _Node()
    gone = weakref.ref(old)
    collector.settle()  # start-up: the old config's cycle is frozen with everything else
    del old
    gc.collect()
    assert gone() is not None  # frozen: out of the collector's sight
    collector.settle()  # a reload: thawed, collected
    assert gone() is None
