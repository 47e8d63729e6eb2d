"""The cached renderer behind `/metrics`: exposition bytes without re-rendering what is unchanged.

A scrape of 1,000 pairs is about 57,000 samples; building `Metric` objects and formatting
each sample through prometheus_client costs 0.4 s (text) to 0.65 s (OpenMetrics) of CPU, on
the event loop. `Exposition` keeps every pair's rendered lines per family together with the
values they came from; a scrape reads each pair's values (one small tuple per family),
re-renders only what changed, and joins bytes. The bytes are identical to what
prometheus_client's `generate_latest` (or its OpenMetrics twin) writes for the same state;
tests compare them.

The renderer writes exactly two formats (`Format`), so everything it caches is bounded: a
request never adds an entry. Which format a request gets is the handler's business
(`exporter.metrics.scrape`).
"""

from __future__ import annotations

import asyncio
import enum
import math
import time
from itertools import chain
from typing import TYPE_CHECKING, Final

from prometheus_client.exposition import generate_latest as text_generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as om_generate_latest
from prometheus_client.registry import Collector

from exporter.metrics.columns import (
    CHUNK_SHIFT,
    Chunk,
    Columns,
    Cuts,
    Piece,
    WithExemplars,
    flatten,
)
from exporter.metrics.families import (
    cumulative,
    empty_family,
    model_digest,
    model_info_family,
    own_families,
    server_families,
    server_key,
)
from exporter.metrics.gofloat import go_float
from exporter.metrics.pair_table import PAIR_FAMILIES

if TYPE_CHECKING:
    from collections.abc import Callable, Collection, Iterator

    from prometheus_client.core import Metric

    from exporter.metrics.pair_table import Exemplars, Family, Values
    from exporter.state.pairs import ExporterState, PairState, RunExemplar


class Format(enum.Enum):
    """The two exposition formats the renderer writes."""

    TEXT = "text"
    """The Prometheus text format 0.0.4 (also what text/plain 1.0.0 writes for our names)."""
    OPENMETRICS = "openmetrics"
    """OpenMetrics 1.0.0 (`# EOF` at the end)."""


_ENCODERS: Final[dict[Format, Callable[[Collector], bytes]]] = {
    Format.TEXT: text_generate_latest,
    Format.OPENMETRICS: om_generate_latest,
}


def sample_names(family: Family) -> frozenset[str]:
    """Every name a `name[]` filter may use for `family`: its own and its samples'."""
    if family.kind == "counter":
        return frozenset({family.name, family.name + "_total"})
    if family.kind == "histogram":
        suffixes = ("", "_bucket", "_count", "_sum")
        return frozenset(family.name + suffix for suffix in suffixes)
    return frozenset({family.name})


_FAMILY_NAMES: Final = tuple(sample_names(family) for family in PAIR_FAMILIES)
_PLAIN: Final = tuple(
    (index, family) for index, family in enumerate(PAIR_FAMILIES) if family.exemplars is None
)
_EXEMPLARY: Final = tuple(
    (slot, index, family, read)
    for slot, (index, family, read) in enumerate(
        (index, family, family.exemplars)
        for index, family in enumerate(PAIR_FAMILIES)
        if family.exemplars is not None
    )
)
"""The histograms with exemplars, apart: the loop over the others stays as lean as before."""
_WITH_EXEMPLARS: Final = {index: slot for slot, index, _, _ in _EXEMPLARY}
"""Family index -> its slot in `_Cached.om_cuts` and `_Cached.exemplars`."""
_LIVE_PLAIN: Final = tuple((index, family) for index, family in _PLAIN if family.live)
_LIVE_EXEMPLARY: Final = tuple(each for each in _EXEMPLARY if each[2].live)
"""The families that read the current run: all that can change while a pair's stamps stand."""
_MODEL_INFO: Final = "ollama_pull_model_info"
CATCH_UP_STRETCH: Final = 0.004
"""Seconds of re-rendering a scrape does before it lets the event loop run (`catch_up`): a
stream's line is read at most about this late because of a scrape."""


class _Fixed(Collector):
    """A collector over families already built (to reuse the library's encoders)."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        """The families, as given."""
        return iter(self._metrics)


def _escape(value: str) -> str:
    """A label value as both text formats write it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


_UNSET: Final = object()
_SHARED: Final[dict[object, object]] = {(number,): (number,) for number in range(257)}
"""One-value tuples of small counts, shared: most of an idle pair's values are such (0, 1,
the layers); a pair's cache keeps one of these instead of a tuple of its own."""
_go: Final = go_float
"""prometheus_client's value formatting (Go's float format), the common values fast."""


