"""Run history: per-pair limits, the memory budget, the SQLite table across restarts."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

import pytest

from exporter.ollama.progress import RunProgress
from exporter.ollama.protocol import LineDecoder, Reason
from exporter.state import history as history_module
from exporter.state.history import ActiveRun, History, RunRecord, Trigger, pack, unpack
from exporter.state.pairs import PairState, RunResult
from exporter.state.transcript import RAW_MAGIC, Redactor, TranscriptLine, TranscriptText
from exporter.storage.store import Storage

if TYPE_CHECKING:
    from pathlib import Path

LINES = b'{"status":"pulling manifest"}\n{"status":"pulling aa","digest":"sha256:aa","total":10,"completed":10}\n'


def run_once(
    history: History, pair: PairState, *, error: str | None = None, lines: bytes = LINES
) -> RunRecord | None:
    """One run through the same calls the scheduler and `run_pull` make."""
    active = history.reserve(pair.server, pair.model, Trigger.SCHEDULE)
    now = time.monotonic()
    progress = RunProgress(now)
    pair.start_run(progress)
    transcript = active.begin(progress, time.time())
    transcript.feed(lines, now + 0.1)
    for line in LineDecoder().feed(lines):
        progress.apply(line, now + 0.1)
    if error is not None:
        transcript.feed(b'{"error":"%s"}\n' % error.encode(), now + 0.2)
    result = RunResult(None) if error is None else RunResult(Reason.OTHER, error)
    progress.finish(now + 0.3, succeeded=result.succeeded)
    pair.finish_run(progress, result, ended_at=time.time(), duration=0.3)
    return history.finish(active, result, pair)


def runs(
    history: History,
    *,
    server: str | None = None,
    model: str | None = None,
    success: bool | None = None,
    limit: int = 50,
) -> list[int]:
    """The ids `History.runs` lists, read as the API does (a coroutine)."""
    listed = history.runs(server=server, model=model, success=success, limit=limit)
    return [run.id for run in asyncio.run(listed)]


def run(history: History, run_id: int) -> RunRecord | ActiveRun | None:
    """`History.run`, as the API calls it."""
    return asyncio.run(history.run(run_id))


def test_pack_round_trip_and_garbage() -> None:
    text = TranscriptText((TranscriptLine(0.5, '{"a":1}'), TranscriptLine(1.0, "x", 3)), 7)
    assert unpack(pack(text)) == text
    with pytest.raises(ValueError, match="not a packed transcript"):
        unpack(b"garbage")
    with pytest.raises(ValueError, match="not a packed transcript"):
        unpack(RAW_MAGIC + b"garbage")


def test_a_run_is_kept_raw_unless_it_may_hold_a_secret() -> None:
    history = History(redact=Redactor(["tok-secret"]))
    plain = run_once(history, PairState("s", "a", 60.0), error="boom")
    secret = run_once(history, PairState("s", "b", 60.0), error="denied tok-secret")
    assert plain is not None
    assert secret is not None
    assert plain.transcript is not None
    assert secret.transcript is not None
    assert plain.transcript.startswith(RAW_MAGIC)
    assert not secret.transcript.startswith(RAW_MAGIC)
    assert unpack(plain.transcript).lines[-1].line == '{"error":"boom"}'
    assert unpack(secret.transcript).lines[-1].line == '{"error":"denied <redacted>"}'


def test_memory_history_keeps_the_last_limit_runs_per_pair() -> None:
    history = History(limit=3)
    a, b = PairState("s", "a", 60.0), PairState("s", "b", 60.0)
    for _ in range(5):
        run_once(history, a)
    run_once(history, b, error="boom")
    assert runs(history, server="s", model="a") == [5, 4, 3]
    assert runs(history) == [6, 5, 4, 3]
    assert runs(history, success=False) == [6]
    assert runs(history, limit=2) == [6, 5]
    assert run(history, 1) is None
    record = run(history, 6)
    assert isinstance(record, RunRecord)
    assert record.error == "boom"
    assert record.reused_bytes == 10
    assert record.transcript is not None
    assert unpack(record.transcript).lines[-1].line == '{"error":"boom"}'


def test_memory_history_knows_each_pairs_last_run_and_forgets_a_server() -> None:
    """In memory the last record is the last of the pair's list: no second copy is kept."""
    history = History(limit=2)
    a, b = PairState("s", "a", 60.0), PairState("t", "b", 60.0)
    for _ in range(3):
        run_once(history, a)
    run_once(history, b, error="boom")
    last = history.last_record("s", "a")
    assert last is not None
    assert last.id == 3
    assert last is history._pairs["s", "a"][-1]
    failed = history.last_record("t", "b")
    assert failed is not None
    assert failed.error == "boom"
    assert history.last_record("s", "nope") is None
    assert history.servers() == {"s", "t"}
    assert history.forget_servers({"t"}) == 1
    assert history.last_record("t", "b") is None
    assert history.servers() == {"s"}


def test_active_runs_are_listed_first_and_abandoned_ones_vanish() -> None:
    history = History()
    pair = PairState("s", "a", 60.0)
    run_once(history, pair)
    active = history.reserve("s", "a", Trigger.API)
    assert runs(history) == [2, 1]
    assert runs(history, success=True)[0] == 1
    history.abandon(active)
    assert runs(history) == [1]


def test_errors_and_transcripts_are_redacted_before_they_are_kept() -> None:
    history = History(redact=Redactor(["tok-secret"]))
    record = run_once(history, PairState("s", "a", 60.0), error="denied tok-secret")
    assert record is not None
    assert record.error == "denied <redacted>"
    assert record.transcript is not None
    assert "tok-secret" not in str(unpack(record.transcript))


def test_memory_budget_drops_the_oldest_transcripts_first(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(history_module, "MEMORY_TRANSCRIPT_BUDGET", 200)
    history = History(limit=100)
    pair = PairState("s", "a", 60.0)
    for _ in range(5):
        run_once(history, pair)
    kept = [run.id for run in history._pairs["s", "a"] if run.transcript is not None]
    assert kept
    assert kept == list(range(6 - len(kept), 6))
    assert len(kept) < 5
    assert runs(history) == [5, 4, 3, 2, 1]


def test_sqlite_history_survives_a_reopen_and_prunes(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    storage = Storage.open(path)
    history = History(limit=2, db=storage.history)
    pair = PairState("s", "a", 60.0)
    for _ in range(3):
        run_once(history, pair)
    # Listed at once, whether or not the writer thread has stored them yet.
    assert runs(history) == [3, 2]
    storage.close()
    storage = Storage.open(path)
    reopened = History(limit=2, db=storage.history)
    assert runs(reopened) == [3, 2]
    last = reopened.last_record("s", "a")
    assert last is not None
    assert last.id == 3
    record = run(reopened, 3)
    assert isinstance(record, RunRecord)
    assert record.transcript is not None
    assert unpack(record.transcript).lines[0].line == '{"status":"pulling manifest"}'
    assert run_once(reopened, pair) is not None
    assert runs(reopened) == [4, 3]
    storage.close()
