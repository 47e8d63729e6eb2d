"""One run's stream as received: the first and last lines with their arrival times.

The hot stream path calls `Transcript.feed(chunk, now)` once per chunk, never per line, and
`counted(n)` with the decoder's own count of the lines the chunk completed; they keep a
reference to the chunk and add integers: no copy, no scan, no split, no decode. Lines are cut
out at the end of the run, when the stream is over anyway. Memory is bounded: the head keeps
chunks until it holds `HEAD_LINES` lines, the tail drops its oldest chunks as soon as the newer
ones hold more than `TAIL_LINES` lines (a single line is bounded by the decoder's 1 MiB limit,
which ends the run).

Secrets are removed here too (`Redactor`): every configured header value, the credential part
of `Scheme credentials` values, and the user info of any URL, before anything is stored.

A finished run is stored packed (`pack_raw`): its kept chunks as they came, compressed, cut
into lines only when someone asks for that run (`unpack_raw`). Cutting and masking 400 lines
at every run's end cost a fleet of 1,000 pairs a quarter of the exporter's CPU, for
transcripts that are almost never read. Chunks that may hold a secret, or too many bytes,
take the exact path instead: cut, masked and trimmed at once (`text`).
"""

from __future__ import annotations

import re
import urllib.parse
import zlib
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import msgspec

if TYPE_CHECKING:
    from collections.abc import Iterable

    from exporter.config.types import Config, ServerConfig

HEAD_LINES: Final = 200
TAIL_LINES: Final = 200
LINE_LIMIT: Final = 4096
"""Characters kept of one line (real lines are < 300 bytes); the rest is counted, not kept."""
REDACTED: Final = "<redacted>"
MIN_SECRET: Final = 4
"""Shorter pieces of a header value (a scheme word, a tenant number) are too common to mask in
free text; the full value is masked whatever its length."""
RAW_MAGIC: Final = b"T2"
"""The first bytes of a `pack_raw` blob (a zlib stream starts with 0x78, never with these)."""
RAW_LIMIT: Final = 256 << 10
"""Kept bytes above which a run is cut into lines at once, so LINE_LIMIT bounds what is stored
(a normal run's 400 lines are about 60 KiB)."""


@dataclass(frozen=True, slots=True)
class TranscriptLine:
    """One line: seconds from the start of the run to the arrival of its chunk, and its text."""

    t: float
    line: str
    cut: int = 0
    """Characters of the line not kept (see LINE_LIMIT)."""


@dataclass(frozen=True, slots=True)
class TranscriptText:
    """The kept lines in stream order and how many lines between head and tail were left out."""

    lines: tuple[TranscriptLine, ...]
    omitted: int


