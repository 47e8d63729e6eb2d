"""A `Scenario` (one run of `POST /api/pull`) and the helper constructors for common shapes."""

from __future__ import annotations

import typing

from ollama_sim.names import canonical_model
from ollama_sim.steps import (
    Action,
    Bulk,
    Client2Layers,
    Context,
    Disconnect,
    Emit,
    ErrorLine,
    HttpError,
    Layer,
    LayerView,
    Manifest,
    Prune,
    ScenarioError,
    Stall,
    Step,
    Success,
    TransferModel,
    Verify,
    Write,
    check,
)
from ollama_sim.wire import DEFAULT_RATE, JSON_UTF8, NOT_FOUND, PRUNE, TRANSFER_CHUNK

if typing.TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence


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

    def actions(self, model: str) -> Iterator[Action]:
        """The wire actions of a pull of `model`, in order."""
        ctx = Context(canonical_model(model))
        for step in self.steps:
            yield from step.actions(ctx)

    def _layer_views(self) -> list[LayerView]:
        ctx = Context("")
        return [view for step in self.steps for view in step.layer_views(ctx)]

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
        ctx = Context(canonical_model(model))
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
        return b"".join(a.data for a in self.actions(model) if isinstance(a, Emit))

    def expected_lines(self, model: str) -> list[bytes]:
        """`expected_body` split into lines, without their newlines."""
        return self.expected_body(model).splitlines()

    def nominal_duration(self) -> float:
        """Seconds the run takes at time scale 1 (inf with an endless stall)."""
        return sum(step.nominal_seconds() for step in self.steps)

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
    latency_ticks: int | None = None,
    settle_ticks: int = 0,
) -> Scenario:
    """A first pull: every layer downloaded at `rate`, then verify, write, (prune), success.

    Like Ollama 0.17.4 with a registry that answers at once: `latency_ticks=0` (the first
    tick already carries bytes) and `settle_ticks=SETTLE_TICKS_0_17`.
    """
    prune_steps = [Prune(prune if isinstance(prune, str) else PRUNE)] if prune else []
    return Scenario(
        Manifest(fetch=manifest_fetch),
        *(
            Layer(size, rate=rate, latency_ticks=latency_ticks, settle_ticks=settle_ticks)
            for size in sizes
        ),
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
    check(len(starts) == len(sizes), "resumed: one resume_from per size")
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
    check(len(present) == len(sizes), "partly_present: one flag per size")
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
    """A real HTTP error before any line, with Ollama's content type for its status.

    `400` (and others) come with `application/json; charset=utf-8`, `500` with
    `application/json` (§4).
    """
    content_type = "application/json" if status == 500 else JSON_UTF8
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


PRESETS: dict[str, Callable[..., Scenario]] = {
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
"""The constructors a scenario file names with `preset:` (docs/simulator.md)."""
