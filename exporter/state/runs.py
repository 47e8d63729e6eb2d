"""A run in its typed shapes: reserved (`ActiveRun`), finished (`RunRecord`), shown (`Run`).

`RunRecord` is the one finished run: the history keeps it, the storage writes and reads it
(`exporter.storage.run_history`, its row format unchanged) and the API and the page show it.
Its fields hold the enums (`Trigger`, `Reason`, `Phase`), never their strings; the strings
appear only where the record leaves the program: the row's columns and the JSON.

`Run` and `RunDetail` are what `/api/v1/runs` and `/api/v1/runs/{id}` answer, encoded by
msgspec as they are (an enum as its value), and the OpenAPI document's run schemas are
generated from these same types (`exporter.web.openapi`), so the document cannot drift from
the answers. They differ from the record on purpose: a view is of an active run as well, and
it shows a finished run as the contract does (`result` instead of `success`, `null` for no
error, seconds rounded to the millisecond).
"""

from __future__ import annotations

import enum
import zlib
from collections.abc import Mapping  # noqa: TC003 - msgspec resolves a Struct's annotations at run time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Final

import msgspec
from msgspec import UNSET, Meta, UnsetType

from exporter.ollama.protocol import RUN_PHASES, Phase, Reason
from exporter.state.transcript import (
    HEAD_LINES,
    RAW_MAGIC,
    TAIL_LINES,
    Redactor,
    Transcript,
    TranscriptLine,
    TranscriptText,
    unpack_raw,
)

if TYPE_CHECKING:
    from exporter.ollama.progress import RunProgress


class Trigger(enum.Enum):
    """Why a run started; the values are the API's `trigger` values."""

    SCHEDULE = "schedule"
    START = "start"
    API = "api"


class RunState(enum.Enum):
    """Where a run is, as the API says it."""

    QUEUED = "queued"
    RUNNING = "running"
    FINISHED = "finished"


class Result(enum.Enum):
    """How a finished run ended, as the API says it."""

    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(slots=True, eq=False)
class ActiveRun:
    """A run that has an id but no result yet: queued for its server's limit, or streaming."""

    id: int
    server: str
    model: str
    trigger: Trigger
    requested_at: float
    started_at: float | None = None
    """Unix time the request went out; None while queued."""
    progress: RunProgress | None = None
    transcript: Transcript | None = None

    def begin(self, progress: RunProgress, started_at: float) -> Transcript:
        """The run starts streaming now; returns the transcript to feed with its chunks."""
        self.progress = progress
        self.started_at = started_at
        self.transcript = Transcript(progress.started_at)
        return self.transcript


class RunRecord(msgspec.Struct, frozen=True, gc=False):
    """A finished run; `transcript` is compressed (see `pack`).

    `gc=False`: it holds only strings, numbers, enums and a mapping of those, so it cannot be part
    of a cycle, and a long history (100 runs of each of a thousand pairs) is not scanned by
    every collection of the cycle collector.
    """

    id: int
    server: str
    model: str
    trigger: Trigger
    started_at: float
    ended_at: float
    duration_seconds: float
    success: bool
    reason: Reason | None
    """None exactly when `success`."""
    error: str
    """The redacted error text; empty for a success."""
    downloaded_bytes: int
    reused_bytes: int
    phase_seconds: Mapping[Phase, float]
    """Seconds per run phase (never `Phase.IDLE`), in the order the run kept them: the pair's
    `LastRun.phase_durations` itself (immutable) for a run of this process, a dict when read."""
    transcript: bytes | None = None
    """None: not loaded (a listing) or dropped from memory (over the budget)."""


# ------------------------------------------------------------------ transcripts, compressed

_LineTuple = tuple[float, str, int]
_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(tuple[int, list[_LineTuple]])


def pack(text: TranscriptText) -> bytes:
    """A transcript as compact bytes: zlib over JSON `[omitted, [[t, line, cut], ...]]`."""
    rows = [(line.t, line.line, line.cut) for line in text.lines]
    return zlib.compress(_encoder.encode((text.omitted, rows)), 1)


def unpack(blob: bytes) -> TranscriptText:
    """The inverse of `pack` and of `Transcript.pack_raw`; ValueError on bytes that are not one."""
    if blob.startswith(RAW_MAGIC):
        return unpack_raw(blob)
    try:
        omitted, rows = _decoder.decode(zlib.decompress(blob))
    except (zlib.error, msgspec.DecodeError) as exc:
        raise ValueError(f"not a packed transcript: {exc}") from None
    return TranscriptText(tuple(TranscriptLine(t, line, cut) for t, line, cut in rows), omitted)


# ------------------------------------------------------------------ what the API answers

