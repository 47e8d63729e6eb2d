"""The simulator emits exactly the wire shapes docs/simulator.md describes (Ollama's own).

Every test talks to a running simulator over a real socket with a plain aiohttp client.

The tests that start processes are in tests/e2e/test_ollama_sim_process.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import pytest

from ollama_sim import (
    NOT_FOUND,
    PRUNE,
    PRUNE_LEGACY,
    TICK,
    Bulk,
    Disconnect,
    ErrorLine,
    HttpError,
    Layer,
    Manifest,
    OllamaSimulator,
    Raw,
    Scenario,
    ScenarioError,
    Sleep,
    Stall,
    Success,
    TransferModel,
    Verify,
    Write,
    bulk_pull,
    canonical_model,
    client2_pull,
    error_after_manifest,
    fresh_pull,
    interrupted,
    layer_digest,
    load_scenario_file,
    not_found,
    parse_scenario_file,
    pre_stream_error,
    progress_line,
    prune_failed,
    resumed,
    scenario_from_json,
    stalled,
    transfer_pull,
    up_to_date,
)
from tests.virtual_time import run_virtual

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Coroutine
    from pathlib import Path

    from multidict import CIMultiDictProxy
MODEL = "llama3.2:1b"
SCALE = 0.01  # 0.6 ms ticks: every stream here ends within a few tens of milliseconds
KEY_ORDER = ["status", "digest", "total", "completed"]
TAIL = [
    b'{"status":"verifying sha256 digest"}',
    b'{"status":"writing manifest"}',
    b'{"status":"success"}',
]


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    chunks: list[bytes]  # the body as HTTP chunks, each reassembled whole

    @property
    def body(self) -> bytes:
        return b"".join(self.chunks)

    @property
    def lines(self) -> list[bytes]:
        return self.body.splitlines()

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines]


async def read_chunks(response: aiohttp.ClientResponse) -> list[bytes]:
    chunks, current = [], b""
    async for data, end_of_chunk in response.content.iter_chunks():
        current += data
        if end_of_chunk:
            chunks.append(current)
            current = b""
    if current:
        chunks.append(current)
    return chunks


async def pull(url: str, body: object = None, *, data: bytes | None = None) -> Reply:
    payload = data if data is not None else json.dumps(body).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{url}/api/pull", data=payload) as response,
    ):
        return Reply(response.status, response.headers, await read_chunks(response))


async def collect_lines(response: aiohttp.ClientResponse, into: list[bytes]) -> None:
    async for line in response.content:
        into.append(line)  # noqa: PERF401 - keeps what arrived before the stream breaks


@contextlib.asynccontextmanager
async def serving(sim: OllamaSimulator) -> AsyncIterator[str]:
    url = await sim.start()
    try:
        yield url
    finally:
        await sim.stop()


async def pull_one(scenario: Scenario, model: str = MODEL, **body: object) -> Reply:
    sim = OllamaSimulator({model: [scenario]}, time_scale=SCALE)
    async with serving(sim) as url:
        return await pull(url, {"model": model, **body})


def layer_runs(events: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Group consecutive lines that carry a digest, by digest."""
    with_digest = [e for e in events if "digest" in e]
    return [list(group) for _, group in itertools.groupby(with_digest, key=lambda e: e["digest"])]


# --------------------------------------------------------------------------- legacy shapes


def test_fresh_pull_has_the_legacy_downloader_shape() -> None:
    sizes = [20_000_000, 13_000_000, 400]  # the last one fits in one tick: no line (§1a)
    scenario = fresh_pull(sizes, rate=50_000_000)
    reply = run(pull_one(scenario))

    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/x-ndjson"
    assert reply.headers["Transfer-Encoding"] == "chunked"
    assert "Content-Length" not in reply.headers
    assert all(chunk.endswith(b"\n") and chunk.count(b"\n") == 1 for chunk in reply.chunks)
    assert reply.body == scenario.expected_body(MODEL)
    assert reply.lines[0] == b'{"status":"pulling manifest"}'
    assert reply.lines[-3:] == TAIL

    events = reply.events()
    runs = layer_runs(events)
    digests = [run_[0]["digest"] for run_ in runs]
    assert len(digests) == len(set(digests)), "layer lines never interleave"
    assert digests == list(scenario.digests(MODEL)[:2])
    assert scenario.digests(MODEL)[2] not in reply.body.decode()
    step = round(50_000_000 * TICK)
    for run_, size in zip(runs, sizes, strict=False):
        assert all(e["status"] == f"pulling {e['digest'][7:19]}" for e in run_)
        assert all(e["total"] == size for e in run_)
        assert "completed" not in run_[0], "no bytes yet on the first tick"
        assert run_[-1]["completed"] < size, "no final 100% line"
        completed = [e.get("completed", 0) for e in run_]
        assert completed == [step * k for k in range(len(completed))]
        assert completed[-1] + step >= size


