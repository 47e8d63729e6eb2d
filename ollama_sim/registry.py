"""A simulated Docker v2 registry: the manifest requests Ollama (and `mode: check`) make.

`GET|HEAD /v2/<namespace>/<model>/manifests/<tag>` answers as docker distribution does for a
schema-2 manifest: `Content-Type: application/vnd.docker.distribution.manifest.v2+json`,
`Docker-Content-Digest: sha256:<hex of the body>`, `Content-Length`; unknown names and tags
answer 404 with distribution's error body (`NAME_UNKNOWN`, `MANIFEST_UNKNOWN`). With
`token_auth` every manifest request without a valid bearer token answers 401 with
`WWW-Authenticate: Bearer realm="<url>/token",service="...",scope="repository:<name>:pull"`,
and `GET /token` hands out anonymous tokens (`{"token": ..., "access_token": ...}`), the
flow of Docker Hub and registry:2 behind a token server. `answer_with` replaces every manifest
answer (garbage, odd statuses) for tests of what a client does with a broken registry. With
`ssl_context` it serves https, as a real registry does.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import json
import secrets
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from ollama_sim.names import name_parts
from ollama_sim.serving import serve

if TYPE_CHECKING:
    import ssl
    from collections.abc import Iterator

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
_CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
_MODEL_LAYER = "application/vnd.ollama.image.model"
_SERVICE = "ollama-sim-registry"


@dataclass(frozen=True, slots=True)
class RegistryRequest:
    """One request the registry saw."""

    method: str
    path: str
    headers: CIMultiDictProxy[str]
    status: int


@dataclass(frozen=True, slots=True)
class CannedAnswer:
    """A fixed answer for every manifest request (see `RegistrySimulator.answer_with`)."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def repository_of(model: str) -> tuple[str, str]:
    """(`namespace/model`, `tag`) of an Ollama model name, lower-cased like a registry path."""
    _, namespace, name, tag = name_parts(model)
    return f"{namespace}/{name}".lower(), tag


def schema2_manifest(repository: str, tag: str, revision: int, size: int = 1000) -> bytes:
    """A docker schema-2 manifest of one model layer; `revision` changes its digest."""
    seed = f"{repository}:{tag}:{revision}"
    layer = hashlib.sha256(f"{seed}:layer".encode()).hexdigest()
    config = hashlib.sha256(f"{seed}:config".encode()).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_V2,
        "config": {"mediaType": _CONFIG_TYPE, "digest": f"sha256:{config}", "size": 2},
        "layers": [{"mediaType": _MODEL_LAYER, "digest": f"sha256:{layer}", "size": size}],
    }
    return json.dumps(manifest, indent=3).encode()  # distribution keeps the pushed bytes


