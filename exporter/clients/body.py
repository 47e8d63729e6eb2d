"""Reading a whole answer body, up to a limit, however many pieces it comes in.

`StreamReader.read(n)` returns what has arrived, at most `n` bytes: one call reads a whole
body only when the body came in one piece. A registry answer sent in two TCP segments then
looked truncated, and an answer larger than one segment always did.

An answer shown as text (an error body) is masked before it is cut (`read_masked`), so that
a secret the cut falls in is not left half shown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import aiohttp

    from exporter.state.transcript import Redactor

MASK_MARGIN: Final = 8192
"""Bytes read past a text's limit, so that a secret the limit falls in is masked whole before
the cut (aiohttp sends no header line longer than 8,190 bytes)."""


async def read_up_to(content: aiohttp.StreamReader, limit: int) -> tuple[bytes, bool]:
    """The body's first `limit` bytes, and whether more came after them.

    Reads until the body ends or one byte past `limit` is in: never more than `limit` + 1
    bytes are held, whatever the body's size. The caller's timeout bounds the time.
    """
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    body = b"".join(chunks)
    return body[:limit], size > limit


async def read_masked(content: aiohttp.StreamReader, limit: int, redact: Redactor) -> str:
    """The body as text, secrets masked, then cut to `limit` characters."""
    body, _ = await read_up_to(content, limit + MASK_MARGIN)
    return redact(body.decode("utf-8", "replace"))[:limit]