class Transcript:
    """Collects the chunks of one stream; `text` cuts them into lines once it is over."""

    __slots__ = (
        "_head",
        "_head_lines",
        "_pending",
        "_pending_at",
        "_tail",
        "_tail_lines",
        "_tail_start",
        "_uncounted",
        "started_at",
    )

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        """Monotonic seconds of the run's start; lines carry `t` relative to it."""
        self._head: list[tuple[bytes, float]] = []
        self._head_lines = 0
        self._tail: deque[tuple[bytes, float, int]] = deque()
        self._tail_lines = 0
        self._tail_start = 0
        """Newlines before the first chunk still in the tail."""
        self._pending = b""
        """Bytes of chunks without a newline (a line split over chunks), rare in practice."""
        self._pending_at = 0.0
        self._uncounted: tuple[bytes, float] | None = None
        """The last chunk, until the decoder's count of its lines arrives."""

    def feed(self, chunk: bytes, now: float) -> None:
        """Take `chunk` (arrived at monotonic `now`); called once per chunk of the stream.

        Its lines are counted by `counted`, called with the decoder's count right after; a
        chunk that gets none (the decoder raised on it) is counted here instead.
        """
        if self._uncounted is not None:
            last, at = self._uncounted
            self._add(last, at, last.count(b"\n"))
        self._uncounted = (chunk, now) if chunk else None

    def counted(self, newlines: int) -> None:
        """Take the decoder's count of the lines the last chunk completed.

        The decoder counts them anyway; counting again here cost the stream path about 15%.
        A low count (blank lines, which the decoder skips) only makes the tail keep more.
        """
        if self._uncounted is not None:
            chunk, now = self._uncounted
            self._uncounted = None
            self._add(chunk, now, newlines)

    def _add(self, chunk: bytes, now: float, newlines: int) -> None:
        if not newlines:
            self._pending += chunk
            self._pending_at = now
            return
        if self._pending:
            chunk, self._pending = self._pending + chunk, b""
        if self._head_lines < HEAD_LINES:
            self._head.append((chunk, now))
            self._head_lines += newlines
            self._tail_start = self._head_lines
            return
        tail = self._tail
        tail.append((chunk, now, newlines))
        self._tail_lines += newlines
        while self._tail_lines - tail[0][2] > TAIL_LINES:
            dropped = tail.popleft()[2]
            self._tail_lines -= dropped
            self._tail_start += dropped

    def _settle(self) -> None:
        """Count the last chunk, when the stream ended right after it."""
        if self._uncounted is not None:
            last, at = self._uncounted
            self._uncounted = None
            self._add(last, at, last.count(b"\n"))

    def pack_raw(self, redact: Redactor) -> bytes | None:
        """The kept chunks, compressed, for `unpack_raw`; None if they need the exact path.

        That is when they hold more than RAW_LIMIT bytes, or anything `redact` might mask:
        one search over the joined bytes, not one per line.
        """
        self._settle()
        head, tail, pending = self._head, self._tail, self._pending
        chunks = [chunk for chunk, _ in head]
        chunks += [chunk for chunk, _, _ in tail]
        chunks.append(pending)
        blob = b"".join(chunks)
        if len(blob) > RAW_LIMIT or redact.may_mask(blob):
            return None
        started = self.started_at
        layout = _RawLayout(
            self._head_lines,
            self._tail_start,
            [(at - started, len(chunk)) for chunk, at in head],
            [(at - started, len(chunk), newlines) for chunk, at, newlines in tail],
            self._pending_at - started,
        )
        encoded = _raw_encoder.encode(layout)
        return RAW_MAGIC + zlib.compress(len(encoded).to_bytes(4, "big") + encoded + blob, 1)

    @classmethod
    def from_raw(cls, blob: bytes) -> Transcript:
        """The transcript a `pack_raw` blob was made of (times relative to the run's start)."""
        try:
            data = zlib.decompress(blob[len(RAW_MAGIC) :])
            size = int.from_bytes(data[:4], "big")
            layout = _raw_decoder.decode(data[4 : 4 + size])
        except (zlib.error, msgspec.DecodeError) as exc:
            raise ValueError(f"not a packed transcript: {exc}") from None
        transcript = cls(0.0)
        offset = 4 + size
        for at, length in layout.head:
            transcript._head.append((data[offset : offset + length], at))
            offset += length
        for at, length, newlines in layout.tail:
            transcript._tail.append((data[offset : offset + length], at, newlines))
            offset += length
        transcript._pending, transcript._pending_at = data[offset:], layout.pending_at
        transcript._head_lines, transcript._tail_start = layout.head_lines, layout.tail_start
        return transcript

    def text(self, redact: Redactor | None = None) -> TranscriptText:
        """The first HEAD_LINES and last TAIL_LINES lines (an unfinished last line included).

        The kept chunks are split exactly here; only the count of left-out lines relies on
        the decoder's counts of the chunks that were dropped.
        """
        self._settle()
        head = self._head
        tail = [(chunk, at) for chunk, at, _ in self._tail]
        if self._pending:
            tail.append((self._pending, self._pending_at))
        if self._tail_start == self._head_lines:  # nothing dropped: one contiguous stream
            lines = _lines([*head, *tail])
            total = len(lines)
            kept = (
                lines
                if total <= HEAD_LINES + TAIL_LINES
                else lines[:HEAD_LINES] + lines[-TAIL_LINES:]
            )
        else:
            head_lines, tail_lines = _lines(head, unfinished=False), _lines(tail)
            dropped = self._tail_start - self._head_lines
            total = len(head_lines) + dropped + len(tail_lines)
            # The first line of the tail began in a dropped chunk: it is left out too.
            kept = head_lines[:HEAD_LINES] + tail_lines[1:][-TAIL_LINES:]
        started = self.started_at
        return TranscriptText(
            tuple(_line(raw, at - started, redact) for raw, at in kept), total - len(kept)
        )


