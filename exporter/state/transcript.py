"""One run's stream as received: the first and last lines with their arrival times.

The hot stream path calls `Transcript.feed(chunk, now)` once per chunk, never per line, and
`counted(n)` with the decoder's own count of the (non-blank) lines the chunk completed; they
append the chunk to a buffer and add integers: no scan, no split, no decode. Lines are cut
out when someone reads the run, or at its end (`text`). The chunks are kept packed as they
come (`exporter.state.transcript_chunks`): about 4 KB a streaming run, not 80.

Memory is bounded in lines and in bytes: the head keeps chunks until it holds `HEAD_LINES`
lines or `HEAD_BYTES` bytes, the tail drops its oldest chunks as soon as the newer ones hold
more than `TAIL_LINES` lines or it holds more than `TAIL_BYTES` bytes (each bound may be passed
by the one chunk that crosses it). Blank lines are not progress and are not kept: a chunk the
decoder found no line in is either part of one unfinished line (kept, up to `PENDING_BYTES`;
the decoder ends the run at 1 MiB) or a run of blank lines, counted and dropped; a chunk with
fewer lines than one per `SPARSE_LINE_BYTES` loses its blank lines (one regex pass) before it
is kept. Blank lines count as left out (`TranscriptText.omitted`); those in chunks the tail
dropped are not counted. Nothing is ever appended to a growing `bytes`: the work is linear.

Secrets are removed here too (`Redactor`): every configured header value, its credential part,
the Basic form of URL credentials, and the user info of any URL, each as sent and as a JSON
string would carry it, before any line is cut, stored or shown.

A finished run is stored packed (`pack_raw`): its kept chunks as they came, compressed, cut
into lines only when someone asks for that run (`unpack_raw`). Cutting and masking 400 lines
at every run's end cost a fleet of 1,000 pairs a quarter of the exporter's CPU, for
transcripts that are almost never read. Chunks that may hold a secret, or too many bytes,
take the exact path instead: cut, masked and trimmed at once (`text`).
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import msgspec

from exporter.state.transcript_chunks import ChunkLog, compress, seconds
from exporter.state.transcript_chunks import unpack as unpack_chunks

if TYPE_CHECKING:
    from collections.abc import Iterable

    from exporter.config.types import Config, ServerConfig

HEAD_LINES: Final = 200
TAIL_LINES: Final = 200
HEAD_BYTES: Final = 256 << 10
TAIL_BYTES: Final = 256 << 10
"""Bytes of chunks the head and the tail keep (a normal run's 400 lines are about 60 KiB):
lines padded with blank lines, or huge ones, reach this before the line counts."""
SPARSE_LINE_BYTES: Final = 4096
"""Bytes per line above which a chunk is searched for blank lines to drop before it is kept;
real chunks hold a line per 300 bytes, and are kept as they came."""
PENDING_BYTES: Final = 1 << 20
"""Bytes kept of one unfinished line; the decoder ends the run at a line of 1 MiB anyway."""
LINE_LIMIT: Final = 4096
"""Characters kept of one line (real lines are < 300 bytes), after secrets are masked; the
rest is counted, not kept."""
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
    """The kept lines in stream order and how many lines were left out (blank ones too)."""

    lines: tuple[TranscriptLine, ...]
    omitted: int


class Transcript:
    """Collects the chunks of one stream; `text` cuts them into lines once it is over."""

    __slots__ = (
        "_blank",
        "_head",
        "_head_bytes",
        "_head_lines",
        "_log",
        "_pending",
        "_pending_at",
        "_pending_bytes",
        "_tail_start",
        "_uncounted",
        "started_at",
    )

    def __init__(self, started_at: float) -> None:
        self.started_at = started_at
        """Monotonic seconds of the run's start; lines carry `t` relative to it."""
        self._log = ChunkLog()
        """The head's chunks until it is full, then the tail's (packed as they come)."""
        self._head: bytes | None = None
        """The full head, packed in one piece (`ChunkLog.pack`); None while it fills."""
        self._head_lines = 0
        self._head_bytes = 0
        self._tail_start = 0
        """Newlines before the first chunk still in the tail."""
        self._pending: list[bytes] = []
        """Chunks without a newline (a line split over chunks), rare in practice."""
        self._pending_bytes = 0
        self._pending_at = 0.0
        self._blank = 0
        """Blank lines counted and dropped (chunks of nothing else)."""
        self._uncounted: tuple[bytes, float] | None = None
        """The last chunk, until the decoder's count of its lines arrives."""

    def feed(self, chunk: bytes, now: float) -> None:
        """Take `chunk` (arrived at monotonic `now`); called once per chunk of the stream.

        Its lines are counted by `counted`, called with the decoder's count right after; a
        chunk that gets none (the decoder raised on it) is counted here instead.
        """
        if self._uncounted is not None:
            last, at = self._uncounted
            self._add(last, at, self._own_count(last))
        self._uncounted = (chunk, now) if chunk else None

    def counted(self, newlines: int) -> None:
        """Take the decoder's count of the lines the last chunk completed.

        The decoder counts them anyway; counting again here cost the stream path about 15%.
        Its count leaves out blank lines: a chunk of nothing else gets 0 (`_add_no_line`).
        """
        if self._uncounted is not None:
            chunk, now = self._uncounted
            self._uncounted = None
            self._add(chunk, now, newlines)

    def _add(self, chunk: bytes, now: float, newlines: int) -> None:
        if not newlines:
            self._add_no_line(chunk, now)
            return
        if self._pending:
            chunk = b"".join([*self._pending, chunk])
            self._pending, self._pending_bytes = [], 0
        if len(chunk) > (newlines + 1) * SPARSE_LINE_BYTES:
            chunk = self._compact(chunk)
        log = self._log
        if self._head is None:
            if self._head_lines < HEAD_LINES and self._head_bytes < HEAD_BYTES:
                log.append(chunk, now, newlines)
                self._head_lines += newlines
                self._head_bytes += len(chunk)
                self._tail_start = self._head_lines
                return
            self._head = log.pack(self.started_at)  # full: it only waits for the run's end
            self._log = log = ChunkLog()
        log.append(chunk, now, newlines)
        self._tail_start += log.trim(TAIL_LINES, TAIL_BYTES)

    def _compact(self, chunk: bytes) -> bytes:
        """`chunk` without the blank lines that end in it (they are counted); at C speed."""
        compact = _BLANK_RUNS.sub(b"\n", chunk)
        self._blank += chunk.count(b"\n") - compact.count(b"\n")
        return compact

    def _add_no_line(self, chunk: bytes, now: float) -> None:
        """A chunk the decoder completed no line in: part of one line, or blank lines.

        Had a line ended in it that is not blank, the decoder would have counted it; so when
        the chunk holds a newline, everything up to its last newline (the unfinished line
        before it too) is blank lines: counted, dropped. Only this path scans the chunk.
        """
        end = chunk.rfind(b"\n")
        if end >= 0:
            # One newline stays, to end what the kept chunks left open (white space); the
            # cut-out of the lines counts that one line.
            anchored = self._pending[:1] == [b"\n"]
            self._blank += chunk.count(b"\n", 0, end + 1) - (0 if anchored else 1)
            self._pending, self._pending_bytes = [b"\n"], 1
            chunk = chunk[end + 1 :]
            if not chunk:
                return
        room = PENDING_BYTES - self._pending_bytes
        if room > 0:
            piece = chunk if len(chunk) <= room else chunk[:room]
            self._pending.append(piece)
            self._pending_bytes += len(piece)
        self._pending_at = now

    def _settle(self) -> None:
        """Count the last chunk, when the stream ended right after it."""
        if self._uncounted is not None:
            last, at = self._uncounted
            self._uncounted = None
            self._add(last, at, self._own_count(last))

    def _own_count(self, chunk: bytes) -> int:
        """The non-blank lines `chunk` completes, counted as the decoder does (rarely used).

        Blank lines after a newline go in one regex pass; every newline left ends a line
        that is not blank, but the first, which ends what came before it.
        """
        end = chunk.rfind(b"\n")
        if end < 0:
            return 0
        compact = _BLANK_RUNS.sub(b"\n", chunk[: end + 1])
        first = compact[: compact.find(b"\n")]
        blank_first = not first.strip() and not self._open_line()
        return compact.count(b"\n") - blank_first

    def _open_line(self) -> bool:
        """Whether the chunks so far end inside a line that is not blank."""
        if any(piece.strip() for piece in self._pending):
            return True
        return self._log.ends_inside_a_line()

    def _chunks(self) -> tuple[list[tuple[bytes, float]], list[tuple[bytes, float, int]]]:
        """The head's chunks and the tail's, with their arrival times (seconds since start)."""
        started = self.started_at
        if self._head is None:
            return [(chunk, at - started) for chunk, at, _ in self._log.chunks()], []
        tail = [(chunk, at - started, lines) for chunk, at, lines in self._log.chunks()]
        return unpack_chunks(self._head), tail

    def pack_raw(self, redact: Redactor) -> bytes | None:
        """The kept chunks, compressed, for `unpack_raw`; None if they need the exact path.

        That is when they hold more than RAW_LIMIT bytes, or anything `redact` might mask:
        one search over the joined bytes, not one per line. Times are kept to the
        millisecond, as `text` shows them.
        """
        self._settle()
        head, tail = self._chunks()
        chunks = [chunk for chunk, _ in head]
        chunks += [chunk for chunk, _, _ in tail]
        chunks += self._pending
        blob = b"".join(chunks)
        if len(blob) > RAW_LIMIT or redact.may_mask(blob):
            return None
        layout = _RawLayout(
            self._head_lines,
            self._tail_start,
            [(seconds(t), len(chunk)) for chunk, t in head],
            [(seconds(t), len(chunk), lines) for chunk, t, lines in tail],
            seconds(self._pending_at - self.started_at),
            self._blank,
        )
        encoded = _raw_encoder.encode(layout)
        return RAW_MAGIC + compress(len(encoded).to_bytes(4, "big") + encoded + blob, header=True)

    def text(self, redact: Redactor | None = None) -> TranscriptText:
        """The first HEAD_LINES and last TAIL_LINES lines (an unfinished last line included).

        The kept chunks are split exactly here; only the count of left-out lines relies on
        the decoder's counts of the chunks that were dropped. Blank lines are never shown:
        they count as left out.
        """
        self._settle()
        head, tail = self._chunks()
        kept = _Kept(head, [(chunk, t) for chunk, t, _ in tail], self._head_lines)
        if self._pending:
            kept.tail.append((b"".join(self._pending), self._pending_at - self.started_at))
        return kept.text(self._tail_start, self._blank, redact)


@dataclass(slots=True)
class _Kept:
    """The chunks a transcript kept, however it held them: live, or packed at its end."""

    head: list[tuple[bytes, float]]
    tail: list[tuple[bytes, float]]
    """The tail's chunks, the unfinished line's last."""
    head_lines: int

    def text(self, tail_start: int, blank: int, redact: Redactor | None) -> TranscriptText:
        """The lines shown (see `Transcript.text`) and how many are left out."""
        head, tail = self.head, self.tail
        if tail_start == self.head_lines:  # nothing dropped: one contiguous stream
            lines, unshown = _lines([*head, *tail])
            total = len(lines)
            kept = (
                lines
                if total <= HEAD_LINES + TAIL_LINES
                else lines[:HEAD_LINES] + lines[-TAIL_LINES:]
            )
        else:
            head_lines, head_unshown = _lines(head, unfinished=False)
            # The first line of the tail began in a dropped chunk: it is left out too.
            tail_lines, tail_unshown = _lines(tail, skip_first=True)
            dropped = tail_start - self.head_lines
            total = len(head_lines) + dropped + len(tail_lines)
            unshown = head_unshown + tail_unshown
            kept = head_lines[:HEAD_LINES] + tail_lines[-TAIL_LINES:]
        return TranscriptText(
            tuple(_line(raw, t, redact) for raw, t in kept),
            total - len(kept) + unshown + blank,
        )


class _RawLayout(msgspec.Struct, array_like=True):
    """Where the chunks of a `pack_raw` blob begin and end, and when each arrived."""

    head_lines: int
    tail_start: int
    head: list[tuple[float, int]]
    tail: list[tuple[float, int, int]]
    pending_at: float
    blank: int = 0


_raw_encoder: Final = msgspec.json.Encoder()
_raw_decoder: Final = msgspec.json.Decoder(_RawLayout)


def unpack_raw(blob: bytes) -> TranscriptText:
    """The lines of a `pack_raw` blob, cut exactly as `Transcript.text` cuts them."""
    try:
        data = zlib.decompress(blob[len(RAW_MAGIC) :])
        size = int.from_bytes(data[:4], "big")
        layout = _raw_decoder.decode(data[4 : 4 + size])
    except (zlib.error, msgspec.DecodeError) as exc:
        raise ValueError(f"not a packed transcript: {exc}") from None
    offset = 4 + size
    kept = _Kept([], [], layout.head_lines)
    for at, length in layout.head:
        kept.head.append((data[offset : offset + length], at))
        offset += length
    for at, length, _ in layout.tail:
        kept.tail.append((data[offset : offset + length], at))
        offset += length
    if offset < len(data):
        kept.tail.append((data[offset:], layout.pending_at))
    return kept.text(layout.tail_start, layout.blank, None)


def _lines(
    chunks: list[tuple[bytes, float]], *, unfinished: bool = True, skip_first: bool = False
) -> tuple[list[tuple[bytes, float]], int]:
    """The non-blank lines of consecutive chunks, and how many lines were not returned.

    Each line comes with the arrival time of the chunk that ended it. Not returned: blank
    lines, and with `skip_first` the first line. With `unfinished`, bytes after the last
    newline count as a last line (the stream ended inside it), unless they are blank.
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
    skipped = 1 if skip_first and out else 0
    shown = [line for line in out[skipped:] if line[0].strip()]
    return shown, len(out) - len(shown)


def _line(raw: bytes, t: float, redact: Redactor | None) -> TranscriptLine:
    """One line, masked first and cut after: a cut never leaves part of a secret to show."""
    text = raw.decode("utf-8", "replace").removesuffix("\r")
    if redact is not None:
        text = redact(text)
    cut = max(0, len(text) - LINE_LIMIT)
    if cut:
        text = text[:LINE_LIMIT]
    return TranscriptLine(seconds(t), text, cut)


_BLANK_RUNS: Final = re.compile(rb"\n\s*\n")
"""Lines of nothing but ASCII white space after a newline (`\\s` is what `bytes.strip` strips)."""
_URL_USERINFO: Final = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/?#@\s\"']*@")
_GO_ESCAPES: Final = str.maketrans({"&": "\\u0026", "<": "\\u003c", ">": "\\u003e"})


def _header_secrets(value: str) -> list[str]:
    """A header value, its credential parts, and what a `Basic` credential decodes to."""
    secrets = [value]
    scheme, _, credentials = value.partition(" ")
    secrets += [part for part in credentials.split() if len(part) >= MIN_SECRET]
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("latin-1")
        except ValueError:
            decoded = ""
        user, _, password = decoded.partition(":")
        secrets += [p for p in (decoded, user, password) if len(p) >= MIN_SECRET]
    return secrets


def _url_secrets(url: str) -> list[str]:
    """A URL's user name and password (encoded and decoded) and the `Basic` form of both.

    aiohttp turns URL credentials into `Authorization: Basic base64(user:password)`, with the
    percent-decoded parts, encoded as latin-1; UTF-8 is covered too.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.username is None and parts.password is None:
        return []
    raw = [parts.username or "", parts.password or ""]
    user, password = (urllib.parse.unquote(part) for part in raw)
    secrets = [p for p in {*raw, user, password} if len(p) >= MIN_SECRET]
    pair = f"{user}:{password}"
    for encoding in ("latin-1", "utf-8"):
        try:
            secrets.append(base64.b64encode(pair.encode(encoding)).decode("ascii"))
        except UnicodeEncodeError:
            continue
    return secrets


def _echoed_forms(secret: str) -> set[str]:
    """`secret` and the forms a JSON string (Python's or Go's) would carry it in."""
    quoted = json.dumps(secret)[1:-1]
    return {
        secret,
        quoted,
        json.dumps(secret, ensure_ascii=False)[1:-1],
        quoted.translate(_GO_ESCAPES),
    }


class Redactor:
    """Masks secrets in free text: header values, their credential parts, URL user info.

    Every secret is looked for in each form a server could echo it in: as configured, its
    credential part, the `Basic` form aiohttp sends for URL credentials (and the `user:password`
    inside a configured `Basic` value), the URL's user info both percent-encoded and decoded,
    and each of these as a JSON string carries it. Callers mask before they cut.
    """

    __slots__ = ("_bytes_pattern", "_pattern")

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        pieces = sorted({s for s in secrets if s}, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, pieces))) if pieces else None
        self._bytes_pattern = (
            re.compile(b"|".join(re.escape(piece.encode()) for piece in pieces)) if pieces else None
        )

    @classmethod
    def for_config(cls, config: Config) -> Redactor:
        """Every secret `config` holds: header values (and their parts), URL credentials."""
        return cls.for_servers(config.servers)

    @classmethod
    def for_servers(cls, servers: Iterable[ServerConfig]) -> Redactor:
        """Every secret of `servers`, in every form (see the class)."""
        secrets: list[str] = []
        for server in servers:
            for _, value in server.headers:
                secrets += _header_secrets(value)
            secrets += _url_secrets(server.url)
        return cls(form for secret in secrets for form in _echoed_forms(secret))

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
