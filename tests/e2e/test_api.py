"""The operator API (`/api/v1/`) of the real exporter against the simulator, over sockets.

Every answer is checked against the OpenAPI document the exporter serves. One exporter with
the admin API on runs a fast pull, a failing pull (whose error text holds the configured
token), and a slow pull that stays busy; the tests read what the API says about them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from exporter.clients.inventory import Inventory
from exporter.clients.pull import make_session
from exporter.config.loader import parse_config
from exporter.schedule.scheduler import Scheduler
from exporter.state.history import History
from exporter.state.pairs import ExporterState
from exporter.web import api, page
from exporter.web.site import Site
from ollama_sim import OllamaSimulator, error_after_manifest, fresh_pull, up_to_date
from tests.api_schema import check_answer
from tests.harness import Exporter, run_exporter, wait_for

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from exporter.state.pairs import PairState

TOKEN = "s3cr3t-token-value"
URL_PASSWORD = "url-pass-w0rd"
SIZES = (4_000_000, 2_000_000)


def request(
    exporter: Exporter,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, str]:
    """(status, content type, body) of one request; never raises on HTTP errors."""
    sent = {**exporter.headers, **(headers or {})}
    req = urllib.request.Request(exporter.url + path, data=body, headers=sent, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read().decode()


def call(
    exporter: Exporter, method: str, path: str, template: str | None = None, **kwargs: Any
) -> tuple[int, Any]:
    """A request whose answer must match the document; returns (status, parsed body)."""
    status, content_type, text = request(exporter, method, path, **kwargs)
    route = template or path.partition("?")[0]
    return status, check_answer(route, method, status, content_type, text)


def post_pull(exporter: Exporter, server: str, model: str) -> tuple[int, Any]:
    body = json.dumps({"server": server, "model": model}).encode()
    headers = {"Content-Type": "application/json"}
    return call(exporter, "POST", "/api/v1/pulls", body=body, headers=headers)


def config_text(url: str) -> str:
    authority = url.removeprefix("http://")
    return (
        "history_limit: 3\n"
        "defaults: {interval: 1h, jitter: 0, timeout: 1h, stall_timeout: 10m}\n"
        "servers:\n"
        f"  - name: sim\n    url: {url}\n"
        f"    headers: {{Authorization: 'Bearer {TOKEN}'}}\n"
        "    max_concurrent_pulls: 5\n"
        "    models: [fast, broken, slow]\n"
        f"  - name: later\n    url: http://user:{URL_PASSWORD}@{authority}\n"
        "    models: [{name: fast, run_on_start: false}]\n"
    )


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    sim = OllamaSimulator(
        {
            "fast": [fresh_pull(SIZES, rate=10_000_000), up_to_date(SIZES)],
            "broken": [
                error_after_manifest(f"pull model manifest: 401: token Bearer {TOKEN} rejected")
            ],
            "slow": [fresh_pull([2 * 10**9], rate=1_000_000)],
        },
        time_scale=0.2,
    )
    workdir = tmp_path_factory.mktemp("api")
    with (
        sim.running() as url,
        run_exporter(config_text(url), workdir, "--web.enable-admin-api") as running,
    ):

        def settled() -> bool:
            _, body = call(running, "GET", "/api/v1/runs?result=failure")
            _, done = call(running, "GET", "/api/v1/runs?result=success")
            return bool(body["runs"]) and bool(done["runs"])

        wait_for(settled, 20, "the first runs to finish")
        yield running


def pairs(exporter: Exporter) -> dict[tuple[str, str], Any]:
    _, body = call(exporter, "GET", "/api/v1/status")
    return {(p["server"], p["model"]): p for p in body["pairs"]}


def test_status_shows_every_pair_live(exporter: Exporter) -> None:
    status = pairs(exporter)
    assert list(status) == [("sim", "fast"), ("sim", "broken"), ("sim", "slow"), ("later", "fast")]
    fast = status["sim", "fast"]
    assert fast["in_progress"] is False
    assert fast["phase"] == "idle"
    assert fast["last"]["result"] == "success"
    assert fast["expected_bytes"] == sum(SIZES) == fast["completed_bytes"]
    assert fast["bytes_per_second"] is None
    assert fast["eta_seconds"] is None
    assert fast["mode"] == "pull"
    assert status["later", "fast"]["last"] is None
    assert status["later", "fast"]["next_run_at"] > time.time() + 3000
    broken = status["sim", "broken"]["last"]
    assert broken["result"] == "failure"
    assert broken["reason"] == "unauthorized"

    # 1 MB/s at time scale 0.2 (ticks come 5x as often): about 5 MB/s once the window
    # no longer reaches back to the start of the run.
    def moving() -> Any:
        slow = pairs(exporter)["sim", "slow"]
        return slow if (slow["bytes_per_second"] or 0) > 3_000_000 else None

    slow = wait_for(moving, 15, "a throughput for the slow pull")
    assert slow["in_progress"] is True
    assert slow["phase"] == "download"
    assert slow["run_id"] is not None
    assert slow["bytes_per_second"] < 7_000_000
    assert slow["eta_seconds"] > 100


def test_runs_newest_first_with_filters(exporter: Exporter) -> None:
    _, body = call(exporter, "GET", "/api/v1/runs")
    runs = body["runs"]
    assert [run["id"] for run in runs] == sorted((run["id"] for run in runs), reverse=True)
    by_model = {run["model"]: run for run in runs}
    assert by_model["slow"]["state"] == "running"
    assert by_model["slow"]["result"] is None
    assert by_model["fast"]["trigger"] == "start"
    assert by_model["fast"]["downloaded_bytes"] == sum(SIZES)
    _, only = call(exporter, "GET", "/api/v1/runs?server=sim&model=broken&result=failure")
    assert {run["model"] for run in only["runs"]} == {"broken"}
    assert all(run["result"] == "failure" for run in only["runs"])
    _, none = call(exporter, "GET", "/api/v1/runs?server=nowhere")
    assert none["runs"] == []
    _, one = call(exporter, "GET", "/api/v1/runs?limit=1")
    assert len(one["runs"]) == 1


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=1001", "limit=x", "limit=-1", "result=maybe", "limit=%C2%B2"]
)
def test_runs_rejects_bad_queries(exporter: Exporter, query: str) -> None:
    status, body = call(exporter, "GET", f"/api/v1/runs?{query}")
    assert status == 400
    assert body["error"]


def test_run_transcript_has_the_error_line_without_secrets(exporter: Exporter) -> None:
    _, body = call(exporter, "GET", "/api/v1/runs?model=broken&limit=1")
    run_id = body["runs"][0]["id"]
    status, run = call(exporter, "GET", f"/api/v1/runs/{run_id}", "/api/v1/runs/{id}")
    assert status == 200
    assert run["error"] == "pull model manifest: 401: token <redacted> rejected"
    lines = [entry["line"] for entry in run["transcript"]]
    assert lines == [
        '{"status":"pulling manifest"}',
        '{"error":"pull model manifest: 401: token <redacted> rejected"}',
    ]
    assert all(entry["t"] >= 0 for entry in run["transcript"])
    assert run["transcript_omitted"] == 0


def test_unknown_and_bad_run_ids(exporter: Exporter) -> None:
    assert call(exporter, "GET", "/api/v1/runs/999999", "/api/v1/runs/{id}")[0] == 404
    assert call(exporter, "GET", "/api/v1/runs/abc", "/api/v1/runs/{id}")[0] == 404
    assert call(exporter, "GET", "/api/v1/runs/1e3", "/api/v1/runs/{id}")[0] == 404


def test_pull_now_starts_a_run_that_counts_in_the_metrics(exporter: Exporter) -> None:
    labels = {"server": "later", "model": "fast"}
    exporter.scrape()
    assert exporter.value("ollama_pull_runs_total", **labels) == 0
    status, body = post_pull(exporter, "later", "fast")
    assert status == 202
    run_id = body["id"]

    def finished() -> Any:
        _, run = call(exporter, "GET", f"/api/v1/runs/{run_id}", "/api/v1/runs/{id}")
        return run if run["state"] == "finished" else None

    run = wait_for(finished, 10, "the API run to finish")
    assert run["trigger"] == "api"
    assert run["server"] == "later"
    runs = exporter.wait_value(
        "ollama_pull_runs_total", lambda v: v == 1, server="later", model="fast"
    )
    assert runs == 1
    assert pairs(exporter)["later", "fast"]["last"]["id"] == run_id
    # Its schedule is unchanged: the next run is still an interval away.
    assert pairs(exporter)["later", "fast"]["next_run_at"] > time.time() + 3000


def test_pull_now_refuses_a_busy_pair_and_unknown_pairs(exporter: Exporter) -> None:
    status, body = post_pull(exporter, "sim", "slow")
    assert status == 409
    assert "going" in body["error"]
    assert post_pull(exporter, "sim", "nope")[0] == 404
    assert post_pull(exporter, "nope", "fast")[0] == 404


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"server": "sim"}', "application/json", 400),
        (b"[]", "application/json", 400),
        (b"{", "application/json", 400),
        (b'{"server": "sim", "model": "fast", "x": 1}', "application/json", 400),
        (b'{"server": "sim", "model": "fast"}', "text/plain", 415),
        (b"x" * 70_000, "application/json", 413),
    ],
)
def test_pull_now_rejects_bad_bodies(
    exporter: Exporter, body: bytes, content_type: str, status: int
) -> None:
    headers = {"Content-Type": content_type}
    got, answer = call(exporter, "POST", "/api/v1/pulls", body=body, headers=headers)
    assert got == status
    assert answer["error"]


def test_router_errors_are_json(exporter: Exporter) -> None:
    status, content_type, text = request(exporter, "GET", "/api/v1/nothing")
    assert (status, content_type.split(";")[0]) == (404, "application/json")
    assert json.loads(text) == {"error": "Not Found"}
    status, content_type, text = request(exporter, "GET", "/api/v1/pulls")
    assert (status, content_type.split(";")[0]) == (405, "application/json")


def test_openapi_document_is_served(exporter: Exporter) -> None:
    status, body = call(exporter, "GET", "/api/v1/openapi.json")
    assert status == 200
    assert body["openapi"].startswith("3.1")
    assert set(body["paths"]) == {
        "/api/v1/status",
        "/api/v1/runs",
        "/api/v1/runs/{id}",
        "/api/v1/pulls",
        "/api/v1/openapi.json",
    }


def test_no_secret_appears_anywhere(exporter: Exporter) -> None:
    _, body = call(exporter, "GET", "/api/v1/runs?limit=1000")
    texts = [request(exporter, "GET", "/api/v1/status")[2], json.dumps(body)]
    texts += [request(exporter, "GET", f"/api/v1/runs/{run['id']}")[2] for run in body["runs"]]
    texts += [request(exporter, "GET", "/")[2], exporter.logs()]
    for text in texts:
        assert TOKEN not in text
        assert URL_PASSWORD not in text


def test_admin_api_is_off_by_default(tmp_path: Path) -> None:
    sim = OllamaSimulator({"fast": [up_to_date(SIZES)]})
    with sim.running() as url:
        config = f"servers:\n  - name: s\n    url: {url}\n    models: [fast]\n"
        with run_exporter(config, tmp_path) as running:
            status, body = post_pull(running, "s", "fast")
    assert status == 403
    assert "--web.enable-admin-api" in body["error"]


def test_history_survives_a_restart_with_storage(tmp_path: Path) -> None:
    sim = OllamaSimulator({"fast": [up_to_date(SIZES)]})
    storage = f"--storage.path={tmp_path / 'state.db'}"
    with sim.running() as url:
        config = (
            "history_limit: 2\ndefaults: {interval: 1h, jitter: 0}\n"
            f"servers:\n  - name: s\n    url: {url}\n    models: [fast]\n"
        )
        with run_exporter(config, tmp_path, "--web.enable-admin-api", storage) as first:
            wait_for(lambda: call(first, "GET", "/api/v1/runs")[1]["runs"], 10, "a run")
            for _ in range(2):
                wait_for(lambda: post_pull(first, "s", "fast")[0] == 202, 10, "an API run")
            wait_for(
                lambda: (
                    [r["id"] for r in call(first, "GET", "/api/v1/runs")[1]["runs"]]
                    == [
                        r["id"]
                        for r in call(first, "GET", "/api/v1/runs?result=success")[1]["runs"]
                    ]
                    == [3, 2]
                ),
                10,
                "the two newest runs, finished, and no more",
            )
            before = call(first, "GET", "/api/v1/runs")[1]["runs"]
        with run_exporter(config, tmp_path, storage) as second:
            wait_for(
                lambda: (
                    len(call(second, "GET", "/api/v1/runs")[1]["runs"]) == 2
                    and call(second, "GET", "/api/v1/runs")[1]["runs"][0]["id"] > before[0]["id"]
                ),
                10,
                "the start-up run after the restart",
            )
            after = call(second, "GET", "/api/v1/runs")[1]["runs"]
            kept = call(second, "GET", f"/api/v1/runs/{before[0]['id']}", "/api/v1/runs/{id}")
    assert [run["id"] for run in before] == [3, 2]
    assert [run["id"] for run in after] == [4, 3]
    assert after[0]["trigger"] == "start"
    assert kept[1]["transcript"][-1]["line"] == '{"status":"success"}'


# ----------------------------------------------------------------- in process: refusals start nothing


@dataclass
class Rig:
    state: ExporterState
    scheduler: Scheduler
    client: TestClient[web.Request, web.Application]
    ended: collections.defaultdict[str, asyncio.Event]
    """Set when a run of the model has ended."""


@contextlib.asynccontextmanager
async def operator_app(
    sim: OllamaSimulator, models: str, *, history: History | None
) -> AsyncIterator[Rig]:
    """The API and the pages over a real scheduler that pulls from `sim` (admin API on).

    Every pair waits an hour for its first run; one pull at a time on the server, so a run
    asked for later finishes after any run asked for before it.
    """
    url = await sim.start()
    config = parse_config(
        f"defaults: {{interval: 1h, jitter: 0, run_on_start: false}}\n"
        f"servers:\n  - name: s\n    url: {url}\n    models: {models}\n",
        "test.yml",
    )
    state = ExporterState()
    state.sync(config)
    try:
        async with make_session() as session:
            inventory = Inventory(session, state)
            inventory.apply(config, start=False)  # what marks the check-mode pairs
            ended: collections.defaultdict[str, asyncio.Event] = collections.defaultdict(
                asyncio.Event
            )

            def finished(pair: PairState) -> None:
                ended[pair.model].set()

            scheduler = Scheduler(session, state, on_finished=finished, history=history)
            app = web.Application()
            # The site's history is the one the page reads; the scheduler's may be none.
            api.install(app, Site(state, history or History(), pulls=scheduler))
            page.install(app)
            scheduler.start(config)
            try:
                async with TestClient(TestServer(app)) as client:
                    yield Rig(state, scheduler, client, ended)
            finally:
                await scheduler.stop()
    finally:
        await sim.stop()


async def api_pull(rig: Rig, model: str) -> tuple[int, Any]:
    """`POST /api/v1/pulls` in process; the answer must match the document."""
    answer = await rig.client.post("/api/v1/pulls", json={"server": "s", "model": model})
    text = await answer.text()
    return answer.status, check_answer(
        "/api/v1/pulls", "POST", answer.status, answer.content_type, text
    )


def test_pull_now_without_a_history_answers_503_and_starts_nothing() -> None:
    """The refusal used to come after the scheduler had started the pull."""
    sim = OllamaSimulator({"fast": [up_to_date(SIZES)], "other": [up_to_date(SIZES)]})

    async def scenario() -> None:
        async with operator_app(sim, "[fast, other]", history=None) as rig:
            client = rig.client
            status, body = await api_pull(rig, "fast")
            assert (status, body["error"]) == (503, "the run history is not available")
            form = await client.post("/pull-now", data={"server": "s", "model": "fast"})
            assert form.status == 503
            assert "not available" in await form.text()
            # Refused before anything starts: no run task exists (the scheduler names each
            # "pull (server, model)"), so nothing can reach the simulator later either.
            assert [t for t in asyncio.all_tasks() if t.get_name().startswith("pull ")] == []
        assert rig.state.pairs["s", "fast"].runs_total == 0
        assert sim.requests == []

    asyncio.run(scenario())


def test_pull_now_of_a_check_pair_is_refused_and_never_pulls() -> None:
    """N11: "pull now" of a `mode: check` pair pulled it; now 409 and no `POST /api/pull`."""
    sim = OllamaSimulator({"checked": [up_to_date(SIZES)], "pulled": [up_to_date(SIZES)]})

    async def scenario() -> None:
        models = "[{name: checked, mode: check}, pulled]"
        async with operator_app(sim, models, history=History()) as rig:
            client = rig.client
            status, body = await api_pull(rig, "checked")
            assert status == 409
            assert body["error"].startswith("s/checked is a mode: check pair: it is never pulled")
            form = await client.post("/pull-now", data={"server": "s", "model": "checked"})
            assert form.status == 409
            assert "mode: check" in await form.text()
            shown = await (await client.get("/api/v1/status")).json()
            assert [p["mode"] for p in shown["pairs"]] == ["check", "pull"]
            # The page offers no button for it (the pull pair has one).
            index = await (await client.get("/")).text()
            assert index.count('class="pull-now-form"') == 1
            assert 'name="model" value="checked"' not in index
            # One pull at a time on `s`: had the check pair's pull started, it would have
            # reached the simulator before this one ends.
            assert (await api_pull(rig, "pulled"))[0] == 202
            async with asyncio.timeout(20):
                await rig.ended["pulled"].wait()
        assert [record.model for record in sim.requests] == ["pulled"]
        assert rig.state.pairs["s", "checked"].runs_total == 0

    asyncio.run(scenario())