def test_every_line_is_compact_go_json_in_key_order() -> None:
    scenarios = [
        fresh_pull([7_000_000, 300], prune=True),
        resumed([9_000_000], 2_000_000),
        transfer_pull(70_000),
        client2_pull([1_000_000, 300_000], rate=4_000_000),
        not_found(),
    ]
    for scenario in scenarios:
        reply = run(pull_one(scenario))
        for line in reply.lines:
            decoded = json.loads(line)
            keys = list(decoded)
            assert keys == [k for k in KEY_ORDER if k in keys] or keys == ["error"]
            assert json.dumps(decoded, separators=(",", ":")).encode() == line
            assert all(decoded[k] != 0 for k in ("total", "completed") if k in decoded)


def test_error_text_is_html_escaped_like_go() -> None:
    text = 'max retries exceeded: Get "https://r2.example/data?X-Amz-A=1&X-Amz-B=<2>"'
    reply = run(pull_one(error_after_manifest(text)))
    assert reply.lines[1] == (
        b'{"error":"max retries exceeded: Get \\"https://r2.example/data?X-Amz-A=1'
        b'\\u0026X-Amz-B=\\u003c2\\u003e\\""}'
    )
    assert b"&" not in reply.body
    assert reply.events()[1] == {"error": text}


def test_up_to_date_repull_is_one_full_line_per_layer() -> None:
    reply = run(pull_one(up_to_date([4_000_000_000, 260])))
    digests = [
        "sha256:" + hashlib.sha256(f"{MODEL}:{index}".encode()).hexdigest() for index in (0, 1)
    ]
    assert reply.lines == [
        b'{"status":"pulling manifest"}',
        f'{{"status":"pulling {digests[0][7:19]}","digest":"{digests[0]}",'
        f'"total":4000000000,"completed":4000000000}}'.encode(),
        f'{{"status":"pulling {digests[1][7:19]}","digest":"{digests[1]}",'
        f'"total":260,"completed":260}}'.encode(),
        *TAIL,
    ]


def test_a_blob_finishing_within_one_tick_has_no_line() -> None:
    scenario = Scenario(Manifest(), Layer(5_000), Layer(5_000, present=True), Write(), Success())
    reply = run(pull_one(scenario))
    first, second = scenario.digests(MODEL)
    assert first.encode() not in reply.body
    assert [e["digest"] for e in reply.events() if "digest" in e] == [second]
    assert scenario.expected_total() == 5_000


def test_resumed_layer_starts_at_the_bytes_on_disk() -> None:
    scenario = resumed([30_000_000, 12_000_000], [10_000_000, 0])
    reply = run(pull_one(scenario))
    first, second = layer_runs(reply.events())
    assert first[0]["completed"] == 10_000_000
    assert "completed" not in second[0]
    assert scenario.expected_downloaded() == 20_000_000 + 12_000_000


def test_rollback_makes_completed_go_down_once() -> None:
    layer = Layer(40_000_000, rate=100_000_000, rollback_at=18_000_000, rollback_bytes=7_000_000)
    scenario = Scenario(Manifest(), layer, Verify(), Write(), Success())
    reply = run(pull_one(scenario))
    (layer_lines,) = layer_runs(reply.events())
    completed = [e.get("completed", 0) for e in layer_lines]
    assert completed == [0, 6_000_000, 12_000_000, 18_000_000, 11_000_000, 17_000_000,
                         23_000_000, 29_000_000, 35_000_000]  # fmt: skip
    assert scenario.expected_regressions() == 1
    assert scenario.expected_downloaded() == 40_000_000 + 7_000_000


