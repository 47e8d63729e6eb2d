"""The cached renderer's store: every pair's rendered lines, a column per family, by chunk.

`Exposition` (`exporter.metrics.exposition`) renders; this module keeps what it rendered so
that a scrape takes it whole. A body is each family's header and then its column; each
column is cut into chunks of `CHUNK_ROWS` rows, and each chunk carries the refresh that last
wrote it (`Columns.versions`): equal versions, equal bytes, so the gzip of a chunk no row of
which changed is reused (`exporter.metrics.scrape`).
"""

from __future__ import annotations

import itertools
import operator
from typing import TYPE_CHECKING, Final, TypeVar

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator, Sequence

CHUNK_SHIFT: Final = 7
CHUNK_ROWS: Final = 1 << CHUNK_SHIFT
"""Rows (pairs) of a column compressed as one piece: the larger, the better a chunk
compresses; the smaller, the fewer bytes a change makes compressed again."""

Cuts = tuple[tuple[int, bytes], ...]
"""Where a histogram's OpenMetrics exemplars go into its text lines: (byte offset, exemplar)."""


class WithExemplars:
    """A histogram's text lines with its OpenMetrics exemplars, inserted only when written.

    Cutting the lines at each exemplar copies them: done for every pair on the event loop,
    a scrape of 10,000 pairs made 17 MB of copies that the allocator then kept. The writer
    (`flatten`, in the gzip thread or a batch at a time) takes views of them instead.
    """

    __slots__ = ("cuts", "text")

    def __init__(self, text: bytes, cuts: Cuts) -> None:
        self.text = text
        self.cuts = cuts

    def __len__(self) -> int:
        return len(self.text) + sum(len(exemplar) for _, exemplar in self.cuts)

    def views(self) -> Iterator[bytes | memoryview]:
        """The OpenMetrics lines, in pieces: views of the text, and the exemplars."""
        text = memoryview(self.text)
        start = 0
        for offset, exemplar in self.cuts:
            yield text[start:offset]
            yield exemplar
            start = offset
        yield text[start:]


Piece = bytes | WithExemplars
"""A piece of a body: cached bytes, or a histogram whose exemplars go in when written."""

Chunk = tuple[object, "Sequence[Piece]"]
"""Pieces of a body with their key: equal keys, equal bytes (None: a key of no use)."""


def flatten(pieces: Iterable[Piece]) -> Iterator[bytes | memoryview]:
    """The bytes of `pieces`, in order (views into the cached bytes where exemplars go in)."""
    for piece in pieces:
        if isinstance(piece, bytes):
            yield piece
        else:
            yield from piece.views()


def joined(run: Sequence[Piece]) -> bytes:
    """`run` in one piece: the cached bytes joined in C, Python only at each exemplar piece.

    Every pair's histogram carries exemplars in OpenMetrics, so going through the run piece
    by piece (`flatten`) held the GIL for every piece of every such scrape: about 1% of a core
    under the fleet benchmark, scraped every second.
    """
    marks = list(
        itertools.compress(
            range(len(run)), map(operator.is_not, map(type, run), itertools.repeat(bytes))
        )
    )
    if not marks:
        return b"".join(run)  # type: ignore[arg-type]  # all bytes: no mark
    parts: list[bytes | memoryview] = []
    start = 0
    for mark in marks:
        parts.append(b"".join(run[start:mark]))  # type: ignore[arg-type]  # bytes up to a mark
        parts.extend(flatten(run[mark : mark + 1]))
        start = mark + 1
    parts.append(b"".join(run[start:]))  # type: ignore[arg-type]  # bytes after the last
    return b"".join(parts)


class Columns:
    """Every pair's rendered lines: a list per family, a row per pair (in the pairs' order).

    A scrape's pieces are each family's header and then its column, copied in C: a scrape of
    1,000 pairs does not go through 28 lines of each pair in Python to list them. `lines`
    serve both formats. A histogram with exemplars (OpenMetrics only) has a second column in
    `om`, of the same lines or, where a pair's buckets carry exemplars, of the lines with
    where each exemplar goes into them (`WithExemplars`): a pair costs one rendering of its
    series, not two.

    Whoever writes a row of a family's column (or of its `om` column) writes `tick` into the
    family's `versions` at the row's chunk (`row >> CHUNK_SHIFT`); the info column's are
    last.
    """

    __slots__ = ("info", "lines", "om", "tick", "versions")

    def __init__(self, rows: int, families: int, exemplary: int, tick: int = 0) -> None:
        self.lines: list[list[bytes]] = [[b""] * rows for _ in range(families)]
        self.om: list[list[Piece]] = [[b""] * rows for _ in range(exemplary)]
        """Per family with exemplars: its OpenMetrics pieces."""
        self.info: list[bytes] = [b""] * rows
        """The `ollama_pull_model_info` lines."""
        self.tick = tick
        """The refresh writing now; the writer advances it before each refresh."""
        chunks = -(-rows // CHUNK_ROWS)
        self.versions: list[list[int]] = [[tick] * chunks for _ in range(families + 1)]
        """Per family and chunk, the `tick` of its last write (the info column's last)."""

    def moved(self, rows: list[int]) -> Columns:
        """Columns whose row `i` is row `rows[i]` of these (-1: a new row, empty).

        Every chunk of them is new: its version is a tick these never wrote.
        """
        moved = Columns(len(rows), 0, 0, self.tick + 1)
        moved.lines = [_pick(column, rows) for column in self.lines]
        moved.om = [_pick(column, rows) for column in self.om]
        moved.info = _pick(self.info, rows)
        moved.versions = [list(moved.versions[0]) for _ in self.versions]
        return moved

    @staticmethod
    def chunks(name: object, column: Sequence[Piece], versions: list[int]) -> list[Chunk]:
        """`column` (of `versions`) in chunks, each keyed by `name`, its index and version."""
        return [
            ((name, chunk, version), column[start : start + CHUNK_ROWS])
            for chunk, (start, version) in enumerate(
                zip(range(0, len(column), CHUNK_ROWS), versions, strict=True)
            )
        ]


_Row = TypeVar("_Row", bytes, Piece)


def _pick(column: list[_Row], rows: list[int]) -> list[_Row]:
    """`column`'s rows `rows`, -1 an empty one."""
    column.append(b"")
    try:
        return list(map(column.__getitem__, rows))
    finally:
        column.pop()
