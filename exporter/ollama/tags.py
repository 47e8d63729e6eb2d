"""Sans-I/O: an Ollama `GET /api/tags` answer -> what the server holds, by canonical name.

The answer can list hundreds of models, and it comes from a server we do not control, so it
is read with the care of a pull stream: a size cap before decoding, every field we use
type-checked by msgspec (unknown fields ignored, as Ollama adds some in every release), and
any problem is one `TagsError` with a message fit for the log.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Final

import msgspec

from exporter.ollama.names import canonical_model_name

MAX_TAGS_BYTES: Final = 16 * 1024 * 1024
"""An answer larger than this is refused: 1,000 models take about 600 KB."""
MAX_MODELS: Final = 100_000
_INT64_MAX: Final = (1 << 63) - 1
_HEX_DIGEST: Final = re.compile(r"(?:sha256:)?([0-9a-f]{64})")


class _Entry(msgspec.Struct, frozen=True, gc=False):
    """One `models[]` entry: `api.ListModelResponse`, the fields we read."""

    digest: str
    size: Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]
    name: str = ""
    model: str = ""


class _Answer(msgspec.Struct, frozen=True, gc=False):
    models: list[_Entry] | None
    """Go marshals an empty slice as `[]`, a nil one as `null`: both mean nothing held."""


_decoder: Final = msgspec.json.Decoder(_Answer)


@dataclass(frozen=True, slots=True)
class Held:
    """A model the server holds: its manifest digest (64 hex, no prefix) and size."""

    digest: str
    size: int


class TagsError(Exception):
    """The answer is not a usable `/api/tags` answer; the message says why."""


def parse_tags(body: bytes) -> dict[str, Held]:
    """What the server holds, keyed by canonical model name (`canonical_model_name`)."""
    if len(body) > MAX_TAGS_BYTES:
        raise TagsError(f"answer larger than {MAX_TAGS_BYTES} bytes")
    try:
        answer = _decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise TagsError(f"unexpected JSON: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise TagsError(f"not JSON: {_short(exc)}") from None
    entries = answer.models or []
    if len(entries) > MAX_MODELS:
        raise TagsError(f"more than {MAX_MODELS} models listed")
    held: dict[str, Held] = {}
    for index, entry in enumerate(entries):
        match = _HEX_DIGEST.fullmatch(entry.digest.lower())
        if match is None:
            raise TagsError(f"models[{index}].digest is not a sha256 digest: {entry.digest[:80]!r}")
        names = {entry.name, entry.model} - {""}
        if not names:
            raise TagsError(f"models[{index}] has neither a name nor a model")
        for name in names:
            try:
                key = canonical_model_name(name)
            except ValueError:
                raise TagsError(f"models[{index}] has an invalid name: {name[:80]!r}") from None
            held[key] = Held(match.group(1), entry.size)
    return held


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