@pytest.mark.parametrize("text", [PRUNE, PRUNE_LEGACY, prune_failed("invalid character")])
def test_prune_line_variants(text: str) -> None:
    reply = run(pull_one(fresh_pull([1_000], prune=text)))
    assert reply.lines[-3:] == [
        b'{"status":"writing manifest"}',
        json.dumps({"status": text}, separators=(",", ":")).encode(),
        b'{"status":"success"}',
    ]


def test_success_line_then_close_after_linger() -> None:
    reply = run(pull_one(Scenario(Manifest(), Success(linger=1.0))))
    assert reply.lines == [b'{"status":"pulling manifest"}', b'{"status":"success"}']


# --------------------------------------------------------------------------- other paths


def test_transfer_path_shape() -> None:
    reply = run(pull_one(transfer_pull(100_000, chunk=32_768)))
    assert reply.lines == [
        b'{"status":"pulling manifest"}',
        *(
            f'{{"status":"pulling model","digest":"sha256:model","total":100000,'
            f'"completed":{c}}}'.encode()
            for c in (32_768, 65_536, 98_304, 100_000)
        ),
        b'{"status":"writing manifest"}',
        b'{"status":"success"}',
    ]
    present = run(pull_one(Scenario(Manifest(), TransferModel(100, present=True), Success())))
    assert present.lines == [b'{"status":"pulling manifest"}', b'{"status":"success"}']


def test_client2_path_shape() -> None:
    sizes = [1_000_000, 2_500_000]
    scenario = client2_pull(sizes, rate=10_000_000)  # 1 MB per 100 ms tick and layer
    reply = run(pull_one(scenario))
    events = reply.events()
    assert events[0] == {"status": "pulling manifest"}
    assert [e["status"] for e in events[-3:]] == [
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    progress = events[1:-3]
    assert all("status" not in e for e in progress)
    digests = list(scenario.digests(MODEL))
    flushes = [progress[i : i + 2] for i in range(0, len(progress), 2)]
    assert all([e["digest"] for e in flush] == digests for flush in flushes)
    assert [[e.get("completed", 0) for e in flush] for flush in flushes] == [
        [0, 0],
        [1_000_000, 1_000_000],
        [1_000_000, 2_000_000],
        [1_000_000, 2_500_000],
    ]
    assert len(reply.chunks) == 1 + len(flushes) + 3  # one write per flush


def test_bulk_mode_streams_many_lines_in_few_writes() -> None:
    scenario = bulk_pull(3_000, layers=4, batch=500)
    reply = run(pull_one(scenario))
    assert reply.body == scenario.expected_body(MODEL)
    assert len(reply.lines) == 1 + 3_000 + 3
    assert len(reply.chunks) == 1 + 6 + 3
    runs = layer_runs(reply.events())
    assert [len(r) for r in runs] == [750, 750, 750, 750]
    assert all("completed" not in r[0] and r[-1]["completed"] < r[-1]["total"] for r in runs)
    assert scenario.expected_downloaded() == sum(scenario.layer_sizes) == 3_000_000_000


def test_raw_bytes_are_sent_verbatim() -> None:
    hostile = b"<html>\xff\xfe not json, no newline"
    reply = run(pull_one(Scenario(Manifest(), Raw(hostile), Raw(b"x" * 200_000))))
    assert reply.body == b'{"status":"pulling manifest"}\n' + hostile + b"x" * 200_000


def test_line_counts_do_not_depend_on_time_scale() -> None:
    scenario = fresh_pull([30_000_000, 9_000_000], rate=80_000_000)

    async def body_at(scale: float) -> bytes:
        sim = OllamaSimulator({MODEL: [scenario]}, time_scale=scale)
        async with serving(sim) as url:
            return (await pull(url, {"model": MODEL})).body

    assert run(body_at(0.0)) == run(body_at(0.02)) == scenario.expected_body(MODEL)


# --------------------------------------------------------------------------- errors


def test_error_after_manifest_arrives_on_http_200_and_ends_the_stream() -> None:
    reply = run(pull_one(error_after_manifest("pull model manifest: 401")))
    assert reply.status == 200
    assert reply.lines == [
        b'{"status":"pulling manifest"}',
        b'{"error":"pull model manifest: 401"}',
    ]


def test_unknown_model_is_not_found_after_manifest() -> None:
    async def scenario() -> Reply:
        async with serving(OllamaSimulator(time_scale=SCALE)) as url:
            return await pull(url, {"model": "nosuchmodel"})

    reply = run(scenario())
    assert reply.status == 200
    assert reply.lines == [
        b'{"status":"pulling manifest"}',
        b'{"error":"pull model manifest: file does not exist"}',
    ]
    assert NOT_FOUND == "pull model manifest: file does not exist"


@pytest.mark.parametrize(
    ("scenario", "status", "content_type", "body"),
    [
        (
            pre_stream_error(400, "invalid model name"),
            400,
            "application/json; charset=utf-8",
            b'{"error":"invalid model name"}',
        ),
        (
            pre_stream_error(500, "insecure protocol http"),
            500,
            "application/json",
            b'{"error":"insecure protocol http"}',
        ),
        (Scenario(Sleep(0.5), HttpError(403)), 403, None, b""),
        (
            Scenario(HttpError(503, "<html>bad gateway</html>", "text/html")),
            503,
            "text/html",
            b"<html>bad gateway</html>",
        ),
    ],
)
def test_pre_stream_errors(
    scenario: Scenario, status: int, content_type: str | None, body: bytes
) -> None:
    reply = run(pull_one(scenario))
    assert reply.status == status
    assert reply.headers.get("Content-Type") == content_type
    assert reply.body == body
    assert "Transfer-Encoding" not in reply.headers


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", "missing request body"),
        (b" \n", "missing request body"),
        (b"!", "invalid character '!' looking for beginning of value"),
        (b'{"model":', "unexpected EOF"),
        (b'{"model" "x"}', "invalid character '\"' after object key"),
        (b'{"model":"x",}', "invalid character '}' looking for beginning of object key string"),
        (b"[]", "json: cannot unmarshal array into Go value of type api.PullRequest"),
        (
            b'{"model":"x","stream":"yes"}',
            "json: cannot unmarshal string into Go struct field PullRequest.stream of type bool",
        ),
        (
            b'{"model":7}',
            "json: cannot unmarshal number into Go struct field PullRequest.model of type string",
        ),
        (b"{}", "invalid model name"),
        (b'{"model":""}', "invalid model name"),
        (b'{"model":"bad name!"}', "invalid model name"),
        (b'{"model":"x:local:cloud"}', 'use either :local or :cloud, not both: "x:local:cloud"'),
    ],
)
def test_invalid_requests_get_400_like_ollama(data: bytes, error: str) -> None:
    async def scenario() -> Reply:
        async with serving(OllamaSimulator(time_scale=SCALE)) as url:
            return await pull(url, data=data)

    reply = run(scenario())
    assert reply.status == 400
    assert reply.headers["Content-Type"] == "application/json; charset=utf-8"
    assert json.loads(reply.body) == {"error": error}


