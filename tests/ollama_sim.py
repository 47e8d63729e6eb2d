"""A simulated Ollama server for tests and benchmarks: `POST /api/pull` driven by scenario data.

The simulator is an aiohttp application on a real socket. Every stream it sends follows
`shared/reference/ollama-pull-protocol.md` (section numbers below refer to it):

- Lines are compact JSON plus `\\n`, one HTTP chunk per line, keys in Go's field order `status`,
  `digest`, `total`, `completed`; the last three are `omitempty`, so a 0 is left out (§1).
  Strings are escaped like Go's `encoding/json`: `&`, `<`, `>` become `\\u0026`, `\\u003c`,
  `\\u003e`, and U+2028/U+2029 are escaped too (§1, fixture 4 of §10).
- Streaming answers are `200`, `Content-Type: application/x-ndjson`, `Transfer-Encoding:
  chunked`, with no heartbeat (§9). `pulling manifest` is always the first line (§1a).
- Legacy downloader (§1a, §3): layers one at a time, a 60 ms ticker reports the blob's
  cumulative `completed`; the first ticks usually carry only `total` (no bytes yet); there is
  no final 100% line, so the last line of a downloaded layer has `completed < total`, and a
  blob that finishes within the first tick has no line at all. A blob already on disk gives
  exactly one immediate line with `completed == total` (§2); a resumed blob starts at the
  bytes on disk (§2); a failed part rolls `completed` back (§3).
- `verifying sha256 digest` is followed by silence (§1a.3); `writing manifest`; the optional
  prune line in its current, legacy and failure forms (§1a.5); `success` (§1a.6).
- Errors (§4): before streaming a real status with `{"error":...}` (`400` with
  `application/json; charset=utf-8`, `500` with `application/json`, `403` with an empty
  body, `405 method not allowed` as text); during streaming one `{"error":...}` line on the
  `200` stream, then the stream ends. An unknown model gives `pulling manifest` then
  `pull model manifest: file does not exist`. Request bodies are decoded like Go's
  `json.Decoder` (empty body: `missing request body`; Go's syntax and type error texts).
- Request fields (§6): `model`, else the legacy `name`; Go matches JSON keys
  case-insensitively; `stream` absent or null means streaming. `stream: false` buffers the
  run and answers `200 {"status":"success"}` or `500 {"error":...}` as `application/json` (§5).
- x/transfer path (§1c): `pulling model` lines with the literal digest `sha256:model`, one per
  32 KiB read, aggregate `total`/`completed`, no verify or prune line.
- client2 path (§1c): progress lines with no `status` key, every 100 ms one line per layer,
  layers in parallel, a final flush with every layer complete.
- `GET /api/version` answers `{"version":"0.33.0"}`, `GET /` answers `Ollama is running` (§7).

Scenarios are data: a `Scenario` is a tuple of frozen `Step`s. Every delay, tick and silence
is multiplied by the simulator's `time_scale` (1.0 = real Ollama timing), while the bytes per
tick come from the unscaled rate, so the lines of a scenario do not depend on the time scale.
A slow reader delays lines instead of dropping ticks (§3), which keeps line counts exact.
Layer digests are deterministic: `sha256(f"{model}:{index}")`, `model` in Ollama's short form
with its tag (`llama3.2:1b`, `gemma3:latest`). Run standalone with
`python -m tests.ollama_sim --port 0 --scenarios FILE.json --time-scale 0.1`.
"""

from __future__ import annotations

import abc
import argparse
import asyncio
import base64
import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import math
import re
import signal
import socket
import struct
import sys
import threading
import time
import types
import typing
from collections.abc import Mapping  # noqa: TC003 - typing.get_type_hints resolves it at runtime
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

if typing.TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

__all__ = [
    "CLIENT2_TICK",
    "DEFAULT_RATE",
    "NOT_FOUND",
    "PRUNE",
    "PRUNE_LEGACY",
    "TICK",
    "TRANSFER_CHUNK",
    "Bulk",
    "Client2Layers",
    "Disconnect",
    "ErrorLine",
    "HttpError",
    "Layer",
    "Manifest",
    "OllamaSimulator",
    "Prune",
    "Raw",
    "RequestRecord",
    "Scenario",
    "ScenarioError",
    "ScenarioFile",
    "Sleep",
    "Stall",
    "Step",
    "Success",
    "TransferModel",
    "Verify",
    "Write",
    "bulk_pull",
    "canonical_model",
    "client2_pull",
    "download_error",
    "error_after_manifest",
    "error_after_verify",
    "fresh_pull",
    "go_json",
    "interrupted",
    "layer_digest",
    "load_scenario_file",
    "not_found",
    "parse_scenario_file",
    "partly_present",
    "pre_stream_error",
    "progress_line",
    "prune_failed",
    "resumed",
    "scenario_from_json",
    "serve_until_signal",
    "stalled",
    "transfer_pull",
    "up_to_date",
]

TICK = 0.06
"""Seconds between two progress lines of the legacy downloader (`blobDownload.Wait`, §1a)."""
CLIENT2_TICK = 0.1
"""Seconds between two progress flushes of the client2 path (§1c)."""
TRANSFER_CHUNK = 32 * 1024
"""Bytes per body read, hence per line, on the x/transfer path (§1c)."""
DEFAULT_RATE = 100_000_000.0
"""Default download rate in bytes per second (about 6 MB per tick, as in issue #4417, §3)."""
NOT_FOUND = "pull model manifest: file does not exist"
"""The error line for a model the registry does not know (§4)."""
PRUNE = "removing unused layers"
"""The prune line since v0.3.7 (§1a.5)."""
PRUNE_LEGACY = "removing any unused layers"
"""The prune line up to v0.3.6, sent on every pull (§1a.5)."""

_JSON_UTF8 = "application/json; charset=utf-8"
_NDJSON = "application/x-ndjson"


def prune_failed(err: str) -> str:
    """Return the status line Ollama sends when deleting unused layers fails (§1a.5)."""
    return f"couldn't remove unused layers: {err}"


class ScenarioError(ValueError):
    """A scenario (or scenario file) that cannot be played."""


# --------------------------------------------------------------------------- Go JSON output

