"""Transcripts: the first and last lines of a stream, whatever its chunking; secrets masked."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config.loader import parse_config
from exporter.ollama.protocol import LineDecoder
from exporter.state.transcript import (
    HEAD_BYTES,
    HEAD_LINES,
    LINE_LIMIT,
    RAW_LIMIT,
    TAIL_BYTES,
    TAIL_LINES,
    Redactor,
    Transcript,
    unpack_raw,
)
from exporter.state.transcript_chunks import unpack as unpack_chunks


def feed(data: bytes, cuts: list[int], *, counted: bool = True) -> Transcript:
    """Feed `data` cut at `cuts`, chunk k arriving at t = k seconds."""
    transcript = Transcript(0.0)
    decoder = LineDecoder()
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    for k, (start, end) in enumerate(itertools.pairwise(bounds)):
        piece = data[start:end]
        transcript.feed(piece, float(k))
        if counted:  # as the stream path does: the decoder's count (else feed counts itself)
            transcript.counted(len(decoder.feed(piece)))
    return transcript


def stream(count: int, blank_every: int, tail: bytes, width: int = 0) -> bytes:
    """`count` lines, a blank one (empty or of white space) after every `blank_every`.

    Lines of `width` characters more are as long as Ollama's (about 150 bytes): they fill
    the kept chunks' compressed blocks (4 KiB), and the tail drops whole blocks.
    """
    pad = b"x" * width
    lines = [b'{"n":%d,"p":"%s"}\n' % (i, pad) for i in range(count)]
    if blank_every:
        blanks = itertools.cycle([b"\n", b" \t\r\n", b"\n\n\n"])
        lines = [
            line + (next(blanks) if i % blank_every == 0 else b"") for i, line in enumerate(lines)
        ]
    return b"".join(lines) + tail


def expected(data: bytes) -> tuple[list[str], int, int]:
    """The lines a transcript shows of `data`, how many others it leaves out, and the blank
    lines (never shown)."""
    *complete, unfinished = data.split(b"\n")
    lines = [raw.decode() for raw in complete if raw.strip()]
    blank = len(complete) - len(lines)
    if unfinished.strip():
        lines.append(unfinished.decode())
    if len(lines) <= HEAD_LINES + TAIL_LINES:
        return lines, 0, blank
    return lines[:HEAD_LINES] + lines[-TAIL_LINES:], len(lines) - HEAD_LINES - TAIL_LINES, blank


ANY_STREAM = given(
    count=st.integers(0, 1200),
    blank_every=st.sampled_from([0, 1, 7, 100]),
    cuts=st.lists(st.integers(0, 100_000), max_size=300),
    tail=st.sampled_from([b"", b'{"unfinished":', b"\n", b"\n  \n"]),
    counted=st.booleans(),
    width=st.sampled_from([0, 150]),
)
"""`count` lines of `width` more characters with blank ones among them and a `tail`, cut at
`cuts`, with or without the decoder's counts."""


@settings(max_examples=60, deadline=None)
@ANY_STREAM
def test_head_and_tail_for_any_chunking(
    *, count: int, blank_every: int, cuts: list[int], tail: bytes, counted: bool, width: int
) -> None:
    data = stream(count, blank_every, tail, width)
    text = feed(data, cuts, counted=counted).text()
    lines, omitted, blank = expected(data)
    assert [line.line for line in text.lines] == lines
    # Blank lines are counted where they are seen: not in the chunks the tail dropped.
    assert omitted + (0 if omitted else blank) <= text.omitted <= omitted + blank
    times = [line.t for line in text.lines]
    assert times == sorted(times)


@settings(max_examples=60, deadline=None)
@ANY_STREAM
def test_a_packed_run_unpacks_to_the_lines_cut_at_once(
    *, count: int, blank_every: int, cuts: list[int], tail: bytes, counted: bool, width: int
) -> None:
    """`pack_raw` defers the cutting to a read; what a read gets must not depend on that."""
    data = stream(count, blank_every, tail, width)
    packed = feed(data, cuts, counted=counted).pack_raw(Redactor(["never-there"]))
    assert packed is not None
    assert unpack_raw(packed) == feed(data, cuts, counted=counted).text()


