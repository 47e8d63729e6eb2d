"""Property tests (hypothesis) for the stream decoder and the progress fold (contract §3).

1. Valid streams, generated from the simulator's own steps (legacy layers with random sizes,
   rates, resume points, rollbacks, present flags and latency; the x/transfer, client2 and
   bulk shapes; prune variants; errors and disconnects): any chunking of the exact bytes
   (random cut points, 1-byte chunks, cuts inside multi-byte UTF-8, empty chunks, with or
   without the final newline) decodes to the same lines as one whole chunk, folds to the
   same final numbers, and those numbers are the ones the scenario predicts.
2. Arbitrary bytes never make the decoder raise anything but `ProtocolError`.
3. Arbitrary line sequences never make `RunProgress` raise, never decrease its counters,
   and keep `completed_bytes <= expected_bytes`; the fold ends a run exactly where
   `protocol.event_of` says a line ends it (one place decides what a line means).

The config property ("any YAML gives a config or a config error") lives in test_config.py.
How many examples, and which: the hypothesis profile of tests/conftest.py (`ci`, every run's:
the same ones each time; `pytest --hypothesis-profile=explore tests/unit/ollama/test_properties.py`
searches many more, new ones).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from exporter.ollama.progress import RunProgress
from exporter.ollama.protocol import (
    LineDecoder,
    Phase,
    ProgressLine,
    ProtocolError,
    RunEnded,
    event_of,
    is_layer_progress,
)
from ollama_sim import (
    CLIENT2_TICK,
    PRUNE,
    PRUNE_LEGACY,
    TICK,
    TRANSFER_CHUNK,
    Bulk,
    Client2Layers,
    Disconnect,
    ErrorLine,
    Layer,
    Manifest,
    Prune,
    Scenario,
    Stall,
    Step,
    Success,
    TransferModel,
    Verify,
    Write,
    go_json,
    prune_failed,
)
from ollama_sim.steps import Context, Emit

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ollama_sim.ticks import Ticks

INT64_MAX = (1 << 63) - 1
PROPERTIES = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
"""The rest (example count, derandomize, no deadline) is the profile's."""

MODELS = st.sampled_from(
    ["llama3.2:1b", "gemma3", "registry.ollama.ai/library/qwen3:8b", "hf.co/bartowski/x:Q4_K_M"]
)
# Free text for error lines and failed-prune lines: multi-byte UTF-8, Go's HTML escapes
# (& < > U+2028), quotes, backslashes and control characters.
TEXTS = st.text(
    alphabet=st.one_of(
        st.sampled_from('aé€😀&<>\u2028\u2029"\\\n\t/:'),
        st.characters(codec="utf-8"),
    ),
    max_size=24,
)

# --------------------------------------------------------------------------- scenarios


@st.composite
def legacy_layer(draw: st.DrawFn, *, cut: bool = False) -> Layer:
    """One legacy-downloader layer; `cut` makes it stop after 1..n of its lines."""
    size = draw(st.one_of(st.integers(1, 100), st.integers(1, 50_000_000)))
    if not cut and draw(st.integers(0, 3)) == 0:
        return Layer(size, present=True)
    resume_from = draw(st.one_of(st.just(0), st.integers(0, size - 1)))
    remaining = size - resume_from
    pace = draw(st.sampled_from(["rate", "ticks", "default"]))
    lines = draw(st.integers(1, 30))
    rate: float | None = None
    ticks: int | None = None
    if pace == "rate":
        rate = remaining / (lines * TICK)
    elif pace == "ticks":
        ticks = lines
    rollback_at: int | None = None
    rollback_bytes = 0
    if size > 1 and draw(st.booleans()):
        rollback_at = draw(st.integers(1, size - 1))
        rollback_bytes = draw(st.integers(0, remaining))  # bounded: at most ~2x the lines
    latency = draw(st.one_of(st.none(), st.integers(0, 3)))
    if cut:
        latency = max(1, latency or 0)  # at least one line to cut after
    layer = Layer(
        size,
        rate=rate,
        ticks=ticks,
        resume_from=resume_from,
        rollback_at=rollback_at,
        rollback_bytes=rollback_bytes,
        latency_ticks=latency,
    )
    if not cut:
        return layer
    sent = len(layer.wire_values())
    return Layer(
        size,
        rate=rate,
        ticks=ticks,
        resume_from=resume_from,
        rollback_at=rollback_at,
        rollback_bytes=rollback_bytes,
        latency_ticks=latency,
        stop_after=draw(st.integers(1, sent)),
    )


