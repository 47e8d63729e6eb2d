"""Run history: the last `history_limit` runs of every pair, with their transcripts.

The scheduler reserves an `ActiveRun` (its id is known before the run waits for its server's
limit, so `POST /api/v1/pulls` can answer with it), `run_pull` binds it to the run's progress
and feeds it the stream's chunks, and the scheduler finishes it with the run's result. A finished
run becomes a `RunRecord` (`exporter.state.runs`): typed fields, the redacted error text and the
transcript, compressed.

Without `--storage.path` the records live in memory: a list per pair plus a global budget for
transcripts, so a fleet of a thousand pairs with long histories cannot exhaust memory (the oldest
transcripts are dropped first, their runs stay). With it they live in a `HistoryBackend` (the
SQLite file's table, `exporter.storage.run_history`), and only the last record of each pair is
kept in memory for the status. Reading runs is a coroutine: the backend reads off the event loop.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Final, Protocol

from msgspec.structs import replace

from exporter.config.types import DEFAULT_HISTORY_LIMIT
from exporter.core.clock import SYSTEM_CLOCK
from exporter.state.runs import ActiveRun, RunRecord, Trigger, pack, unpack
from exporter.state.transcript import Redactor, TranscriptText

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Iterator

    from exporter.config.types import Config
    from exporter.state.pairs import PairState, RunResult

__all__ = [
    "ERROR_LIMIT",
    "MEMORY_TRANSCRIPT_BUDGET",
    "ActiveRun",
    "History",
    "HistoryBackend",
    "RunRecord",
    "Trigger",
    "pack",
    "unpack",
]
"""The run types live in `exporter.state.runs`; they are named here too, where callers look."""

log = logging.getLogger("exporter.history")

MEMORY_TRANSCRIPT_BUDGET: Final = 64 << 20
"""Bytes of compressed transcripts kept in memory (about 10,000 long runs)."""
ERROR_LIMIT: Final = 2048
"""Characters of a run's error text kept."""


class HistoryBackend(Protocol):
    """Where finished runs are kept when not in memory.

    State is below storage: the storage package implements this
    (`exporter.storage.run_history.RunHistory`), state never imports it.
    """

    @property
    def written(self) -> int:
        """Records stored (or given up on): every place `insert` returned below it."""
        ...

    def insert(self, record: RunRecord, *, keep: int) -> int:
        """Queue `record` (its pair keeps its newest `keep` runs); returns its place."""
        ...

    def forget_servers(self, servers: Collection[str]) -> None:
        """Delete every stored run of these servers, after the records queued before."""
        ...

    def latest_per_pair(self) -> list[RunRecord]:
        """The last run of every pair, without transcripts (at start-up)."""
        ...

    def max_id(self) -> int:
        """The largest id stored, 0 when none (at start-up)."""
        ...

    async def query(
        self, *, server: str | None, model: str | None, success: bool | None, limit: int
    ) -> list[RunRecord]:
        """The newest stored runs matching the filters, without transcripts."""
        ...

    async def get(self, run_id: int) -> RunRecord | None:
        """One stored run with its transcript."""
        ...


def _newest_first(run: RunRecord | ActiveRun) -> int:
    return -run.id


