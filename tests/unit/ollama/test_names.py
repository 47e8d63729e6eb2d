"""Tests for exporter.ollama.names: the one model-name parser, and that its three users agree."""

from __future__ import annotations

import json

import pytest

from exporter.clients.registry import parse_reference
from exporter.config.loader import ConfigError, parse_config
from exporter.ollama.names import (
    ModelName,
    ModelNameError,
    canonical_model_name,
    parse_model_name,
)
from exporter.ollama.tags import parse_tags

DIGEST = "sha256:" + "ab" * 32

# (name as written, parts with Ollama's defaults applied, canonical form)
NAMES: list[tuple[str, ModelName, str]] = [
    (
        "llama3.2",
        ModelName("registry.ollama.ai", "library", "llama3.2", "latest"),
        "registry.ollama.ai/library/llama3.2:latest",
    ),
    (
        "llama3.2:1b",
        ModelName("registry.ollama.ai", "library", "llama3.2", "1b"),
        "registry.ollama.ai/library/llama3.2:1b",
    ),
    (
        "library/llama3.2:1b",
        ModelName("registry.ollama.ai", "library", "llama3.2", "1b"),
        "registry.ollama.ai/library/llama3.2:1b",
    ),
    (
        "registry.ollama.ai/library/llama3.2:1b",
        ModelName("registry.ollama.ai", "library", "llama3.2", "1b"),
        "registry.ollama.ai/library/llama3.2:1b",
    ),
    (
        "registry.example:5000/ns/m:tag",
        ModelName("registry.example:5000", "ns", "m", "tag"),
        "registry.example:5000/ns/m:tag",
    ),
    (
        "registry.example:5000/ns/m",  # the ":" of the port is not a tag
        ModelName("registry.example:5000", "ns", "m", "latest"),
        "registry.example:5000/ns/m:latest",
    ),
    (
        "https://registry.example:5000/ns/m:tag",  # the scheme is dropped
        ModelName("registry.example:5000", "ns", "m", "tag"),
        "registry.example:5000/ns/m:tag",
    ),
    (
        "http://127.0.0.1:5000/ns/m",
        ModelName("127.0.0.1:5000", "ns", "m", "latest"),
        "127.0.0.1:5000/ns/m:latest",
    ),
    (
        "team/Tiny:V1",  # the parts keep their case, the canonical form folds it
        ModelName("registry.ollama.ai", "team", "Tiny", "V1"),
        "registry.ollama.ai/team/tiny:v1",
    ),
    (
        "Llama3.2:LATEST",
        ModelName("registry.ollama.ai", "library", "Llama3.2", "LATEST"),
        "registry.ollama.ai/library/llama3.2:latest",
    ),
    (
        "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
        ModelName("hf.co", "bartowski", "Llama-3.2-1B-Instruct-GGUF", "Q4_K_M"),
        "hf.co/bartowski/llama-3.2-1b-instruct-gguf:q4_k_m",
    ),
    (
        # A digest pin has no syntax of its own: as in Ollama, the text after the last ":"
        # (the digest's hex) is the tag, so `model@sha256` is the model.
        f"llama3.2@{DIGEST}",
        ModelName("registry.ollama.ai", "library", "llama3.2@sha256", "ab" * 32),
        f"registry.ollama.ai/library/llama3.2@sha256:{'ab' * 32}",
    ),
]

# (name, the part that is empty)
BAD_NAMES: list[tuple[str, str]] = [
    ("", "model"),
    ("llama3.2:", "tag"),
    (":1b", "model"),
    ("/llama3.2", "namespace"),
    ("library/", "model"),
    ("library/:1b", "model"),
    ("/library/llama3.2", "host"),
    ("registry.example:5000//m", "namespace"),
    ("registry.example:5000/ns/", "model"),
    ("https://registry.example/ns/m:", "tag"),
]


@pytest.mark.parametrize(("name", "parts", "canonical"), NAMES)
def test_names_take_ollamas_defaults(name: str, parts: ModelName, canonical: str) -> None:
    assert parse_model_name(name) == parts
    assert parse_model_name(name).canonical == canonical_model_name(name) == canonical


@pytest.mark.parametrize(("name", "part"), BAD_NAMES)
def test_an_empty_part_is_refused_and_named(name: str, part: str) -> None:
    with pytest.raises(ModelNameError) as caught:
        parse_model_name(name)
    assert (caught.value.name, caught.value.part) == (name, part)
    assert str(caught.value) == f"invalid model name {json.dumps(name)}: the {part} is empty"
    assert isinstance(caught.value, ValueError)  # callers that only know ValueError catch it


@pytest.mark.parametrize(("name", "parts", "canonical"), NAMES)
def test_registry_check_reads_names_the_same_way(
    name: str, parts: ModelName, canonical: str
) -> None:
    reference = parse_reference(name)
    assert (reference.host, reference.namespace, reference.model, reference.tag) == (
        parts.host,
        parts.namespace,
        parts.model,
        parts.tag,
    )
    assert canonical.startswith(reference.host.casefold())


@pytest.mark.parametrize(("name", "part"), BAD_NAMES)
def test_registry_check_refuses_the_same_names(name: str, part: str) -> None:
    with pytest.raises(ValueError, match=rf"the {part} is empty$"):
        parse_reference(name)


@pytest.mark.parametrize(("name", "parts", "canonical"), NAMES)
def test_inventory_keys_are_the_canonical_names(
    name: str, parts: ModelName, canonical: str
) -> None:
    del parts
    body = json.dumps({"models": [{"name": name, "digest": "cd" * 32, "size": 1}]})
    assert list(parse_tags(body.encode())) == [canonical]


@pytest.mark.parametrize(("name", "part"), BAD_NAMES[1:])  # "" is another message: not empty
def test_config_refuses_the_same_names_with_the_line(name: str, part: str) -> None:
    text = f"servers:\n  - url: http://127.0.0.1:11434\n    models: [{json.dumps(name)}]\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "c.yaml", {})
    assert caught.value.errors == (
        f"c.yaml:3: servers[0].models[0]: invalid model name {json.dumps(name)}: "
        f"the {part} is empty",
    )


def test_config_treats_names_that_differ_in_case_or_defaults_as_one() -> None:
    text = (
        "servers:\n  - url: http://127.0.0.1:11434\n"
        "    models: [llama3.2, Library/Llama3.2:latest]\n"
    )
    with pytest.raises(ConfigError, match=r"duplicate model \"Library/Llama3.2:latest\""):
        parse_config(text, "c.yaml", {})