def test_server_disconnect_cuts_the_stream() -> None:
    scenario = interrupted([20_000_000], after_lines=2)
    sim = OllamaSimulator({MODEL: [scenario]}, time_scale=SCALE)

    async def scenario_run() -> list[bytes]:
        lines: list[bytes] = []
        async with serving(sim) as url, aiohttp.ClientSession() as session:
            async with session.post(f"{url}/api/pull", json={"model": MODEL}) as response:
                with pytest.raises(aiohttp.ClientPayloadError):
                    await collect_lines(response, lines)
            await sim.until(lambda: sim.requests[0].outcome != "open")
        return lines

    lines = run(scenario_run())
    assert b"".join(lines) == scenario.expected_body(MODEL)
    assert len(lines) == 3
    assert sim.requests[0].outcome == "server_disconnected"
    assert not sim.requests[0].client_disconnected


def test_reset_disconnect_is_a_client_error() -> None:
    scenario = Scenario(Manifest(), Disconnect(reset=True))
    sim = OllamaSimulator({MODEL: [scenario]}, time_scale=SCALE)

    async def scenario_run() -> None:
        async with serving(sim) as url, aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):
                async with session.post(f"{url}/api/pull", json={"model": MODEL}) as response:
                    await response.read()

    run(scenario_run())


