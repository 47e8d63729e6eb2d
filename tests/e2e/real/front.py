"""The front between Ollama and the registry: redirects blob GETs, injects faults.

A stock registry on filesystem storage answers a blob GET with 200 and no `Location`, which
Ollama rejects (`http: no Location header in response`). Ollama follows same-host redirects
and keeps the first redirect to another host name (the port does not count), so the front
answers a blob GET on `127.0.0.1:PORT` with a 307 to the same path on `localhost:PORT`, and
serves the bytes there from the registry. Model names point at `127.0.0.1:PORT`.

Every fault is set by the test through `Front.faults` and applies from the next request:
throttle (bytes per second per response), stall (hold the response open at a byte offset),
cut (close the connection after some body bytes), corrupt (flip one byte), and a status
for manifest requests (500, or 401 with a Bearer challenge whose token endpoint refuses).
Each request is recorded (method, host, path, the headers Ollama sends).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import aiohttp
from aiohttp import web

from tests.harness import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

ORIGIN_HOST: Final = "127.0.0.1"
"""The host name in model names: manifests, HEAD and the first blob GET go here."""
BLOB_HOST: Final = "localhost"
"""The host name the blob GETs are redirected to (another name for the same loopback)."""
PIECE: Final = 64 * 1024
_HOP_HEADERS: Final = frozenset({"connection", "transfer-encoding", "keep-alive", "server", "date"})


@dataclass
class Faults:
    """What the front does wrong. `digest` limits the blob faults to one blob (None: all)."""

    digest: str | None = None
    throttle: float | None = None
    """Bytes per second for each blob response."""
    stall_at: int | None = None
    """Absolute blob offset where a response stops sending and holds the connection."""
    cut_after: int | None = None
    """Body bytes after which a blob response's connection is closed."""
    cut_times: int | None = None
    """How many responses to cut (None: every one)."""
    corrupt_at: int | None = None
    """Absolute blob offset whose byte is flipped."""
    manifest_status: int | None = None
    """500 or 401 for manifest requests (401 comes with a Bearer challenge)."""


@dataclass(frozen=True, slots=True)
class FrontRequest:
    """One request Ollama made to the front."""

    at: float
    method: str
    host: str
    path: str
    headers: dict[str, str]