_SURROGATES = re.compile("[\ud800-\udfff]")
_HTML_ESCAPES = str.maketrans(
    {"&": "\\u0026", "<": "\\u003c", ">": "\\u003e", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def _go_escape(encoded: str) -> str:
    # Applied to json.dumps output: these characters can only occur inside strings there.
    return _SURROGATES.sub("\ufffd", encoded).translate(_HTML_ESCAPES)


def go_json(value: object) -> bytes:
    """Encode `value` like Go's `json.Marshal`: compact, UTF-8, HTML characters escaped."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return _go_escape(text).encode()


def progress_line(
    status: str | None, digest: str = "", total: int = 0, completed: int = 0
) -> bytes:
    """Render one `api.ProgressResponse` line, newline included.

    `status=None` leaves the key out (the client2 shape); `digest`, `total` and `completed`
    are `omitempty`, so empty or zero values are left out.
    """
    parts: list[str] = []
    if status is not None:
        parts.append('"status":' + _go_escape(json.dumps(status, ensure_ascii=False)))
    if digest:
        parts.append('"digest":' + _go_escape(json.dumps(digest, ensure_ascii=False)))
    if total:
        parts.append(f'"total":{total}')
    if completed:
        parts.append(f'"completed":{completed}')
    return ("{" + ",".join(parts) + "}\n").encode()


def _status(text: str) -> bytes:
    return progress_line(text)


# --------------------------------------------------------------------------- model names

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


def _name_error(name: str) -> str | None:
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
    if _name_error(name) is not None:
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


# --------------------------------------------------------------------------- Go JSON input

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


def _go_syntax_message(doc: str, exc: json.JSONDecodeError) -> str:  # noqa: PLR0911 - a table
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
class _PullParams:
    model: str
    stream: bool


def _decode_pull_request(raw: bytes) -> tuple[object, _PullParams] | str:  # noqa: PLR0911
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
        return value, _PullParams(model="", stream=True)
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
            return f"json: cannot unmarshal {kind} into Go struct field PullRequest.{name} of type {go_type}"
        fields[name] = item
    model = str(fields.get("model") or fields.get("name") or "")
    return value, _PullParams(model=model, stream=bool(fields.get("stream", True)))


# --------------------------------------------------------------------------- playback actions


@dataclass(frozen=True, slots=True)
class _Emit:
    data: bytes


@dataclass(frozen=True, slots=True)
class _Wait:
    seconds: float  # unscaled


@dataclass(frozen=True, slots=True)
class _WaitForever:
    pass


@dataclass(frozen=True, slots=True)
class _Abort:
    reset: bool


@dataclass(frozen=True, slots=True)
class _Respond:
    status: int
    body: bytes
    content_type: str | None
    location: str | None = None


_Action = _Emit | _Wait | _WaitForever | _Abort | _Respond


@dataclass(slots=True)
class _Context:
    model: str
    next_index: int = 0

    def take_digest(self, explicit: str | None) -> str:
        index = self.next_index
        self.next_index += 1
        return explicit or layer_digest(self.model, index)


@dataclass(frozen=True, slots=True)
class _LayerView:
    """What a client sees of one layer: its size and the `completed` value of each line."""

    size: int
    values: tuple[int, ...]
    finished: bool

    def downloaded(self) -> tuple[int, int]:
        """Return (bytes, regressions) as contract §3 counts them from these lines."""
        if not self.values or self.values[0] >= self.size:
            return 0, 0
        grown = regressions = 0
        previous = self.values[0]
        for value in self.values[1:]:
            if value >= previous:
                grown += value - previous
            else:
                regressions += 1
            previous = value
        if self.finished and previous < self.size:
            grown += self.size - previous
        return grown, regressions


# --------------------------------------------------------------------------- steps


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ScenarioError(message)


def _check_seconds(value: float, name: str) -> None:
    _check(math.isfinite(value) and value >= 0, f"{name} must be a finite number >= 0")


class Step(abc.ABC):
    """One step of a scenario. Subclasses are frozen dataclasses; `kind` names them in JSON."""

    __slots__ = ()
    kind: ClassVar[str]
    streams: ClassVar[bool] = True  # False for steps allowed before an HttpError
    terminal: ClassVar[bool] = False  # nothing may follow it

    @abc.abstractmethod
    def _actions(self, ctx: _Context) -> Iterator[_Action]: ...

    def _layers(self, ctx: _Context) -> list[_LayerView]:
        del ctx
        return []

    def _nominal_seconds(self) -> float:
        return 0.0

    def to_json(self) -> dict[str, object]:
        """Return this step as a JSON object of the scenario file format."""
        out: dict[str, object] = {"step": self.kind}
        for item in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, item.name)
            if value != item.default:
                out[item.name] = list(value) if isinstance(value, tuple) else value
        return out


@dataclass(frozen=True, slots=True)
class Manifest(Step):
    """`pulling manifest` after `delay` seconds, then `fetch` seconds of silence (§1a.1)."""

    kind: ClassVar[str] = "manifest"
    delay: float = 0.0
    fetch: float = 0.0

    def __post_init__(self) -> None:
        _check_seconds(self.delay, "manifest delay")
        _check_seconds(self.fetch, "manifest fetch")

    def _actions(self, ctx: _Context) -> Iterator[_Action]:
        del ctx
        if self.delay:
            yield _Wait(self.delay)
        yield _Emit(_status("pulling manifest"))
        if self.fetch:
            yield _Wait(self.fetch)

    def _nominal_seconds(self) -> float:
        return self.delay + self.fetch


@dataclass(frozen=True, slots=True)
class Layer(Step):
    """One blob through the legacy downloader (§1a.2, §2, §3).

    `rate` (bytes per second; default `DEFAULT_RATE`) or `ticks` (the transfer spans that many
    60 ms ticks) sets the bytes per tick. `latency_ticks` ticks pass before bytes flow (lines
    with `completed` at `resume_from`, absent while 0); by default 1, or 0 for a blob that
    fits in one tick, which therefore has no line at all. When the blob completes, no line is
    sent. `present` gives one immediate line with `completed == total` instead. `rollback_at`
    (a `completed` value) makes the next tick show `rollback_bytes` fewer bytes, once.
    `stop_after` cuts the layer after that many lines; the next step follows at once.
    """

    kind: ClassVar[str] = "layer"
    size: int
    rate: float | None = None
    ticks: int | None = None
    resume_from: int = 0
    present: bool = False
    rollback_at: int | None = None
    rollback_bytes: int = 0
    digest: str | None = None
    latency_ticks: int | None = None
    stop_after: int | None = None

    def __post_init__(self) -> None:
        _check(self.size > 0, "layer size must be > 0")
        _check(self.rate is None or self.ticks is None, "give a layer rate or ticks, not both")
        _check(self.rate is None or self.rate > 0, "layer rate must be > 0")
        _check(self.ticks is None or self.ticks >= 1, "layer ticks must be >= 1")
        _check(0 <= self.resume_from < self.size, "layer resume_from must be in [0, size)")
        _check(self.rollback_bytes >= 0, "layer rollback_bytes must be >= 0")
        _check(
            self.rollback_at is None or 0 < self.rollback_at < self.size,
            "layer rollback_at must be in (0, size)",
        )
        _check(self.latency_ticks is None or self.latency_ticks >= 0, "latency_ticks must be >= 0")
        _check(self.stop_after is None or self.stop_after >= 0, "stop_after must be >= 0")
        _check(
            self.digest is None or re.fullmatch(r"sha256:[0-9a-f]{64}", self.digest) is not None,
            "layer digest must be sha256:<64 lowercase hex>",
        )

    @property
    def step_bytes(self) -> int:
        """Bytes added per 60 ms tick."""
        remaining = self.size - self.resume_from
        if self.ticks is not None:
            return math.ceil(remaining / self.ticks)
        rate = DEFAULT_RATE if self.rate is None else self.rate
        return max(1, round(rate * TICK))

    def _schedule(self) -> tuple[tuple[int, ...], float]:
        """Return the `completed` value of each ticker line and when the blob is done, in ticks."""
        step = self.step_bytes
        latency = self.latency_ticks
        if latency is None:
            latency = 0 if self.size - self.resume_from <= step else 1
        values = [self.resume_from] * latency
        completed, tick, rolled = self.resume_from, latency, False
        while completed + step < self.size:
            completed += step
            tick += 1
            values.append(completed)
            if not rolled and self.rollback_at is not None and completed >= self.rollback_at:
                rolled = True
                completed = max(0, completed - self.rollback_bytes)
                tick += 1
                values.append(completed)
        return tuple(values), tick + (self.size - completed) / step

    def wire_values(self) -> tuple[int, ...]:
        """Return the `completed` value of each line this layer sends (0: key absent)."""
        if self.present:
            return (self.size,)
        values, _ = self._schedule()
        return values if self.stop_after is None else values[: self.stop_after]

    def _actions(self, ctx: _Context) -> Iterator[_Action]:
        digest = ctx.take_digest(self.digest)
        status = f"pulling {digest[7:19]}"
        if self.present:
            yield _Emit(progress_line(status, digest, self.size, self.size))
            return
        values, done_at = self._schedule()
        if self.stop_after is not None:
            values = values[: self.stop_after]
        for value in values:
            yield _Wait(TICK)
            yield _Emit(progress_line(status, digest, self.size, value))
        if self.stop_after is None:
            yield _Wait((done_at - len(values)) * TICK)

    def _layers(self, ctx: _Context) -> list[_LayerView]:
        ctx.take_digest(self.digest)
        return [_LayerView(self.size, self.wire_values(), finished=self.stop_after is None)]

    def _nominal_seconds(self) -> float:
        if self.present:
            return 0.0
        values, done_at = self._schedule()
        ticks = done_at if self.stop_after is None else min(len(values), self.stop_after)
        return ticks * TICK


@dataclass(frozen=True, slots=True)
class Verify(Step):
    """`verifying sha256 digest`, then `silence` seconds with no bytes (§1a.3)."""

    kind: ClassVar[str] = "verify"
    silence: float = 0.0

    def __post_init__(self) -> None:
        _check_seconds(self.silence, "verify silence")

    def _actions(self, ctx: _Context) -> Iterator[_Action]:
        del ctx
        yield _Emit(_status("verifying sha256 digest"))
        if self.silence:
            yield _Wait(self.silence)

    def _nominal_seconds(self) -> float:
        return self.silence


@dataclass(frozen=True, slots=True)
class Write(Step):
    """`writing manifest` (§1a.4)."""

    kind: ClassVar[str] = "write"

    def _actions(self, ctx: _Context) -> Iterator[_Action]:
        del ctx
        yield _Emit(_status("writing manifest"))


@dataclass(frozen=True, slots=True)
class Prune(Step):
    """A prune status line: `PRUNE`, `PRUNE_LEGACY` or `prune_failed(err)` (§1a.5)."""

    kind: ClassVar[str] = "prune"
    text: str = PRUNE

    def _actions(self, ctx: _Context) -> Iterator[_Action]:
        del ctx
        yield _Emit(_status(self.text))


@dataclass(frozen=True, slots=True)
class Success(Step):
    """`success`; the stream closes `linger` seconds later (`refreshModelListCache`, §1a.6)."""

    kind: ClassVar[str] = "success"
    terminal: ClassVar[bool] = True
    linger: float = 0.0

    def __post_init__(self) -> None:
        _check_seconds(self.linger, "success linger")

    def _actions(self, ctx: _Context) -> Iterator[_Action]:
        del ctx
        yield _Emit(_status("success"))
        if self.linger:
            yield _Wait(self.linger)

    def _nominal_seconds(self) -> float:
        return self.linger


@dataclass(frozen=True, slots=True)
class ErrorLine(Step):
    """One `{"error": text}` line on the 200 stream, which then ends cleanly (§4)."""

    kind: ClassVar[str] = "error"
    terminal: ClassVar[bool] = True
    text: str

    def _actions(self, ctx: _Context) -> Iterator[_Action]:
        del ctx
        yield _Emit(go_json({"error": self.text}) + b"\n")


@dataclass(frozen=True, slots=True)
class HttpError(Step):
    """A pre-stream answer with a real status (§4); only Sleep may come before it.

    `body`: a mapping is sent as Go JSON (default type `application/json; charset=utf-8`),
    a string as UTF-8 text (default `text/plain; charset=utf-8`), None as an empty body with
    no Content-Type (the 403 of `allowedHostsMiddleware`). Real Ollama never redirects;
    a 3xx with `location` stands for a misconfigured reverse proxy in front of it.
    """

    kind: ClassVar[str] = "http_error"
    streams: ClassVar[bool] = False
    terminal: ClassVar[bool] = True
    status: int
    body: str | Mapping[str, object] | None = None
    content_type: str | None = None
    location: str | None = None

    def __post_init__(self) -> None:
        _check(300 <= self.status <= 599, "http_error status must be 3xx, 4xx or 5xx")

    def _actions(self, ctx: _Context) -> Iterator[_Action]:
        del ctx
        if self.body is None:
            yield _Respond(self.status, b"", self.content_type, self.location)
        elif isinstance(self.body, str):
            yield _Respond(
                self.status,
                self.body.encode(),
                self.content_type or "text/plain; charset=utf-8",
                self.location,
            )
        else:
            yield _Respond(
                self.status,
                go_json(dict(self.body)),
                self.content_type or _JSON_UTF8,
                self.location,
            )


@dataclass(frozen=True, slots=True)
class Disconnect(Step):
    """Close the connection mid-stream: no terminating chunk (`reset`: send a TCP RST)."""

    kind: ClassVar[str] = "disconnect"
    terminal: ClassVar[bool] = True
    reset: bool = False

    def _actions(self, ctx: _Context) -> Iterator[_Action]:
        del ctx
        yield _Abort(self.reset)


@dataclass(frozen=True, slots=True)
class Stall(Step):
    """No bytes for `seconds` (None: until the client leaves or the simulator stops)."""

    kind: ClassVar[str] = "stall"
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.seconds is not None:
            _check_seconds(self.seconds, "stall seconds")

    def _actions(self, ctx: _Context) -> Iterator[_Action]:
        del ctx
        yield _WaitForever() if self.seconds is None else _Wait(self.seconds)

    def _nominal_seconds(self) -> float:
        return math.inf if self.seconds is None else self.seconds


@dataclass(frozen=True, slots=True)
class Sleep(Step):
    """Wait `seconds` with no bytes; allowed before an HttpError (request latency)."""

    kind: ClassVar[str] = "sleep"
    streams: ClassVar[bool] = False
    seconds: float

    def __post_init__(self) -> None:
        _check_seconds(self.seconds, "sleep seconds")

    def _actions(self, ctx: _Context) -> Iterator[_Action]:
        del ctx
        yield _Wait(self.seconds)

    def _nominal_seconds(self) -> float:
        return self.seconds


@dataclass(frozen=True, slots=True)
class Raw(Step):
    """Write arbitrary bytes as one chunk (hostile streams: no newline, bad UTF-8, HTML...)."""

    kind: ClassVar[str] = "raw"
    data: bytes

    def _actions(self, ctx: _Context) -> Iterator[_Action]:
        del ctx
        yield _Emit(self.data)

    def to_json(self) -> dict[str, object]:
        """Return this step as JSON, its bytes in base64."""
        return {"step": self.kind, "base64": base64.b64encode(self.data).decode()}


@dataclass(frozen=True, slots=True)
class TransferModel(Step):
    """The x/transfer path (§1c): one `pulling model` line per `chunk` bytes read.

    `rate` (bytes per second) paces the lines; None sends them as fast as the socket takes.
    `present` (every blob already on disk) sends no line at all.
    """

    kind: ClassVar[str] = "transfer_model"
    total: int
    chunk: int = TRANSFER_CHUNK
    rate: float | None = None
    present: bool = False
    rollback_at: int | None = None
    rollback_bytes: int = 0

    def __post_init__(self) -> None:
        _check(self.total > 0, "transfer_model total must be > 0")
        _check(self.chunk > 0, "transfer_model chunk must be > 0")
        _check(self.rate is None or self.rate > 0, "transfer_model rate must be > 0")
        _check(
            self.rollback_at is None or 0 < self.rollback_at < self.total,
            "transfer_model rollback_at must be in (0, total)",
        )

    def wire_values(self) -> tuple[int, ...]:
        """Return the aggregate `completed` of each line."""
        if self.present:
            return ()
        values: list[int] = []
        completed, rolled = 0, False
        while completed < self.total:
            completed = min(completed + self.chunk, self.total)
            values.append(completed)
            if not rolled and self.rollback_at is not None and completed >= self.rollback_at:
                rolled = True
                completed = max(0, completed - self.rollback_bytes)
                values.append(completed)
        return tuple(values)

    def _actions(self, ctx: _Context) -> Iterator[_Action]:
        del ctx
        pause = self.chunk / self.rate if self.rate else 0.0
        for value in self.wire_values():
            if pause:
                yield _Wait(pause)
            yield _Emit(progress_line("pulling model", "sha256:model", self.total, value))

    def _layers(self, ctx: _Context) -> list[_LayerView]:
        del ctx
        return [_LayerView(self.total, self.wire_values(), finished=True)]

    def _nominal_seconds(self) -> float:
        return len(self.wire_values()) * self.chunk / self.rate if self.rate else 0.0


@dataclass(frozen=True, slots=True)
class Client2Layers(Step):
    """The client2 path (§1c): no `status` key, every 100 ms one line per layer, in parallel.

    An initial flush (nothing downloaded yet), one flush per tick, and a final flush with
    every layer complete. Each flush is one write. `rate` is per layer, in bytes per second.
    """

    kind: ClassVar[str] = "client2_layers"
    sizes: tuple[int, ...]
    rate: float = DEFAULT_RATE

    def __post_init__(self) -> None:
        object.__setattr__(self, "sizes", tuple(self.sizes))
        _check(bool(self.sizes) and all(s > 0 for s in self.sizes), "client2 sizes must be > 0")
        _check(self.rate > 0, "client2 rate must be > 0")

    def _flushes(self) -> tuple[list[tuple[int, ...]], float]:
        step = max(1, round(self.rate * CLIENT2_TICK))
        done_at = max(self.sizes) / step
        flushes = [tuple(0 for _ in self.sizes)]
        tick = 1
        while tick < done_at:
            flushes.append(tuple(min(tick * step, size) for size in self.sizes))
            tick += 1
        flushes.append(self.sizes)
        return flushes, done_at

    def _actions(self, ctx: _Context) -> Iterator[_Action]:
        digests = [ctx.take_digest(None) for _ in self.sizes]
        flushes, done_at = self._flushes()
        for number, values in enumerate(flushes):
            if number == len(flushes) - 1:
                yield _Wait((done_at - (number - 1)) * CLIENT2_TICK)
            elif number:
                yield _Wait(CLIENT2_TICK)
            lines = (
                progress_line(None, digest, size, value)
                for digest, size, value in zip(digests, self.sizes, values, strict=True)
            )
            yield _Emit(b"".join(lines))

    def _layers(self, ctx: _Context) -> list[_LayerView]:
        flushes, _ = self._flushes()
        views = []
        for index, size in enumerate(self.sizes):
            ctx.take_digest(None)
            views.append(_LayerView(size, tuple(f[index] for f in flushes), finished=True))
        return views

    def _nominal_seconds(self) -> float:
        return self._flushes()[1] * CLIENT2_TICK


@dataclass(frozen=True, slots=True)
class Bulk(Step):
    """`lines` real-shaped `pulling <12hex>` lines over `layers` layers, no ticker, for speed.

    Each layer's first line has no `completed` and its last has `completed < total` (§1a).
    `batch` lines go in one write. A layer's size is `layer_size`, by default 1 MB per line.
    """

    kind: ClassVar[str] = "bulk"
    lines: int
    layers: int = 1
    layer_size: int | None = None
    batch: int = 512

    def __post_init__(self) -> None:
        _check(self.layers >= 1, "bulk layers must be >= 1")
        _check(self.lines >= self.layers, "bulk lines must be >= layers")
        _check(self.batch >= 1, "bulk batch must be >= 1")
        _check(self.layer_size is None or self.layer_size > 0, "bulk layer_size must be > 0")

    def _plan(self) -> list[tuple[int, int]]:
        """Return (lines, size) per layer."""
        base, extra = divmod(self.lines, self.layers)
        plan = []
        for index in range(self.layers):
            count = base + (1 if index < extra else 0)
            plan.append((count, self.layer_size or count * 1_000_000))
        return plan

    def _actions(self, ctx: _Context) -> Iterator[_Action]:
        pending: list[bytes] = []
        for count, size in self._plan():
            digest = ctx.take_digest(None)
            head = f'{{"status":"pulling {digest[7:19]}","digest":"{digest}","total":{size}'
            for number in range(count):
                completed = size * number // count
                tail = f',"completed":{completed}}}\n' if completed else "}\n"
                pending.append((head + tail).encode())
                if len(pending) >= self.batch:
                    yield _Emit(b"".join(pending))
                    pending.clear()
        if pending:
            yield _Emit(b"".join(pending))

    def _layers(self, ctx: _Context) -> list[_LayerView]:
        views = []
        for count, size in self._plan():
            ctx.take_digest(None)
            values = tuple(size * number // count for number in range(count))
            views.append(_LayerView(size, values, finished=True))
        return views


_STEP_TYPES: dict[str, type[Step]] = {
    cls.kind: cls
    for cls in (
        Manifest,
        Layer,
        Verify,
        Write,
        Prune,
        Success,
        ErrorLine,
        HttpError,
        Disconnect,
        Stall,
        Raw,
        Sleep,
        TransferModel,
        Client2Layers,
        Bulk,
    )
}


# --------------------------------------------------------------------------- scenarios


class Scenario:
    """One run of `POST /api/pull`: the steps the simulator plays, in order."""

    __slots__ = ("name", "steps")

    def __init__(self, *steps: Step, name: str = "") -> None:
        self.steps: tuple[Step, ...] = steps
        self.name = name
        started = False
        for position, step in enumerate(steps):
            if not isinstance(step, Step):
                raise ScenarioError(f"step {position}: not a Step: {step!r}")
            if step.terminal and position != len(steps) - 1:
                raise ScenarioError(f"step {position}: nothing may follow {step.kind}")
            if isinstance(step, Stall) and step.seconds is None and position != len(steps) - 1:
                raise ScenarioError(f"step {position}: nothing may follow an endless stall")
            if isinstance(step, HttpError) and started:
                raise ScenarioError(f"step {position}: http_error after the stream started")
            started = started or step.streams

    def __repr__(self) -> str:
        label = f", name={self.name!r}" if self.name else ""
        return f"Scenario({', '.join(map(repr, self.steps))}{label})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Scenario):
            return NotImplemented
        return self.steps == other.steps and self.name == other.name

    __hash__ = None  # type: ignore[assignment]

    def _actions(self, model: str) -> Iterator[_Action]:
        ctx = _Context(canonical_model(model))
        for step in self.steps:
            yield from step._actions(ctx)

    def _layer_views(self) -> list[_LayerView]:
        ctx = _Context("")
        return [view for step in self.steps for view in step._layers(ctx)]

    @property
    def layer_sizes(self) -> tuple[int, ...]:
        """Sizes of every layer the scenario defines, in order (`pulling model` counts as one)."""
        return tuple(view.size for view in self._layer_views())

    @property
    def succeeds(self) -> bool:
        """True if the run ends with `success`."""
        return bool(self.steps) and isinstance(self.steps[-1], Success)

    @property
    def streams(self) -> bool:
        """False if the run answers with a pre-stream HttpError."""
        return not any(isinstance(step, HttpError) for step in self.steps)

    def expected_total(self) -> int:
        """Sum of the sizes of the layers that appear on the wire (blobs with no line don't)."""
        return sum(view.size for view in self._layer_views() if view.values)

    def expected_downloaded(self) -> int:
        """Downloaded bytes as contract §3 counts them from the lines (a later line assumed)."""
        return sum(view.downloaded()[0] for view in self._layer_views())

    def expected_regressions(self) -> int:
        """Times `completed` goes backwards for a layer."""
        return sum(view.downloaded()[1] for view in self._layer_views())

    def digests(self, model: str) -> tuple[str, ...]:
        """Digests of the layers (not `sha256:model`) for a pull of `model`, in order."""
        ctx = _Context(canonical_model(model))
        out: list[str] = []
        for step in self.steps:
            if isinstance(step, Layer):
                out.append(ctx.take_digest(step.digest))
            elif isinstance(step, Client2Layers):
                out.extend(ctx.take_digest(None) for _ in step.sizes)
            elif isinstance(step, Bulk):
                out.extend(ctx.take_digest(None) for _ in range(step.layers))
        return tuple(out)

    def expected_body(self, model: str) -> bytes:
        """The exact bytes of the streamed body for a pull of `model` (empty for HttpError)."""
        return b"".join(a.data for a in self._actions(model) if isinstance(a, _Emit))

    def expected_lines(self, model: str) -> list[bytes]:
        """`expected_body` split into lines, without their newlines."""
        return self.expected_body(model).splitlines()

    def nominal_duration(self) -> float:
        """Seconds the run takes at time scale 1 (inf with an endless stall)."""
        return sum(step._nominal_seconds() for step in self.steps)

    def to_json(self) -> list[dict[str, object]]:
        """Return the scenario in the file format: a list of step objects."""
        return [step.to_json() for step in self.steps]


def fresh_pull(
    sizes: Sequence[int],
    *,
    rate: float = DEFAULT_RATE,
    prune: bool | str = False,
    verify: float = 0.0,
    manifest_fetch: float = 0.0,
) -> Scenario:
    """A first pull: every layer downloaded at `rate`, then verify, write, (prune), success."""
    prune_steps = [Prune(prune if isinstance(prune, str) else PRUNE)] if prune else []
    return Scenario(
        Manifest(fetch=manifest_fetch),
        *(Layer(size, rate=rate) for size in sizes),
        Verify(verify),
        Write(),
        *prune_steps,
        Success(),
        name="fresh_pull",
    )


def up_to_date(sizes: Sequence[int]) -> Scenario:
    """A re-pull of a model already present: one `completed == total` line per layer (§2)."""
    return Scenario(
        Manifest(),
        *(Layer(size, present=True) for size in sizes),
        Verify(),
        Write(),
        Success(),
        name="up_to_date",
    )


def resumed(
    sizes: Sequence[int], resume_from: int | Sequence[int], *, rate: float = DEFAULT_RATE
) -> Scenario:
    """A pull resuming partial blobs: an int resumes the first layer, a sequence each layer."""
    starts = (
        [resume_from, *([0] * (len(sizes) - 1))]
        if isinstance(resume_from, int)
        else list(resume_from)
    )
    _check(len(starts) == len(sizes), "resumed: one resume_from per size")
    return Scenario(
        Manifest(),
        *(Layer(s, rate=rate, resume_from=r) for s, r in zip(sizes, starts, strict=True)),
        Verify(),
        Write(),
        Success(),
        name="resumed",
    )


def partly_present(
    sizes: Sequence[int], present: Sequence[bool], *, rate: float = DEFAULT_RATE
) -> Scenario:
    """A pull where some blobs are on disk (one full line) and the others download (§2)."""
    _check(len(present) == len(sizes), "partly_present: one flag per size")
    return Scenario(
        Manifest(),
        *(Layer(s, rate=rate, present=p) for s, p in zip(sizes, present, strict=True)),
        Verify(),
        Write(),
        Success(),
        name="partly_present",
    )


def not_found() -> Scenario:
    """An unknown model: `pulling manifest`, then the not-found error line (§4)."""
    return Scenario(Manifest(), ErrorLine(NOT_FOUND), name="not_found")


def error_after_manifest(text: str, *, fetch: float = 0.0) -> Scenario:
    """A manifest failure: `pulling manifest`, `fetch` seconds, then `{"error": text}` (§4)."""
    return Scenario(Manifest(fetch=fetch), ErrorLine(text), name="error_after_manifest")


def download_error(
    sizes: Sequence[int], text: str, *, after_lines: int = 3, rate: float = DEFAULT_RATE
) -> Scenario:
    """The last layer fails after `after_lines` lines with `{"error": text}` (max retries...)."""
    *done, last = sizes
    return Scenario(
        Manifest(),
        *(Layer(size, rate=rate) for size in done),
        Layer(last, rate=rate, stop_after=after_lines),
        ErrorLine(text),
        name="download_error",
    )


def error_after_verify(sizes: Sequence[int], text: str, *, rate: float = DEFAULT_RATE) -> Scenario:
    """Every layer downloads, then an error after `verifying sha256 digest` (digest mismatch)."""
    return Scenario(
        Manifest(),
        *(Layer(size, rate=rate) for size in sizes),
        Verify(),
        ErrorLine(text),
        name="error_after_verify",
    )


def pre_stream_error(status: int, text: str) -> Scenario:
    """A real HTTP error before any line: `400` (and others) with `application/json;
    charset=utf-8`, `500` with `application/json` (§4)."""
    content_type = "application/json" if status == 500 else _JSON_UTF8
    return Scenario(HttpError(status, {"error": text}, content_type), name="pre_stream_error")


def interrupted(
    sizes: Sequence[int], *, after_lines: int = 3, reset: bool = False, rate: float = DEFAULT_RATE
) -> Scenario:
    """The connection drops during the last layer, after `after_lines` of its lines."""
    *done, last = sizes
    return Scenario(
        Manifest(),
        *(Layer(size, rate=rate) for size in done),
        Layer(last, rate=rate, stop_after=after_lines),
        Disconnect(reset=reset),
        name="interrupted",
    )


def stalled(
    size: int, *, after_lines: int = 2, seconds: float | None = None, rate: float = DEFAULT_RATE
) -> Scenario:
    """A download that goes silent after `after_lines` lines (None: until the client leaves)."""
    return Scenario(
        Manifest(),
        Layer(size, rate=rate, stop_after=after_lines),
        Stall(seconds),
        name="stalled",
    )


def transfer_pull(
    total: int, *, chunk: int = TRANSFER_CHUNK, rate: float | None = None, present: bool = False
) -> Scenario:
    """A tensor model through x/transfer: manifest, `pulling model` lines, write, success."""
    return Scenario(
        Manifest(),
        TransferModel(total, chunk=chunk, rate=rate, present=present),
        Write(),
        Success(),
        name="transfer_pull",
    )


def client2_pull(sizes: Sequence[int], *, rate: float = DEFAULT_RATE) -> Scenario:
    """The client2 shape: manifest, status-less parallel lines, verify, write, success."""
    return Scenario(
        Manifest(),
        Client2Layers(tuple(sizes), rate=rate),
        Verify(),
        Write(),
        Success(),
        name="client2_pull",
    )


def bulk_pull(
    lines: int, layers: int = 1, *, layer_size: int | None = None, batch: int = 512
) -> Scenario:
    """A fast benchmark pull: manifest, `lines` layer lines in batches, verify, write, success."""
    return Scenario(
        Manifest(),
        Bulk(lines, layers, layer_size=layer_size, batch=batch),
        Verify(),
        Write(),
        Success(),
        name="bulk_pull",
    )


# --------------------------------------------------------------------------- scenario files

_PRESETS: dict[str, Callable[..., Scenario]] = {
    "fresh_pull": fresh_pull,
    "up_to_date": up_to_date,
    "resumed": resumed,
    "partly_present": partly_present,
    "not_found": not_found,
    "error_after_manifest": error_after_manifest,
    "download_error": download_error,
    "error_after_verify": error_after_verify,
    "pre_stream_error": pre_stream_error,
    "interrupted": interrupted,
    "stalled": stalled,
    "transfer_pull": transfer_pull,
    "client2_pull": client2_pull,
    "bulk_pull": bulk_pull,
}


def _coerce(value: object, annotation: object, where: str) -> object:  # noqa: PLR0911
    """Check a JSON value against a step field's type; turn lists into tuples."""
    origin = typing.get_origin(annotation)
    if origin in (types.UnionType, typing.Union):
        for member in typing.get_args(annotation):
            with contextlib.suppress(ScenarioError):
                return _coerce(value, member, where)
        raise ScenarioError(f"{where}: unexpected value {value!r}")
    if origin is tuple:
        (item_type, _) = typing.get_args(annotation)
        if isinstance(value, list):
            return tuple(_coerce(item, item_type, where) for item in value)
    elif origin is not None and isinstance(value, dict):  # Mapping[str, object]
        return value
    elif annotation is type(None) and value is None:
        return None
    elif (annotation is bool and isinstance(value, bool)) or (
        annotation is int and isinstance(value, int) and not isinstance(value, bool)
    ):
        return value
    elif annotation is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    elif annotation is str and isinstance(value, str):
        return value
    raise ScenarioError(f"{where}: unexpected value {value!r}")


def _step_from_json(obj: object, where: str) -> Step:
    if not isinstance(obj, dict) or not isinstance(obj.get("step"), str):
        raise ScenarioError(f'{where}: a step is an object with a "step" name')
    args = dict(obj)
    kind = args.pop("step")
    cls = _STEP_TYPES.get(kind)
    if cls is None:
        raise ScenarioError(f"{where}: unknown step {kind!r} (known: {', '.join(_STEP_TYPES)})")
    if cls is Raw:
        return _raw_from_json(args, where)
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(args) - names)
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) for {kind}: {', '.join(unknown)}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}") for k, v in args.items()}
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def _raw_from_json(args: dict[str, object], where: str) -> Raw:
    text, b64, repeat = args.pop("text", None), args.pop("base64", None), args.pop("repeat", 1)
    if args or (text is None) == (b64 is None) or not isinstance(repeat, int):
        raise ScenarioError(f'{where}: raw takes "text" or "base64", and optionally "repeat"')
    if isinstance(text, str):
        return Raw(text.encode() * repeat)
    if isinstance(b64, str):
        try:
            return Raw(base64.b64decode(b64, validate=True) * repeat)
        except ValueError:
            raise ScenarioError(f"{where}: invalid base64") from None
    raise ScenarioError(f"{where}: raw text/base64 must be a string")


