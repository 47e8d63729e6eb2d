"""The inventory poller: `GET /api/tags` per server, every `inventory_interval` and after runs.

One loop task per server with the inventory enabled. It asks once per interval whatever the
number of models, and once more right after a successful run of one of the server's pairs (a
second later: runs that end meanwhile, or while a request is going, share that request). A
failed request is counted and logged, never fails a run, and leaves the last good inventory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final

import aiohttp

from exporter.clients.body import read_masked
from exporter.clients.problems import describe, plain_problem
from exporter.config.types import Mode
from exporter.ollama.names import canonical_model_name
from exporter.ollama.tags import MAX_TAGS_BYTES, TagsError, parse_tags
from exporter.state.holdings import InventoryResult, ServerHolding
from exporter.state.transcript import Redactor

if TYPE_CHECKING:
    from collections.abc import Callable

    from exporter.config.types import Config, ServerConfig
    from exporter.ollama.tags import Held
    from exporter.state.pairs import ExporterState, PairState

log = logging.getLogger("exporter.inventory")

REQUEST_TIMEOUT: Final = 30.0
"""Seconds for the whole `/api/tags` request; Ollama answers from a cache in milliseconds."""
AFTER_RUN_DELAY: Final = 1.0
"""Seconds between a successful run and the inventory it asks for. Ollama refreshes its model
list only after it has sent `success`, and a burst of runs ending together (a fleet of pairs
on one server) is folded into one request."""
_READ_SIZE: Final = 64 * 1024
_DETAIL_LIMIT: Final = 300


class InventoryFailedError(Exception):
    """One inventory request failed; `result` is its counter label, the message the why."""

    def __init__(self, result: InventoryResult, detail: str) -> None:
        super().__init__(detail)
        self.result = result
        self.detail = detail


class Inventory:
    """Owns the per-server loops; `apply` follows the config, `refresh` asks for a poll now."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        state: ExporterState,
        on_digest: Callable[[PairState], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._state = state
        self._on_digest = on_digest
        """Called with a pair whose last known digest was set or changed (to persist it)."""
        self._clock = clock
        self._servers: dict[str, ServerConfig] = {}
        self._loops: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}

    def apply(self, config: Config, *, start: bool = True) -> None:
        """Match `config`: loops for servers with the inventory on, check mode per pair.

        A server whose settings changed gets a fresh loop (so a new URL is asked at once);
        its last good answer is kept, and pairs added to it are answered from it at once.
        """
        holdings = self._state.inventory
        wanted = {server.name: server for server in config.servers if server.inventory_interval}
        for name in [name for name in self._servers if wanted.get(name) != self._servers[name]]:
            del self._servers[name]
            self._wake.pop(name, None)
            loop = self._loops.pop(name, None)
            if loop is not None:
                loop.cancel()
        for name in [name for name in holdings if name not in wanted]:
            del holdings[name]
        for server in config.servers:
            for model in server.models:
                holding = self._state.pairs[server.name, model.name].holding
                holding.set_checking(model.settings.mode is Mode.CHECK)
                holding.tracked = server.name in wanted
        for name, server in wanted.items():
            server_holding = holdings.setdefault(name, ServerHolding())
            if server_holding.held is not None:
                self._record(server, server_holding.held)
            if name not in self._servers:
                self._servers[name] = server
                self._wake[name] = asyncio.Event()
                if start:
                    self._loops[name] = asyncio.create_task(
                        self._loop(server, self._wake[name]), name=f"inventory {name}"
                    )

    def refresh(self, server: str) -> None:
        """Ask `server` again as soon as its current request (if any) is done."""
        wake = self._wake.get(server)
        if wake is not None:
            wake.set()

    def after_run(self, pair: PairState) -> None:
        """A run ended: after a success the server's holdings have changed, ask at once."""
        if pair.last is not None and pair.last.success:
            self.refresh(pair.server)

    async def stop(self) -> None:
        """Cancel every loop and wait for them (closing their requests)."""
        loops = list(self._loops.values())
        for loop in loops:
            loop.cancel()
        await asyncio.gather(*loops, return_exceptions=True)
        self._loops.clear()
        self._servers.clear()
        self._wake.clear()

    async def poll(self, server: ServerConfig) -> InventoryResult:
        """Ask `server` once and record the answer (or the failure); returns the result."""
        holding = self._state.inventory.setdefault(server.name, ServerHolding())
        extra: dict[str, object] = {"server": server.name}
        try:
            held = await self._request(server)
        except InventoryFailedError as exc:
            holding.requests[exc.result] += 1
            repeated = holding.problem is not None
            holding.problem = exc.detail
            level = logging.DEBUG if repeated else logging.WARNING
            log.log(
                level,
                "inventory failed, keeping the last good one",
                extra={**extra, "result": exc.result.value, "detail": exc.detail},
            )
            return exc.result
        holding.requests[InventoryResult.OK] += 1
        if holding.problem is not None:
            log.info("inventory works again", extra=extra)
        holding.problem = None
        holding.held = held
        holding.last_ok_at = self._clock()
        self._record(server, held)
        log.debug("inventory", extra={**extra, "models": len(held)})
        return InventoryResult.OK

    def _record(self, server: ServerConfig, held: dict[str, Held]) -> None:
        now = self._clock()
        for model in server.models:
            pair = self._state.pairs.get((server.name, model.name))
            if pair is None:
                continue
            holding = pair.holding
            before = holding.known_digest
            if holding.observe(held.get(canonical_model_name(model.name)), now):
                log.info(
                    "model changed",
                    extra={
                        "server": server.name,
                        "model": model.name,
                        "from": (before or "")[:12],
                        "to": (holding.digest or "")[:12],
                    },
                )
            if holding.known_digest != before and self._on_digest is not None:
                self._on_digest(pair)

    async def _loop(self, server: ServerConfig, wake: asyncio.Event) -> None:
        while True:
            wake.clear()  # a refresh asked for during the request below asks again after it
            try:
                await self.poll(server)
            except Exception:  # a bug must not end the loop: log it, try again next time
                log.exception("inventory poll crashed", extra={"server": server.name})
            try:
                await asyncio.wait_for(wake.wait(), server.inventory_interval)
            except TimeoutError:
                continue
            await asyncio.sleep(AFTER_RUN_DELAY)

    async def _request(self, server: ServerConfig) -> dict[str, Held]:
        """`GET /api/tags`, read with a size cap and parsed; raises InventoryFailedError."""
        answered = False
        try:
            async with self._session.get(
                f"{server.url}/api/tags",
                headers=dict(server.headers),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
            ) as response:
                answered = True
                self._state.server_answered(server.name)
                if response.status != 200:
                    text = await _read_some(response, Redactor.for_servers([server]))
                    raise InventoryFailedError(
                        InventoryResult.OLLAMA_HTTP_ERROR, f"HTTP {response.status}: {text}"
                    )
                body = await _read_capped(response)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            if answered:
                raise InventoryFailedError(
                    InventoryResult.PROTOCOL_ERROR,
                    f"answer cut off: {_why(exc)}",
                ) from None
            self._state.server_unreachable(server.name, plain_problem(exc))
            raise InventoryFailedError(
                InventoryResult.OLLAMA_UNREACHABLE,
                _why(exc),
            ) from None
        try:
            return parse_tags(body)
        except TagsError as exc:
            raise InventoryFailedError(InventoryResult.PROTOCOL_ERROR, str(exc)) from None


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    length = response.content_length
    if length is not None and length > MAX_TAGS_BYTES:
        raise InventoryFailedError(
            InventoryResult.PROTOCOL_ERROR,
            f"answer larger than {MAX_TAGS_BYTES} bytes (Content-Length {length})",
        )
    parts: list[bytes] = []
    size = 0
    while chunk := await response.content.read(_READ_SIZE):
        size += len(chunk)
        if size > MAX_TAGS_BYTES:
            raise InventoryFailedError(
                InventoryResult.PROTOCOL_ERROR, f"answer larger than {MAX_TAGS_BYTES} bytes"
            )
        parts.append(chunk)
    return b"".join(parts)


async def _read_some(response: aiohttp.ClientResponse, redact: Redactor) -> str:
    """The start of an error body, masked before it is cut (it is logged and kept)."""
    try:
        text = await read_masked(response.content, _DETAIL_LIMIT, redact)
    except (aiohttp.ClientError, OSError, TimeoutError):
        return ""
    return text.strip()


def _why(exc: BaseException) -> str:
    return describe(exc, timeout=REQUEST_TIMEOUT, limit=_DETAIL_LIMIT)