def _exemplar(run: RunExemplar | None) -> str:
    """An OpenMetrics exemplar as the library writes it (its timestamp with `str`)."""
    if run is None:
        return ""
    return f' # {{run_id="{run.run_id}"}} {_go(run.value)} {run.at}'


class _Cached:
    """One pair: the values its lines (its row of `Columns`) were rendered from."""

    __slots__ = (
        "digest",
        "exemplars",
        "model",
        "pair",
        "row",
        "server",
        "stamps",
        "values",
    )

    def __init__(self, pair: PairState) -> None:
        self.pair = pair
        self.row = -1
        """The pair's row in the columns."""
        self.server = _escape(pair.server)
        self.model = _escape(pair.model)
        self.values: list[object] | None = None
        """Per family, the values its lines were rendered from, while a run goes (it changes
        a few families a scrape). An idle pair keeps none (1.5 KB): its stamps say whether
        anything changed, and a write re-renders its lines (only changed lines count)."""
        self.exemplars: list[object] = [_UNSET] * len(_EXEMPLARY)
        """Per family with exemplars, the tuple rendered (replaced on change, never mutated)."""
        self.digest: object = _UNSET
        """The digest label its `ollama_pull_model_info` line was rendered from."""
        self.stamps: tuple[int, int] = (-1, -1)
        """The pair's and its holding's stamps when its values were last read."""

    def refresh(self, columns: Columns, *, live: bool = False) -> int:
        """Re-render the lines whose values changed; 1 if a line did, else 0.

        `live`: read only the families that read the current run (`Family.live`), for a
        running pair not written since its last full read (the others cannot have changed).
        """
        pair, row, lines = self.pair, self.row, columns.lines
        versions, tick, chunk = columns.versions, columns.tick, self.row >> CHUNK_SHIFT
        seen = self.values
        if seen is None:
            seen = self.values = [_UNSET] * len(PAIR_FAMILIES)
        changed = 0
        plain, exemplary = (_LIVE_PLAIN, _LIVE_EXEMPLARY) if live else (_PLAIN, _EXEMPLARY)
        for index, family in plain:
            values = family.values(pair)
            if values != seen[index]:
                seen[index] = _SHARED.get(values, values)
                line = self.render(family, values)
                column = lines[index]
                if line != column[row]:
                    column[row] = line
                    versions[index][chunk] = tick
                    changed = 1
        for slot, index, family, read in exemplary:
            values, exemplars = family.values(pair), read(pair)
            if values != seen[index] or exemplars is not self.exemplars[slot]:
                seen[index], self.exemplars[slot] = values, exemplars
                line, cuts = self.render_histogram(family, values, exemplars)
                column, om = lines[index], columns.om[slot]
                piece = om[row]
                if line != column[row] or cuts != (
                    piece.cuts if isinstance(piece, WithExemplars) else ()
                ):
                    column[row] = line
                    om[row] = WithExemplars(line, cuts) if cuts else line
                    versions[index][chunk] = tick
                    changed = 1
        if live:
            return changed
        digest = model_digest(pair)
        if digest != self.digest:
            self.digest = digest
            columns.info[row] = self.render_info(digest)
            versions[-1][chunk] = tick
            changed = 1
        return changed

    def render_info(self, digest: str | None) -> bytes:
        """The `ollama_pull_model_info` line (labels sorted by name, as the library writes)."""
        if digest is None:
            return b""
        labels = f'digest="{_escape(digest)}",model="{self.model}",server="{self.server}"'
        return f"{_MODEL_INFO}{{{labels}}} {_go(1)}\n".encode()

    def render_histogram(
        self, family: Family, values: Values, exemplars: Exemplars | None
    ) -> tuple[bytes, Cuts]:
        """Text lines of a histogram, and where OpenMetrics inserts its exemplars."""
        if values is None:
            return b"", ()
        pair = f'model="{self.model}",server="{self.server}"'
        name = family.name
        buckets = [
            f'{name}_bucket{{le="{bucket[0]}",{pair}}} {_go(bucket[1])}'
            for bucket in cumulative(values[:-1])
        ]
        tail = (
            f"{name}_count{{{pair}}} {_go(sum(values[:-1]))}\n"
            f"{name}_sum{{{pair}}} {_go(values[-1])}\n"
        )
        text = "".join(line + "\n" for line in buckets) + tail
        if exemplars is None or not any(exemplars):
            return text.encode(), ()
        cuts: list[tuple[int, bytes]] = []
        offset = -1  # each exemplar goes before its line's newline
        for line, run in zip(buckets, exemplars, strict=True):
            offset += len(line.encode()) + 1
            if run is not None:
                cuts.append((offset, _exemplar(run).encode()))
        return text.encode(), tuple(cuts)

    def render(self, family: Family, values: Values) -> bytes:
        """The sample lines of `family` for this pair (same bytes as prometheus_client)."""
        if values is None:
            return b""
        pair = f'model="{self.model}",server="{self.server}"'
        name = family.name
        if family.kind == "counter":
            name += "_total"
        if family.kind == "histogram":
            return self.render_histogram(family, values, None)[0]
        if family.extra is None:
            lines = [f"{name}{{{pair}}} {_go(values[0])}\n"]
        else:
            label, extras = family.extra
            # Labels sorted by name, as the library writes them: model < phase/reason < server.
            lines = [
                f'{name}{{model="{self.model}",{label}="{_escape(extra)}",server="{self.server}"}}'
                f" {_go(value)}\n"
                for extra, value in zip(extras, values, strict=True)
            ]
        return "".join(lines).encode()


