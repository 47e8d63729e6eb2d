"""The per-pair table: which families read the live run (`Family.live`)."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from exporter.metrics.pair_table import PAIR_FAMILIES
from exporter.ollama.progress import RunProgress
from exporter.ollama.protocol import ProgressLine, Reason
from exporter.state.holdings import CheckResult
from exporter.state.pairs import PairState, RunResult

if TYPE_CHECKING:
    from collections.abc import Sequence

    from exporter.metrics.pair_table import Family

WALL = 1_700_000_000.0


def _digest(layer: int) -> str:
    return f"sha256:{layer:064x}"


def _finished_pair() -> PairState:
    """A pair with every series: a success then a failure, its model held, check mode on."""
    pair = PairState("gpu-1", "llama3:8b", 3600.0)
    for run_id, reason in ((7, None), (8, Reason.STALLED)):
        run = RunProgress(10.0, wall=WALL)
        pair.start_run(run)
        run.apply(ProgressLine("pulling a", _digest(1), 5_000, 1_000), 11.0)
        run.finish(15.0, succeeded=reason is None)
        pair.finish_run(run, RunResult(reason), ended_at=WALL + run_id, duration=5.0, run_id=run_id)
    pair.schedule(WALL + 3_600)
    holding = pair.holding
    holding.tracked = True
    holding.present, holding.digest, holding.size = True, "f" * 64, 4_000
    holding.set_checking(True)
    holding.checked(CheckResult.OK, "e" * 64)
    return pair


def _streaming_run() -> RunProgress:
    """A run whose every number differs from the finished ones: bytes, layers, a layer that
    was on disk, a rollback, a later phase, a later last progress."""
    run = RunProgress(100.0, wall=WALL + 900)
    run.apply(ProgressLine("pulling manifest"), 100.0)
    run.apply(ProgressLine("pulling b", _digest(2), 300, 300), 101.0)  # seen whole: on disk
    run.apply(ProgressLine("pulling c", _digest(3), 90_000, 40_000), 102.0)
    run.apply(ProgressLine("pulling c", _digest(3), 90_000, 20_000), 103.0)  # rolled back
    run.apply(ProgressLine("pulling c", _digest(3), 90_000, 60_000), 104.0)
    run.apply(ProgressLine("verifying sha256 digest"), 105.0)
    return run


def _reading_the_run(families: Sequence[Family]) -> set[str]:
    """The families whose values differ with a run going (nothing else of the pair changed)."""
    pair = _finished_pair()
    idle = [family.values(pair) for family in families]
    object.__setattr__(pair, "current", _streaming_run())  # no stamp, no other write
    return {
        family.name
        for family, before in zip(families, idle, strict=True)
        if family.values(pair) != before
    }


def test_every_family_reading_the_run_is_declared_live() -> None:
    """Of a running pair whose stamps did not move, the renderer reads only the live families:
    one that reads `pair.current` undeclared would show stale values. So the values of every
    other family must be the same with a run going as without."""
    reads_run = _reading_the_run(PAIR_FAMILIES)
    declared = {family.name for family in PAIR_FAMILIES if family.live}
    assert reads_run - declared == set()
    # Each live family does read the run (this run moves all of them): the list stays exact.
    assert declared - reads_run == set()


def test_a_family_reading_the_run_undeclared_is_found() -> None:
    """The check above can fail: drop one family's `live` and it shows."""
    for dropped in (family for family in PAIR_FAMILIES if family.live):
        table = [replace(f, live=False) if f is dropped else f for f in PAIR_FAMILIES]
        reads_run = _reading_the_run(table)
        assert reads_run - {family.name for family in table if family.live} == {dropped.name}
