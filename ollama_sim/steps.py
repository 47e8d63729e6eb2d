"""The steps a scenario is made of, and the wire actions each one plays."""

from __future__ import annotations

import abc
import base64
import dataclasses
import math
import re
import typing
from collections.abc import Mapping  # noqa: TC003 - typing.get_type_hints resolves it at runtime
from dataclasses import dataclass
from typing import ClassVar

from ollama_sim.names import layer_digest
from ollama_sim.ticks import Ticks, climb
from ollama_sim.wire import (
    CLIENT2_TICK,
    DEFAULT_RATE,
    JSON_UTF8,
    PRUNE,
    TICK,
    TRANSFER_CHUNK,
    go_json,
    progress_line,
    status_line,
)

if typing.TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


class ScenarioError(ValueError):
    """A scenario (or scenario file) that cannot be played."""


@dataclass(frozen=True, slots=True)
class Emit:
    """Send these bytes (one or more whole lines) as the next chunk."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Wait:
    """Stay silent for `seconds` of scenario time (scaled by the simulator)."""

    seconds: float  # unscaled


@dataclass(frozen=True, slots=True)
class WaitForever:
    """Stay silent until the client leaves or the simulator stops."""


@dataclass(frozen=True, slots=True)
class Abort:
    """Close the connection mid-stream (`reset`: with a TCP RST)."""

    reset: bool


@dataclass(frozen=True, slots=True)
class Respond:
    """Answer with a whole non-streamed HTTP response instead of a stream."""

    status: int
    body: bytes
    content_type: str | None
    location: str | None = None


Action = Emit | Wait | WaitForever | Abort | Respond


@dataclass(slots=True)
class Context:
    """Per-run state while steps render: the model and the next layer index."""

    model: str
    next_index: int = 0

    def take_digest(self, explicit: str | None) -> str:
        """Return `explicit` or the next deterministic layer digest; advance the index."""
        index = self.next_index
        self.next_index += 1
        return explicit or layer_digest(self.model, index)


@dataclass(frozen=True, slots=True)
class LayerView:
    """What a client sees of one layer: its size and the `completed` value of each line.

    The ticked steps give `Ticks`, so a view costs the same at any layer size.
    """

    size: int
    values: Sequence[int]
    finished: bool

    def downloaded(self) -> tuple[int, int]:
        """Return (bytes, regressions) as contract §3 counts them from these lines."""
        if not self.values or self.values[0] >= self.size:
            return 0, 0
        grown, regressions, last = climb(self.values)
        if self.finished and last < self.size:
            grown += self.size - last
        return grown, regressions


# --------------------------------------------------------------------------- steps


def check(condition: bool, message: str) -> None:
    """Raise ScenarioError(message) unless `condition` holds."""
    if not condition:
        raise ScenarioError(message)


def _check_seconds(value: float, name: str) -> None:
    check(math.isfinite(value) and value >= 0, f"{name} must be a finite number >= 0")


class Step(abc.ABC):
    """One step of a scenario. Subclasses are frozen dataclasses; `kind` names them in JSON."""

    __slots__ = ()
    kind: ClassVar[str]
    streams: ClassVar[bool] = True  # False for steps allowed before an HttpError
    terminal: ClassVar[bool] = False  # nothing may follow it

    @abc.abstractmethod
    def actions(self, ctx: Context) -> Iterator[Action]: ...

    def layer_views(self, ctx: Context) -> list[LayerView]:
        del ctx
        return []

    def nominal_seconds(self) -> float:
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

    def actions(self, ctx: Context) -> Iterator[Action]:
        del ctx
        if self.delay:
            yield Wait(self.delay)
        yield Emit(status_line("pulling manifest"))
        if self.fetch:
            yield Wait(self.fetch)

    def nominal_seconds(self) -> float:
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
    `settle_ticks` lines with `completed == total` follow the last byte, one per tick from the
    next tick on: Ollama 0.17.4 keeps ticking until the part's 1 s watchdog returns, so every
    downloaded blob ends with about `SETTLE_TICKS_0_17` such lines (recorded from the real
    server, `tests/e2e/real/transcripts/0.17.4/`).
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
    settle_ticks: int = 0

    def __post_init__(self) -> None:
        check(self.size > 0, "layer size must be > 0")
        check(self.settle_ticks >= 0, "settle_ticks must be >= 0")
        check(self.rate is None or self.ticks is None, "give a layer rate or ticks, not both")
        check(self.rate is None or self.rate > 0, "layer rate must be > 0")
        check(self.ticks is None or self.ticks >= 1, "layer ticks must be >= 1")
        check(0 <= self.resume_from < self.size, "layer resume_from must be in [0, size)")
        check(self.rollback_bytes >= 0, "layer rollback_bytes must be >= 0")
        check(
            self.rollback_at is None or 0 < self.rollback_at < self.size,
            "layer rollback_at must be in (0, size)",
        )
        check(self.latency_ticks is None or self.latency_ticks >= 0, "latency_ticks must be >= 0")
        check(self.stop_after is None or self.stop_after >= 0, "stop_after must be >= 0")
        check(
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

    def _schedule(self) -> tuple[Ticks, float]:
        """Return the `completed` value of each ticker line and when the blob is done, in ticks.

        Closed form, so the cost does not grow with the layer: `latency` lines at
        `resume_from`, then one line per tick `step` bytes on while below `size`; the first
        line at or past `rollback_at` is followed by one `rollback_bytes` lower, and the climb
        goes on from there.
        """
        step, size, start = self.step_bytes, self.size, self.resume_from
        latency = self.latency_ticks
        if latency is None:
            latency = 0 if size - start <= step else 1
        rising = (size - start - 1) // step  # lines with bytes before the blob completes
        runs = [(start, 0, latency)]
        if self.rollback_at is not None:
            first_past = max(1, -(-(self.rollback_at - start) // step))
            if first_past <= rising:
                back = max(0, start + first_past * step - self.rollback_bytes)
                again = (size - back - 1) // step
                runs += [(start + step, step, first_past), (back, 0, 1), (back + step, step, again)]
                completed, tick = back + again * step, latency + first_past + 1 + again
                return Ticks(runs), tick + (size - completed) / step
        runs.append((start + step, step, rising))
        completed, tick = start + rising * step, latency + rising
        return Ticks(runs), tick + (size - completed) / step

    def wire_values(self) -> Ticks:
        """Return the `completed` value of each line this layer sends (0: key absent)."""
        if self.present:
            return Ticks([(self.size, 0, 1)])
        values, _ = self._schedule()
        if self.stop_after is not None:
            return values[: self.stop_after]
        return values + Ticks([(self.size, 0, self.settle_ticks)])

    def actions(self, ctx: Context) -> Iterator[Action]:
        digest = ctx.take_digest(self.digest)
        status = f"pulling {digest[7:19]}"
        if self.present:
            yield Emit(progress_line(status, digest, self.size, self.size))
            return
        values, done_at = self._schedule()
        if self.stop_after is not None:
            values = values[: self.stop_after]
        for value in values:
            yield Wait(TICK)
            yield Emit(progress_line(status, digest, self.size, value))
        if self.stop_after is None and self.settle_ticks:
            yield Wait((math.ceil(done_at) - len(values)) * TICK)
            yield Emit(progress_line(status, digest, self.size, self.size))
            for _ in range(self.settle_ticks - 1):
                yield Wait(TICK)
                yield Emit(progress_line(status, digest, self.size, self.size))
        elif self.stop_after is None:
            yield Wait((done_at - len(values)) * TICK)

    def layer_views(self, ctx: Context) -> list[LayerView]:
        ctx.take_digest(self.digest)
        return [LayerView(self.size, self.wire_values(), finished=self.stop_after is None)]

    def nominal_seconds(self) -> float:
        if self.present:
            return 0.0
        values, done_at = self._schedule()
        if self.stop_after is None and self.settle_ticks:
            return (math.ceil(done_at) + self.settle_ticks - 1) * TICK
        ticks = done_at if self.stop_after is None else min(len(values), self.stop_after)
        return ticks * TICK


@dataclass(frozen=True, slots=True)
class Verify(Step):
    """`verifying sha256 digest`, then `silence` seconds with no bytes (§1a.3)."""

    kind: ClassVar[str] = "verify"
    silence: float = 0.0

    def __post_init__(self) -> None:
        _check_seconds(self.silence, "verify silence")

    def actions(self, ctx: Context) -> Iterator[Action]:
        del ctx
        yield Emit(status_line("verifying sha256 digest"))
        if self.silence:
            yield Wait(self.silence)

    def nominal_seconds(self) -> float:
        return self.silence


@dataclass(frozen=True, slots=True)
class Write(Step):
    """`writing manifest` (§1a.4)."""

    kind: ClassVar[str] = "write"

    def actions(self, ctx: Context) -> Iterator[Action]:
        del ctx
        yield Emit(status_line("writing manifest"))


@dataclass(frozen=True, slots=True)
class Prune(Step):
    """A prune status line: `PRUNE`, `PRUNE_LEGACY` or `prune_failed(err)` (§1a.5)."""

    kind: ClassVar[str] = "prune"
    text: str = PRUNE

    def actions(self, ctx: Context) -> Iterator[Action]:
        del ctx
        yield Emit(status_line(self.text))


@dataclass(frozen=True, slots=True)
class Success(Step):
    """`success`; the stream closes `linger` seconds later (`refreshModelListCache`, §1a.6)."""

    kind: ClassVar[str] = "success"
    terminal: ClassVar[bool] = True
    linger: float = 0.0

    def __post_init__(self) -> None:
        _check_seconds(self.linger, "success linger")

    def actions(self, ctx: Context) -> Iterator[Action]:
        del ctx
        yield Emit(status_line("success"))
        if self.linger:
            yield Wait(self.linger)

    def nominal_seconds(self) -> float:
        return self.linger


@dataclass(frozen=True, slots=True)
class ErrorLine(Step):
    """One `{"error": text}` line on the 200 stream, which then ends cleanly (§4)."""

    kind: ClassVar[str] = "error"
    terminal: ClassVar[bool] = True
    text: str

    def actions(self, ctx: Context) -> Iterator[Action]:
        del ctx
        yield Emit(go_json({"error": self.text}) + b"\n")


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
        check(300 <= self.status <= 599, "http_error status must be 3xx, 4xx or 5xx")

    def actions(self, ctx: Context) -> Iterator[Action]:
        del ctx
        if self.body is None:
            yield Respond(self.status, b"", self.content_type, self.location)
        elif isinstance(self.body, str):
            yield Respond(
                self.status,
                self.body.encode(),
                self.content_type or "text/plain; charset=utf-8",
                self.location,
            )
        else:
            yield Respond(
                self.status,
                go_json(dict(self.body)),
                self.content_type or JSON_UTF8,
                self.location,
            )


@dataclass(frozen=True, slots=True)
class Disconnect(Step):
    """Close the connection mid-stream: no terminating chunk (`reset`: send a TCP RST)."""

    kind: ClassVar[str] = "disconnect"
    terminal: ClassVar[bool] = True
    reset: bool = False

    def actions(self, ctx: Context) -> Iterator[Action]:
        del ctx
        yield Abort(self.reset)


@dataclass(frozen=True, slots=True)
class Stall(Step):
    """No bytes for `seconds` (None: until the client leaves or the simulator stops)."""

    kind: ClassVar[str] = "stall"
    seconds: float | None = None

    def __post_init__(self) -> None:
        if self.seconds is not None:
            _check_seconds(self.seconds, "stall seconds")

    def actions(self, ctx: Context) -> Iterator[Action]:
        del ctx
        yield WaitForever() if self.seconds is None else Wait(self.seconds)

    def nominal_seconds(self) -> float:
        return math.inf if self.seconds is None else self.seconds


@dataclass(frozen=True, slots=True)
class Sleep(Step):
    """Wait `seconds` with no bytes; allowed before an HttpError (request latency)."""

    kind: ClassVar[str] = "sleep"
    streams: ClassVar[bool] = False
    seconds: float

    def __post_init__(self) -> None:
        _check_seconds(self.seconds, "sleep seconds")

    def actions(self, ctx: Context) -> Iterator[Action]:
        del ctx
        yield Wait(self.seconds)

    def nominal_seconds(self) -> float:
        return self.seconds


@dataclass(frozen=True, slots=True)
class Raw(Step):
    """Write arbitrary bytes as one chunk (hostile streams: no newline, bad UTF-8, HTML...)."""

    kind: ClassVar[str] = "raw"
    data: bytes

    def actions(self, ctx: Context) -> Iterator[Action]:
        del ctx
        yield Emit(self.data)

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
        check(self.total > 0, "transfer_model total must be > 0")
        check(self.chunk > 0, "transfer_model chunk must be > 0")
        check(self.rate is None or self.rate > 0, "transfer_model rate must be > 0")
        check(
            self.rollback_at is None or 0 < self.rollback_at < self.total,
            "transfer_model rollback_at must be in (0, total)",
        )

    def _climb(self, start: int) -> Ticks:
        """The lines from `start` on: `chunk` more each, the last one at `total`."""
        lines = -(-(self.total - start) // self.chunk)
        if not lines:
            return Ticks()
        return Ticks([(start + self.chunk, self.chunk, lines - 1), (self.total, 0, 1)])

    def wire_values(self) -> Ticks:
        """Return the aggregate `completed` of each line (closed form, as `Layer`'s)."""
        if self.present:
            return Ticks()
        values = self._climb(0)
        if self.rollback_at is None:
            return values
        first_past = -(-self.rollback_at // self.chunk)  # <= len(values): rollback_at < total
        back = max(0, values[first_past - 1] - self.rollback_bytes)
        return values[:first_past] + Ticks([(back, 0, 1)]) + self._climb(back)

    def actions(self, ctx: Context) -> Iterator[Action]:
        del ctx
        pause = self.chunk / self.rate if self.rate else 0.0
        for value in self.wire_values():
            if pause:
                yield Wait(pause)
            yield Emit(progress_line("pulling model", "sha256:model", self.total, value))

    def layer_views(self, ctx: Context) -> list[LayerView]:
        del ctx
        return [LayerView(self.total, self.wire_values(), finished=True)]

    def nominal_seconds(self) -> float:
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
        check(bool(self.sizes) and all(s > 0 for s in self.sizes), "client2 sizes must be > 0")
        check(self.rate > 0, "client2 rate must be > 0")

    def _ticking(self) -> tuple[int, float, int]:
        """(bytes per layer per tick, when the largest is done in ticks, flushes between)."""
        step = max(1, round(self.rate * CLIENT2_TICK))
        done_at = max(self.sizes) / step
        return step, done_at, math.ceil(done_at) - 1

    def actions(self, ctx: Context) -> Iterator[Action]:
        digests = [ctx.take_digest(None) for _ in self.sizes]
        step, done_at, ticks = self._ticking()

        def flush(values: Iterator[int]) -> Emit:
            lines = (
                progress_line(None, digest, size, value)
                for digest, size, value in zip(digests, self.sizes, values, strict=True)
            )
            return Emit(b"".join(lines))

        yield flush(0 for _ in self.sizes)
        for tick in range(1, ticks + 1):
            yield Wait(CLIENT2_TICK)
            yield flush(min(tick * step, size) for size in self.sizes)
        yield Wait((done_at - ticks) * CLIENT2_TICK)
        yield flush(iter(self.sizes))

    def layer_views(self, ctx: Context) -> list[LayerView]:
        step, _, ticks = self._ticking()
        views = []
        for size in self.sizes:
            ctx.take_digest(None)
            rising = min(ticks, size // step)
            values = Ticks([(0, 0, 1), (step, step, rising), (size, 0, ticks - rising + 1)])
            views.append(LayerView(size, values, finished=True))
        return views

    def nominal_seconds(self) -> float:
        return self._ticking()[1] * CLIENT2_TICK


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
        check(self.layers >= 1, "bulk layers must be >= 1")
        check(self.lines >= self.layers, "bulk lines must be >= layers")
        check(self.batch >= 1, "bulk batch must be >= 1")
        check(self.layer_size is None or self.layer_size > 0, "bulk layer_size must be > 0")

    def _plan(self) -> list[tuple[int, int]]:
        """Return (lines, size) per layer."""
        base, extra = divmod(self.lines, self.layers)
        plan = []
        for index in range(self.layers):
            count = base + (1 if index < extra else 0)
            plan.append((count, self.layer_size or count * 1_000_000))
        return plan

    def actions(self, ctx: Context) -> Iterator[Action]:
        pending: list[bytes] = []
        for count, size in self._plan():
            digest = ctx.take_digest(None)
            head = f'{{"status":"pulling {digest[7:19]}","digest":"{digest}","total":{size}'
            for number in range(count):
                completed = size * number // count
                tail = f',"completed":{completed}}}\n' if completed else "}\n"
                pending.append((head + tail).encode())
                if len(pending) >= self.batch:
                    yield Emit(b"".join(pending))
                    pending.clear()
        if pending:
            yield Emit(b"".join(pending))

    def layer_views(self, ctx: Context) -> list[LayerView]:
        views = []
        for count, size in self._plan():
            ctx.take_digest(None)
            values = tuple(size * number // count for number in range(count))
            views.append(LayerView(size, values, finished=True))
        return views


STEP_TYPES: dict[str, type[Step]] = {
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