class RegistrySimulator:
    """The registry; `push` a manifest, then read `digest_of` or watch `requests`."""

    def __init__(
        self, *, token_auth: bool = False, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.token_auth = token_auth
        self.ssl_context = ssl_context
        self._manifests: dict[tuple[str, str], bytes] = {}
        self._revisions: dict[tuple[str, str], int] = {}
        self._tokens: set[str] = set()
        self._canned: CannedAnswer | None = None
        self._requests: list[RegistryRequest] = []
        self._lock = threading.Lock()
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_stop: asyncio.Event | None = None
        self.url: str | None = None
        self.host: str | None = None
        """`127.0.0.1:PORT`, the host part of model names that live here."""

    # ---- content, all thread-safe

    def push(self, model: str, manifest: bytes | None = None) -> str:
        """Store a manifest for `model` (a new revision by default); return its hex digest."""
        key = repository_of(model)
        with self._lock:
            revision = self._revisions.get(key, -1) + 1
            self._revisions[key] = revision
            body = manifest if manifest is not None else schema2_manifest(*key, revision)
            self._manifests[key] = body
        return hashlib.sha256(body).hexdigest()

    def delete(self, model: str) -> None:
        """Forget `model`'s tag: requests for it answer 404 MANIFEST_UNKNOWN."""
        with self._lock:
            self._manifests.pop(repository_of(model), None)

    def digest_of(self, model: str) -> str | None:
        """The hex digest of `model`'s current manifest, None when there is none."""
        with self._lock:
            body = self._manifests.get(repository_of(model))
        return None if body is None else hashlib.sha256(body).hexdigest()

    def answer_with(self, answer: CannedAnswer | None) -> None:
        """Answer every manifest request with `answer` (None: normal answers again)."""
        with self._lock:
            self._canned = answer

    @property
    def requests(self) -> list[RegistryRequest]:
        """Every request so far, oldest first."""
        with self._lock:
            return list(self._requests)

    # ---- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve in the running loop; return the base URL (`http://127.0.0.1:PORT`, or https)."""
        app = web.Application()
        app.router.add_get("/v2/", self._handle_base)
        app.router.add_route("*", "/v2/{namespace}/{model}/manifests/{tag}", self._handle_manifest)
        app.router.add_get("/token", self._handle_token)
        self._runner, bound_host, bound_port = await serve(
            app, host, port, ssl_context=self.ssl_context
        )
        self.host = f"{bound_host}:{bound_port}"
        scheme = "http" if self.ssl_context is None else "https"
        self.url = f"{scheme}://{self.host}"
        return self.url

    async def stop(self) -> None:
        """Close the server."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @contextlib.contextmanager
    def running(self, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve from a background thread; yield the base URL."""
        ready: concurrent.futures.Future[str] = concurrent.futures.Future()

        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._thread_stop = asyncio.Event()
            try:
                ready.set_result(await self.start(host, port))
            except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
                ready.set_exception(exc)
                return
            try:
                await self._thread_stop.wait()
            finally:
                await self.stop()

        thread = threading.Thread(target=lambda: asyncio.run(serve()), daemon=True)
        thread.start()
        url = ready.result(timeout=10)
        try:
            yield url
        finally:
            assert self._loop is not None
            assert self._thread_stop is not None
            self._loop.call_soon_threadsafe(self._thread_stop.set)
            thread.join(timeout=5)

    # ---- handlers

    def _note(self, request: web.Request, status: int) -> None:
        headers = CIMultiDictProxy(CIMultiDict(request.headers))
        with self._lock:
            self._requests.append(RegistryRequest(request.method, request.path, headers, status))

    async def _handle_base(self, request: web.Request) -> web.Response:
        self._note(request, 200)
        return web.json_response({})

    async def _handle_token(self, request: web.Request) -> web.Response:
        token = secrets.token_hex(16)
        with self._lock:
            self._tokens.add(token)
        self._note(request, 200)
        return web.json_response({"token": token, "access_token": token, "expires_in": 300})

    async def _handle_manifest(self, request: web.Request) -> web.Response:
        if request.method not in {"GET", "HEAD"}:
            return self._answer(
                request, 405, _errors("UNSUPPORTED", "The operation is unsupported.")
            )
        namespace, model, tag = (request.match_info[k] for k in ("namespace", "model", "tag"))
        repository = f"{namespace}/{model}"
        if self.token_auth and not self._authorized(request):
            challenge = (
                f'Bearer realm="{self.url}/token",service="{_SERVICE}",'
                f'scope="repository:{repository}:pull"'
            )
            body = _errors("UNAUTHORIZED", "authentication required")
            return self._answer(request, 401, body, (("WWW-Authenticate", challenge),))
        with self._lock:
            canned = self._canned
            manifest = self._manifests.get((repository, tag))
            known = any(name == repository for name, _ in self._manifests)
        if canned is not None:
            return self._answer(request, canned.status, canned.body, canned.headers)
        if manifest is None:
            if not known:
                body = _errors("NAME_UNKNOWN", "repository name not known to registry")
                return self._answer(request, 404, body)
            return self._answer(request, 404, _errors("MANIFEST_UNKNOWN", "manifest unknown"))
        headers = (
            ("Content-Type", MANIFEST_V2),
            ("Docker-Content-Digest", "sha256:" + hashlib.sha256(manifest).hexdigest()),
            ("Docker-Distribution-Api-Version", "registry/2.0"),
        )
        return self._answer(request, 200, manifest, headers)

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        with self._lock:
            return scheme.lower() == "bearer" and token in self._tokens

    def _answer(
        self,
        request: web.Request,
        status: int,
        body: bytes,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> web.Response:
        self._note(request, status)
        response = web.Response(status=status, body=None if request.method == "HEAD" else body)
        if not any(name.lower() == "content-type" for name, _ in headers):
            response.headers["Content-Type"] = "application/json; charset=utf-8"
        for name, value in headers:
            response.headers[name] = value
        if request.method == "HEAD":
            response.headers["Content-Length"] = str(len(body))
        return response


def _errors(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": None}]}).encode()