class _RawLayout(msgspec.Struct, array_like=True):
    """Where the chunks of a `pack_raw` blob begin and end, and when each arrived."""

    head_lines: int
    tail_start: int
    head: list[tuple[float, int]]
    tail: list[tuple[float, int, int]]
    pending_at: float


_raw_encoder: Final = msgspec.json.Encoder()
_raw_decoder: Final = msgspec.json.Decoder(_RawLayout)


def unpack_raw(blob: bytes) -> TranscriptText:
    """The lines of a `pack_raw` blob, cut exactly as `Transcript.text` cuts them."""
    return Transcript.from_raw(blob).text()


def _lines(
    chunks: list[tuple[bytes, float]], *, unfinished: bool = True
) -> list[tuple[bytes, float]]:
    """The lines of consecutive chunks, each with the arrival time of the chunk that ended it.

    With `unfinished`, bytes after the last newline count as a last line (the stream ended
    inside it), unless they are blank.
    """
    out: list[tuple[bytes, float]] = []
    carry = b""
    at = 0.0
    for chunk, at in chunks:
        parts = (carry + chunk).split(b"\n") if carry else chunk.split(b"\n")
        carry = parts.pop()
        out += [(raw, at) for raw in parts]
    if unfinished and carry.strip():
        out.append((carry, at))
    return out


def _line(raw: bytes, t: float, redact: Redactor | None) -> TranscriptLine:
    text = raw.decode("utf-8", "replace").removesuffix("\r")
    cut = max(0, len(text) - LINE_LIMIT)
    if cut:
        text = text[:LINE_LIMIT]
    if redact is not None:
        text = redact(text)
    return TranscriptLine(round(max(t, 0.0), 3), text, cut)


_URL_USERINFO: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s\"']*@")


class Redactor:
    """Masks secrets in free text: header values, their credential parts, URL user info."""

    __slots__ = ("_bytes_pattern", "_pattern")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        pieces = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, pieces))) if pieces else None
        self._bytes_pattern = (
            re.compile(b"|".join(re.escape(piece.encode()) for piece in pieces)) if pieces else None
        )

    @classmethod
    def for_config(cls, config: Config) -> Redactor:
        """Every secret `config` holds: header values (and their parts), URL passwords."""
        return cls.for_servers(config.servers)

    @classmethod
    def for_servers(cls, servers: Iterable[ServerConfig]) -> Redactor:
        """Every secret of `servers`: header values (and their parts), URL credentials."""
        secrets: list[str] = []
        for server in servers:
            for _, value in server.headers:
                secrets.append(value)
                secrets += [part for part in value.split()[1:] if len(part) >= MIN_SECRET]
            parts = urllib.parse.urlsplit(server.url)
            secrets += [p for p in (parts.password, parts.username) if p and len(p) >= MIN_SECRET]
        return cls(secrets)

    def may_mask(self, raw: bytes) -> bool:
        """Whether `__call__` might change a line of `raw`: a secret, or an `@` (user info)."""
        return b"@" in raw or (
            self._bytes_pattern is not None and self._bytes_pattern.search(raw) is not None
        )

    def __call__(self, text: str) -> str:
        """`text` with every secret replaced by `<redacted>`."""
        if "@" in text:  # user info needs one; the pattern's scan of every word is not free
            text = _URL_USERINFO.sub(rf"\1{REDACTED}@", text)
        if self._pattern is not None:
            text = self._pattern.sub(REDACTED, text)
        return text
