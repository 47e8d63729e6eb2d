"""The HTTP side in process: health, readiness, reload, `/metrics`, the pages, cross-site posts.

The real exporter (tests/inprocess.py) or the real app over a real `Site` (exporter/web/app.py),
served on 127.0.0.1 in the test's own loop; every test asserts what a client sees: status
codes, headers, bodies. The Ollama server of these configs has nothing listening, so a run
started by "pull now" finishes at once, refused, with no simulator and no clock to wait for.
"""

from __future__ import annotations

import asyncio
import base64
import re
import socket
from typing import TYPE_CHECKING

import bcrypt
from aiohttp.test_utils import TestClient, TestServer

from exporter.app import assemble
from exporter.config.loader import parse_config
from exporter.config.webconfig import parse_web_config
from exporter.fleet.sharding import Shard
from exporter.metrics.families import build_registry
from exporter.web.app import make_app
from exporter.web.site import Site
from tests.inprocess import Client, exporter_in_process

if TYPE_CHECKING:
    from collections.abc import Coroutine

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;q=0.9,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
"""What Prometheus 2 and 3 send by default when they scrape."""


def free_port() -> int:
    """A port with nothing listening on it (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def config_text() -> str:
    """One server with nothing listening, one model never run on start."""
    return (
        "defaults: {interval: 1h, jitter: 0, timeout: 1h, stall_timeout: 10m}\n"
        "servers:\n"
        f"  - name: s1\n    url: http://127.0.0.1:{free_port()}\n"
        "    models: [{name: small, run_on_start: false}]\n"
    )


def run(test: Coroutine[object, object, None]) -> None:
    """Run a test coroutine in a fresh loop, bounded so that a hang fails."""

    async def bounded() -> None:
        await asyncio.wait_for(test, timeout=30)

    asyncio.run(bounded())


class Reloads:
    """A `Reloader` that answers with the errors it was given, and counts its calls."""

    def __init__(self, errors: tuple[str, ...] = ()) -> None:
        self.errors = errors
        self.calls = 0

    async def reload(self) -> tuple[str, ...]:
        """The errors given; the config stays as it is."""
        self.calls += 1
        return self.errors


# ------------------------------------------------------------------ health, ready, reload


def test_healthy_and_ready_follow_the_schedule() -> None:
    """Before the schedule runs the exporter is healthy but not ready; then ready."""

    async def test() -> None:
        options = assemble.Options(config_path="test.yml", shard=Shard())
        config = parse_config(config_text(), "test.yml")
        with assemble.open_program(options, config) as program:
            site = Site(program.state, program.history)
            app = make_app(site, build_registry(program.state))
            async with TestClient(TestServer(app, host="127.0.0.1")) as client:
                async with client.get("/-/healthy") as answer:
                    assert (answer.status, await answer.text()) == (200, "OK\n")
                async with client.get("/-/ready") as answer:
                    assert (answer.status, await answer.text()) == (503, "Not ready\n")
                program.state.set_ready(True)
                async with client.get("/-/ready") as answer:
                    assert (answer.status, await answer.text()) == (200, "Ready\n")

    run(test())


def test_reload_is_refused_without_the_lifecycle_flag() -> None:
    async def test() -> None:
        async with exporter_in_process(config_text()) as (client, _):
            async with client.post("/-/reload") as answer:
                assert answer.status == 403
                assert await answer.text() == "Lifecycle API is not enabled.\n"
            async with client.get("/-/ready") as answer:
                assert (answer.status, await answer.text()) == (200, "Ready\n")

    run(test())


def test_reload_answers_ok_or_the_errors_of_the_reloader() -> None:
    """With `--web.enable-lifecycle` a POST reloads: 200 OK, or 500 with every error listed."""

    async def test() -> None:
        options = assemble.Options(config_path="test.yml", shard=Shard())
        config = parse_config(config_text(), "test.yml")
        with assemble.open_program(options, config) as program:
            reloads = Reloads()
            site = Site(program.state, program.history, reloads=reloads)
            app = make_app(site, build_registry(program.state))
            async with TestClient(TestServer(app, host="127.0.0.1")) as client:
                async with client.post("/-/reload") as answer:
                    assert (answer.status, await answer.text()) == (200, "OK\n")
                reloads.errors = ("servers[0].url: not a URL", "defaults.interval: negative")
                async with client.post("/-/reload") as answer:
                    assert answer.status == 500
                    assert await answer.text() == (
                        "failed to reload config:\nservers[0].url: not a URL\n"
                        "defaults.interval: negative\n"
                    )
                async with client.get("/-/reload") as answer:
                    assert answer.status == 405  # only POST reloads
            assert reloads.calls == 2

    run(test())


# ------------------------------------------------------------------ /metrics


def test_metrics_answer_prometheus_in_openmetrics() -> None:
    """Prometheus' default Accept header gets OpenMetrics 1.0.0, ending in `# EOF`."""

    async def test() -> None:
        async with exporter_in_process(config_text()) as (client, _):
            async with client.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT}) as answer:
                assert answer.status == 200
                assert answer.headers["Content-Type"].startswith(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8"
                )
                text = await answer.text()
            assert text.endswith("# EOF\n")
            assert 'server="s1"' in text
            async with client.get("/metrics", headers={"Accept": "text/plain"}) as answer:
                assert answer.headers["Content-Type"].startswith("text/plain; version=0.0.4")
                assert "# EOF" not in await answer.text()

    run(test())