def test_stream_false_buffers_like_wait_for_stream() -> None:
    success = run(pull_one(fresh_pull([5_000_000]), stream=False))
    assert (success.status, success.headers["Content-Type"], success.body) == (
        200,
        "application/json",
        b'{"status":"success"}',
    )
    failure = run(pull_one(not_found(), stream=False))
    assert (failure.status, failure.headers["Content-Type"], failure.body) == (
        500,
        "application/json",
        b'{"error":"pull model manifest: file does not exist"}',
    )


# --------------------------------------------------------------------------- other endpoints


def test_version_root_and_get_on_pull() -> None:
    async def scenario() -> list[tuple[int, str | None, bytes]]:
        out = []
        async with serving(OllamaSimulator()) as url, aiohttp.ClientSession() as session:
            for path in ("/api/version", "/", "/api/pull"):
                async with session.get(url + path) as response:
                    out.append(
                        (
                            response.status,
                            response.headers.get("Content-Type"),
                            await response.read(),
                        )
                    )
        return out

    assert run(scenario()) == [
        (200, "application/json; charset=utf-8", b'{"version":"0.17.4"}'),
        (200, "text/plain; charset=utf-8", b"Ollama is running"),
        (405, "text/plain", b"405 method not allowed"),
    ]


# --------------------------------------------------------------------------- server behaviour


def test_runs_play_in_sequence_per_model() -> None:
    sizes = [8_000_000, 500]
    fresh, current = fresh_pull(sizes), up_to_date(sizes)
    sim = OllamaSimulator(time_scale=SCALE)
    sim.set_runs(MODEL, [fresh, current])
    sim.set_runs("gemma3", [not_found()])

    async def scenario() -> list[bytes]:
        async with serving(sim) as url:
            names = [MODEL, MODEL, "gemma3:latest", MODEL]
            return [(await pull(url, {"model": name})).body for name in names]

    first, second, other, third = run(scenario())
    assert first == fresh.expected_body(MODEL)
    assert second == third == current.expected_body(MODEL)
    assert other == not_found().expected_body("gemma3")
    assert fresh.digests(MODEL) == current.digests(MODEL)
    assert [r.run_index for r in sim.requests] == [0, 1, 0, 2]
    assert sim.run_count(MODEL) == 3


def test_model_wins_over_legacy_name_and_keys_match_case_insensitively() -> None:
    sim = OllamaSimulator({"a": [not_found()], "b": [up_to_date([10])]}, time_scale=SCALE)

    async def scenario() -> list[str | None]:
        async with serving(sim) as url:
            await pull(url, {"name": "a", "model": "b"})
            await pull(url, {"name": "a"})
            await pull(url, {"Model": "b"})
        return [r.model for r in sim.requests]

    assert run(scenario()) == ["b", "a", "b"]
    assert [r.run_index for r in sim.requests] == [0, 0, 1]


def test_requests_are_recorded_with_body_and_headers() -> None:
    sim = OllamaSimulator({MODEL: [fresh_pull([1_000])]}, time_scale=SCALE)
    body = {"model": MODEL, "insecure": False, "stream": True}

    async def scenario() -> None:
        async with serving(sim) as url, aiohttp.ClientSession() as session:
            headers = {"Authorization": "Bearer t0ken"}
            async with session.post(f"{url}/api/pull", json=body, headers=headers) as response:
                await response.read()

    run(scenario())
    (record,) = sim.requests
    assert record.body == body
    assert record.headers["authorization"] == "Bearer t0ken"
    assert record.model == MODEL
    assert record.outcome == "completed"
    assert record.status == 200
    assert record.lines_sent == 4  # the 1 kB blob finishes within a tick: no line
    assert record.duration is not None
    assert record.duration >= 0
    # When each phase line went out, in the order sent (what a client's timings are held to).
    sent = record.sent_at
    assert list(sent) == [
        "pulling manifest",
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    assert sorted(sent.values()) == list(sent.values())
    assert record.started <= sent["pulling manifest"]


def test_concurrency_and_client_disconnects_are_recorded() -> None:
    sim = OllamaSimulator(
        {"a": [stalled(50_000_000)], "b": [stalled(50_000_000)]}, time_scale=SCALE
    )

    async def scenario() -> None:
        async with serving(sim) as url, aiohttp.ClientSession() as session:
            async with contextlib.AsyncExitStack() as streams:
                for model in ("a", "a", "a", "b"):
                    response = await streams.enter_async_context(
                        session.post(f"{url}/api/pull", json={"model": model})
                    )
                    assert await response.content.readline() == b'{"status":"pulling manifest"}\n'
                await sim.until(lambda: sim.active_overall == 4)
                assert sim.active == {"a": 3, "b": 1}
            # leaving the stack closes the four connections mid-stream
            await sim.until(lambda: all(r.outcome != "open" for r in sim.requests))
            assert sim.active == {}

    run(scenario())
    assert sim.max_concurrent == {"a": 3, "b": 1}
    assert sim.max_concurrent_overall == 4
    assert all(r.client_disconnected for r in sim.requests)


def test_stop_closes_open_streams_promptly() -> None:
    sim = OllamaSimulator({MODEL: [stalled(50_000_000)]}, time_scale=SCALE)

    async def scenario() -> float:
        url = await sim.start()
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/api/pull", json={"model": MODEL}) as response,
        ):
            await response.content.readline()
            loop = asyncio.get_running_loop()
            started = loop.time()
            await sim.stop()
            elapsed = loop.time() - started
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()
        return elapsed

    assert run_virtual(scenario()) < 2.0  # virtual seconds: a grace period would show
    assert sim.requests[0].outcome == "stopped"


