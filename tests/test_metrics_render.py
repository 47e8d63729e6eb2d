"""The cached `/metrics` renderer writes exactly what prometheus_client writes.

`exporter.metrics.Exposition` re-renders only the series whose values changed; these
tests drive random states through random changes and compare its bytes with
`generate_latest` (text and OpenMetrics) after every change, then check the aiohttp
handler answers like `make_aiohttp_handler` (content type, gzip, `name[]` filters).
"""

from __future__ import annotations

import asyncio
import gzip

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.aiohttp import make_aiohttp_handler
from prometheus_client.exposition import choose_encoder

from exporter.metrics import PullRegistry, build_registry, make_metrics_handler
from exporter.progress import RunProgress
from exporter.protocol import ProgressLine, Reason
from exporter.state import ExporterState, PairState, RunResult

ACCEPTS = (
    "",
    "text/plain;version=0.0.4",
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
    "application/openmetrics-text",
    "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8",
    "text/plain;version=1.0.0;escaping=underscores",
)
DIGEST = "sha256:" + "a" * 64

labels = st.text(st.characters(codec="utf-8"), min_size=1, max_size=8)
numbers = st.integers(0, 2**62)
times = st.floats(0, 2e9, allow_nan=False)
reasons = st.sampled_from(list(Reason))


def expected(registry: PullRegistry, accept: str) -> bytes:
    encoder, _ = choose_encoder(accept)
    return encoder(registry)


def rendered(registry: PullRegistry, accept: str) -> bytes:
    result = registry.render(accept)
    assert result is not None
    return result[0]


@st.composite
def changes(draw: st.DrawFn) -> list[tuple[str, object]]:
    kinds = st.sampled_from(
        ["start", "line", "finish_ok", "finish_fail", "skip", "next", "interval", "abandon"]
    )
    return draw(st.lists(st.tuples(kinds, numbers), max_size=12))


def apply_change(pair: PairState, kind: str, value: int) -> None:
    run = pair.current
    if kind == "start" and run is None:
        pair.start_run(RunProgress(0.0))
    elif kind == "line" and run is not None:
        run.apply(ProgressLine("pulling x", DIGEST, value + 10, value), 1.0)
    elif kind in {"finish_ok", "finish_fail"} and run is not None:
        reason = None if kind == "finish_ok" else list(Reason)[value % len(Reason)]
        run.finish(2.0, succeeded=reason is None)
        pair.finish_run(run, RunResult(reason), ended_at=1.7e9 + value, duration=value / 7)
    elif kind == "abandon" and run is not None:
        pair.abandon_run(run)
    elif kind == "skip":
        pair.skipped_total += 1
    elif kind == "next":
        pair.next_run_at = 1.7e9 + value / 3
    elif kind == "interval":
        pair.interval = float(value % 100_000 + 1)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(labels, labels), min_size=0, max_size=6, unique=True),
    st.lists(st.tuples(st.integers(0, 5), changes()), max_size=6),
    st.dictionaries(labels, st.sampled_from([None, 0.0, 1.0]), max_size=3),
)
def test_same_bytes_as_prometheus_client_through_changes(
    keys: list[tuple[str, str]],
    rounds: list[tuple[int, list[tuple[str, object]]]],
    server_up: dict[str, float | None],
) -> None:
    state = ExporterState(server_up=server_up, config_reload_successful=True)
    for server, model in keys:
        state.pairs[server, model] = PairState(server, model, 3600.0)
    registry = build_registry(state)
    for accept in ACCEPTS:
        assert rendered(registry, accept) == expected(registry, accept)
    for which, steps in rounds:
        pairs = list(state.pairs.values())
        if pairs:
            pair = pairs[which % len(pairs)]
            for kind, value in steps:
                assert isinstance(value, int)
                apply_change(pair, kind, value)
        if which == 5 and pairs:  # the pair leaves the config and comes back fresh
            del state.pairs[pairs[0].server, pairs[0].model]
            state.pairs[pairs[0].server, pairs[0].model] = PairState(
                pairs[0].server, pairs[0].model, 60.0
            )
        for accept in ACCEPTS:
            assert rendered(registry, accept) == expected(registry, accept)


def test_unusual_formats_are_left_to_the_library() -> None:
    registry = build_registry(ExporterState())
    assert registry.render("application/openmetrics-text;version=2.0.0") is None
    assert registry.render("text/plain;version=1.0.0;escaping=dots") is None


async def _answers(handler_registry: PullRegistry, *, cached: bool) -> list[tuple[str, bytes]]:
    app = web.Application()
    handler = (
        make_metrics_handler(handler_registry) if cached else make_aiohttp_handler(handler_registry)
    )
    app.router.add_get("/metrics", handler)
    answers = []
    async with TestClient(TestServer(app)) as client:
        for accept in ACCEPTS:
            for encoding in ("gzip", "identity"):
                for query in ("", "?name[]=ollama_pull_runs_total"):
                    response = await client.get(
                        "/metrics" + query,
                        headers={"Accept": accept, "Accept-Encoding": encoding},
                        auto_decompress=False,
                    )
                    body = await response.read()
                    if response.headers.get("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                    assert response.status == 200
                    answers.append((response.headers["Content-Type"], body))
    return answers


def test_handler_answers_like_prometheus_client() -> None:
    state = ExporterState(server_up={"a": 1.0}, config_reload_successful=True)
    pair = state.pairs["a", "m:latest"] = PairState("a", "m:latest", 60.0)
    run = RunProgress(0.0)
    pair.start_run(run)
    run.apply(ProgressLine("pulling x", DIGEST, 1000, 400), 1.0)
    registry = build_registry(state)

    async def both() -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
        return await _answers(registry, cached=True), await _answers(registry, cached=False)

    ours, theirs = asyncio.run(both())
    assert ours == theirs