def _prune() -> st.SearchStrategy[Step]:
    return st.one_of(
        st.just(Prune(PRUNE)),
        st.just(Prune(PRUNE_LEGACY)),
        TEXTS.map(lambda err: Prune(prune_failed(err))),
    )


@st.composite
def success_tail(draw: st.DrawFn, *, verify: bool = True) -> list[Step]:
    """verify, write, maybe a prune line (current, legacy or failed), success."""
    tail: list[Step] = [Verify()] if verify else []
    tail.append(Write())
    if draw(st.booleans()):
        tail.append(draw(_prune()))
    return [*tail, Success()]


def failure_end() -> st.SearchStrategy[list[Step]]:
    """How a stream that is cut short ends: an error line, EOF, a reset, or a timed stall."""
    return st.one_of(
        TEXTS.map(lambda text: [ErrorLine(text)]),
        st.booleans().map(lambda reset: [Disconnect(reset=reset)]),
        st.just([Stall(0.0)]),
        st.just([]),
    )


@st.composite
def legacy_scenario(draw: st.DrawFn) -> Scenario:
    layers = draw(st.lists(legacy_layer(), min_size=1, max_size=5))
    ending = draw(st.sampled_from(["success", "error_after_verify", "cut", "after_manifest"]))
    if ending == "success":
        return Scenario(Manifest(), *layers, *draw(success_tail()))
    if ending == "error_after_verify":
        return Scenario(Manifest(), *layers, Verify(), ErrorLine(draw(TEXTS)))
    if ending == "cut":  # the last layer stops mid-way (download error, interrupt, stall)
        return Scenario(
            Manifest(), *layers[:-1], draw(legacy_layer(cut=True)), *draw(failure_end())
        )
    return Scenario(Manifest(), *draw(failure_end()))


