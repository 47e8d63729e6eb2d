"""A streaming run's kept chunks, packed as they come: a few KB a run instead of ~80 KB.

A live transcript keeps the first and last lines of its stream as the chunks they came in
(`exporter.state.transcript`). Kept as `bytes` objects, with a tuple each for the arrival
time and the line count, a 30 s pull held about 78 KB until it ended: 15 MiB with 200 pulls
streaming. `ChunkLog` keeps the same chunks in less:

- the bytes go into one `bytearray`, compressed (deflate, level 1) into a sealed block each time
  it holds `BLOCK_BYTES` (about 27 progress lines, 4 KiB into about 200 bytes) and has waited
  a second (`SEAL_AGE`; a faster tail drops its chunks first); the last chunk always stays
  in the open buffer, uncompressed;
- per chunk, its arrival time, size and line count go into three arrays (16 bytes a chunk);
- dropping the oldest chunk (the tail) only moves an index; the sealed block it was in goes
  when its last chunk does, dropped chunks in the open buffer are cut out once they are half
  of it: what is held is what is kept, plus one block and the open buffer's kept bytes at most.

What comes back out (`chunks`) is the chunks exactly as they went in.
"""

from __future__ import annotations

import itertools
import operator
import zlib
from array import array
from typing import Final

BLOCK_BYTES: Final = 4096
"""Bytes of chunks compressed together: smaller blocks compress worse, larger ones leave
more uncompressed in the open buffer (4 KiB: about 200 bytes a block, 2 KiB open on average)."""
WINDOW_BITS: Final = 12
MEMORY_LEVEL: Final = 5
"""A 4 KiB window and small hash tables: progress lines repeat the one before them, within a
few hundred bytes. `zlib.compress` sets up (and zeroes) 256 KiB of tables per call: 200 us
for a 4 KiB block, against 12 us with these (and 1 KB smaller)."""


SEAL_AGE: Final = 1.0
"""Seconds the oldest chunk kept in the open buffer has waited before the buffer is packed.
A tail that turns over faster (a pull read as fast as it comes: 200 lines in a fraction of a
millisecond) drops its chunks before packing them would pay: they are cut out of the buffer
instead, which costs a copy at most, not a compression, per byte streamed."""


def compress(data: bytes | bytearray, *, header: bool = False) -> bytes:
    """`data` deflated at level 1 with the small window (a zlib stream with `header`)."""
    packer = zlib.compressobj(
        1, zlib.DEFLATED, WINDOW_BITS if header else -WINDOW_BITS, MEMORY_LEVEL
    )
    return packer.compress(data) + packer.flush()


def _inflate(block: bytes) -> bytes:
    return zlib.decompress(block, -WINDOW_BITS)


