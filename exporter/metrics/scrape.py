"""The `/metrics` handler: content negotiation, `name[]` filters and gzip over the cached renderer.

Every request is answered from `exporter.metrics.exposition.Exposition`, whatever it asks: the
`Accept` header picks the Prometheus text format 0.0.4 (or its 1.0.0 name, which writes the
same bytes for our metric names) or OpenMetrics 1.0.0; anything else (OpenMetrics 2.0.0,
`escaping=values` or `dots`, a malformed version or q-value) is simply not a match, and when
nothing matches the answer is text 0.0.4, as in prometheus_client and Go's expfmt. So no
header can make a scrape expensive, grow a cache or raise.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from aiohttp import Payload, hdrs, web

from exporter.metrics.columns import Piece, flatten, joined
from exporter.metrics.exposition import Exposition, Format
from exporter.metrics.packing import LEVEL, NOTHING, Kept, gzip_chunks

if TYPE_CHECKING:
    from collections.abc import Iterator

    from aiohttp.abc import AbstractStreamWriter
    from aiohttp.typedefs import Handler

    from exporter.metrics.families import PullRegistry

log = logging.getLogger("exporter.scrape")


@dataclass(frozen=True, slots=True)
class Negotiated:
    """What a request gets: the format written and the `Content-Type` that says so."""

    format: Format
    content_type: str


TEXT: Final = Negotiated(Format.TEXT, "text/plain; version=0.0.4; charset=utf-8")
OPENMETRICS: Final = Negotiated(
    Format.OPENMETRICS, "application/openmetrics-text; version=1.0.0; charset=utf-8"
)
_ESCAPINGS: Final = ("underscores", "allow-utf-8")
"""Name escapings whose output is the cached bytes: our names are all legacy-valid."""
_MAX_ACCEPT_ITEMS: Final = 64
"""Media ranges read from `Accept`; the rest are ignored (bounded work per request)."""
_MAX_NAMES: Final = 256
"""`name[]` values a request may give (there are about 30 families)."""


def negotiate(accept: str) -> Negotiated:
    """The format for an `Accept` header: the acceptable range with the highest q wins.

    Ties go to the range listed first. Never raises.
    """
    best, best_q = TEXT, -1.0
    for item in accept.split(",")[:_MAX_ACCEPT_ITEMS]:
        media, _, rest = item.partition(";")
        params = _params(rest)
        q = _quality(params.pop("q", "1"))
        if q is None or q <= 0 or q <= best_q:
            continue
        choice = _choose(media.strip().lower(), params)
        if choice is not None:
            best, best_q = choice, q
    return best


def _params(text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for part in text.split(";"):
        key, _, value = part.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    params.pop("", None)
    return params


def _quality(text: str) -> float | None:
    """An RFC 9110 qvalue (0 to 1, at most three decimals), or None when malformed."""
    whole, _, decimals = text.partition(".")
    if whole not in {"0", "1"} or len(decimals) > 3 or not (decimals or "0").isdigit():
        return None
    value = float(f"{whole}.{decimals or '0'}")
    return value if value <= 1 else None


def _choose(media: str, params: dict[str, str]) -> Negotiated | None:
    """What a media range asks for, if it is a format the renderer writes."""
    version = params.get("version")
    escaping = params.get("escaping")
    if escaping is not None and escaping not in _ESCAPINGS:
        return None
    if media in {"application/openmetrics-text", "application/*"}:
        unversioned, fmt, versioned = OPENMETRICS, Format.OPENMETRICS, OPENMETRICS.content_type
    elif media in {"text/plain", "text/*", "*/*"}:
        if version == "0.0.4":
            return TEXT
        unversioned, fmt, versioned = TEXT, Format.TEXT, "text/plain; version=1.0.0; charset=utf-8"
    else:
        return None
    if version is None:
        return unversioned
    if version != "1.0.0":
        return None
    # As prometheus_client: a versioned answer names its escaping.
    return Negotiated(fmt, f"{versioned}; escaping={escaping or 'underscores'}")


def _gzip_accepted(accept_encoding: str) -> bool:
    for item in accept_encoding.split(",")[:_MAX_ACCEPT_ITEMS]:
        coding, _, rest = item.partition(";")
        if coding.strip().lower() == "gzip":
            return _quality(_params(rest).get("q", "1")) != 0
    return False


_BATCH: Final = 4096
"""Pieces joined at a time for zlib: about 0.5-1 MiB (a piece is one family of one pair, a
few hundred bytes), so few GIL hand-overs and no whole body, and no length of any piece
looked at (570,000 of them at 10,000 pairs)."""
_SLICE: Final = 64 * 1024
"""Bytes of pieces joined per write of an uncompressed body (the transport's high water)."""
_ANSWER_TIMEOUT: Final = 60.0
"""Seconds an uncompressed body written in pieces may take in all, as the listener gives a
sliced one (`exporter.web.listener.ANSWER_TIMEOUT`); then the connection goes."""


def _batches(pieces: list[Piece], count: int) -> Iterator[bytes]:
    """`pieces` joined `count` at a time (the last run shorter)."""
    for start in range(0, len(pieces), count):
        yield joined(pieces[start : start + count])


def _slices(pieces: list[Piece], size: int) -> Iterator[bytes]:
    """`pieces` joined into runs of at least `size` bytes, holding only the run being joined.

    A writer waits on a slow reader between two runs, and 300 of them must not each keep a
    list as long as the body's pieces.
    """
    run: list[bytes | memoryview] = []
    held = 0
    for piece in flatten(pieces):
        run.append(piece)
        held += len(piece)
        if held >= size:
            yield b"".join(run)
            run, held = [], 0
    if run:
        yield b"".join(run)


def _gzip(pieces: list[Piece]) -> bytes:
    """The gzip of the pieces joined, compressed a batch at a time (no whole body)."""
    compressor = zlib.compressobj(LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    packed = [compressor.compress(batch) for batch in _batches(pieces, _BATCH)]
    packed.append(compressor.flush())
    return b"".join(packed)


class PiecesBody(Payload):
    """An uncompressed body written from its pieces, `_SLICE` bytes at a time.

    The pieces are the renderer's cached bytes, shared: a 60 MB body never exists in one
    piece, and a slow reader holds the list of them, not a copy. Each write waits while the
    transport is over its high water; past `_ANSWER_TIMEOUT` the write fails with
    ConnectionResetError, which aiohttp takes as a client gone.

    The list is the answer's own, though: 8 bytes a piece, 2.6-4.6 MB at 10,000 pairs, kept
    alive for as long as its reader does not read. `held` says how much, and the listener
    counts it against its cap on the bytes held for stalled readers
    (`exporter.web.answers.Holding`).
    """

    def __init__(self, pieces: list[Piece], **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(pieces, **kwargs)
        self._pieces: list[Piece] = pieces
        self._size = sum(map(len, pieces))
        self.held = sys.getsizeof(pieces) + _SLICE
        """Bytes kept alive by this answer alone until it is written, 0 then: the list and
        the slice in flight (of which the transport counts only what is unsent). The pieces
        with exemplars are the renderer's too, cached like the bytes."""

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        """The body as text."""
        return b"".join(flatten(self._pieces)).decode(encoding, errors)

    async def as_bytes(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        """The body in one piece (aiohttp's test helpers; never on the serving path)."""
        del encoding, errors
        return b"".join(flatten(self._pieces))

    async def write(self, writer: AbstractStreamWriter) -> None:
        """Write the pieces in slices; let go of them at the end, whatever happens."""
        try:
            async with asyncio.timeout(_ANSWER_TIMEOUT):
                for batch in _slices(self._pieces, _SLICE):
                    await writer.write(batch)
        except TimeoutError:
            raise ConnectionResetError("the answer was not read in time") from None
        finally:
            self._pieces = []
            self.held = 0

    async def write_with_length(
        self, writer: AbstractStreamWriter, content_length: int | None
    ) -> None:
        """As `write`: the length is the body's own (aiohttp sets Content-Length from it)."""
        del content_length
        await self.write(writer)


def make_metrics_handler(registry: PullRegistry) -> Handler:
    """The `/metrics` handler over `registry`'s state, answered from a cached `Exposition`.

    `?name[]=NAME` (repeatable) keeps only the families named (by family or sample name);
    more than `_MAX_NAMES` of them answer 400. Other query parameters are ignored.
    """
    exposition = Exposition(registry.state)
    compressed: dict[object, tuple[object, bytes]] = {}
    """Per format, the last whole body's gzip and the exposition's key for that body: a fleet
    at rest, or two Prometheus servers scraping it in the same second, get the same bytes
    (and the body is not even assembled); gzip is most of a scrape's CPU. Not the body
    itself: at 10,000 pairs it is 60 MB. Filtered answers are not kept, so this holds two
    entries at most."""
    chunks: dict[object, Kept] = {}
    """Per format, where each chunk's deflate is in that gzip, by the chunk's key: the next
    body's gzip deflates only the chunks that changed (`exporter.metrics.packing`)."""

    async def gzipped(fmt: Format, names: list[str] | None) -> bytes:
        loop = asyncio.get_running_loop()
        # zlib lets go of the GIL: in a thread, the 13 ms of a 1,000-pair body do not hold up
        # the streams' reads (phase boundaries are timed by when a line is read). The pieces
        # are immutable bytes, and the lists are this request's own.
        if names is not None:
            pieces = exposition.pieces(fmt, names)
            assert pieces is not None  # without `unless`, always pieces
            return await loop.run_in_executor(None, _gzip, pieces)
        last = compressed.get(fmt)
        runs = exposition.chunks(fmt, unless=None if last is None else last[0])
        if runs is None:
            assert last is not None
            return last[1]
        same = exposition.last_key
        packed, kept = await loop.run_in_executor(None, gzip_chunks, runs, chunks.get(fmt, NOTHING))
        compressed[fmt], chunks[fmt] = (same, packed), kept
        return packed

    async def handler(request: web.Request) -> web.StreamResponse:
        names = request.query.getall("name[]", None)
        if names is not None and len(names) > _MAX_NAMES:
            log.info(
                "metrics request refused: too many name[] filters",
                extra={"remote": request.remote or "", "names": len(names)},
            )
            return web.Response(status=400, text=f"at most {_MAX_NAMES} name[] filters\n")
        negotiated = negotiate(",".join(request.headers.getall(hdrs.ACCEPT, ())))
        headers = {hdrs.CONTENT_TYPE: negotiated.content_type}
        await exposition.catch_up()  # the re-rendering, in stretches the streams can read between
        if _gzip_accepted(request.headers.get(hdrs.ACCEPT_ENCODING, "")):
            headers[hdrs.CONTENT_ENCODING] = "gzip"
            return web.Response(body=await gzipped(negotiated.format, names), headers=headers)
        pieces = exposition.pieces(negotiated.format, names)
        assert pieces is not None  # without `unless`, always pieces
        body = PiecesBody(pieces)
        if (body.size or 0) <= _SLICE:
            return web.Response(body=b"".join(flatten(pieces)), headers=headers)
        return web.Response(body=body, headers=headers)

    return handler
