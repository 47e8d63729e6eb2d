"""Sans-I/O view of Ollama's `/api/pull` NDJSON stream: the one place a line gets its meaning.

Byte chunks go in, typed lines come out (`LineDecoder`), and `event_of` says what each
line means: progress of a layer, the start of a phase, or the end of the run (success,
or an error line with its contract reason). The fold (`progress.RunProgress`) acts on
those events and nothing else; `pull` only moves bytes. Nothing here knows about
sockets or time, so every rule is tested from tables (tests/unit/ollama/test_protocol.py).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Final, TypeAlias

import msgspec

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_LINE_BYTES: Final = 1 << 20
"""Longest line we accept: real lines are < 300 bytes, so 1 MiB means a broken peer."""
MAX_LAYERS: Final = 10_000
"""Distinct digests one run may show; real models have tens. Bounds memory on a hostile stream."""

_INT64_MAX: Final = (1 << 63) - 1
_Count = Annotated[int, msgspec.Meta(ge=0, le=_INT64_MAX)]


class Phase(enum.Enum):
    """Where a run is; the values are the `phase` label values of the contract."""

    IDLE = "idle"
    MANIFEST = "manifest"
    DOWNLOAD = "download"
    VERIFY = "verify"
    WRITE = "write"
    PRUNE = "prune"


RUN_PHASES: Final = (Phase.MANIFEST, Phase.DOWNLOAD, Phase.VERIFY, Phase.WRITE, Phase.PRUNE)
"""Phases a run passes through (everything but idle), in stream order."""


class Reason(enum.Enum):
    """Why a run failed; the values are the `reason` label values of the contract."""

    OLLAMA_UNREACHABLE = "ollama_unreachable"
    INVALID_REQUEST = "invalid_request"
    OLLAMA_HTTP_ERROR = "ollama_http_error"
    STREAM_INTERRUPTED = "stream_interrupted"
    STALLED = "stalled"
    TIMEOUT = "timeout"
    PROTOCOL_ERROR = "protocol_error"
    DIGEST_MISMATCH = "digest_mismatch"
    DISK_FULL = "disk_full"
    DOWNLOAD_FAILED = "download_failed"
    MANIFEST_NOT_FOUND = "manifest_not_found"
    UNAUTHORIZED = "unauthorized"
    REGISTRY_UNREACHABLE = "registry_unreachable"
    REGISTRY_ERROR = "registry_error"
    OTHER = "other"


class ProgressLine(msgspec.Struct, frozen=True, gc=False):
    """One `api.ProgressResponse` line; Go omits zero values, so all fields are optional."""

    status: str | None = None
    digest: str | None = None
    total: _Count | None = None
    completed: _Count | None = None
    error: str | None = None


class ProtocolError(Exception):
    """The stream broke the NDJSON contract (bad JSON, not an object, a line over 1 MiB)."""


_decoder: Final = msgspec.json.Decoder(ProgressLine)
_BLANK_LINES: Final = re.compile(rb"\n\s*\n")
"""A run of lines that are only ASCII whitespace: `\\s` is exactly what `bytes.strip` strips."""
_DECODE_ERRORS: Final = (msgspec.DecodeError, UnicodeDecodeError, RecursionError)
"""What msgspec raises on hostile bytes: bad JSON or types, bad UTF-8 in a string, deep nesting."""


class LineDecoder:
    """Turns arbitrary byte chunks into `ProgressLine`s.

    Works a chunk at a time: the complete lines of a chunk are decoded in one
    `decode_lines` call, and only the unfinished tail is kept. When a batch fails,
    the lines before the bad one are still returned (they happened) and the error
    is raised on the next call, so callers see events in order and then the error.
    """

    __slots__ = ("_pending", "_tail")

    def __init__(self) -> None:
        self._tail = bytearray()
        self._pending: ProtocolError | None = None

    def feed(self, chunk: bytes) -> list[ProgressLine]:
        """Decode every line completed by `chunk`; raise `ProtocolError` on a bad one."""
        if self._pending is not None:
            raise self._pending
        end = chunk.rfind(b"\n")
        if end < 0:
            self._tail += chunk  # bytearray: amortised O(1) even for a byte-by-byte trickle
            if len(self._tail) > MAX_LINE_BYTES:
                raise ProtocolError(f"line longer than {MAX_LINE_BYTES} bytes")
            return []
        end += 1
        # Chunks run to hundreds of KiB when the reader falls behind: decode them in place
        # (a memoryview, or the tail extended once) rather than copying them three times.
        block: bytes | bytearray | memoryview
        tail = self._tail
        if tail:
            tail += memoryview(chunk)[:end]
            block, newlines = tail, tail.count(b"\n")
        else:
            block = chunk if end == len(chunk) else memoryview(chunk)[:end]
            newlines = chunk.count(b"\n", 0, end)
        self._tail = bytearray(chunk[end:])
        if len(self._tail) > MAX_LINE_BYTES:
            self._pending = ProtocolError(f"line longer than {MAX_LINE_BYTES} bytes")
        if len(block) > MAX_LINE_BYTES:
            return self._decode_checked(bytes(block))
        try:
            lines = _decoder.decode_lines(block)
        except _DECODE_ERRORS:
            return self._decode_checked(bytes(block))
        # decode_lines also accepts several values on one line (`{} {}`) and skips blank
        # lines; one value per newline is the common case, anything else is re-checked.
        if len(lines) != newlines:
            return self._decode_checked(bytes(block))
        return lines

    def finish(self) -> list[ProgressLine]:
        """Decode a last line that lacks its newline (the stream ended after it)."""
        if self._pending is not None:
            raise self._pending
        tail, self._tail = bytes(self._tail), bytearray()
        return self._decode_checked(tail) if tail.strip() else []

    def _decode_checked(self, block: bytes) -> list[ProgressLine]:
        """Slow path, line by line: keep the good prefix, remember the first error.

        Runs of blank lines are squeezed out first (one regex match each, at C speed), so
        a flood of newlines does not cost a Python iteration per line. Not in a block longer
        than a line may be: there a blank line can be the overlong one.
        """
        lines: list[ProgressLine] = []
        if len(block) <= MAX_LINE_BYTES:
            block = _BLANK_LINES.sub(b"\n", block)
        for raw in block.split(b"\n"):
            if len(raw) > MAX_LINE_BYTES:
                self._pending = ProtocolError(f"line longer than {MAX_LINE_BYTES} bytes")
                break
            if not raw.strip():
                continue
            try:
                lines.append(_decoder.decode(raw))
            except _DECODE_ERRORS as exc:
                self._pending = ProtocolError(f"invalid line: {type(exc).__name__}: {exc}")
                break
        if self._pending is not None and not lines:
            raise self._pending
        return lines


_STATUS_PHASE: Final = {
    "pulling manifest": Phase.MANIFEST,
    "verifying sha256 digest": Phase.VERIFY,
    "writing manifest": Phase.WRITE,
    "removing unused layers": Phase.PRUNE,  # since v0.3.7, only when something is pruned
    "removing any unused layers": Phase.PRUNE,  # up to v0.3.6
}


def phase_of_status(status: str) -> Phase | None:
    """The phase a status-only line starts, or None for lines that do not move the run.

    Lines with a `digest` are downloads whatever their status says (the legacy
    `pulling <hex>`, the transfer path's `pulling model` and client2's status-less
    lines, protocol reference §1a, §1c); callers check that first.
    """
    phase = _STATUS_PHASE.get(status)
    if phase is None and status.startswith("couldn't remove unused layers"):
        return Phase.PRUNE
    return phase


# Digests, hex runs and URLs are removed before matching so that a `401` inside a
# digest or an `unauthorized` inside a URL path cannot pick the wrong reason.
_NOISE: Final = re.compile(r'"[a-z][a-z0-9+.-]*://[^"]*"|\b[a-z][a-z0-9+.-]*://\S+|[0-9a-f]{12,}')
_NOT_FOUND: Final = re.compile(r"\bmodel\b.*\bnot found\b")
_MANIFEST_401: Final = re.compile(r"^pull model manifest: 401(?::|$)")
_REGISTRY_UNREACHABLE: Final = (
    "dial tcp",
    "no such host",
    "connection refused",
    "i/o timeout",
    "tls:",
    "x509:",
    "server gave http response to https client",
)
_REGISTRY_ERROR: Final = ("no location header", "unexpected status code", "maximum redirects")


_ERROR_RULES: Final[tuple[tuple[Reason, Callable[[str], bool]], ...]] = (
    (Reason.DIGEST_MISMATCH, lambda t: "digest mismatch" in t),
    (Reason.DISK_FULL, lambda t: "no space left on device" in t),
    (Reason.DOWNLOAD_FAILED, lambda t: t.startswith("max retries exceeded")),
    (
        Reason.MANIFEST_NOT_FOUND,
        lambda t: "file does not exist" in t or _NOT_FOUND.search(t) is not None,
    ),
    (
        Reason.UNAUTHORIZED,
        lambda t: _MANIFEST_401.match(t) is not None or "unauthorized" in t or "realm host" in t,
    ),
    (Reason.REGISTRY_UNREACHABLE, lambda t: any(m in t for m in _REGISTRY_UNREACHABLE)),
    (
        Reason.REGISTRY_ERROR,
        lambda t: t.startswith("pull model manifest:") or any(m in t for m in _REGISTRY_ERROR),
    ),
)


def classify_error(text: str) -> Reason:
    """Map the text of an `error` line to a reason: first match in contract order wins."""
    clean = _NOISE.sub(" ", text.strip().lower())
    for reason, matches in _ERROR_RULES:
        if matches(clean):
            return reason
    return Reason.OTHER


# --------------------------------------------------------------------------- events

LayerProgress: TypeAlias = ProgressLine
"""A line with a `digest` and no `error`: the event is the line itself (no copy on the hot path).