@dataclass
class Front:
    """The running front. Thread-safe enough: tests assign `faults` between runs."""

    registry_url: str
    port: int = field(default_factory=free_port)
    faults: Faults = field(default_factory=Faults)
    requests: list[FrontRequest] = field(default_factory=list)
    cuts: int = 0
    stalls: int = 0

    @property
    def host(self) -> str:
        """`127.0.0.1:PORT`: the registry host in model names."""
        return f"{ORIGIN_HOST}:{self.port}"

    def reset(self) -> None:
        """No faults, no requests, no counts: each test (and each release) starts afresh."""
        self.faults = Faults()
        self.requests.clear()
        self.cuts = self.stalls = 0

    def blob_gets(self, digest: str) -> list[FrontRequest]:
        """The ranged GETs of `digest` that reached the blob host."""
        return [
            r
            for r in self.requests
            if r.method == "GET" and r.host.startswith(BLOB_HOST) and r.path.endswith(digest)
        ]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(
            FrontRequest(
                time.monotonic(),
                request.method,
                request.host,
                request.path_qs,
                dict(request.headers),
            )
        )
        faults = self.faults
        path = request.path
        if path.startswith("/token"):
            return web.json_response({"errors": [{"code": "UNAUTHORIZED"}]}, status=401)
        if "/manifests/" in path and faults.manifest_status is not None:
            return self._manifest_fault(faults.manifest_status)
        if "/blobs/" in path and request.method == "GET":
            if request.host.partition(":")[0] == ORIGIN_HOST:
                location = f"http://{BLOB_HOST}:{self.port}{request.path_qs}"
                return web.Response(status=307, headers={"Location": location})
            return await self._blob(request, faults)
        return await self._proxy(request)

    def _manifest_fault(self, status: int) -> web.Response:
        if status == 401:
            challenge = (
                f'Bearer realm="http://{self.host}/token",service="front",'
                'scope="repository:library/x:pull"'
            )
            return web.json_response(
                {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                status=401,
                headers={"WWW-Authenticate": challenge},
            )
        return web.json_response(
            {"errors": [{"code": "INTERNAL_ERROR", "message": "internal error"}]}, status=status
        )

    async def _proxy(self, request: web.Request) -> web.Response:
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method,
                self.registry_url + request.path_qs,
                headers=headers,
                data=await request.read(),
                allow_redirects=False,
            ) as upstream,
        ):
            body = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            response = web.Response(status=upstream.status, body=body, headers=out)
            if request.method == "HEAD":
                response.headers["Content-Length"] = upstream.headers.get("Content-Length", "0")
            return response

    async def _blob(self, request: web.Request, faults: Faults) -> web.StreamResponse:
        digest = request.path.rsplit("/", 1)[-1]
        targeted = faults.digest is None or faults.digest == digest
        headers = {k: v for k, v in request.headers.items() if k.lower() in {"range", "accept"}}
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.get(
                self.registry_url + request.path_qs, headers=headers, allow_redirects=False
            ) as upstream,
        ):
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            response = web.StreamResponse(status=upstream.status, headers=out)
            await response.prepare(request)
            offset = _range_start(request.headers.get("Range"))
            if not targeted:
                async for piece in upstream.content.iter_chunked(PIECE):
                    await response.write(piece)
                return response
            return await self._faulty(request, response, upstream, faults, offset)

    async def _faulty(
        self,
        request: web.Request,
        response: web.StreamResponse,
        upstream: aiohttp.ClientResponse,
        faults: Faults,
        offset: int,
    ) -> web.StreamResponse:
        cut = faults.cut_after is not None and (
            faults.cut_times is None or self.cuts < faults.cut_times
        )
        started, sent = time.monotonic(), 0
        async for data in upstream.content.iter_chunked(PIECE):
            piece = data
            if cut and faults.cut_after is not None and sent + len(piece) > faults.cut_after:
                await response.write(piece[: faults.cut_after - sent])
                self.cuts += 1
                assert request.transport is not None
                request.transport.close()
                return response
            if faults.stall_at is not None and offset + sent + len(piece) > faults.stall_at:
                piece = piece[: max(0, faults.stall_at - offset - sent)]
                await response.write(piece)
                self.stalls += 1
                await asyncio.Event().wait()  # until Ollama gives up on this connection
            if faults.corrupt_at is not None and offset + sent <= faults.corrupt_at < (
                offset + sent + len(piece)
            ):
                at = faults.corrupt_at - offset - sent
                piece = piece[:at] + bytes([piece[at] ^ 0xFF]) + piece[at + 1 :]
            await response.write(piece)
            sent += len(piece)
            if faults.throttle is not None:
                ahead = sent / faults.throttle - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        return response


def _range_start(header: str | None) -> int:
    """The first byte of `Range: bytes=a-b` (0 without one)."""
    if not header or not header.startswith("bytes="):
        return 0
    return int(header[len("bytes=") :].partition("-")[0] or 0)


@contextlib.contextmanager
def running_front(registry_url: str) -> Iterator[Front]:
    """Serve a front in a thread of its own for the length of the block."""
    front = Front(registry_url)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()
    errors: list[BaseException] = []

    async def serve() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", front._handle)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        # Both names of the loopback reach the same socket: 127.0.0.1 and localhost.
        site = web.TCPSite(runner, ORIGIN_HOST, front.port)
        await site.start()
        started.set()
        await stop.wait()
        await runner.cleanup()

    def main() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)
            started.set()
        finally:
            loop.close()

    thread = threading.Thread(target=main, name="front", daemon=True)
    thread.start()
    started.wait(10)
    if errors:
        raise errors[0]
    try:
        yield front
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(15)