def test_stop_is_bounded_even_when_the_client_does_not_read() -> None:
    # A stream the client never reads fills the socket buffers; stop() must still return.
    sim = OllamaSimulator({MODEL: [Scenario(Manifest(), Bulk(200_000, 2), Success())]})

    async def scenario() -> float:
        url = await sim.start()
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/api/pull", json={"model": MODEL}),
        ):
            await sim.until(lambda: sim.requests[0].bytes_sent > 0)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await sim.stop()
            return loop.time() - started

    assert run_virtual(scenario()) < 2.0  # virtual seconds: a grace period would show
    assert sim.requests[0].outcome == "stopped"


def test_thread_mode_stops_streams_and_joins_its_thread() -> None:
    sim = OllamaSimulator({MODEL: [fresh_pull([1_000]), stalled(50_000_000)]}, time_scale=SCALE)
    stack = contextlib.ExitStack()
    url = stack.enter_context(sim.running())

    async def client() -> None:
        first = await pull(url, {"model": MODEL})
        assert first.lines[-1] == b'{"status":"success"}'
        async with (
            aiohttp.ClientSession() as session,
            session.post(f"{url}/api/pull", json={"model": MODEL}) as response,
        ):
            await response.content.readline()
            sim.wait_for(lambda: sim.active_overall == 1)
            # The stream never ends by itself: the thread is gone after the bounded join only
            # if stopping closed it (no wall-clock bound needed).
            await asyncio.to_thread(stack.close)
            with pytest.raises(aiohttp.ClientPayloadError):
                await response.read()

    try:
        run(client())
    finally:
        stack.close()
    assert not [t for t in threading.enumerate() if t.name == "ollama-sim"]
    assert [r.outcome for r in sim.requests] == ["completed", "stopped"]


# --------------------------------------------------------------------------- big layers

TERABYTE = 10**12
SLOW_RATE = 1e6  # 60,000 bytes a tick: 16.7 million lines, which 1e4c640 listed up front


def test_a_terabyte_layer_streams_while_the_simulator_answers_other_requests() -> None:
    """Before each line was computed when sent, such a pull blocked the loop for 10 s and more."""
    endless = Scenario(Manifest(), Layer(TERABYTE, rate=SLOW_RATE), Verify(), Write(), Success())
    cut = Scenario(
        Manifest(), Layer(TERABYTE, rate=SLOW_RATE, stop_after=3), Verify(), Write(), Success()
    )
    sim = OllamaSimulator({"big": [endless], "cut": [cut]}, time_scale=1.0)
    manifest = b'{"status":"pulling manifest"}\n'

    def tick(model: str, completed: int) -> bytes:
        digest = layer_digest(model, 0)
        return progress_line(f"pulling {digest[7:19]}", digest, TERABYTE, completed)

    async def client() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{url}/api/pull", json={"model": "big"}) as streaming:
                assert await streaming.content.readline() == manifest  # the layer starts now
                async with asyncio.timeout(5):  # the loop is free while it streams
                    async with session.get(f"{url}/api/version") as version:
                        assert version.status == 200
                    whole = await pull(url, {"model": "cut"})  # to success: tags take its size
                    ticks = [await streaming.content.readline() for _ in range(3)]
            assert ticks == [tick("big", 0), tick("big", 60_000), tick("big", 120_000)]
            assert whole.lines == [
                manifest.rstrip(),
                *(tick("cut", value).rstrip() for value in (0, 60_000, 120_000)),
                *TAIL,
            ]

    with sim.running() as url:
        run(client())
    assert sim.held["cut:latest"].size == TERABYTE


