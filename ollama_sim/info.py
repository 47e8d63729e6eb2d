"""The informational endpoints: `GET /` and `GET /api/version` (§7)."""

from __future__ import annotations

import typing

from aiohttp import web

from ollama_sim.stream import response
from ollama_sim.wire import JSON_UTF8, go_json

if typing.TYPE_CHECKING:
    from ollama_sim.server import OllamaSimulator


def routes(sim: OllamaSimulator) -> list[web.RouteDef]:
    """The routes of this family; `/api/version` answers `sim.version` as it is at the time."""

    async def version(request: web.Request) -> web.Response:
        del request
        return response(200, go_json({"version": sim.version}), JSON_UTF8)

    async def root(request: web.Request) -> web.Response:
        del request
        return web.Response(body=b"Ollama is running", content_type="text/plain", charset="utf-8")

    return [web.get("/api/version", version), web.get("/", root)]