class Exposition:
    """`/metrics` bytes for `ExporterState`, re-rendering only the series whose values changed."""

    def __init__(self, state: ExporterState) -> None:
        self._state = state
        self._ids: list[int] = []
        self._cached: list[_Cached] = []
        self._columns = Columns(0, len(PAIR_FAMILIES), len(_EXEMPLARY))
        self._headers = {each: _family_headers(each) for each in Format}
        """`# HELP`/`# TYPE` of each pair family per format: fixed, written once."""
        self._info_headers = {each: _headers(each, model_info_family(())) for each in Format}
        self._servers: dict[Format, tuple[object, bytes]] = {}
        """The per-server families' bytes per format, with the `server_key` they show."""
        self._generation = 0
        """Counts changes of anything cached: equal counts mean equal cached bytes."""
        self.last_key: object = None
        """Of the last unfiltered `render`: equal keys of one format mean equal bodies.

        A caller that keeps something derived from a body (its gzip) keeps this instead of
        the body to compare with: the body is about 6 KB per pair.
        """

    def render(self, fmt: Format, names: Collection[str] | None = None) -> bytes:
        """The whole exposition in `fmt`; with `names`, only the families they name.

        A family is kept when `names` holds its name or one of its sample names
        (`ollama_pull_runs`, `ollama_pull_runs_total`, `ollama_pull_duration_seconds_bucket`).
        """
        pieces = self.pieces(fmt, names)
        assert pieces is not None  # without `unless`, always pieces
        return b"".join(flatten(pieces))

    def pieces(
        self, fmt: Format, names: Collection[str] | None = None, *, unless: object = None
    ) -> list[Piece] | None:
        """`render`'s bytes in pieces (the cached ones, shared, not copied): joined, the body.

        At 10,000 pairs the body is 60 MB; its pieces are a list of references to what the
        cache holds anyway, so a caller that writes or compresses them a batch at a time
        never has the whole body in one piece. None, and no pieces, when the body would be
        the one of key `unless` (a caller that keeps that body's gzip needs nothing else).
        """
        chunks = self.chunks(fmt, names, unless=unless)
        return None if chunks is None else list(chain.from_iterable(run for _, run in chunks))

    def chunks(
        self, fmt: Format, names: Collection[str] | None = None, *, unless: object = None
    ) -> list[Chunk] | None:
        """`pieces` in runs, each with a key: a run of equal key has equal bytes (None: no key).

        A column of the pairs' lines comes in chunks of `CHUNK_ROWS` pairs keyed by the
        refresh that last wrote one of them: a caller that keeps the gzip of a chunk by its
        key compresses again only the chunks in which a pair's lines changed.
        """
        wanted = None if names is None else frozenset(names)
        self._refresh()
        # The per-server and exporter-wide families go through the library itself (`# EOF`
        # included); the per-server ones only when one of their values changed.
        own = list(own_families(self._state))
        servers = b""
        if wanted is None:
            servers = self._server_bytes(fmt)
        else:
            own = [m for m in server_families(self._state) if _named(m, wanted)] + [
                m for m in own if _named(m, wanted)
            ]
        own_bytes = _ENCODERS[fmt](_Fixed(own))
        if wanted is None:
            self.last_key = (self._generation, own_bytes)
            if unless is not None and unless == self.last_key:
                return None
        parts = self._pair_chunks(fmt, wanted)
        if servers:
            parts.append((None, [servers]))
        parts.append((None, [own_bytes]))
        return parts

    def _pair_chunks(self, fmt: Format, wanted: frozenset[str] | None) -> list[Chunk]:
        """The per-pair families' pieces: each family's header, then its column in chunks."""
        columns = self._columns
        versions = columns.versions
        parts: list[Chunk] = []
        for index, header in enumerate(self._headers[fmt]):
            if wanted is None or not wanted.isdisjoint(_FAMILY_NAMES[index]):
                parts.append((None, [header]))
                column: list[Piece] | list[bytes] = columns.lines[index]
                if fmt is Format.OPENMETRICS and index in _WITH_EXEMPLARS:
                    column = columns.om[_WITH_EXEMPLARS[index]]
                parts += Columns.chunks((fmt, index), column, versions[index])
        if wanted is None or _MODEL_INFO in wanted:
            parts.append((None, [self._info_headers[fmt]]))
            parts += Columns.chunks((fmt, _MODEL_INFO), columns.info, versions[-1])
        return parts

    def _server_bytes(self, fmt: Format) -> bytes:
        key = server_key(self._state)
        cached = self._servers.get(fmt)
        if cached is None or cached[0] != key:
            body = _ENCODERS[fmt](_Fixed(list(server_families(self._state))))
            cached = self._servers[fmt] = (key, body.removesuffix(b"# EOF\n"))
            self._generation += 1
        return cached[1]

    async def catch_up(self, stretch: float = CATCH_UP_STRETCH) -> None:
        """Re-render what changed, letting the event loop run after each `stretch` seconds.

        A run that starts or ends changes every family of its pair; when a hundred runs start
        and end together (a fleet whose pulls began together), re-rendering them is about
        50 ms of work, which in one go holds up every stream's next read, and phase
        boundaries are timed by when a line is read. A scrape calls this first; the refresh
        of `pieces` or `chunks` that follows finds only what changed since.
        """
        start: int | None = 0
        while start is not None:
            start = self._refresh(start, time.perf_counter() + stretch)
            if start is not None:
                await asyncio.sleep(0)

    def _refresh(self, start: int = 0, deadline: float = math.inf) -> int | None:
        """Refresh the pairs from index `start` on: None when done, else where to go on.

        It stops at the first pair after `deadline`. Each call writes under a tick of its
        own: what another refresh wrote between two calls was seen under another, so equal
        versions still mean equal bytes.
        """
        pairs = list(self._state.pairs.values())
        ids = list(map(id, pairs))  # the cache holds the pairs, so ids are not reused
        changed = 0
        if ids != self._ids:
            known = {id(entry.pair): entry for entry in self._cached}
            self._cached = [known.get(id(pair)) or _Cached(pair) for pair in pairs]
            self._columns = self._columns.moved([entry.row for entry in self._cached])
            for row, entry in enumerate(self._cached):
                entry.row = row
            self._ids = ids
            changed, start = 1, 0
        columns = self._columns
        columns.tick += 1  # what this refresh writes gets a version no chunk had
        cached = self._cached
        for index in range(start, len(cached)):
            entry = cached[index]
            pair = entry.pair
            # Not written since it was read: its values are the ones rendered, but for those
            # of a run going, which change without a write of the pair (its bytes).
            stamps = (pair.stamp, pair.holding.stamp)
            if stamps == entry.stamps:
                if pair.current is not None:
                    changed |= entry.refresh(columns, live=True)
                continue
            entry.stamps = stamps
            changed |= entry.refresh(columns)
            if pair.current is None:  # idle: its stamp stands for its values from now on
                entry.values = None
            if time.perf_counter() > deadline:
                self._generation += changed
                return index + 1
        self._generation += changed
        return None


def _named(metric: Metric, wanted: frozenset[str]) -> bool:
    return metric.name in wanted or any(sample.name in wanted for sample in metric.samples)


def _family_headers(fmt: Format) -> tuple[bytes, ...]:
    """`# HELP` and `# TYPE` of each pair family, written by the library itself."""
    return tuple(_headers(fmt, empty_family(family)) for family in PAIR_FAMILIES)


def _headers(fmt: Format, empty: Metric) -> bytes:
    """`# HELP` and `# TYPE` of a family without samples, as the library writes them."""
    return _ENCODERS[fmt](_Fixed([empty])).removesuffix(b"# EOF\n")