def test_the_lines_of_a_terabyte_layer_are_computed_not_listed() -> None:
    """First and last ticks, counts, totals and duration, in closed form, like a small layer's."""
    layer = Layer(TERABYTE, rate=SLOW_RATE, rollback_at=TERABYTE // 2, rollback_bytes=10**9)
    scenario = Scenario(Manifest(), layer, Verify(), Write(), Success())
    step = 60_000
    past_half = 8_333_334  # the first tick at or past 5e11: 8_333_334 * 60_000 = 500_000_040_000
    back = past_half * step - 10**9
    again = (TERABYTE - back - 1) // step  # ticks from there while below the size
    values = layer.wire_values()
    assert len(values) == 1 + past_half + 1 + again
    assert tuple(values[:3]) == (0, step, 2 * step)
    assert tuple(values[past_half - 1 : past_half + 3]) == (
        (past_half - 1) * step,
        past_half * step,
        back,
        back + step,
    )
    assert values[-1] == back + again * step == TERABYTE - 20_000
    assert scenario.expected_total() == TERABYTE
    assert scenario.expected_downloaded() == TERABYTE + 10**9  # the rolled-back bytes again
    assert scenario.expected_regressions() == 1
    assert scenario.nominal_duration() == pytest.approx((len(values) + 20_000 / step) * TICK)
    transfer = transfer_pull(TERABYTE, chunk=1 << 15, rate=1e9)
    assert transfer.expected_downloaded() == TERABYTE - (1 << 15)  # counted from the 1st line
    assert transfer.nominal_duration() == pytest.approx(-(-TERABYTE // (1 << 15)) * (1 << 15) / 1e9)
    assert client2_pull([TERABYTE, 5]).expected_downloaded() == TERABYTE + 5


# --------------------------------------------------------------------------- scenario data


def test_digests_are_deterministic_per_model_and_index() -> None:
    expected = "sha256:" + hashlib.sha256(b"llama3.2:1b:0").hexdigest()
    assert layer_digest("llama3.2:1b", 0) == expected
    assert canonical_model("gemma3") == canonical_model("gemma3:latest") == "gemma3:latest"
    assert canonical_model("registry.ollama.ai/library/gemma3:latest") == "gemma3:latest"
    assert canonical_model("localhost:5000/library/foo") == "localhost:5000/library/foo:latest"
    assert layer_digest("gemma3", 1) == layer_digest("gemma3:latest", 1)


def test_expectation_helpers() -> None:
    scenario = fresh_pull([20_000_000, 13_000_000, 400])
    assert scenario.layer_sizes == (20_000_000, 13_000_000, 400)
    assert scenario.expected_total() == 33_000_000  # the 400-byte blob never shows
    assert scenario.expected_downloaded() == 33_000_000
    assert scenario.succeeds
    assert scenario.streams
    assert up_to_date([5, 7]).expected_downloaded() == 0
    assert up_to_date([5, 7]).expected_total() == 12
    assert not pre_stream_error(400, "x").streams
    assert stalled(10_000_000).nominal_duration() == float("inf")


@pytest.mark.parametrize(
    "steps",
    [
        (Manifest(), HttpError(400, {"error": "x"})),
        (Success(), Manifest()),
        (ErrorLine("x"), Success()),
        (Stall(None), Success()),
    ],
)
def test_impossible_scenarios_are_rejected(steps: tuple[Any, ...]) -> None:
    with pytest.raises(ScenarioError):
        Scenario(*steps)


def test_invalid_steps_are_rejected() -> None:
    with pytest.raises(ScenarioError):
        Layer(0)
    with pytest.raises(ScenarioError):
        Layer(100, rate=1.0, ticks=2)
    with pytest.raises(ScenarioError):
        Layer(100, resume_from=100)
    with pytest.raises(ScenarioError):
        Layer(100, digest="sha256:short")


def test_scenario_json_round_trip_and_presets() -> None:
    steps = Scenario(
        Manifest(delay=0.5),
        Layer(1_000, rate=5e6, resume_from=10),
        Raw(b"\xff\n"),
        Verify(silence=2.0),
        Write(),
        Success(),
    )
    assert scenario_from_json(json.loads(json.dumps(steps.to_json()))) == steps
    parsed = parse_scenario_file(
        {
            "time_scale": 0.5,
            "models": {
                MODEL: [
                    {"preset": "fresh_pull", "sizes": [1_000, 20]},
                    [{"step": "manifest"}, {"step": "raw", "text": "ab", "repeat": 2}],
                ]
            },
            "unknown": [{"step": "http_error", "status": 503, "body": {"error": "busy"}}],
        }
    )
    assert parsed.time_scale == 0.5
    assert parsed.models[MODEL][0].expected_body(MODEL) == fresh_pull([1_000, 20]).expected_body(
        MODEL
    )
    assert parsed.models[MODEL][1].expected_body(MODEL).endswith(b"abab")
    assert parsed.unknown == Scenario(HttpError(503, {"error": "busy"}))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"models": {"m": [[{"step": "layr"}]]}}, "unknown step 'layr'"),
        ({"models": {"m": [[{"step": "layer", "size": 1, "sped": 2}]]}}, "unknown key(s)"),
        ({"models": {"m": [[{"step": "layer", "size": "big"}]]}}, "models.m[0][0].size"),
        ({"models": {"m": [{"preset": "nope"}]}}, "unknown preset 'nope'"),
        ({"models": {"m": []}}, "non-empty list of runs"),
        ({"modles": {}}, "unknown key(s): modles"),
    ],
)
def test_bad_scenario_files_name_the_problem(data: object, message: str) -> None:
    with pytest.raises(ScenarioError, match=None) as caught:
        parse_scenario_file(data)
    assert message in str(caught.value)


