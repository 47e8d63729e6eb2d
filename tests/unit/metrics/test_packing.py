"""The gzip of a body in chunks: a valid gzip of the whole, the unchanged chunks not read."""

from __future__ import annotations

import gzip

from hypothesis import given
from hypothesis import strategies as st

from exporter.metrics.columns import Chunk, WithExemplars, flatten
from exporter.metrics.packing import NOTHING, gzip_chunks

lines = st.binary(max_size=300) | st.sampled_from([b"", b"ollama_pull_runs_total 1.0\n" * 40])
runs = st.lists(lines, max_size=6)


def body(chunks: list[Chunk]) -> bytes:
    return b"".join(flatten(piece for _, run in chunks for piece in run))


@given(st.lists(st.tuples(st.booleans(), runs), max_size=12), st.data())
def test_the_gzip_is_the_body_whatever_was_kept(
    described: list[tuple[bool, list[bytes]]], data: st.DataObject
) -> None:
    """Two bodies in a row, the second with some chunks of the first (same key, same bytes)."""
    first: list[Chunk] = [
        (index if keyed else None, list(run)) for index, (keyed, run) in enumerate(described)
    ]
    packed, kept = gzip_chunks(first, NOTHING)
    assert gzip.decompress(packed) == body(first)
    second: list[Chunk] = []
    for key, run in first:
        if key is not None and data.draw(st.booleans()):
            second.append((key, run))  # unchanged: kept
        else:
            fresh = data.draw(runs)
            second.append((None if key is None else ("new", key), fresh))
    packed, _ = gzip_chunks(second, kept)
    assert gzip.decompress(packed) == body(second)


def test_exemplars_and_large_chunks() -> None:
    text = b"a_bucket 1.0\n" * 20_000
    chunks: list[Chunk] = [
        (1, [text, WithExemplars(b"x 1.0\ny 2.0\n", ((5, b" # {a} 1"),)), b"z\n"]),
        (2, [bytes(range(256)) * 4_000]),  # longer than any chunk before it
        (None, []),
    ]
    packed, kept = gzip_chunks(chunks, NOTHING)
    assert gzip.decompress(packed) == body(chunks)
    assert kept[0] is packed
    assert set(kept[1]) == {1, 2}


def test_a_kept_chunk_is_not_read_again() -> None:
    """The key is trusted: what was kept under it is what the body gets (so keys must change
    with the bytes, which tests/integration/test_metrics_render.py checks)."""
    _, kept = gzip_chunks([("k", [b"before\n"])], NOTHING)
    packed, _ = gzip_chunks([("k", [b"after!\n"]), (None, [b"tail\n"])], kept)
    assert gzip.decompress(packed) == b"before\ntail\n"
