""" "Pull now" as a plain HTML form, and the refusal of cross-site requests, over real sockets.

The real exporter (admin and lifecycle APIs on, basic auth from a web config) against the
simulator. The form posts `server` and `model` to `/pull-now` and is answered 303 to the pair's
history; a request that a browser marks as coming from another site (`Sec-Fetch-Site`, else
`Origin` against `Host`) is refused 403 on every state-changing route, while clients that send
neither header (curl, scripts) work as before. `test_browser.py` does the same in Chromium.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import bcrypt
import pytest
from aiohttp.test_utils import make_mocked_request

from exporter.web.crossorigin import refusal
from ollama_sim import OllamaSimulator, fresh_pull, up_to_date
from tests.harness import Exporter, run_exporter, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

AUTH = {"Authorization": "Basic " + base64.b64encode(b"alice:pw").decode()}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
QUICK = b"server=s&model=quick"


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    sim = OllamaSimulator(
        {"quick": [up_to_date([1000])], "slow": [fresh_pull([2 * 10**9], rate=1_000_000)]},
        time_scale=0.2,
    )
    workdir = tmp_path_factory.mktemp("form")
    digest = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    (workdir / "web.yml").write_text(f"basic_auth_users:\n  alice: '{digest}'\n")
    config = (
        "defaults: {interval: 1h, jitter: 0}\n"
        "servers:\n  - name: s\n    url: {url}\n    max_concurrent_pulls: 5\n"
        "    models: [{name: quick, run_on_start: false}, slow]\n"
    )
    with (
        sim.running() as url,
        run_exporter(
            config.replace("{url}", url),
            workdir,
            "--web.enable-admin-api",
            "--web.enable-lifecycle",
            f"--web.config.file={workdir / 'web.yml'}",
            headers=AUTH,
        ) as running,
    ):
        wait_for(lambda: _runs(running, "slow"), 10, "the slow pull to start")
        yield running


def send(
    exporter: Exporter, path: str, body: bytes | None, headers: dict[str, str]
) -> tuple[int, dict[str, str], str]:
    """One POST as it is sent (no redirect followed); (status, headers, body)."""
    parts = urllib.parse.urlsplit(exporter.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    try:
        connection.request("POST", path, body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read().decode()
    finally:
        connection.close()


def _runs(exporter: Exporter, model: str) -> list[Any]:
    status, body = exporter.get(f"/api/v1/runs?server=s&model={model}")
    assert status == 200
    runs: list[Any] = json.loads(body)["runs"]
    return runs


def _settled(exporter: Exporter) -> list[int]:
    """The ids of quick's runs once none is going (so the next form post can start one)."""

    def finished() -> tuple[list[int]] | None:  # a tuple: no runs yet is an answer too
        runs = _runs(exporter, "quick")
        done = all(run["state"] == "finished" for run in runs)
        return ([run["id"] for run in runs],) if done else None

    return wait_for(finished, 10, "quick's runs to finish")[0]


def test_the_form_starts_a_run_and_answers_303_to_its_history(exporter: Exporter) -> None:
    before = _settled(exporter)
    status, headers, _ = send(exporter, "/pull-now", QUICK, {**AUTH, **FORM})
    assert status == 303
    location = headers["Location"]
    path, _, fragment = location.partition("#")
    assert path == "/history?server=s&model=quick"
    run_id = int(fragment.removeprefix("run-"))
    assert run_id not in before
    assert _runs(exporter, "quick")[0]["id"] == run_id
    assert _runs(exporter, "quick")[0]["trigger"] == "api"
    code, page = exporter.get(path)
    assert code == 200
    assert f'<tr class="run-row" id="run-{run_id}">' in page


@pytest.mark.parametrize(
    "browser",
    [
        {"Sec-Fetch-Site": "same-origin", "Origin": "{own}"},
        {"Sec-Fetch-Site": "none"},
        {"Origin": "{own}"},  # a browser too old for Sec-Fetch-Site
    ],
    ids=["same-origin", "typed-by-the-user", "origin-only"],
)
def test_the_exporters_own_page_may_post(exporter: Exporter, browser: dict[str, str]) -> None:
    _settled(exporter)
    sent = {name: value.replace("{own}", exporter.url) for name, value in browser.items()}
    status, _, _ = send(exporter, "/pull-now", QUICK, {**AUTH, **FORM, **sent})
    assert status == 303


CROSS_SITE = [
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # another port of the same host counts as another site
    {"Sec-Fetch-Site": "cross-site", "Origin": "{own}"},  # the browser's word wins
    {"Origin": "http://evil.example"},
    {"Origin": "http://127.0.0.1:1"},
    {"Origin": "null"},
]
ROUTES = {
    "form": ("/pull-now", QUICK, FORM),
    "api": ("/api/v1/pulls", b'{"server": "s", "model": "quick"}', {"Content-Type": "text/plain"}),
    "reload": ("/-/reload", b"", {}),
}