class ChunkLog:
    """Chunks in arrival order, compressed in blocks; the oldest can be dropped (`trim`).

    `lines` and `size` count the chunks kept (not the dropped ones still held in a block).
    """

    __slots__ = (
        "_at",
        "_blocks",
        "_ends",
        "_first",
        "_lines",
        "_open",
        "_open_dropped",
        "_sizes",
        "lines",
        "size",
    )

    def __init__(self) -> None:
        self._blocks: list[bytes] = []
        """Sealed blocks, each a zlib stream of consecutive chunks."""
        self._ends = array("I")
        """Per sealed block: the index of the first chunk after it."""
        self._open = bytearray()
        """The chunks after the sealed blocks, as they came (never empty once one came)."""
        self._at = array("d")
        """Per chunk held: its arrival time (monotonic seconds)."""
        self._sizes = array("I")
        """Per chunk held: its size in bytes."""
        self._lines = array("I")
        """Per chunk held: the lines it completed."""
        self._first = 0
        """Index of the first chunk kept; those before it are dropped, held until their block
        goes (or, in the open buffer, until they are cut out of it)."""
        self._open_dropped = 0
        """Bytes of dropped chunks at the start of the open buffer."""
        self.lines = 0
        self.size = 0

    def __len__(self) -> int:
        """Chunks kept."""
        return len(self._at) - self._first

    @property
    def held(self) -> int:
        """Bytes of chunks and their numbers held (Python's object headers left out)."""
        per_chunk = self._at.itemsize + self._sizes.itemsize + self._lines.itemsize
        return sum(map(len, self._blocks)) + len(self._open) + len(self._at) * per_chunk

    def append(self, chunk: bytes, at: float, lines: int) -> None:
        """Keep `chunk`, arrived at `at`, which completed `lines` lines."""
        if len(self._open) >= BLOCK_BYTES:
            self._make_room(at)
        self._open += chunk
        self._at.append(at)
        self._sizes.append(len(chunk))
        self._lines.append(lines)
        self.lines += lines
        self.size += len(chunk)

    def _make_room(self, now: float) -> None:
        """Cut the dropped chunks out of a full open buffer, or pack it into a block.

        Cut when they are half of it (so each byte is copied about once); pack when its
        oldest chunk kept has waited `SEAL_AGE`; else let it grow: a tail that turns over
        that fast holds twice its kept bytes at most.
        """
        start = self._ends[-1] if self._ends else 0
        if 2 * self._open_dropped >= len(self._open):
            first = self._first
            del self._open[: self._open_dropped]
            del self._at[start:first], self._sizes[start:first], self._lines[start:first]
            self._first, self._open_dropped = start, 0
        elif self._at[max(self._first, start)] + SEAL_AGE <= now:
            self._blocks.append(compress(self._open))
            self._ends.append(len(self._at))
            self._open, self._open_dropped = bytearray(), 0

    def trim(self, max_lines: int, max_bytes: int) -> int:
        """Drop the oldest chunks while they are over a bound; returns the lines dropped.

        Over: the newer chunks hold more than `max_lines` lines, or all more than `max_bytes`
        bytes. The newest chunk always stays.
        """
        dropped = 0
        lines, sizes, ends = self._lines, self._sizes, self._ends
        first = self._first
        start = ends[-1] if ends else 0
        while len(lines) - first > 1 and (
            self.lines - lines[first] > max_lines or self.size > max_bytes
        ):
            self.lines -= lines[first]
            self.size -= sizes[first]
            dropped += lines[first]
            if first >= start:
                self._open_dropped += sizes[first]
            first += 1
            if ends and first >= ends[0]:  # the oldest block holds no kept chunk any more
                gone = ends[0]
                del self._blocks[0], ends[0]
                for index in range(len(ends)):
                    ends[index] -= gone
                del self._at[:gone], sizes[:gone], lines[:gone]
                first -= gone
                start = ends[-1] if ends else 0
        self._first = first
        return dropped

    def chunks(self) -> list[tuple[bytes, float, int]]:
        """The chunks kept, oldest first: (bytes, arrival time, lines)."""
        data = b"".join([*map(_inflate, self._blocks), self._open])
        offset = sum(self._sizes[: self._first])
        out = []
        for index in range(self._first, len(self._at)):
            size = self._sizes[index]
            out.append((data[offset : offset + size], self._at[index], self._lines[index]))
            offset += size
        return out

    def ends_inside_a_line(self) -> bool:
        """Whether the last chunk ends inside a line that is not blank.

        Every chunk kept completed a line, so the last newline held is the last chunk's.
        """
        held = self._open
        return bool(held[held.rfind(b"\n") + 1 :].strip())

    def pack(self, started: float) -> bytes:
        """The chunks kept, as one zlib stream (a full head: it only waits for the run's end).

        Times are kept as whole milliseconds since `started`, which is all a transcript shows
        of them (`unpack` gives back those seconds): they compress, doubles do not.
        """
        first = self._first
        millis = [round(seconds(at - started) * 1000) for at in self._at[first:]]
        steps = array("q", map(operator.sub, millis, [0, *millis]))  # small, alike: they pack
        sizes = self._sizes[first:]
        data = b"".join([*map(_inflate, self._blocks), self._open])
        head = len(steps).to_bytes(4, "big") + steps.tobytes() + sizes.tobytes()
        return compress(head + data[sum(self._sizes[:first]) :])


def seconds(t: float) -> float:
    """`t` as a transcript shows it: to the millisecond, never before the run's start."""
    return round(max(t, 0.0), 3)


def unpack(blob: bytes) -> list[tuple[bytes, float]]:
    """The chunks of a `ChunkLog.pack` blob with their times (seconds since its `started`)."""
    data = _inflate(blob)
    count = int.from_bytes(data[:4], "big")
    steps, sizes = array("q"), array("I")
    offset = 4 + count * steps.itemsize
    steps.frombytes(data[4:offset])
    millis = list(itertools.accumulate(steps))
    sizes.frombytes(data[offset : offset + count * sizes.itemsize])
    offset += count * sizes.itemsize
    out = []
    for index in range(count):
        size = sizes[index]
        out.append((data[offset : offset + size], millis[index] / 1000))
        offset += size
    return out