def scenario_from_json(obj: object, where: str = "run") -> Scenario:
    """Build a Scenario from a list of step objects or a `{"preset": NAME, ...}` object."""
    if isinstance(obj, dict):
        args = dict(obj)
        preset = args.pop("preset", None)
        if not isinstance(preset, str) or preset not in _PRESETS:
            raise ScenarioError(
                f"{where}: unknown preset {preset!r} (known: {', '.join(_PRESETS)})"
            )
        try:
            return _PRESETS[preset](**args)
        except TypeError as exc:
            raise ScenarioError(f"{where}: {preset}: {exc}") from None
    if not isinstance(obj, list):
        raise ScenarioError(f"{where}: a run is a list of steps or a preset object")
    return Scenario(*(_step_from_json(step, f"{where}[{i}]") for i, step in enumerate(obj)))


@dataclass(frozen=True, slots=True)
class ScenarioFile:
    """A parsed scenario file."""

    models: Mapping[str, Sequence[Scenario]]
    unknown: Scenario | None = None
    time_scale: float | None = None


def parse_scenario_file(data: object, source: str = "<scenarios>") -> ScenarioFile:
    """Parse the JSON scenario file format (see `load_scenario_file`)."""
    if not isinstance(data, dict):
        raise ScenarioError(f"{source}: the top level must be an object")
    unknown_keys = sorted(set(data) - {"models", "unknown", "time_scale"})
    if unknown_keys:
        raise ScenarioError(f"{source}: unknown key(s): {', '.join(unknown_keys)}")
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise ScenarioError(f"{source}: models must be an object")
    parsed: dict[str, list[Scenario]] = {}
    for model, runs in models.items():
        if not isinstance(runs, list) or not runs:
            raise ScenarioError(f"{source}: models.{model}: a non-empty list of runs")
        parsed[model] = [
            scenario_from_json(run, f"{source}: models.{model}[{i}]") for i, run in enumerate(runs)
        ]
    unknown = data.get("unknown")
    scale = data.get("time_scale")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, int | float)):
        raise ScenarioError(f"{source}: time_scale must be a number")
    return ScenarioFile(
        models=parsed,
        unknown=None if unknown is None else scenario_from_json(unknown, f"{source}: unknown"),
        time_scale=None if scale is None else float(scale),
    )


