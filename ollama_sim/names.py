"""Ollama's model names: validation as `model.ParseName` does it, short forms, digests."""

from __future__ import annotations

import hashlib

_MISSING = "!MISSING!"
_DEFAULT_HOST = "registry.ollama.ai"
_DEFAULT_NAMESPACE = "library"
_DEFAULT_TAG = "latest"


def _cut_promised(text: str, sep: str) -> tuple[str, str, bool]:
    index = text.rfind(sep)
    if index < 0:
        return text, "", False
    return text[:index] or _MISSING, text[index + 1 :] or _MISSING, True


def _name_parts(name: str) -> tuple[str, str, str, str]:
    """Split like `types/model/name.go (ParseNameBare)`, then fill Ollama's defaults."""
    rest, tag = name, ""
    if rest.rfind(":") > rest.rfind("/"):
        rest, tag, _ = _cut_promised(rest, ":")
    rest, model, promised = _cut_promised(rest, "/")
    namespace = host = ""
    if not promised:
        model = rest
    else:
        rest, namespace, promised = _cut_promised(rest, "/")
        if not promised:
            namespace = rest
        else:
            scheme, sep, host = rest.partition("://")
            host = host if sep else scheme
    return (host or _DEFAULT_HOST, namespace or _DEFAULT_NAMESPACE, model, tag or _DEFAULT_TAG)


def name_parts(name: str) -> tuple[str, str, str, str]:
    """(host, namespace, model, tag) of `name` with Ollama's defaults, case kept."""
    return _name_parts(name)


def _valid_part(kind: str, part: str) -> bool:
    limit = 350 if kind == "host" else 80
    if not 1 <= len(part) <= limit:
        return False
    if not (part[0].isascii() and (part[0].isalnum() or part[0] == "_")):
        return False
    for char in part[1:]:
        if char in "_-":
            continue
        if char == ".":
            if kind == "namespace":
                return False
        elif char == ":":
            if kind != "host":
                return False
        elif not (char.isascii() and (char.isalnum() or char == "_")):
            return False
    return True


def model_name_error(name: str) -> str | None:
    """Return the 400 error text Ollama gives for `name`, or None if it is valid (§4, §6)."""
    if name.endswith(":cloud") and name[: -len(":cloud")].endswith(":local"):
        return f'use either :local or :cloud, not both: "{name}"'
    if not name:
        return "invalid model name"
    parts = _name_parts(name)
    kinds = ("host", "namespace", "model", "tag")
    if all(_valid_part(kind, part) for kind, part in zip(kinds, parts, strict=True)):
        return None
    return "invalid model name"


def canonical_model(name: str) -> str:
    """Return Ollama's short form of `name`, tag included, lower-cased.

    `gemma3`, `gemma3:latest` and `registry.ollama.ai/library/gemma3:latest` all give
    `gemma3:latest`; `llama3.2:1b` stays `llama3.2:1b`. Runs are looked up by this key.
    """
    if model_name_error(name) is not None:
        return name.lower()
    host, namespace, model, tag = _name_parts(name)
    if host.lower() != _DEFAULT_HOST:
        short = f"{host}/{namespace}/{model}:{tag}"
    elif namespace.lower() != _DEFAULT_NAMESPACE:
        short = f"{namespace}/{model}:{tag}"
    else:
        short = f"{model}:{tag}"
    return short.lower()


def layer_digest(model: str, index: int) -> str:
    """Return the deterministic digest of layer `index` (0-based) of `model`."""
    key = f"{canonical_model(model)}:{index}"
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()