def test_yaml_scenario_file_is_the_json_document_with_comments(tmp_path: Path) -> None:
    document = {
        "time_scale": 0.5,
        "loop": True,
        "models": {MODEL: [{"preset": "fresh_pull", "sizes": [1_000, 20], "rate": 5_000_000}]},
        "unknown": [{"step": "http_error", "status": 503, "body": {"error": "busy"}}],
    }
    as_json = tmp_path / "scenarios.json"
    as_json.write_text(json.dumps(document))
    as_yaml = tmp_path / "scenarios.yaml"
    as_yaml.write_text(
        "# a comment\n"
        "time_scale: 0.5\n"
        "loop: true\n"
        "models:\n"
        f"  {MODEL}:\n"
        "    - {preset: fresh_pull, sizes: [1000, 20], rate: 5000000}\n"
        "unknown:\n"
        "  - {step: http_error, status: 503, body: {error: busy}}\n"
    )
    assert load_scenario_file(as_yaml) == load_scenario_file(as_json)
    assert load_scenario_file(as_yaml).loop
    broken = tmp_path / "broken.yml"
    broken.write_text("models: [\n")
    with pytest.raises(ScenarioError, match=r"broken\.yml: invalid YAML"):
        load_scenario_file(broken)
    with pytest.raises(ScenarioError, match="loop must be true or false"):
        parse_scenario_file({"loop": "yes"})


def test_without_loop_the_last_run_repeats_and_with_loop_the_runs_cycle() -> None:
    runs = [up_to_date([10]), not_found()]

    async def outcomes(*, loop: bool) -> list[bytes]:
        sim = OllamaSimulator({MODEL: runs}, time_scale=SCALE, loop=loop)
        async with serving(sim) as url:
            return [(await pull(url, {"model": MODEL})).lines[-1] for _ in range(5)]

    success, missing = b'{"status":"success"}', b'{"error":"' + NOT_FOUND.encode() + b'"}'
    assert run(outcomes(loop=False)) == [success, missing, missing, missing, missing]
    assert run(outcomes(loop=True)) == [success, missing, success, missing, success]