def load_scenario_file(path: str | Path) -> ScenarioFile:
    """Load a scenario file.

    Format: `{"time_scale": 0.1, "models": {"llama3.2:1b": [RUN, RUN, ...]}, "unknown": RUN}`
    where request k for a model plays run min(k, len - 1), and a RUN is either a list of step
    objects (`{"step": "layer", "size": 1000, "rate": 5e6}`; the step names are the `kind`
    of each Step class, the keys its fields; `raw` takes `text` or `base64` and `repeat`) or
    a preset (`{"preset": "fresh_pull", "sizes": [1000, 20]}`, any helper constructor).
    """
    text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{path}: invalid JSON: {exc}") from None
    return parse_scenario_file(data, str(path))


# --------------------------------------------------------------------------- the server

OUTCOME_OPEN = "open"
OUTCOME_COMPLETED = "completed"
OUTCOME_BAD_REQUEST = "bad_request"
OUTCOME_HTTP_ERROR = "http_error"
OUTCOME_CLIENT_DISCONNECTED = "client_disconnected"
OUTCOME_SERVER_DISCONNECTED = "server_disconnected"
OUTCOME_STOPPED = "stopped"


@dataclass(slots=True)
class RequestRecord:
    """One `POST /api/pull` as the simulator saw it.

    `outcome`: `open` while it runs, then `completed` (scenario played to its end),
    `bad_request` (400 from body or name checks), `http_error` (an HttpError step),
    `client_disconnected` (the client left early), `server_disconnected` (a Disconnect step)
    or `stopped` (the simulator stopped). Times are `time.monotonic()`.
    """

    body: object
    raw_body: bytes
    headers: CIMultiDictProxy[str]
    started: float
    model: str | None = None
    run_index: int | None = None
    stream: bool = True
    ended: float | None = None
    outcome: str = OUTCOME_OPEN
    status: int | None = None
    lines_sent: int = 0
    bytes_sent: int = 0

    @property
    def client_disconnected(self) -> bool:
        """True if the client went away before the run ended."""
        return self.outcome == OUTCOME_CLIENT_DISCONNECTED

    @property
    def duration(self) -> float | None:
        """Seconds from request to end, None while open."""
        return None if self.ended is None else self.ended - self.started

    def to_json(self) -> dict[str, object]:
        """Return the record as a JSON object (headers as a list of pairs)."""
        return {
            "model": self.model,
            "body": self.body,
            "headers": [[k, v] for k, v in self.headers.items()],
            "run_index": self.run_index,
            "stream": self.stream,
            "started": self.started,
            "ended": self.ended,
            "outcome": self.outcome,
            "status": self.status,
            "lines_sent": self.lines_sent,
            "bytes_sent": self.bytes_sent,
        }


