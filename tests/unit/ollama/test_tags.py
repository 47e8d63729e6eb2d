"""exporter.ollama.tags: real `/api/tags` answers parse, hostile ones are one clear TagsError."""

from __future__ import annotations

import json

import pytest

from exporter.ollama.tags import MAX_TAGS_BYTES, Held, TagsError, parse_tags
from ollama_sim import HeldModel, tags_body

DIGEST = "a" * 64
# An answer as Ollama 0.33 sends it (fields it adds in newer releases are ignored).
REAL = (
    b'{"models":[{"name":"llama3.2:1b","model":"llama3.2:1b",'
    b'"modified_at":"2026-11-30T10:00:00.123456789+01:00","size":1321098329,'
    b'"digest":"baf6a787fdffd633537aa2eb51cfd54cb93ff08e28040095462bb63daf552878",'
    b'"details":{"parent_model":"","format":"gguf","family":"llama","families":["llama"],'
    b'"parameter_size":"1.2B","quantization_level":"Q8_0"},"capabilities":["completion"]},'
    b'{"name":"127.0.0.1:5000/team/tiny:v1","model":"127.0.0.1:5000/team/tiny:v1",'
    b'"modified_at":"2026-11-29T10:00:00Z","size":5,"digest":"' + DIGEST.encode() + b'",'
    b'"details":{}}]}'
)


def test_a_real_answer_is_keyed_by_canonical_name() -> None:
    held = parse_tags(REAL)
    assert held == {
        "registry.ollama.ai/library/llama3.2:1b": Held(
            "baf6a787fdffd633537aa2eb51cfd54cb93ff08e28040095462bb63daf552878", 1321098329
        ),
        "127.0.0.1:5000/team/tiny:v1": Held(DIGEST, 5),
    }


def test_the_simulators_answer_parses() -> None:
    body = tags_body([HeldModel("gemma3:latest", DIGEST, 7, 1_700_000_000.5)])
    assert parse_tags(body) == {"registry.ollama.ai/library/gemma3:latest": Held(DIGEST, 7)}


@pytest.mark.parametrize("models", [b"[]", b"null"])
def test_nothing_held(models: bytes) -> None:
    assert parse_tags(b'{"models":' + models + b"}") == {}


def test_a_prefixed_upper_case_digest_is_normalised() -> None:
    body = json.dumps({"models": [{"name": "m", "digest": "sha256:" + "AB" * 32, "size": 1}]})
    assert parse_tags(body.encode())["registry.ollama.ai/library/m:latest"].digest == "ab" * 32


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"<html>502 Bad Gateway</html>", "not JSON: "),
        (b"", "not JSON: "),
        (b'{"models": [', "not JSON: "),
        (b"[" * 100_000 + b"]" * 100_000, "unexpected JSON: Expected `object`"),
        (b'{"models": "none"}', "unexpected JSON: Expected `array | null`, got `str`"),
        (b'{"other": []}', "unexpected JSON: Object missing required field `models`"),
        (
            b'{"models": [{"name": "m", "digest": "' + DIGEST.encode() + b'", "size": "5"}]}',
            "unexpected JSON: Expected `int`, got `str` - at `$.models[0].size`",
        ),
        (
            b'{"models": [{"name": "m", "digest": "' + DIGEST.encode() + b'", "size": -1}]}',
            "unexpected JSON: Expected `int` >= 0 - at `$.models[0].size`",
        ),
        (
            b'{"models": [{"name": "m", "digest": 5, "size": 1}]}',
            "unexpected JSON: Expected `str`, got `int` - at `$.models[0].digest`",
        ),
        (
            b'{"models": [{"name": "m", "digest": "xyz", "size": 1}]}',
            "models[0].digest is not a sha256 digest: 'xyz'",
        ),
        (
            b'{"models": [{"digest": "' + DIGEST.encode() + b'", "size": 1}]}',
            "models[0] has neither a name nor a model",
        ),
        (
            b'{"models": [{"name": "m:", "digest": "' + DIGEST.encode() + b'", "size": 1}]}',
            "models[0] has an invalid name: 'm:'",
        ),
    ],
)
def test_bad_answers_say_why(body: bytes, message: str) -> None:
    with pytest.raises(TagsError) as caught:
        parse_tags(body)
    assert str(caught.value).startswith(message)


def test_a_huge_answer_is_refused_before_decoding() -> None:
    with pytest.raises(TagsError, match="answer larger than"):
        parse_tags(b" " * (MAX_TAGS_BYTES + 1))


def test_deep_nesting_inside_an_ignored_field_is_an_error_not_a_crash() -> None:
    entry = b'{"name": "m", "digest": "' + DIGEST.encode() + b'", "size": 1, "details": '
    body = b'{"models": [' + entry + b"[" * 100_000 + b"]" * 100_000 + b"}]}"
    with pytest.raises(TagsError, match="not JSON: maximum recursion depth exceeded"):
        parse_tags(body)
