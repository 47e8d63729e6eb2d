"""exporter.clients.registry against the simulated Docker v2 registry over real sockets.

Names follow Ollama's defaults; the manifest request carries Ollama's Accept header; a 401
challenge is answered with an anonymous token; whatever garbage the registry sends is a
failed check with a reason, never an exception; HTTP_PROXY is used when set.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import threading
from typing import TYPE_CHECKING

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from exporter.clients.registry import (
    MAX_TOKEN_BYTES,
    Checker,
    Reference,
    _manifest_outcome,
    make_registry_session,
    parse_reference,
)
from exporter.config.types import Mode, ModelConfig, PullSettings, ServerConfig
from exporter.state.holdings import CheckResult
from exporter.state.pairs import PairState
from ollama_sim import MANIFEST_V2, CannedAnswer, RegistrySimulator
from tests.harness import free_port

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

    from exporter.clients.registry import Outcome


@pytest.mark.parametrize(
    ("name", "reference"),
    [
        ("gemma3", Reference("registry.ollama.ai", "library", "gemma3", "latest")),
        ("llama3.2:1b", Reference("registry.ollama.ai", "library", "llama3.2", "1b")),
        ("team/Tiny:V1", Reference("registry.ollama.ai", "team", "Tiny", "V1")),
        ("127.0.0.1:5000/ns/m:t", Reference("127.0.0.1:5000", "ns", "m", "t")),
        ("http://localhost:5000/ns/m", Reference("localhost:5000", "ns", "m", "latest")),
    ],
)
def test_names_take_ollamas_defaults(name: str, reference: Reference) -> None:
    assert parse_reference(name) == reference


def test_insecure_means_plain_http() -> None:
    reference = parse_reference("127.0.0.1:5000/ns/m:t")
    assert reference.manifest_url(insecure=True) == "http://127.0.0.1:5000/v2/ns/m/manifests/t"
    assert parse_reference("gemma3").manifest_url(insecure=False) == (
        "https://registry.ollama.ai/v2/library/gemma3/manifests/latest"
    )


@pytest.fixture
def registry() -> Iterator[RegistrySimulator]:
    sim = RegistrySimulator()
    with sim.running():
        yield sim


def _model(name: str) -> ModelConfig:
    settings = PullSettings(60, 0, 600, 60, insecure=True, run_on_start=True, mode=Mode.CHECK)
    return ModelConfig(name, settings)


def _check(name: str) -> tuple[Outcome, PairState]:
    pair = PairState("s", name, 60)
    pair.holding.set_checking(True)
    server = ServerConfig("s", "http://127.0.0.1:1", (), 1, (_model(name),))

    async def check() -> Outcome:
        async with make_registry_session() as session:
            return await Checker(session).check(server, _model(name), pair)

    return asyncio.run(check()), pair


def test_a_check_reads_the_manifest_digest_with_ollamas_accept_header(
    registry: RegistrySimulator,
) -> None:
    name = f"{registry.host}/library/tiny:1b"
    digest = registry.push(name)
    outcome, pair = _check(name)
    assert (outcome.result, outcome.digest) == (CheckResult.OK, digest)
    assert pair.holding.registry_digest == digest
    assert pair.holding.checks is not None
    assert pair.holding.checks[CheckResult.OK] == 1
    (request,) = registry.requests
    assert (request.method, request.path) == ("GET", "/v2/library/tiny/manifests/1b")
    assert request.headers["Accept"] == MANIFEST_V2
    assert request.headers["User-Agent"].startswith("ollama-pull-exporter/")


def test_update_available_compares_with_the_held_copy(registry: RegistrySimulator) -> None:
    name = f"{registry.host}/library/tiny:1b"
    old = registry.push(name)
    new = registry.push(name)
    assert old != new
    _, pair = _check(name)
    assert pair.holding.update_available is None  # the held copy is not known yet
    pair.holding.present, pair.holding.digest = True, old
    assert pair.holding.update_available == 1
    pair.holding.digest = new
    assert pair.holding.update_available == 0
    pair.holding.present, pair.holding.digest = False, None
    assert pair.holding.update_available == 1  # not held at all: the update is the model


def test_the_401_challenge_gets_an_anonymous_token() -> None:
    sim = RegistrySimulator(token_auth=True)
    with sim.running():
        name = f"{sim.host}/team/tiny"
        digest = sim.push(name)
        outcome, _ = _check(name)
    assert (outcome.result, outcome.digest) == (CheckResult.OK, digest)
    first, token, retry = sim.requests
    assert first.status == 401
    assert "Authorization" not in first.headers
    assert token.path == "/token"
    assert retry.status == 200
    assert retry.headers["Authorization"].startswith("Bearer ")


def test_unknown_names_and_tags_are_not_found(registry: RegistrySimulator) -> None:
    registry.push(f"{registry.host}/library/tiny:1b")
    for name in (f"{registry.host}/library/tiny:2b", f"{registry.host}/library/other"):
        outcome, _ = _check(name)
        assert outcome.result is CheckResult.NOT_FOUND
        assert "MANIFEST_UNKNOWN" in outcome.detail or "NAME_UNKNOWN" in outcome.detail


GOOD = b'{"schemaVersion": 2}'


@pytest.mark.parametrize(
    ("answer", "result", "detail"),
    [
        (CannedAnswer(200, b"<html>hello</html>"), CheckResult.ERROR, "the manifest is not"),
        (CannedAnswer(200, b"[1, 2]"), CheckResult.ERROR, "the manifest is not"),
        (
            CannedAnswer(200, GOOD, (("Docker-Content-Digest", "sha256:" + "0" * 64),)),
            CheckResult.ERROR,
            "Docker-Content-Digest does not match the body",
        ),
        (
            CannedAnswer(200, GOOD, (("Docker-Content-Digest", "md5:abc"),)),
            CheckResult.ERROR,
            "bad Docker-Content-Digest",
        ),
        (CannedAnswer(200, b"{" * 100_000), CheckResult.ERROR, "the manifest is not"),
        (CannedAnswer(200, b" " * (5 * 1024 * 1024)), CheckResult.ERROR, "answer larger than"),
        (CannedAnswer(500, b"oops"), CheckResult.ERROR, "HTTP 500: oops"),
        (CannedAnswer(403, b"denied"), CheckResult.UNAUTHORIZED, "HTTP 403"),
        (
            CannedAnswer(401, b"", (("WWW-Authenticate", 'Basic realm="x"'),)),
            CheckResult.UNAUTHORIZED,
            "HTTP 401 with a Basic challenge",
        ),
        (
            CannedAnswer(401, b"", (("WWW-Authenticate", 'Bearer realm="file:///etc"'),)),
            CheckResult.ERROR,
            "bad token realm",
        ),
    ],
)
def test_garbage_is_a_failed_check(
    registry: RegistrySimulator, answer: CannedAnswer, result: CheckResult, detail: str
) -> None:
    registry.answer_with(answer)
    outcome, pair = _check(f"{registry.host}/library/tiny")
    assert (outcome.result, outcome.digest) == (result, None)
    assert detail in outcome.detail
    assert pair.holding.registry_digest is None


def test_a_body_without_the_header_is_digested_itself(registry: RegistrySimulator) -> None:
    registry.answer_with(CannedAnswer(200, GOOD))
    outcome, _ = _check(f"{registry.host}/library/tiny")
    assert outcome.digest == hashlib.sha256(GOOD).hexdigest()


def test_a_registry_that_is_down_is_unreachable() -> None:
    outcome, _ = _check(f"127.0.0.1:{free_port()}/library/tiny")
    assert outcome.result is CheckResult.UNREACHABLE


def test_requests_go_through_the_proxy_from_the_environment(
    registry: RegistrySimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[str] = []
    assert registry.url is not None
    upstream = registry.url

    async def forward(request: web.Request) -> web.Response:
        seen.append(str(request.url))
        keep = {
            k: v for k, v in request.headers.items() if k.lower() in {"accept", "authorization"}
        }
        async with (
            aiohttp.ClientSession() as session,
            session.get(upstream + request.path, headers=keep) as response,
        ):
            body = await response.read()
            wanted = ("Content-Type", "Docker-Content-Digest")
            headers = {k: response.headers[k] for k in wanted if k in response.headers}
            return web.Response(status=response.status, body=body, headers=headers)

    name = f"{registry.host}/library/tiny"
    digest = registry.push(name)
    with _serve(forward) as proxy_url:
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        outcome, _ = _check(name)
    assert outcome.digest == digest
    assert seen == [f"http://{registry.host}/v2/library/tiny/manifests/latest"]


@contextlib.contextmanager
def _serve(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Iterator[str]:
    """`handler` for every path, served from a thread of its own; yields its URL."""
    loop = asyncio.new_event_loop()
    app = web.Application(handler_args={"max_field_size": 2 << 20})  # a 1 MiB token comes back
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    host, port = runner.addresses[0][:2]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_the_manifest_as_old_ollama_rewrites_it() -> None:
    # What Ollama before 0.19 stores (json.Marshal of its Manifest struct): compact, its
    # field order, HTML characters escaped; what a registry serves may be spaced and ordered
    # differently. Both digests count as the tag's.
    served = (
        b'{"layers": [{"size": 5, "digest": "sha256:aa", "mediaType": "m<1>"}], '
        b'"schemaVersion": 2, "config": {"mediaType": "c", "digest": "sha256:bb", "size": 2}, '
        b'"mediaType": "application/vnd.docker.distribution.manifest.v2+json"}'
    )
    expected = (
        b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        b'"config":{"mediaType":"c","digest":"sha256:bb","size":2},'
        b'"layers":[{"mediaType":"m\\u003c1\\u003e","digest":"sha256:aa","size":5}]}'
    )
    outcome = _manifest_outcome(200, CIMultiDictProxy(CIMultiDict()), served)
    assert outcome.digest == hashlib.sha256(served).hexdigest()
    assert outcome.rewritten == hashlib.sha256(expected).hexdigest()


# --------------------------------------------------------------------------- answers in pieces


async def _piecewise(
    request: web.Request, body: bytes, pieces: int, *, length: bool = True
) -> web.StreamResponse:
    """Send `body` in `pieces` writes with pauses between (chunked unless `length`)."""
    response = web.StreamResponse(headers={"Content-Type": MANIFEST_V2})
    if length:
        response.content_length = len(body)
    await response.prepare(request)
    step = -(-len(body) // pieces)
    for start in range(0, len(body), step):
        await response.write(body[start : start + step])
        await asyncio.sleep(0.05)  # each piece its own TCP segment, and the reader waiting
    await response.write_eof()
    return response


def _check_against(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]], name: str = "ns/m"
) -> Outcome:
    with _serve(handler) as url:
        return _check(f"{url.removeprefix('http://')}/{name}")[0]


def test_a_manifest_sent_in_pieces_is_read_whole() -> None:
    """Before, one `content.read()` returned the first piece and the check failed."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await _piecewise(request, GOOD, 3)

    outcome = _check_against(handler)
    assert outcome.digest == hashlib.sha256(GOOD).hexdigest(), outcome.detail


def _token_registry(
    token_answer: bytes, pieces: int
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A registry that asks for a token, and sends `token_answer` in `pieces` pieces."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.path == "/token":
            return await _piecewise(request, token_answer, pieces, length=False)
        if request.headers.get("Authorization", "").startswith("Bearer "):
            return await _piecewise(request, GOOD, 2)
        realm = f"http://{request.host}/token"
        challenge = f'Bearer realm="{realm}",service="s"'
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})

    return handler


def test_a_token_of_almost_the_limit_in_pieces_is_read_whole() -> None:
    token = "t" * (MAX_TOKEN_BYTES - 100)
    answer = b'{"token":"%s"}' % token.encode()
    assert len(answer) <= MAX_TOKEN_BYTES
    outcome = _check_against(_token_registry(answer, 16))
    assert outcome.result is CheckResult.OK, outcome.detail


def test_an_answer_past_the_limit_is_refused_clearly() -> None:
    answer = b'{"token":"%s"}' % (b"t" * MAX_TOKEN_BYTES)
    outcome = _check_against(_token_registry(answer, 16))
    assert outcome.result is CheckResult.ERROR
    assert outcome.detail == f"answer larger than {MAX_TOKEN_BYTES} bytes"
