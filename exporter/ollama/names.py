"""Ollama model names, read once and the way Ollama's ParseName reads them.

A name is `[scheme://][host/][namespace/]model[:tag]`; missing parts take Ollama's defaults
(registry.ollama.ai, library, latest). The config checks names with it, the inventory matches
`/api/tags` entries by its canonical form, and `mode: check` builds the manifest URL from its
parts, so all three agree on what a name means. Pure: no I/O, nothing of ours imported.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Final

DEFAULT_HOST: Final = "registry.ollama.ai"
DEFAULT_NAMESPACE: Final = "library"
DEFAULT_TAG: Final = "latest"
CANONICAL_CACHE_SIZE: Final = 4096
"""Names whose canonical form is remembered, the most recently used (about 0.5 MiB at most)."""


class ModelNameError(ValueError):
    """A part of the name is empty: `part` is "host", "namespace", "model" or "tag"."""

    def __init__(self, name: str, part: str) -> None:
        quoted = json.dumps(name, ensure_ascii=False)
        super().__init__(f"invalid model name {quoted}: the {part} is empty")
        self.name = name
        self.part = part


@dataclass(frozen=True, slots=True)
class ModelName:
    """A parsed name, Ollama's defaults applied; the parts keep the case they were written in."""

    host: str
    namespace: str
    model: str
    tag: str

    @property
    def canonical(self) -> str:
        """`host/namespace/model:tag`, casefolded: Ollama treats names case-insensitively."""
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}".casefold()


def parse_model_name(name: str) -> ModelName:
    """Split `name` as Ollama's ParseName does; a `scheme://` prefix is dropped.

    Raises ModelNameError when a written part is empty (e.g. "gemma3:" or "/gemma3").
    """
    rest, host, namespace, tag = name, DEFAULT_HOST, DEFAULT_NAMESPACE, DEFAULT_TAG
    if rest.rfind(":") > rest.rfind("/"):  # "/" cannot appear in a tag, ":" can in a host
        rest, tag = _cut_last(name, rest, ":", ("model", "tag"))
    model = rest
    if "/" in rest:
        rest, model = _cut_last(name, rest, "/", ("namespace", "model"))
        namespace = rest
        if "/" in rest:
            rest, namespace = _cut_last(name, rest, "/", ("host", "namespace"))
            scheme, sep, after = rest.partition("://")
            host = (after if sep else scheme) or host
    if not model:
        raise ModelNameError(name, "model")
    return ModelName(host, namespace, model, tag)


@functools.lru_cache(maxsize=CANONICAL_CACHE_SIZE)
def canonical_model_name(name: str) -> str:
    """`host/namespace/model:tag`, casefolded, as Ollama's ParseName reads `name`.

    Remembered: every `/api/tags` answer (one after each successful run) names the same
    models again, and the inventory matches each configured model against it. An invalid
    name raises every time (lru_cache keeps no exceptions).
    """
    return parse_model_name(name).canonical


def _cut_last(name: str, text: str, sep: str, parts: tuple[str, str]) -> tuple[str, str]:
    before, _, after = text.rpartition(sep)
    for part, value in zip(parts, (before, after), strict=True):
        if not value:
            raise ModelNameError(name, part)
    return before, after