def test_what_may_hold_a_secret_or_is_too_big_is_cut_and_masked_at_once() -> None:
    redact = Redactor(["tok-secret"])
    for line in (b'{"error":"tok-secret"}\n', b'{"error":"https://u:p@h/x"}\n'):
        transcript = Transcript(0.0)
        transcript.feed(b'{"status":"ok"}\n' + line, 1.0)
        assert transcript.pack_raw(redact) is None
        assert "<redacted>" in transcript.text(redact).lines[-1].line
    big = Transcript(0.0)
    big.feed(b"x" * RAW_LIMIT + b"\n", 1.0)
    assert big.pack_raw(redact) is None
    assert len(big.text(redact).lines[0].line) == LINE_LIMIT


def test_a_line_has_the_time_of_the_chunk_that_ended_it() -> None:
    transcript = Transcript(10.0)
    transcript.feed(b'{"status":"pulling manifest"}\n{"sta', 10.5)
    transcript.feed(b'tus":"success"}\n', 12.25)
    text = transcript.text()
    assert [(line.t, line.line) for line in text.lines] == [
        (0.5, '{"status":"pulling manifest"}'),
        (2.25, '{"status":"success"}'),
    ]


def test_long_lines_are_cut_and_counted() -> None:
    transcript = Transcript(0.0)
    transcript.feed(b"x" * (LINE_LIMIT + 10) + b"\n", 1.0)
    (line,) = transcript.text().lines
    assert len(line.line) == LINE_LIMIT
    assert line.cut == 10


def test_memory_stays_bounded_on_a_long_stream() -> None:
    transcript = Transcript(0.0)
    for i in range(20_000):  # fifty times what it keeps
        transcript.feed(b'{"completed":%d}\n' % i, float(i))
    assert transcript._head is not None
    assert len(unpack_chunks(transcript._head)) == HEAD_LINES
    assert len(transcript._log) == TAIL_LINES + 1
    # The tail's 201 chunks are 3.6 KB as they came; held packed, plus the 4 KiB block being
    # filled and the sealed ones its oldest lines still sit in (5-11 KB, by where blocks end).
    assert transcript._log.held < 12_000
    text = transcript.text()
    assert text.omitted == 20_000 - HEAD_LINES - TAIL_LINES
    assert text.lines[-1].line == '{"completed":19999}'


def test_huge_lines_fill_the_byte_bounds_before_the_line_counts() -> None:
    """Lines of 100 KiB (within the decoder's 1 MiB): the head and the tail keep 256 KiB each
    (and the chunk that crossed the bound), not 200 lines each."""
    transcript = Transcript(0.0)
    big = b'{"status":"' + b"a" * (100 << 10) + b'"}\n'
    for i in range(1000):
        transcript.feed(big, float(i))
        transcript.counted(1)
    assert transcript._head is not None
    kept = sum(len(chunk) for chunk, _ in unpack_chunks(transcript._head))
    kept += transcript._log.size
    assert kept <= HEAD_BYTES + TAIL_BYTES + 2 * len(big)
    text = transcript.text()
    assert text.omitted == 1000 - len(text.lines)
    assert all(line.cut for line in text.lines)


def test_redactor_masks_header_values_their_credentials_and_url_user_info() -> None:
    config = parse_config(
        "servers:\n"
        "  - url: http://admin:hunter22@a:1\n"
        "    headers: {X-Auth: 'Bearer tok-123456', X-Key: k3y-v4lue}\n"
        "    models: [m]\n",
        "c.yaml",
    )
    redact = Redactor.for_config(config)
    text = (
        "auth Bearer tok-123456 then tok-123456 alone, k3y-v4lue, hunter22, "
        "Get https://bob:pw@registry.example/v2"
    )
    assert redact(text) == (
        "auth <redacted> then <redacted> alone, <redacted>, <redacted>, "
        "Get https://<redacted>@registry.example/v2"
    )
    assert redact("Bearer is a word") == "Bearer is a word"


def test_a_secret_across_the_line_cut_is_masked_whole() -> None:
    secret = "s3cr3t-" + "k" * 21  # 28 characters; 10 of them fell before the cut
    redact = Redactor([secret])
    transcript = Transcript(0.0)
    transcript.feed(b"x" * (LINE_LIMIT - 10) + secret.encode() + b" tail\n", 1.0)
    assert transcript.pack_raw(redact) is None  # the secret sends it the exact way
    (line,) = transcript.text(redact).lines
    assert (line.line, line.cut) == ("x" * (LINE_LIMIT - 10) + "<redacted>", len(" tail"))