class History:
    """Every run with an id: the active ones and the last `limit` finished ones per pair."""

    def __init__(
        self,
        limit: int = DEFAULT_HISTORY_LIMIT,
        db: HistoryBackend | None = None,
        redact: Redactor | None = None,
    ) -> None:
        self.limit = limit
        self.redact = redact or Redactor()
        self._db = db
        self.active: dict[int, ActiveRun] = {}
        self._pairs: dict[tuple[str, str], list[RunRecord]] = {}
        """Oldest first; a list, not a deque: an empty deque costs 600 bytes, per pair."""
        self._last: dict[tuple[str, str], RunRecord] = {}
        """With a db only: the last record of each pair (in memory it is the last of `_pairs`)."""
        self._budget: OrderedDict[int, int] = OrderedDict()
        """Transcript bytes of every record in memory, by id, oldest first (its pair: `_where`)."""
        self._budget_bytes = 0
        self._unwritten: dict[int, tuple[int, RunRecord]] = {}
        """With a db: records handed to its writer thread and maybe not stored yet."""
        self._where: dict[int, tuple[str, str]] = {}
        """The pair of every record in memory, by id."""
        first = 1
        if db is not None:
            for record in db.latest_per_pair():
                self._last[record.server, record.model] = record
            first = db.max_id() + 1
        self._ids = itertools.count(first)

    def configure(self, config: Config) -> None:
        """Take the limit and the secrets of a (re)loaded config."""
        self.redact = Redactor.for_config(config)
        limit = config.history_limit
        if limit != self.limit:
            self.limit = limit
            for records in self._pairs.values():
                while len(records) > limit:
                    gone = records.pop(0).id
                    self._where.pop(gone, None)
                    self._forget(gone)

    def reserve(self, server: str, model: str, trigger: Trigger) -> ActiveRun:
        """A new run id for a run about to be started."""
        active = ActiveRun(next(self._ids), server, model, trigger, SYSTEM_CLOCK.time())
        self.active[active.id] = active
        return active

    def abandon(self, active: ActiveRun) -> None:
        """The run was cancelled (shutdown, reload) before it ended: no record."""
        self.active.pop(active.id, None)

    def finish(self, active: ActiveRun, result: RunResult, pair: PairState) -> RunRecord | None:
        """Record a run that ended with `result`; `pair.last` holds its numbers."""
        self.active.pop(active.id, None)
        last, progress = pair.last, active.progress
        if last is None or progress is None or active.started_at is None:
            return None
        redact = self.redact
        transcript = active.transcript
        packed = transcript.pack_raw(redact) if transcript is not None else None
        if packed is None:
            text = transcript.text(redact) if transcript is not None else TranscriptText((), 0)
            packed = pack(text)
        record = RunRecord(
            id=active.id,
            server=active.server,
            model=active.model,
            trigger=active.trigger,
            started_at=active.started_at,
            ended_at=last.ended_at,
            duration_seconds=last.duration,
            success=result.succeeded,
            reason=result.reason,
            error="" if result.succeeded else redact(result.detail)[:ERROR_LIMIT],
            downloaded_bytes=last.downloaded_bytes,
            reused_bytes=progress.reused_bytes,
            phase_seconds=last.phase_durations,  # shared, not copied: 224 B a kept run
            transcript=packed,
        )
        key = (record.server, record.model)
        if self._db is not None:
            self._last[key] = replace(record, transcript=None)
            self._unwritten[record.id] = (self._db.insert(record, keep=self.limit), record)
        else:
            self._remember(key, record)
        return record

    def _remember(self, key: tuple[str, str], record: RunRecord) -> None:
        records = self._pairs.get(key)
        if records is None:
            records = self._pairs[key] = []
        while records and len(records) >= self.limit:
            gone = records.pop(0).id
            self._where.pop(gone, None)
            self._forget(gone)
        records.append(record)
        self._where[record.id] = key
        size = len(record.transcript or b"")
        self._budget[record.id] = size
        self._budget_bytes += size
        while self._budget_bytes > MEMORY_TRANSCRIPT_BUDGET and len(self._budget) > 1:
            old_id = next(iter(self._budget))
            self._forget(old_id)
            kept = self._pairs[self._where[old_id]]
            for index, old in enumerate(kept):
                if old.id == old_id:
                    kept[index] = replace(old, transcript=None)
                    break

    def _forget(self, run_id: int) -> None:
        self._budget_bytes -= self._budget.pop(run_id, 0)

    def servers(self) -> set[str]:
        """Every server with a finished run here (stored ones too)."""
        return {server for server, _ in (self._last if self._db is not None else self._pairs)}

    def forget_servers(self, servers: Collection[str]) -> int:
        """Drop every finished run of these servers' pairs (they left for good); how many."""
        gone = set(servers)
        dropped = 0
        for key in [key for key in self._pairs if key[0] in gone]:
            for record in self._pairs.pop(key):
                self._where.pop(record.id, None)
                self._forget(record.id)
                dropped += 1
        for key in [key for key in self._last if key[0] in gone]:
            del self._last[key]
        if self._db is not None:
            for run_id in [i for i, (_, r) in self._unwritten.items() if r.server in gone]:
                del self._unwritten[run_id]
            self._db.forget_servers(gone)  # queued after their inserts: none comes back
        return dropped

    def last_record(self, server: str, model: str) -> RunRecord | None:
        """The pair's last finished run (in memory with its transcript, if kept: not shown)."""
        if self._db is not None:
            return self._last.get((server, model))
        records = self._pairs.get((server, model))
        return records[-1] if records else None

    async def runs(
        self,
        *,
        server: str | None = None,
        model: str | None = None,
        success: bool | None = None,
        limit: int = 50,
    ) -> list[RunRecord | ActiveRun]:
        """The newest runs first, at most `limit`; active ones too unless `success` filters.

        With a backend the stored ones are read off the loop; what changes meanwhile (a run
        that ends, a record the writer stores) is taken as of the call, each run once.
        """
        active = sorted(
            (
                run
                for run in self.active.values()
                if success is None
                and (server is None or run.server == server)
                and (model is None or run.model == model)
            ),
            key=_newest_first,
        )
        if self._db is not None:
            self._drop_written()
            unwritten = [
                replace(record, transcript=None)
                for _, record in self._unwritten.values()
                if (server is None or record.server == server)
                and (model is None or record.model == model)
                and (success is None or record.success == success)
            ]
            stored = await self._db.query(
                server=server, model=model, success=success, limit=limit + len(unwritten)
            )
            ids = {record.id for record in stored}
            active = [run for run in active if run.id not in ids]  # it ended meanwhile
            fresh = sorted((r for r in unwritten if r.id not in ids), key=_newest_first)
            finished: Iterable[RunRecord] = heapq.merge(fresh, stored, key=_newest_first)
        else:
            finished = self._memory_runs(server, model, success)
        merged: Iterable[RunRecord | ActiveRun] = heapq.merge(active, finished, key=_newest_first)
        return list(itertools.islice(self._within_limit(merged), limit))

    def _within_limit(
        self, runs: Iterable[RunRecord | ActiveRun]
    ) -> Iterator[RunRecord | ActiveRun]:
        """Finished runs beyond a pair's `limit` newest (not pruned from the table yet) skipped."""
        seen: dict[tuple[str, str], int] = {}
        for run in runs:
            if isinstance(run, RunRecord):
                key = (run.server, run.model)
                seen[key] = count = seen.get(key, 0) + 1
                if count > self.limit:
                    continue
            yield run

    def _drop_written(self) -> None:
        """Forget queued records the writer has stored: the table has them (or pruned them)."""
        if self._db is None or not self._unwritten:
            return
        written = self._db.written
        for run_id in [i for i, (place, _) in self._unwritten.items() if place < written]:
            del self._unwritten[run_id]

    def _memory_runs(
        self, server: str | None, model: str | None, success: bool | None
    ) -> Iterator[RunRecord]:
        if server is not None and model is not None:
            groups = [self._pairs.get((server, model), [])]
        else:
            groups = [
                records
                for (s, m), records in self._pairs.items()
                if (server is None or s == server) and (model is None or m == model)
            ]
        merged = heapq.merge(*(reversed(group) for group in groups), key=lambda run: -run.id)
        for record in merged:
            if success is None or record.success == success:
                yield replace(record, transcript=None)

    async def run(self, run_id: int) -> RunRecord | ActiveRun | None:
        """One run by id, with its transcript when it is kept (a stored one read off the loop)."""
        active = self.active.get(run_id)
        if active is not None:
            return active
        if self._db is not None:
            self._drop_written()
            queued = self._unwritten.get(run_id)
            return queued[1] if queued is not None else await self._db.get(run_id)
        key = self._where.get(run_id)
        for record in self._pairs.get(key, ()) if key is not None else ():
            if record.id == run_id:
                return record
        return None