class _StoppedError(Exception):
    """The simulator is stopping: end the stream at once."""


@dataclass(slots=True)
class _Stream:
    """The live side of one request: where it writes and what it has sent."""

    request: web.Request
    record: RequestRecord
    response: web.StreamResponse | None = None
    buffered: list[bytes] = field(default_factory=list)


class OllamaSimulator:
    """A simulated Ollama server. See the module docstring for the protocol it follows.

    `scenarios` maps model names to runs: request k for a model plays runs[min(k, len - 1)].
    Models are matched in Ollama's short form (`canonical_model`). A model with no runs plays
    `unknown` (default: `not_found()`). Delays are multiplied by `time_scale`.
    """

    def __init__(
        self,
        scenarios: Mapping[str, Sequence[Scenario]] | None = None,
        *,
        time_scale: float = 1.0,
        unknown: Scenario | None = None,
        version: str = "0.33.0",
        on_finish: Callable[[RequestRecord], None] | None = None,
    ) -> None:
        _check(time_scale >= 0 and math.isfinite(time_scale), "time_scale must be >= 0")
        self.time_scale = time_scale
        self.unknown = unknown or not_found()
        self.version = version
        self._on_finish = on_finish
        self._runs: dict[str, list[Scenario]] = {}
        self._run_counts: dict[str, int] = {}
        self._requests: list[RequestRecord] = []
        self._active: dict[str, int] = {}
        self._max_concurrent: dict[str, int] = {}
        self._active_overall = 0
        self._max_concurrent_overall = 0
        self._lock = threading.Condition()
        self._streams: dict[asyncio.Task[Any], _Stream] = {}
        self._runner: web.AppRunner | None = None
        self._stopping: asyncio.Future[None] | None = None
        self._waiters: set[asyncio.Future[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_stop: asyncio.Event | None = None
        self.url: str | None = None
        for model, runs in (scenarios or {}).items():
            self.set_runs(model, runs)

    # ---- configuration and observations (thread-safe)

    def set_runs(self, model: str, runs: Sequence[Scenario]) -> None:
        """Set the runs for `model` and reset its request counter."""
        _check(bool(runs), "set_runs needs at least one scenario")
        with self._lock:
            key = canonical_model(model)
            self._runs[key] = list(runs)
            self._run_counts[key] = 0

    def run_count(self, model: str) -> int:
        """Number of runs started for `model` since `set_runs`."""
        with self._lock:
            return self._run_counts.get(canonical_model(model), 0)

    @property
    def requests(self) -> list[RequestRecord]:
        """Every `POST /api/pull` so far, oldest first (a copy of the list)."""
        with self._lock:
            return list(self._requests)

    @property
    def active(self) -> dict[str, int]:
        """Streams open now, per model as requested."""
        with self._lock:
            return {k: v for k, v in self._active.items() if v}

    @property
    def max_concurrent(self) -> dict[str, int]:
        """Most streams open at once, per model as requested."""
        with self._lock:
            return dict(self._max_concurrent)

    @property
    def active_overall(self) -> int:
        """Streams open now, all models."""
        with self._lock:
            return self._active_overall

    @property
    def max_concurrent_overall(self) -> int:
        """Most streams open at once, all models."""
        with self._lock:
            return self._max_concurrent_overall

    def wait_for(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        """Block until `predicate()` holds (checked after every change); TimeoutError if not.

        For tests that run the simulator in its thread (`running()`); from the simulator's own
        loop use `until`.
        """
        deadline = time.monotonic() + within
        with self._lock:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError("condition not reached")
                self._lock.wait(remaining)

    async def until(self, predicate: Callable[[], bool], within: float = 5.0) -> None:
        """Wait in the simulator's loop until `predicate()` holds; TimeoutError if not."""
        async with asyncio.timeout(within):
            while not predicate():
                waiter = asyncio.get_running_loop().create_future()
                self._waiters.add(waiter)
                try:
                    await waiter
                finally:
                    self._waiters.discard(waiter)

    def _changed(self) -> None:
        with self._lock:
            self._lock.notify_all()
        for waiter in list(self._waiters):
            if not waiter.done():
                waiter.set_result(None)

    # ---- lifecycle

    def _make_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/api/pull", self._handle_pull)
        app.router.add_get("/api/version", self._handle_version)
        app.router.add_get("/", self._handle_root)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on `host:port` (0: a free port) in the running loop; return the base URL."""
        if self._runner is not None:
            raise RuntimeError("simulator already started")
        self._loop = asyncio.get_running_loop()
        self._stopping = self._loop.create_future()
        runner = web.AppRunner(
            self._make_app(), handler_cancellation=True, shutdown_timeout=0.5, access_log=None
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.url = f"http://{shown}:{bound_port}"
        return self.url

    async def stop(self) -> None:
        """Close every open stream and the server; bounded (about 1 s at most)."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        assert self._stopping is not None
        if not self._stopping.done():
            self._stopping.set_result(None)
        tasks = set(self._streams)
        if tasks:
            # Players notice the stop at their next wait; writers blocked on a reader that
            # does not read are cut off after a short grace period.
            await asyncio.wait(tasks, timeout=0.5)
            for task, stream in list(self._streams.items()):
                if not task.done() and stream.request.transport is not None:
                    stream.request.transport.abort()
        await runner.cleanup()
        self.url = None

    @contextlib.contextmanager
    def running(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve from a background thread with its own loop; yield the base URL.

        On exit every stream is closed and the thread is joined (bounded).
        """
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()
        thread = threading.Thread(
            target=lambda: asyncio.run(self._serve_in_thread(host, port, ready)),
            name="ollama-sim",
            daemon=True,
        )
        thread.start()
        try:
            url = ready.result(timeout=10)
        except BaseException:
            thread.join(timeout=5)
            raise
        try:
            yield url
        finally:
            loop, stop = self._loop, self._thread_stop
            assert loop is not None
            assert stop is not None
            loop.call_soon_threadsafe(stop.set)
            thread.join(timeout=5)
            if thread.is_alive():
                raise RuntimeError("simulator thread did not stop within 5 s")

    async def _serve_in_thread(
        self, host: str, port: int, ready: concurrent.futures.Future[str]
    ) -> None:
        self._thread_stop = asyncio.Event()
        try:
            url = await self.start(host, port)
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            ready.set_exception(exc)
            return
        ready.set_result(url)
        try:
            await self._thread_stop.wait()
        finally:
            await self.stop()

    # ---- handlers

    async def _handle_root(self, request: web.Request) -> web.Response:
        del request
        return web.Response(body=b"Ollama is running", content_type="text/plain", charset="utf-8")

    async def _handle_version(self, request: web.Request) -> web.Response:
        del request
        return _response(200, go_json({"version": self.version}), _JSON_UTF8)

    async def _handle_pull(self, request: web.Request) -> web.StreamResponse:
        if request.method != "POST":
            return _response(405, b"405 method not allowed", "text/plain")
        raw = await request.read()
        decoded = _decode_pull_request(raw)
        record = RequestRecord(
            body=None,
            raw_body=raw,
            headers=CIMultiDictProxy(CIMultiDict(request.headers)),
            started=time.monotonic(),
        )
        if isinstance(decoded, str):
            return self._reject(record, decoded)
        record.body, params = decoded
        record.stream = params.stream
        name_error = _name_error(params.model)
        if name_error is not None:
            return self._reject(record, name_error)
        record.model = params.model
        scenario = self._next_run(record)
        return await self._serve_run(request, record, scenario)

    def _reject(self, record: RequestRecord, text: str) -> web.Response:
        record.status, record.outcome, record.ended = 400, OUTCOME_BAD_REQUEST, time.monotonic()
        self._record(record)
        return _response(400, go_json({"error": text}), _JSON_UTF8)

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._requests.append(record)
        self._changed()
        if record.ended is not None and self._on_finish is not None:
            self._on_finish(record)

    def _next_run(self, record: RequestRecord) -> Scenario:
        assert record.model is not None
        key = canonical_model(record.model)
        with self._lock:
            runs = self._runs.get(key)
            if runs is None:
                return self.unknown
            index = self._run_counts[key]
            self._run_counts[key] = index + 1
            record.run_index = index
            return runs[min(index, len(runs) - 1)]

    def _open(self, model: str, delta: int) -> None:
        with self._lock:
            self._active[model] = self._active.get(model, 0) + delta
            self._active_overall += delta
            self._max_concurrent[model] = max(
                self._max_concurrent.get(model, 0), self._active[model]
            )
            self._max_concurrent_overall = max(self._max_concurrent_overall, self._active_overall)
        self._changed()

    def _finish(self, record: RequestRecord, outcome: str) -> None:
        if record.outcome == OUTCOME_OPEN:
            record.outcome, record.ended = outcome, time.monotonic()

    async def _serve_run(
        self, request: web.Request, record: RequestRecord, scenario: Scenario
    ) -> web.StreamResponse:
        assert record.model is not None
        task = asyncio.current_task()
        assert task is not None
        stream = _Stream(request, record)
        self._streams[task] = stream
        self._record(record)
        self._open(record.model, +1)
        try:
            return await self._play(stream, scenario)
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the connection is lost (handler_cancellation).
            self._finish(record, self._cancel_outcome())
            raise
        finally:
            del self._streams[task]
            self._open(record.model, -1)
            if self._on_finish is not None:
                self._on_finish(record)

    def _cancel_outcome(self) -> str:
        stopping = self._stopping is not None and self._stopping.done()
        return OUTCOME_STOPPED if stopping else OUTCOME_CLIENT_DISCONNECTED

    async def _play(self, stream: _Stream, scenario: Scenario) -> web.StreamResponse:
        record = stream.record
        assert record.model is not None
        loop = asyncio.get_running_loop()
        start, virtual = loop.time(), 0.0
        try:
            for action in scenario._actions(record.model):
                if isinstance(action, _Wait):
                    virtual += action.seconds
                    await self._sleep_until(start + virtual * self.time_scale)
                elif isinstance(action, _WaitForever):
                    await self._sleep_until(math.inf)
                elif isinstance(action, _Emit):
                    await self._emit(stream, action.data)
                elif isinstance(action, _Respond):
                    record.status = action.status
                    self._finish(record, OUTCOME_HTTP_ERROR)
                    return _response(
                        action.status, action.body, action.content_type, action.location
                    )
                else:
                    return self._abort(
                        stream, reset=action.reset, outcome=OUTCOME_SERVER_DISCONNECTED
                    )
        except _StoppedError:
            return self._abort(stream, reset=False, outcome=OUTCOME_STOPPED)
        except ConnectionError:
            self._finish(record, self._cancel_outcome())
            return stream.response or web.Response()
        if stream.response is None:  # stream: false, or no line at all
            return self._finish_unstreamed(stream)
        self._finish(record, OUTCOME_COMPLETED)
        return stream.response

    async def _sleep_until(self, deadline: float) -> None:
        assert self._stopping is not None
        loop = asyncio.get_running_loop()
        delay = deadline - loop.time()
        if self._stopping.done():
            raise _StoppedError
        if delay <= 0:
            await asyncio.sleep(0)
            return
        await asyncio.wait({self._stopping}, timeout=None if math.isinf(delay) else delay)
        if self._stopping.done():
            raise _StoppedError

    async def _emit(self, stream: _Stream, data: bytes) -> None:
        record = stream.record
        if not record.stream:
            stream.buffered.append(data)
            return
        if stream.response is None:
            response = web.StreamResponse(status=200)
            response.headers["Content-Type"] = _NDJSON
            response.enable_chunked_encoding()
            await response.prepare(stream.request)
            stream.response, record.status = response, 200
        await stream.response.write(data)
        record.lines_sent += data.count(b"\n")
        record.bytes_sent += len(data)

    def _abort(self, stream: _Stream, *, reset: bool, outcome: str) -> web.StreamResponse:
        self._finish(stream.record, outcome)
        transport = stream.request.transport
        if transport is not None:
            if reset:
                sock = transport.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                transport.abort()
            else:
                transport.close()
        return stream.response or web.Response()

    def _finish_unstreamed(self, stream: _Stream) -> web.Response:
        """Answer like `waitForStream` (§5): the last progress line, or 500 on an error."""
        record = stream.record
        self._finish(record, OUTCOME_COMPLETED)
        if record.stream:  # a streaming run that sent no line at all
            record.status = 200
            return _response(200, b"", _NDJSON)
        latest: dict[str, object] = {"status": ""}
        for line in b"".join(stream.buffered).splitlines():
            with contextlib.suppress(ValueError):
                value = json.loads(line)
                if isinstance(value, dict) and "error" in value:
                    record.status = 500
                    return _response(500, go_json({"error": value["error"]}), "application/json")
                if isinstance(value, dict):
                    latest = value
        record.status = 200
        return _response(
            200, progress_line(**_progress_args(latest)).rstrip(b"\n"), "application/json"
        )


def _progress_args(value: Mapping[str, object]) -> dict[str, Any]:
    return {
        "status": str(value.get("status", "")),
        "digest": str(value.get("digest", "")),
        "total": int(str(value.get("total", 0))),
        "completed": int(str(value.get("completed", 0))),
    }


def _response(
    status: int, body: bytes, content_type: str | None, location: str | None = None
) -> web.Response:
    response = web.Response(status=status, body=body)
    if content_type is not None:
        response.headers["Content-Type"] = content_type
    if location is not None:
        response.headers["Location"] = location
    return response


# --------------------------------------------------------------------------- CLI


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.ollama_sim", description="Simulated Ollama server (POST /api/pull)."
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=11434, help="port; 0 picks a free one")
    parser.add_argument(
        "--scenarios", help="JSON scenario file (without it every model is unknown)"
    )
    parser.add_argument("--time-scale", type=float, help="delay multiplier (default: file, else 1)")
    parser.add_argument("--ollama-version", default="0.33.0", help="answer of /api/version")
    parser.add_argument("--record", help="append one JSON line per finished pull request here")
    return parser.parse_args(argv)


async def serve_until_signal(sim: OllamaSimulator, host: str, port: int) -> None:
    """Serve `sim` as a process of its own: print the URL, stop on SIGINT or SIGTERM."""
    url = await sim.start(host, port)
    print(f"listening on {url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator until SIGINT or SIGTERM; exit 0, or 1 on a bad scenario file."""
    args = _parse_args(argv)
    try:
        loaded = load_scenario_file(args.scenarios) if args.scenarios else ScenarioFile({})
    except (OSError, ScenarioError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    scale = args.time_scale if args.time_scale is not None else loaded.time_scale
    record_file = Path(args.record).open("a", encoding="utf-8") if args.record else None  # noqa: SIM115

    def write_record(record: RequestRecord) -> None:
        if record_file is not None:
            record_file.write(json.dumps(record.to_json(), default=repr) + "\n")
            record_file.flush()

    sim = OllamaSimulator(
        loaded.models,
        time_scale=1.0 if scale is None else scale,
        unknown=loaded.unknown,
        version=args.ollama_version,
        on_finish=write_record,
    )
    try:
        asyncio.run(serve_until_signal(sim, args.host, args.port))
    finally:
        if record_file is not None:
            record_file.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
