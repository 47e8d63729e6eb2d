"""Decoding a `POST /api/pull` body the way Go's `json.Decoder` does, error texts included."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

_GO_WHITESPACE = " \t\r\n"
_PULL_FIELDS: Mapping[str, type] = {
    "model": str,
    "name": str,
    "insecure": bool,
    "stream": bool,
    "username": str,
    "password": str,
}


class _GoSyntaxError(ValueError):
    pass


def _go_quote_char(char: str) -> str:
    """Quote one offending byte like Go's `encoding/json.quoteChar`."""
    if char == "'":
        return "'\\''"
    if char == '"':
        return "'\"'"
    code = char.encode()[0]
    named = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r", 92: "\\\\"}
    if code in named:
        return f"'{named[code]}'"
    if code < 0x20 or code == 0x7F:
        return f"'\\x{code:02x}'"
    if 0x80 <= code <= 0xA0 or code == 0xAD:
        return f"'\\u{code:04x}'"
    return f"'{chr(code)}'"


def _reject_constant(name: str) -> object:
    # Python accepts NaN and Infinity; Go does not.
    if name.startswith("-"):
        raise _GoSyntaxError("invalid character 'I' in numeric literal")
    raise _GoSyntaxError(f"invalid character '{name[0]}' looking for beginning of value")


def _innermost_container(doc: str, pos: int) -> str:
    stack: list[str] = []
    in_string = escaped = False
    for char in doc[:pos]:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            stack.append(char)
        elif char in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else ""


def _literal_error(doc: str, pos: int) -> str | None:
    for literal in ("true", "false", "null"):
        if doc[pos] != literal[0]:
            continue
        for offset, expected in enumerate(literal):
            if pos + offset >= len(doc):
                return "unexpected EOF"
            if doc[pos + offset] != expected:
                bad = _go_quote_char(doc[pos + offset])
                return f"invalid character {bad} in literal {literal} (expecting '{expected}')"
    if doc[pos] == "-":
        if pos + 1 >= len(doc):
            return "unexpected EOF"
        return f"invalid character {_go_quote_char(doc[pos + 1])} in numeric literal"
    return None


def _go_syntax_message(doc: str, exc: json.JSONDecodeError) -> str:  # noqa: C901, PLR0911 - a table
    """Translate Python's JSON error into the text Go's `json.Decoder` gives."""
    pos, msg = exc.pos, exc.msg
    if pos >= len(doc) or msg.startswith("Unterminated string"):
        return "unexpected EOF"
    char = _go_quote_char(doc[pos])
    if msg == "Expecting value":
        return (
            _literal_error(doc, pos) or f"invalid character {char} looking for beginning of value"
        )
    if msg.startswith("Expecting property name"):
        return f"invalid character {char} looking for beginning of object key string"
    if msg == "Expecting ':' delimiter":
        return f"invalid character {char} after object key"
    if msg == "Expecting ',' delimiter":
        where = (
            "object key:value pair" if _innermost_container(doc, pos) == "{" else "array element"
        )
        return f"invalid character {char} after {where}"
    if msg.startswith("Invalid control character"):
        return f"invalid character {char} in string literal"
    if msg.startswith("Invalid \\uXXXX"):
        hex_digits = doc[pos + 2 : pos + 6]
        bad = next((c for c in hex_digits if c not in "0123456789abcdefABCDEF"), "")
        if not bad:
            return "unexpected EOF"
        return f"invalid character {_go_quote_char(bad)} in \\u hexadecimal character escape"
    if msg.startswith("Invalid \\escape"):
        if pos + 1 >= len(doc):
            return "unexpected EOF"
        return f"invalid character {_go_quote_char(doc[pos + 1])} in string escape code"
    return f"invalid character {char} looking for beginning of value"


def _go_json_type(value: object) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


@dataclass(frozen=True, slots=True)
class PullParams:
    """The fields of a pull request the simulator acts on."""

    model: str
    stream: bool


def decode_pull_request(raw: bytes) -> tuple[object, PullParams] | str:  # noqa: PLR0911
    """Decode a pull body like gin's `ShouldBindJSON` into `api.PullRequest` (§4, §6).

    Returns (decoded JSON, parameters) or the 400 error text.
    """
    doc = raw.decode("utf-8", errors="replace").lstrip(_GO_WHITESPACE)
    if not doc:
        return "missing request body"
    try:
        pairs, _ = json.JSONDecoder(
            object_pairs_hook=list, parse_constant=_reject_constant
        ).raw_decode(doc)
        value, _ = json.JSONDecoder().raw_decode(doc)
    except _GoSyntaxError as exc:
        return str(exc)
    except json.JSONDecodeError as exc:
        return _go_syntax_message(doc, exc)
    if value is None:
        return value, PullParams(model="", stream=True)
    if not isinstance(value, dict):
        kind = _go_json_type(value)
        return f"json: cannot unmarshal {kind} into Go value of type api.PullRequest"
    fields: dict[str, object] = {}
    for key, item in pairs:
        name = (
            key
            if key in _PULL_FIELDS
            else next((f for f in _PULL_FIELDS if f.lower() == key.lower()), None)
        )
        if name is None or item is None:
            continue
        expected = _PULL_FIELDS[name]
        matches = isinstance(item, bool) if expected is bool else isinstance(item, str)
        if not matches:
            kind, go_type = _go_json_type(item), "bool" if expected is bool else "string"
            return (
                f"json: cannot unmarshal {kind} into Go struct field"
                f" PullRequest.{name} of type {go_type}"
            )
        fields[name] = item
    model = str(fields.get("model") or fields.get("name") or "")
    return value, PullParams(model=model, stream=bool(fields.get("stream", True)))