@st.composite
def transfer_scenario(draw: st.DrawFn) -> Scenario:
    total = draw(st.integers(1, 5_000_000))
    chunk = draw(
        st.one_of(st.just(TRANSFER_CHUNK), st.integers(1, 40).map(lambda n: -(-total // n)))
    )
    chunk = max(chunk, total // 200 + 1)  # at most ~200 lines
    rollback_at: int | None = None
    rollback_bytes = 0
    # A rollback only while bytes are missing: real Ollama cannot un-finish a transfer that
    # reached `total`; RunProgress ignores lines for a completed layer, while the
    # simulator's expected_downloaded() would count such a rollback and the regrowth.
    last_partial = (total - 1) // chunk * chunk
    if last_partial >= 1 and draw(st.booleans()):
        rollback_at = draw(st.integers(1, last_partial))
        rollback_bytes = draw(st.integers(0, total))
    body = TransferModel(
        total,
        chunk=chunk,
        present=draw(st.booleans()),
        rollback_at=rollback_at,
        rollback_bytes=rollback_bytes,
    )
    if draw(st.booleans()):
        return Scenario(Manifest(), body, *draw(success_tail(verify=False)))
    return Scenario(Manifest(), body, ErrorLine(draw(TEXTS)))


@st.composite
def client2_scenario(draw: st.DrawFn) -> Scenario:
    sizes = draw(st.lists(st.integers(1, 50_000_000), min_size=1, max_size=6))
    flushes = draw(st.integers(1, 20))
    body = Client2Layers(tuple(sizes), rate=max(sizes) / flushes / CLIENT2_TICK)
    if draw(st.booleans()):
        return Scenario(Manifest(), body, *draw(success_tail()))
    return Scenario(
        Manifest(), body, *draw(st.sampled_from([[], [Verify()]])), ErrorLine(draw(TEXTS))
    )


@st.composite
def bulk_scenario(draw: st.DrawFn) -> Scenario:
    layers = draw(st.integers(1, 5))
    body = Bulk(
        draw(st.integers(layers, 150)),
        layers,
        layer_size=draw(st.one_of(st.none(), st.integers(1, 10**12))),
        batch=draw(st.integers(1, 64)),
    )
    if draw(st.booleans()):
        return Scenario(Manifest(), body, *draw(success_tail()))
    return Scenario(Manifest(), body, Verify(), ErrorLine(draw(TEXTS)))


SCENARIOS = st.one_of(
    legacy_scenario(),  # the common real-world shape, so drawn three times as often
    legacy_scenario(),
    legacy_scenario(),
    transfer_scenario(),
    client2_scenario(),
    bulk_scenario(),
)


def expected_phase(scenario: Scenario) -> Phase:
    """The phase of the last phase-changing line the scenario sends."""
    phase = Phase.MANIFEST
    for step in scenario.steps:
        if isinstance(step, Verify):
            phase = Phase.VERIFY
        elif isinstance(step, Write):
            phase = Phase.WRITE
        elif isinstance(step, Prune):
            phase = Phase.PRUNE
        elif isinstance(step, Client2Layers | Bulk) or (
            isinstance(step, Layer | TransferModel) and step.wire_values()
        ):
            phase = Phase.DOWNLOAD
    return phase


def wire_layers(scenario: Scenario) -> int:
    """Distinct digests on the wire (a blob that finishes within its first tick has none)."""
    return sum(1 for view in scenario._layer_views() if view.values)


# --------------------------------------------------------------------------- chunkings


@st.composite
def chunkings(draw: st.DrawFn, body: bytes) -> list[bytes]:
    """Cut `body` anywhere: random cuts, every byte, or inside multi-byte UTF-8 characters."""
    mode = draw(st.sampled_from(["cuts", "bytes", "utf8", "whole-and-empty"]))
    if mode == "bytes":
        return [body[i : i + 1] for i in range(len(body))]
    if mode == "whole-and-empty":
        return [b"", body, b""]
    cuts = draw(st.lists(st.integers(0, len(body)), max_size=40))  # repeats give empty chunks
    continuation = [i for i, byte in enumerate(body) if 0x80 <= byte < 0xC0]
    if mode == "utf8" and continuation:
        cuts += draw(st.lists(st.sampled_from(continuation), min_size=1, max_size=16))
    bounds = [0, *sorted(cuts), len(body)]
    return [body[a:b] for a, b in itertools.pairwise(bounds)]


def decode(chunks: Sequence[bytes]) -> list[list[ProgressLine]]:
    """Feed chunks one by one; the lines each call returned (the last entry: `finish`)."""
    decoder = LineDecoder()
    batches = [decoder.feed(chunk) for chunk in chunks]
    batches.append(decoder.finish())
    return batches


@dataclass(frozen=True)
class Numbers:
    downloaded: int
    completed: int
    expected: int
    layers: int
    layers_completed: int
    regressions: int
    phase: Phase


def fold(batches: Sequence[Sequence[ProgressLine]], *, succeeded: bool) -> Numbers:
    """Fold lines the way `pull._Fold._read` does (one clock reading per chunk), with checks."""
    run = RunProgress(0.0)
    downloaded = regressions = 0
    for at, batch in enumerate(batches, start=1):
        for line in batch:
            run.apply(line, float(at))
            assert run.downloaded_bytes >= downloaded
            assert run.regressions >= regressions
            assert 0 <= run.completed_bytes <= run.expected_bytes
            downloaded, regressions = run.downloaded_bytes, run.regressions
    run.finish(float(len(batches) + 1), succeeded=succeeded)
    return Numbers(
        run.downloaded_bytes,
        run.completed_bytes,
        run.expected_bytes,
        run.layers,
        run.layers_completed,
        run.regressions,
        run.phase,
    )


# --------------------------------------------------------------------------- 1. valid streams


@PROPERTIES
@given(scenario=SCENARIOS, model=MODELS, data=st.data())
def test_any_chunking_of_a_valid_stream_gives_the_same_lines_and_numbers(
    scenario: Scenario, model: str, data: st.DataObject
) -> None:
    body = scenario.expected_body(model)
    if data.draw(st.booleans(), label="drop the final newline"):
        body = body.removesuffix(b"\n")
    chunks = data.draw(chunkings(body), label="chunks")
    assert b"".join(chunks) == body

    whole = decode([body])
    pieces = decode(chunks)
    lines = [line for batch in whole for line in batch]
    assert [line for batch in pieces for line in batch] == lines
    # An independent oracle: each line decoded on its own.
    assert lines == [msgspec.json.decode(raw, type=ProgressLine) for raw in body.splitlines()]

    succeeded = scenario.succeeds
    numbers = fold(whole, succeeded=succeeded)
    assert fold(pieces, succeeded=succeeded) == numbers
    assert numbers.downloaded == scenario.expected_downloaded()
    assert numbers.expected == scenario.expected_total()
    assert numbers.regressions == scenario.expected_regressions()
    assert numbers.layers == wire_layers(scenario)
    assert numbers.phase is expected_phase(scenario)
    assert numbers.completed <= numbers.expected
    if succeeded:
        assert numbers.completed == numbers.expected
        assert numbers.layers_completed == numbers.layers
        assert lines[-1] == ProgressLine(status="success")


# --------------------------------------------------------------------------- 2. arbitrary bytes

_STATUSES = (
    "pulling manifest",
    "pulling 26bd607a51eb",
    "pulling model",
    "verifying sha256 digest",
    "writing manifest",
    PRUNE,
    PRUNE_LEGACY,
    "success",
)
_JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    TEXTS,
    st.sampled_from(_STATUSES),
    st.lists(st.integers(), max_size=2),
)


def _json_line() -> st.SearchStrategy[bytes]:
    """A line that is close to a progress line: wrong types, big numbers, odd JSON."""
    fields = st.dictionaries(
        st.sampled_from(["status", "digest", "total", "completed", "error", "x"]),
        _JSON_VALUES,
        max_size=5,
    )
    return st.one_of(
        fields.map(go_json),
        _JSON_VALUES.map(go_json),
        st.sampled_from([b"[]", b'"x"', b"null", b"{", b"}", b"{} {}", b"\x0c", b"\r", b""]),
        st.binary(max_size=12),
    )


@st.composite
def hostile_bodies(draw: st.DrawFn) -> bytes:
    """Arbitrary bytes, or lines close to NDJSON with raw bytes sprinkled in."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=600))
    lines = draw(st.lists(_json_line(), max_size=12))
    newline = draw(st.sampled_from([b"\n", b"\r\n"]))
    body = newline.join(lines)
    # Sprinkle raw bytes (invalid UTF-8 included) into the middle of the text.
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(body)))
        body = body[:at] + draw(st.binary(min_size=1, max_size=3)) + body[at:]
    return body


@st.composite
def hostile_cases(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    """A hostile body and one chunking of it."""
    body = draw(hostile_bodies())
    return body, draw(chunkings(body))


def decode_until_error(chunks: Sequence[bytes]) -> tuple[list[ProgressLine], bool]:
    """Lines decoded before the first `ProtocolError`, and whether one was raised.

    Any other exception propagates and fails the property.
    """
    decoder = LineDecoder()
    lines: list[ProgressLine] = []
    try:
        for chunk in chunks:
            lines += decoder.feed(chunk)
        lines += decoder.finish()
    except ProtocolError:
        return lines, True
    return lines, False


_BAD_NUMBERS = b'{"total":"1"}\n{"total":-1}\n{"total":9223372036854775808}'


@PROPERTIES
@given(case=hostile_cases())
@example(case=(b'{"status":"\xff\xfe"}\n', [b'{"status":"\xff', b'\xfe"}\n']))  # bad UTF-8
@example(case=(_BAD_NUMBERS, [_BAD_NUMBERS[:5], _BAD_NUMBERS[5:]]))
def test_arbitrary_bytes_raise_only_protocol_error(case: tuple[bytes, list[bytes]]) -> None:
    body, chunks = case
    for attempt in ([body], chunks):
        lines, _ = decode_until_error(attempt)
        for line in lines:
            assert isinstance(line, ProgressLine)
            assert line.status is None or isinstance(line.status, str)
            assert line.digest is None or isinstance(line.digest, str)
            assert line.error is None or isinstance(line.error, str)
            for count in (line.total, line.completed):
                assert count is None or (type(count) is int and 0 <= count <= INT64_MAX)


@PROPERTIES
@given(case=hostile_cases())
@example(case=(b"{} {}\n\x0c\n", [b"{} {}\n", b"\x0c\n"]))  # fails whole, passes in two
def test_any_chunking_of_arbitrary_bytes_gives_the_same_lines_and_error(
    case: tuple[bytes, list[bytes]],
) -> None:
    body, chunks = case
    assert decode_until_error(chunks) == decode_until_error([body])


def test_deeply_nested_line_is_a_protocol_error() -> None:
    depth = 1000
    line = b'{"x":' * depth + b"1" + b"}" * depth + b"\n"
    with pytest.raises(ProtocolError):
        LineDecoder().feed(line)


# --------------------------------------------------------------------------- 3. arbitrary lines

_DIGESTS = ("sha256:" + "a" * 64, "sha256:" + "b" * 64, "sha256:model", "")
_COUNTS = st.one_of(
    st.none(),
    st.integers(0, 1000),
    st.integers(0, INT64_MAX),
    st.sampled_from([0, 1, INT64_MAX - 1, INT64_MAX]),
)
PROGRESS_LINES = st.builds(
    ProgressLine,
    status=st.one_of(
        st.none(),
        st.sampled_from(_STATUSES),
        TEXTS.map(prune_failed),
        TEXTS,
    ),
    digest=st.one_of(st.none(), st.sampled_from(_DIGESTS), TEXTS),
    total=_COUNTS,
    completed=_COUNTS,
    error=st.one_of(st.none(), st.none(), TEXTS),
)


@PROPERTIES
@given(
    lines=st.lists(
        st.tuples(PROGRESS_LINES, st.floats(0, 10, allow_nan=False, allow_infinity=False)),
        max_size=60,
    ),
    succeeded=st.booleans(),
)
def test_any_line_sequence_keeps_the_counters_sane(
    lines: list[tuple[ProgressLine, float]], succeeded: bool
) -> None:
    run = RunProgress(0.0)
    now = 0.0
    downloaded = regressions = 0
    for line, gap in lines:
        now += gap
        run.apply(line, now)
        assert run.downloaded_bytes >= downloaded
        assert run.regressions >= regressions
        assert 0 <= run.completed_bytes <= run.expected_bytes
        assert 0 <= run.layers_completed <= run.layers
        downloaded, regressions = run.downloaded_bytes, run.regressions
    run.finish(now + 1.0, succeeded=succeeded)
    assert run.downloaded_bytes >= downloaded
    assert run.regressions == regressions
    assert 0 <= run.completed_bytes <= run.expected_bytes
    assert 0 <= run.layers_completed <= run.layers
    if succeeded:
        assert run.layers_completed == run.layers
        assert run.completed_bytes == run.expected_bytes
    assert all(seconds >= 0 for seconds in run.phase_durations.values())
    assert math.isclose(sum(run.phase_durations.values()), now + 1.0, abs_tol=1e-6)


@PROPERTIES
@given(lines=st.lists(PROGRESS_LINES, max_size=40))
def test_the_fold_ends_the_run_exactly_where_protocol_says(lines: list[ProgressLine]) -> None:
    events = [event_of(line) for line in lines]
    for line, event in zip(lines, events, strict=True):
        assert is_layer_progress(line) == (event is line)  # the test the fold inlines
    expected = next((event for event in events if isinstance(event, RunEnded)), None)
    run = RunProgress(0.0)
    assert run.apply_lines(lines, 1.0) == expected
    if expected is not None:  # the lines after the verdict were not folded
        cut = next(i for i, event in enumerate(events) if event is expected)
        again = RunProgress(0.0)
        again.apply_lines(lines[:cut], 1.0)
        assert (run.downloaded_bytes, run.layers, run.phase) == (
            again.downloaded_bytes,
            again.layers,
            again.phase,
        )


# --------------------------------------------------------------------------- 4. the simulator's ticks
# The simulator computes a layer's lines in closed form (ollama_sim/ticks.py), so a layer of
# 10**12 bytes costs what a small one does. These are the step-by-step loops it replaced: the
# lines, their timing and the counts a client folds from them must be the same.


def _layer_by_steps(layer: Layer) -> tuple[tuple[int, ...], float]:
    step = layer.step_bytes
    latency = layer.latency_ticks
    if latency is None:
        latency = 0 if layer.size - layer.resume_from <= step else 1
    values = [layer.resume_from] * latency
    completed, tick, rolled = layer.resume_from, latency, False
    while completed + step < layer.size:
        completed += step
        tick += 1
        values.append(completed)
        if not rolled and layer.rollback_at is not None and completed >= layer.rollback_at:
            rolled = True
            completed = max(0, completed - layer.rollback_bytes)
            tick += 1
            values.append(completed)
    return tuple(values), tick + (layer.size - completed) / step


def _transfer_by_steps(body: TransferModel) -> tuple[int, ...]:
    values: list[int] = []
    completed, rolled = 0, False
    while completed < body.total:
        completed = min(completed + body.chunk, body.total)
        values.append(completed)
        if not rolled and body.rollback_at is not None and completed >= body.rollback_at:
            rolled = True
            completed = max(0, completed - body.rollback_bytes)
            values.append(completed)
    return tuple(values)


def _client2_by_steps(body: Client2Layers) -> list[tuple[int, ...]]:
    step = max(1, round(body.rate * CLIENT2_TICK))
    done_at = max(body.sizes) / step
    flushes = [tuple(0 for _ in body.sizes)]
    tick = 1
    while tick < done_at:
        flushes.append(tuple(min(tick * step, size) for size in body.sizes))
        tick += 1
    flushes.append(body.sizes)
    return flushes


def _climb_by_steps(values: Sequence[int]) -> tuple[int, int, int]:
    grown = regressions = 0
    for previous, value in itertools.pairwise(values):
        grown, regressions = (
            (grown + value - previous, regressions)
            if value >= previous
            else (grown, regressions + 1)
        )
    return grown, regressions, values[-1] if values else 0


def _check_ticks(ticks: Ticks, data: st.DataObject) -> None:
    listed = list(ticks)
    assert len(ticks) == len(listed)
    assert ticks.climb() == _climb_by_steps(listed)
    if listed:
        index = data.draw(st.integers(-len(listed), len(listed) - 1), label="index")
        assert ticks[index] == listed[index]
    start, stop = data.draw(st.tuples(st.integers(-5, 40), st.integers(-5, 40)), label="slice")
    assert list(ticks[start:stop]) == listed[start:stop]


@PROPERTIES
@given(
    layer=st.one_of(legacy_layer(), legacy_layer(cut=True)),
    settle=st.integers(0, 3),
    data=st.data(),
)
def test_a_layers_closed_form_ticks_are_the_step_by_step_ones(
    layer: Layer, settle: int, data: st.DataObject
) -> None:
    if layer.present:
        assert tuple(layer.wire_values()) == (layer.size,)
        return
    if layer.stop_after is None:
        layer = dataclasses.replace(layer, settle_ticks=settle)
    values, done_at = layer._schedule()
    assert (tuple(values), done_at) == _layer_by_steps(layer)
    _check_ticks(layer.wire_values(), data)


@PROPERTIES
@given(scenario=transfer_scenario(), data=st.data())
def test_a_transfers_closed_form_lines_are_the_step_by_step_ones(
    scenario: Scenario, data: st.DataObject
) -> None:
    body = scenario.steps[1]
    assert isinstance(body, TransferModel)
    expected = () if body.present else _transfer_by_steps(body)
    assert tuple(body.wire_values()) == expected
    _check_ticks(body.wire_values(), data)


@PROPERTIES
@given(scenario=client2_scenario())
def test_client2s_closed_form_flushes_are_the_step_by_step_ones(scenario: Scenario) -> None:
    body = scenario.steps[1]
    assert isinstance(body, Client2Layers)
    flushes = _client2_by_steps(body)
    views = body.layer_views(Context(""))
    assert [tuple(view.values) for view in views] == [
        tuple(f[i] for f in flushes) for i in range(len(body.sizes))
    ]
    emitted = [a for a in body.actions(Context("")) if isinstance(a, Emit)]
    assert len(emitted) == len(flushes)
