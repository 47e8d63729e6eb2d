"""Ask each server `GET /api/version` at start-up and when a reload adds it.

So that a wrong URL or a stopped Ollama shows at once (log, `ollama_pull_server_up`, `/`)
instead of at the first scheduled run, which may be hours away. A probe never fails a run
and never blocks start-up: probes run beside the scheduler, a few at a time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Final

import aiohttp

from exporter.clients.body import read_up_to
from exporter.clients.problems import plain_problem
from exporter.core.limiter import Limiter

if TYPE_CHECKING:
    from collections.abc import Iterable

    from exporter.config.types import ServerConfig
    from exporter.state.pairs import ExporterState

log = logging.getLogger("exporter.probe")

PROBE_TIMEOUT: Final = 10.0
"""Seconds for the whole probe (connect, answer); a server slower than this counts as down."""
PROBES_AT_ONCE: Final = 16
"""Probes in flight together: a fleet of a thousand servers is probed in a few seconds."""
_BODY_LIMIT: Final = 4096


async def probe_server(
    session: aiohttp.ClientSession, server: ServerConfig, state: ExporterState
) -> None:
    """Probe one server and record (and log) what it answered."""
    extra = {"server": server.name}
    try:
        async with session.get(
            f"{server.url}/api/version",
            headers=dict(server.headers),
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT),
        ) as response:
            body, _ = await read_up_to(response.content, _BODY_LIMIT)
            status = response.status
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        state.server_unreachable(server.name, plain_problem(exc))
        log.warning("server unreachable", extra={**extra, "error": problem})
        return
    version = _version(body) if status == 200 else None
    state.server_answered(server.name, version)
    if version is None:
        log.warning(
            "server answered, but not like Ollama",
            extra={**extra, "path": "/api/version", "status": status},
        )
    else:
        log.info("server up", extra={**extra, "version": version})


async def probe_servers(
    session: aiohttp.ClientSession, servers: Iterable[ServerConfig], state: ExporterState
) -> None:
    """Probe every server of `servers`, at most PROBES_AT_ONCE at a time."""
    limit = Limiter(PROBES_AT_ONCE)

    async def one(server: ServerConfig) -> None:
        async with limit.slot():
            try:
                await probe_server(session, server, state)
            except Exception:  # a bug here must not cancel the other probes, nor go unseen
                log.exception("probe failed", extra={"server": server.name})

    await asyncio.gather(*(one(server) for server in servers))


def _version(body: bytes) -> str | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    version = value.get("version") if isinstance(value, dict) else None
    return version[:64] if isinstance(version, str) else None