Its status does not matter (`pulling <hex>`, the transfer path's `pulling model`, or none
for client2), except through `follows_previous_layer`.
"""


@dataclass(frozen=True, slots=True)
class PhaseStarted:
    """A status-only line that moves the run to `phase`."""

    phase: Phase


@dataclass(frozen=True, slots=True)
class RunEnded:
    """The stream decided the run: success (`reason` None) or a failure with its reason."""

    reason: Reason | None
    detail: str = ""
    """The error text as Ollama sent it (for the log), or what broke."""


Event: TypeAlias = LayerProgress | PhaseStarted | RunEnded | None
"""What a line means; None for lines that do not move the run (unknown statuses)."""

SUCCEEDED: Final = RunEnded(None)
_PHASE_STARTED: Final = {phase: PhaseStarted(phase) for phase in Phase}


def event_of(line: ProgressLine) -> Event:
    """The meaning of one line. First match wins, in this order.

    1. An `error` key ends the run with the reason of its text (contract §4).
    2. A `digest` makes it layer progress, whatever its status says (§1a, §1c).
    3. `success` ends the run successfully (contract §3).
    4. A known status starts its phase; any other line is None.

    The fold tests rules 1 and 2 inline for speed (`is_layer_progress`); every other
    line comes here.
    """
    error = line.error
    if error is not None:
        return RunEnded(classify_error(error), error)
    if line.digest is not None:
        return line
    status = line.status
    if status is None:
        return None
    if status == "success":
        return SUCCEEDED
    phase = phase_of_status(status)
    return None if phase is None else _PHASE_STARTED[phase]


def is_layer_progress(line: ProgressLine) -> bool:
    """Rules 1 and 2 of `event_of`: the test the fold inlines for every line."""
    return line.digest is not None and line.error is None


def follows_previous_layer(line: LayerProgress) -> bool:
    """Whether a line for a new digest means the layer before it finished.

    The legacy and transfer paths download one layer at a time and put a status on every
    line, and Ollama sends no final 100% line, so a new digest is the "done" signal of the
    one before (§1a.2). client2's lines have no status and its layers interleave (§1c).
    """
    return line.status is not None


def too_many_layers() -> RunEnded:
    """The verdict on a run that showed more than `MAX_LAYERS` distinct digests."""
    return RunEnded(Reason.PROTOCOL_ERROR, f"more than {MAX_LAYERS} layers in one run")