# ------------------------------------------------------------------ the pages


async def page(client: Client, path: str, status: int = 200) -> str:
    async with client.get(path) as answer:
        text = await answer.text()
        assert answer.status == status, text
        assert answer.headers["Content-Type"].startswith("text/html")
        assert "default-src 'none'" in answer.headers["Content-Security-Policy"]
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        return text


async def finished_run(client: Client) -> int:
    """Start a run of s1/small and wait until it is over (refused: nothing listens)."""
    async with client.post("/api/v1/pulls", json={"server": "s1", "model": "small"}) as answer:
        body = await answer.json()
        assert answer.status == 202, body
    run_id: int = body["run"]["id"] if "run" in body else body["id"]
    for _ in range(2000):  # bounded: each turn waits for the exporter's answer
        async with client.get(f"/api/v1/runs/{run_id}") as answer:
            detail = await answer.json()
        if detail.get("result") is not None:
            return run_id
        await asyncio.sleep(0.005)
    raise AssertionError(f"run {run_id} did not finish: {detail!r}")


def test_pages_show_the_fleet_the_history_and_a_run() -> None:
    async def test() -> None:
        async with exporter_in_process(config_text(), admin=True) as (client, _):
            index = await page(client, "/")
            assert "s1" in index
            assert "small" in index
            assert 'action="/pull-now"' in index  # admin on: the form is there
            filtered = await page(client, "/?server=s1&model=SMA&state=pending")
            assert "small" in filtered
            empty = await page(client, "/history")
            assert "All runs" in empty
            run_id = await finished_run(client)
            everything = await page(client, "/history")
            assert f"#{run_id}" in everything or f"/runs/{run_id}" in everything
            pair = await page(client, "/history?server=s1&model=small")
            assert "small on s1" in pair
            assert f"/runs/{run_id}" in pair
            unknown = await page(client, "/history?server=s1&model=nothing")
            assert f"/runs/{run_id}" not in unknown
            detail = await page(client, f"/runs/{run_id}")
            assert f"Run #{run_id}" in detail
            assert "failed: ollama_unreachable" in detail
            assert "No lines were received." in detail
            assert "No such run" in await page(client, "/runs/999999", status=404)
            assert "No such run" in await page(client, "/runs/not-a-number", status=404)
            async with client.get("/static/page.css") as answer:
                assert answer.status == 200
                assert answer.headers["Content-Type"].startswith("text/css")
                assert answer.headers["Cache-Control"] == "no-cache"
            async with client.get("/static/other.js") as answer:
                assert answer.status == 404

    run(test())


def test_pull_now_form_starts_a_run_and_says_where() -> None:
    async def test() -> None:
        async with exporter_in_process(config_text(), admin=True) as (client, _):
            form = {"server": "s1", "model": "small"}
            async with client.post("/pull-now", data=form, allow_redirects=False) as answer:
                assert answer.status == 303
                location = answer.headers["Location"]
            assert re.fullmatch(r"/history\?server=s1&model=small#run-\d+", location), location

    run(test())


def test_pull_now_form_refusals_say_why() -> None:
    async def test() -> None:
        form = {"server": "s1", "model": "small"}
        async with (
            exporter_in_process(config_text()) as (client, _),
            client.post("/pull-now", data=form) as answer,
        ):
            assert answer.status == 403  # admin API off
            assert "The pull was not started" in await answer.text()
        async with exporter_in_process(config_text(), admin=True) as (client, _):
            form = {"server": "s1", "model": "nothing"}
            async with client.post("/pull-now", data=form) as answer:
                text = await answer.text()
                assert answer.status == 404
                assert "no configured pair" in text
                assert "/history?server=s1" not in text  # no history link for an unknown pair
            async with client.post("/pull-now", data={"server": "s1"}) as answer:
                assert answer.status == 400
                assert "one server and one model" in await answer.text()
            bad = b"server=%ff&&model"
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            async with client.post("/pull-now", data=bad, headers=headers) as answer:
                assert answer.status == 400
                assert "malformed" in await answer.text()

    run(test())