@pytest.mark.parametrize("route", sorted(ROUTES))
@pytest.mark.parametrize("browser", CROSS_SITE)
def test_a_cross_site_request_is_refused(
    exporter: Exporter, route: str, browser: dict[str, str]
) -> None:
    before = _settled(exporter)
    path, body, content = ROUTES[route]
    sent = {name: value.replace("{own}", exporter.url) for name, value in browser.items()}
    status, headers, text = send(exporter, path, body, {**AUTH, **content, **sent})
    assert status == 403
    assert "cross-site request refused" in text
    if route == "api":
        assert headers["Content-Type"].startswith("application/json")
        assert json.loads(text)["error"].startswith("cross-site request refused")
    assert [run["id"] for run in _runs(exporter, "quick")] == before
    assert "cross-site request refused" in exporter.logs()


def test_clients_without_browser_headers_work_as_before(exporter: Exporter) -> None:
    _settled(exporter)
    body = b'{"server": "s", "model": "quick"}'
    status, _, text = send(exporter, "/api/v1/pulls", body, {**AUTH, "Content-Type": "application/json"})  # fmt: skip
    assert status == 202, text
    assert send(exporter, "/-/reload", b"", AUTH)[:1] == (200,)


@pytest.mark.parametrize("browser", [{}, {"Sec-Fetch-Site": "same-origin"}])
def test_basic_auth_still_guards_the_form(exporter: Exporter, browser: dict[str, str]) -> None:
    before = _settled(exporter)
    assert send(exporter, "/pull-now", QUICK, {**FORM, **browser})[0] == 401
    wrong = {"Authorization": "Basic " + base64.b64encode(b"alice:no").decode()}
    assert send(exporter, "/pull-now", QUICK, {**wrong, **FORM, **browser})[0] == 401
    assert [run["id"] for run in _runs(exporter, "quick")] == before


@pytest.mark.parametrize(
    ("body", "content_type", "status", "says"),
    [
        (QUICK, "application/json", 415, "application/x-www-form-urlencoded"),
        (b"server=s", FORM["Content-Type"], 400, "one server and one model"),
        (b"server=s&model=quick&model=slow", FORM["Content-Type"], 400, "one server and one"),
        (b"", FORM["Content-Type"], 400, "one server and one model"),
        (b"server=s&model=%FF", FORM["Content-Type"], 400, "malformed"),
        (b"a=1&" * 20 + QUICK, FORM["Content-Type"], 400, "malformed"),
        (QUICK + b"&x=" + b"y" * 70_000, FORM["Content-Type"], 413, "larger than"),
        (b"server=s&model=nope", FORM["Content-Type"], 404, "no configured pair"),
        (b"server=s&model=slow", FORM["Content-Type"], 409, "going"),
    ],
)
def test_a_bad_form_gets_a_page_that_says_why(
    exporter: Exporter, body: bytes, content_type: str, status: int, says: str
) -> None:
    got, headers, text = send(exporter, "/pull-now", body, {**AUTH, "Content-Type": content_type})
    assert got == status
    assert headers["Content-Type"].startswith("text/html")
    assert "The pull was not started" in text
    assert says in text


def test_a_body_that_arrives_in_pieces_is_read_whole(exporter: Exporter) -> None:
    _settled(exporter)
    parts = urllib.parse.urlsplit(exporter.url)
    body = b'{"server": "s", "model": "quick"}'
    head = (
        f"POST /api/v1/pulls HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        f"Authorization: {AUTH['Authorization']}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((parts.hostname or "", parts.port or 0), timeout=10) as conn:
        conn.sendall(head + body[:10])
        time.sleep(0.3)  # the exporter reads the first piece alone
        conn.sendall(body[10:])
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 202"), answer[:300]


@pytest.mark.parametrize(
    ("method", "headers", "refused"),
    [
        ("GET", {"Sec-Fetch-Site": "cross-site"}, False),  # reading changes nothing
        ("HEAD", {"Origin": "http://evil.example"}, False),
        ("POST", {}, False),
        ("POST", {"Sec-Fetch-Site": "SAME-ORIGIN"}, False),
        ("POST", {"Origin": "http://EXPORTER:9"}, False),
        ("POST", {"Origin": "https://exporter:9"}, False),  # TLS ended by a proxy in front
        ("POST", {"Origin": "http://exporter"}, True),
        ("POST", {"Origin": "http://user@exporter:9"}, True),
        ("POST", {"Origin": "http://[::1"}, True),
        ("DELETE", {"Sec-Fetch-Site": "cross-site"}, True),
        ("PUT", {"Sec-Fetch-Site": "bogus"}, True),
    ],
)
def test_the_rule(method: str, headers: dict[str, str], refused: bool) -> None:
    request = make_mocked_request(method, "/pull-now", headers={"Host": "exporter:9", **headers})
    assert (refusal(request) is not None) == refused


def test_the_form_needs_the_admin_api(tmp_path: Path) -> None:
    sim = OllamaSimulator({"quick": [up_to_date([1000])]})
    with sim.running() as url:
        config = f"servers:\n  - name: s\n    url: {url}\n    models: [quick]\n"
        with run_exporter(config, tmp_path) as running:
            status, _, text = send(running, "/pull-now", QUICK, FORM)
            assert "pull-now" not in running.get("/")[1]
    assert status == 403
    assert "--web.enable-admin-api" in text