_Count = Annotated[int, Meta(ge=0)]
_Seconds = Annotated[float, Meta(ge=0)]
_RunPhase = Annotated[
    Phase, Meta(extra_json_schema={"enum": [phase.value for phase in RUN_PHASES]})
]
"""A phase a run passes through: `Phase` but never idle (what the schema says of the keys)."""


class Run(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A run as `/api/v1/runs` lists it (no transcript)."""

    id: Annotated[int, Meta(ge=1)]
    server: str
    model: str
    state: RunState
    trigger: Trigger
    started_at: Annotated[float | None, Meta(description="Unix time; null while queued")]
    ended_at: Annotated[float | None, Meta(description="Unix time; null until finished")]
    duration_seconds: _Seconds | None
    result: Annotated[Result | None, Meta(description="null until finished")]
    reason: Annotated[Reason | None, Meta(description="the failure reason (metric label)")]
    error: Annotated[str | None, Meta(description="the error text, secrets redacted")]
    downloaded_bytes: _Count
    reused_bytes: Annotated[int, Meta(ge=0, description="sizes of layers already on the server")]
    phase_seconds: dict[_RunPhase, _Seconds]


class TranscriptEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One line of a run's transcript as the API shows it; `cut` only when characters were."""

    t: Annotated[float, Meta(ge=0, description="seconds since the run started")]
    line: Annotated[str, Meta(description="the raw line (secrets redacted)")]
    cut: Annotated[int, Meta(ge=1, description="characters not kept")] | UnsetType = UNSET


class RunDetail(Run, frozen=True, forbid_unknown_fields=True):
    """A run as `/api/v1/runs/{id}` shows it: the listing's fields, then its transcript."""

    transcript: Annotated[
        list[TranscriptEntry],
        Meta(
            max_length=HEAD_LINES + TAIL_LINES,
            description=f"the first {HEAD_LINES} and the last {TAIL_LINES} lines as received",
        ),
    ]
    transcript_omitted: Annotated[int, Meta(ge=0, description="lines left out between them")]
    transcript_kept: Annotated[
        bool, Meta(description="false when the transcript was dropped to bound memory")
    ]


class RunList(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The answer of `/api/v1/runs`: the newest runs first."""

    runs: list[Run]


def run_view(run: RunRecord | ActiveRun, now: float) -> Run:
    """`run` as the API lists it; `now` is the monotonic clock (an active run's times)."""
    if isinstance(run, RunRecord):
        return Run(
            id=run.id,
            server=run.server,
            model=run.model,
            state=RunState.FINISHED,
            trigger=run.trigger,
            started_at=run.started_at,
            ended_at=run.ended_at,
            duration_seconds=round(run.duration_seconds, 3),
            result=Result.SUCCESS if run.success else Result.FAILURE,
            reason=run.reason,
            error=run.error or None,
            downloaded_bytes=run.downloaded_bytes,
            reused_bytes=run.reused_bytes,
            phase_seconds={phase: round(s, 3) for phase, s in run.phase_seconds.items()},
        )
    progress = run.progress
    phases = dict.fromkeys(RUN_PHASES, 0.0)
    duration = None
    if progress is not None:
        duration = round(now - progress.started_at, 3)
        for phase, seconds in progress.phase_durations.items():
            phases[phase] = round(seconds, 3)
        if progress.phase in progress.phase_durations:
            elapsed = now - progress.phase_started_at
            phases[progress.phase] = round(phases[progress.phase] + elapsed, 3)
    return Run(
        id=run.id,
        server=run.server,
        model=run.model,
        state=RunState.QUEUED if progress is None else RunState.RUNNING,
        trigger=run.trigger,
        started_at=run.started_at,
        ended_at=None,
        duration_seconds=duration,
        result=None,
        reason=None,
        error=None,
        downloaded_bytes=progress.downloaded_bytes if progress is not None else 0,
        reused_bytes=progress.reused_bytes if progress is not None else 0,
        phase_seconds=phases,
    )


def run_detail(run: RunRecord | ActiveRun, redact: Redactor, now: float) -> RunDetail:
    """`run` with its transcript (an active one's redacted with `redact` now)."""
    if isinstance(run, RunRecord):
        text = unpack(run.transcript) if run.transcript is not None else None
    else:
        text = run.transcript.text(redact) if run.transcript is not None else None
    lines = [
        TranscriptEntry(line.t, line.line, line.cut or UNSET)
        for line in (text.lines if text is not None else ())
    ]
    return RunDetail(
        **msgspec.structs.asdict(run_view(run, now)),
        transcript=lines,
        transcript_omitted=text.omitted if text is not None else 0,
        transcript_kept=text is not None or isinstance(run, ActiveRun),
    )