def test_pull_now_form_refuses_a_busy_pair() -> None:
    """A server that takes the connection and never answers: the first run is under way."""

    async def test() -> None:
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(8)  # never accepted: the pull waits for its answer
            port = silent.getsockname()[1]
            text = (
                "defaults: {interval: 1h, jitter: 0, timeout: 1h, stall_timeout: 10m}\n"
                f"servers:\n  - name: s1\n    url: http://127.0.0.1:{port}\n"
                "    models: [{name: small, run_on_start: false}]\n"
            )
            async with exporter_in_process(text, admin=True) as (client, _):
                form = {"server": "s1", "model": "small"}
                async with client.post("/pull-now", data=form, allow_redirects=False) as answer:
                    assert answer.status == 303
                async with client.post("/pull-now", data=form) as answer:
                    page_text = await answer.text()
                    assert answer.status == 409, page_text
                    assert "/history?server=s1&amp;model=small" in page_text
                pulling = await page(client, "/?state=pulling")
                assert "Pulling" in pulling
                active = await page(client, "/runs/1")  # under way: the page refreshes itself
                assert '<meta http-equiv="refresh" content="2">' in active

    run(test())


# ------------------------------------------------------------------ cross-site posts

UNKNOWN_PAIR = {"server": "s1", "model": "nothing"}
"""A form that passes every check but the pair's: 404 shows that it got past the CSRF check."""


async def post_form(client: Client, headers: dict[str, str]) -> tuple[int, str]:
    async with client.post("/pull-now", data=UNKNOWN_PAIR, headers=headers) as answer:
        return answer.status, await answer.text()


def test_cross_site_posts_are_refused_and_same_origin_ones_pass() -> None:
    async def test() -> None:
        async with exporter_in_process(config_text(), admin=True) as (client, _):
            host = f"127.0.0.1:{client.port}"
            refused = "cross-site request refused"
            for headers in (
                {"Sec-Fetch-Site": "cross-site"},
                {"Sec-Fetch-Site": "same-site"},
                {"Sec-Fetch-Site": "cross-site", "Origin": f"http://{host}"},
                {"Origin": "https://evil.example"},
                {"Origin": "null"},
                {"Origin": f"http://user@{host}"},
                {"Origin": f"ftp://{host}"},
                {"Origin": "http://[::1"},  # not even a URL
            ):
                status, text = await post_form(client, headers)
                assert (status, text.startswith(refused)) == (403, True), headers
            for headers in (
                {},  # curl, scripts: not a browser
                {"Sec-Fetch-Site": "same-origin"},
                {"Sec-Fetch-Site": " None "},  # typed by the user
                {"Origin": f"http://{host}"},
                {"Origin": f"HTTP://{host.upper()}"},
            ):
                status, text = await post_form(client, headers)
                assert status == 404, (headers, text)
                assert "no configured pair" in text
            cross = {"Sec-Fetch-Site": "cross-site"}
            async with client.get("/", headers=cross) as answer:
                assert answer.status == 200  # reading is no harm: only changes are refused
            body = {"server": "s1", "model": "small"}
            async with client.post("/api/v1/pulls", json=body, headers=cross) as answer:
                assert answer.status == 403
                assert answer.headers["Content-Type"].startswith("application/json")
                assert refused in (await answer.json())["error"]
            async with client.post("/-/reload", headers=cross) as answer:
                assert answer.status == 403
                assert (await answer.text()).startswith(refused)

    run(test())


# ------------------------------------------------------------------ --web.config.file


def basic(user: str, password: str) -> str:
    """An `Authorization` header's value for basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


def test_basic_auth_and_headers_of_the_web_config_cover_every_route() -> None:
    """With users in the web config every route asks for them; its headers go on each answer."""
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4)).decode("ascii")
    web_config = parse_web_config(
        f"basic_auth_users:\n  alice: '{hashed}'\n"
        "http_server_config:\n  headers:\n    X-Frame-Options: deny\n",
        "web.yml",
    )

    async def test() -> None:
        options = assemble.Options(config_path="test.yml", shard=Shard())
        config = parse_config(config_text(), "test.yml")
        with assemble.open_program(options, config) as program:
            site = Site(program.state, program.history)
            app = make_app(site, build_registry(program.state), web_config)
            async with TestClient(TestServer(app, host="127.0.0.1")) as client:
                for path in ("/metrics", "/", "/-/healthy"):
                    async with client.get(path) as answer:
                        assert answer.status == 401, path
                        assert answer.headers["WWW-Authenticate"].startswith("Basic")
                wrong = {"Authorization": basic("alice", "wrong")}
                async with client.get("/metrics", headers=wrong) as answer:
                    assert answer.status == 401
                right = {"Authorization": basic("alice", "right")}
                async with client.get("/-/healthy", headers=right) as answer:
                    assert (answer.status, await answer.text()) == (200, "OK\n")
                    assert answer.headers["X-Frame-Options"] == "deny"

    run(test())
