"""The aiohttp side of one run: POST `/api/pull`, stream it, watch the clock.

Everything that can go wrong becomes a `RunResult` with a contract reason; the
only exception that leaves `run_pull` is `CancelledError` (shutdown, reload),
which is always re-raised after the stream is closed.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import aiohttp

from exporter import USER_AGENT
from exporter.clients.body import read_masked
from exporter.clients.pacing import COALESCE_BELOW_BYTES, ReadPacer, longest_pause
from exporter.clients.problems import describe, plain_problem
from exporter.clients.transport import (
    FramingError,
    GuardedResponse,
    MalformedBodyError,
    ReadPause,
    connection_gone,
    framing_watched,
    overlong_line,
    parser_failure,
    watch_malformed_body,
)
from exporter.core.clock import SYSTEM_CLOCK
from exporter.ollama.progress import RunProgress
from exporter.ollama.protocol import LineDecoder, ProtocolError, Reason
from exporter.state.pairs import RunResult
from exporter.state.transcript import Redactor

if TYPE_CHECKING:
    from collections.abc import Callable

    from exporter.config.types import ModelConfig, ServerConfig
    from exporter.core.clock import Clock
    from exporter.ollama.protocol import RunEnded
    from exporter.state.history import ActiveRun
    from exporter.state.pairs import ExporterState, PairState

log = logging.getLogger("exporter.pull")

CONNECT_TIMEOUT: Final = 30.0
"""Seconds to open a TCP (and TLS) connection before the server counts as unreachable."""
"""Sent with every request, so Ollama's and proxies' logs name who is pulling."""
_REQUEST_HEADERS: Final = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
"""Identity: a compressed stream would be inflated inside aiohttp's parser, all of one read at
once, where a small body can expand a thousandfold and stall the event loop. A body that
comes compressed anyway is refused unread (`protocol_error`)."""

_ERROR_BODY_LIMIT: Final = 4096
_DETAIL_LIMIT: Final = 2048


def make_timeout() -> aiohttp.ClientTimeout:
    """No total timeout: aiohttp's default of 300 s would cut real multi-GB pulls.

    The run's own `timeout` and `stall_timeout` watchdogs bound every run instead.
    """
    return aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=None)


def make_session() -> aiohttp.ClientSession:
    """The one client session of the process.

    No connection-pool limit (aiohttp's default of 100 would queue pulls past the
    hundredth, counted as started with their stall clock running); `max_concurrent_pulls`
    per server is the limit that matters. Every request names the exporter and asks for an
    uncompressed body, which is never inflated (see `_REQUEST_HEADERS`). Every response's
    chunk framing is bounded (exporter/clients/transport.py).
    """
    return aiohttp.ClientSession(
        timeout=make_timeout(),
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
        headers=_REQUEST_HEADERS,
        auto_decompress=False,
        response_class=GuardedResponse,
    )


async def run_pull(
    session: aiohttp.ClientSession,
    server: ServerConfig,
    model: ModelConfig,
    state: ExporterState,
    pair: PairState,
    *,
    clock: Clock = SYSTEM_CLOCK,
    on_chunk: Callable[[bytes, float], None] | None = None,
    active: ActiveRun | None = None,
) -> RunResult:
    """Run one pull of `model` on `server` and record it in `pair`; return how it ended.

    `on_chunk(chunk, arrived_at)` sees every chunk of the stream as it was read, with the
    `clock.monotonic()` reading its lines are folded at (b"" at the end): a transcript
    costs one call per chunk, not per line. It must be cheap and must not raise.
    With `active` (the run history) the chunks also go to the run's transcript.
    """
    settings = model.settings
    started_wall = clock.time()
    started = clock.monotonic()
    run = RunProgress(started, started_wall)
    pair.start_run(run)
    on_lines = None
    if active is not None:
        transcript = active.begin(run, started_wall)
        on_chunk, on_lines = _both(on_chunk, transcript.feed), transcript.counted
    extra = {"server": server.name, "model": model.name}
    log.debug("pull started", extra=extra)
    reader = asyncio.create_task(
        _stream(
            session, server, model, state, run, clock=clock, on_chunk=on_chunk, on_lines=on_lines
        )
    )
    deadline = started + settings.timeout
    watchdog = asyncio.create_task(_watch(run, settings.stall_timeout, deadline, clock))
    tasks = (reader, watchdog)
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if reader.done():
            result = _result_of(reader)
        elif watchdog.result() is Reason.STALLED:
            result = RunResult(
                Reason.STALLED, f"no progress for {settings.stall_timeout:g}s in {run.phase.value}"
            )
        else:
            result = RunResult(Reason.TIMEOUT, f"run passed its timeout of {settings.timeout:g}s")
    except asyncio.CancelledError:
        await _cancel(*tasks)
        pair.abandon_run(run)
        log.info("pull cancelled", extra=extra)
        raise
    await _cancel(*tasks)
    ended = clock.monotonic()
    run.finish(ended, succeeded=result.succeeded)
    duration = ended - started
    run_id = None if active is None else active.id
    pair.finish_run(run, result, ended_at=started_wall + duration, duration=duration, run_id=run_id)
    _log_result(result, run, duration, extra, Redactor.for_servers([server]))
    return result


def _both(
    first: Callable[[bytes, float], None] | None, second: Callable[[bytes, float], None]
) -> Callable[[bytes, float], None]:
    if first is None:
        return second

    def both(chunk: bytes, at: float) -> None:
        first(chunk, at)
        second(chunk, at)

    return both


def _result_of(reader: asyncio.Task[RunResult]) -> RunResult:
    """The reader's result; an unexpected exception is a bug, logged, and the run fails."""
    try:
        return reader.result()
    except Exception as exc:
        log.exception("pull reader crashed")
        return RunResult(Reason.STREAM_INTERRUPTED, describe(exc))


async def _cancel(*tasks: asyncio.Task[object]) -> None:
    """Cancel and await tasks; closing the reader closes its HTTP stream."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _watch(run: RunProgress, stall_timeout: float, deadline: float, clock: Clock) -> Reason:
    """Return STALLED once `stall_timeout` passes with no progress, or TIMEOUT at `deadline`.

    One task watches both, and sleeps until the nearer of the two; it never polls tightly.
    """
    while True:
        now = clock.monotonic()
        stall_at = run.last_progress_at + stall_timeout
        if now >= stall_at:
            return Reason.STALLED
        if now >= deadline:
            return Reason.TIMEOUT
        await clock.sleep(min(stall_at, deadline) - now)


async def _stream(
    session: aiohttp.ClientSession,
    server: ServerConfig,
    model: ModelConfig,
    state: ExporterState,
    run: RunProgress,
    *,
    clock: Clock,
    on_chunk: Callable[[bytes, float], None] | None,
    on_lines: Callable[[int], None] | None = None,
) -> RunResult:
    """POST the pull and fold the NDJSON stream into `run` until it ends."""
    body = {"model": model.name, "insecure": model.settings.insecure, "stream": True}
    try:
        # Ollama never redirects; following one would send our headers where they were not
        # configured to go, so a redirect is reported as the HTTP error it is.
        async with session.post(
            f"{server.url}/api/pull",
            json=body,
            headers=dict(server.headers),
            allow_redirects=False,
        ) as response:
            state.server_answered(server.name)
            with framing_watched(response):
                if response.status != 200:
                    redact = Redactor.for_servers([server])
                    return await _http_error(response, clock, on_chunk, redact)
                pause = longest_pause(model.settings.stall_timeout)
                return await _Fold(run, clock, on_chunk, on_lines, pause).consume(response)
    except aiohttp.ClientResponseError as exc:
        # Raised before a response exists: the server did answer, with bytes that are not
        # HTTP (a bad status line, a malformed chunk in the first segment).
        state.server_answered(server.name)
        return RunResult(Reason.PROTOCOL_ERROR, f"malformed HTTP response: {exc.message}")
    except (aiohttp.ClientError, OSError) as exc:
        # `_Fold.consume` handles everything after the headers, so this is "no response".
        state.server_unreachable(server.name, plain_problem(exc))
        return RunResult(Reason.OLLAMA_UNREACHABLE, describe(exc))


@dataclass(frozen=True, slots=True)
class _Fold:
    """Where a 200 stream goes: the run it folds into, the clock of its lines, the hooks."""

    run: RunProgress
    clock: Clock
    on_chunk: Callable[[bytes, float], None] | None
    on_lines: Callable[[int], None] | None
    longest_pause: float

    async def consume(self, response: aiohttp.ClientResponse) -> RunResult:
        """Fold a 200 stream into the run; a broken stream becomes its reason."""
        encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in {"", "identity"}:
            return RunResult(
                Reason.PROTOCOL_ERROR,
                f"body sent with Content-Encoding {encoding!r}, not asked for",
            )
        unwatch = watch_malformed_body(response)
        try:
            return await self._read(response)
        except (ProtocolError, aiohttp.ClientError, RuntimeError) as exc:
            return _broken(exc, response)
        finally:
            unwatch()

    async def _read(self, response: aiohttp.ClientResponse) -> RunResult:
        """Read chunks as they come, fold each chunk's lines in one call, pace small reads."""
        run, clock, on_chunk, on_lines = self.run, self.clock, self.on_chunk, self.on_lines
        decoder = LineDecoder()
        content = response.content
        apply_lines = run.apply_lines
        pacer = ReadPacer(self.longest_pause)
        pause = ReadPause(response)
        while True:
            chunk = await content.readany()
            now = clock.monotonic()
            if on_chunk is not None:
                on_chunk(chunk, now)
            if not chunk:
                ended = apply_lines(decoder.finish(), now)
                if ended is None:
                    return RunResult(Reason.STREAM_INTERRUPTED, "stream ended without success")
                return _result(ended)
            lines = decoder.feed(chunk)
            if on_lines is not None:  # the transcript takes the decoder's count: no second scan
                on_lines(len(lines))
            ended = apply_lines(lines, now)
            if ended is not None:
                return _result(ended)
            if len(chunk) < COALESCE_BELOW_BYTES and pause.possible:
                seconds = pacer.pause_after(len(chunk), run, now)
                if seconds:  # let the next ticks pile up in the socket (exporter/clients/pacing.py)
                    await pause.hold(seconds, clock)


def _broken(
    exc: ProtocolError | aiohttp.ClientError | RuntimeError, response: aiohttp.ClientResponse
) -> RunResult:
    """The reason of a stream that broke after its headers."""
    if isinstance(exc, ProtocolError):
        return RunResult(Reason.PROTOCOL_ERROR, str(exc))
    if isinstance(exc, (MalformedBodyError, FramingError)):
        return RunResult(Reason.PROTOCOL_ERROR, f"malformed HTTP body: {exc}")
    overlong = overlong_line(exc)  # a whole over-long line, in aiohttp's Python parser
    if overlong is not None:
        return RunResult(Reason.PROTOCOL_ERROR, f"malformed HTTP body: {overlong}")
    if isinstance(exc, aiohttp.ClientError):
        return RunResult(Reason.STREAM_INTERRUPTED, describe(exc))
    # aiohttp's `readany` raises a bare RuntimeError once the connection is gone.
    failure = parser_failure(response)
    if failure is not None:
        return RunResult(Reason.PROTOCOL_ERROR, f"malformed HTTP body: {failure}")
    if connection_gone(response):
        return RunResult(Reason.STREAM_INTERRUPTED, describe(exc))
    raise exc


def _result(ended: RunEnded) -> RunResult:
    return RunResult(ended.reason, ended.detail)


async def _http_error(
    response: aiohttp.ClientResponse,
    clock: Clock,
    on_chunk: Callable[[bytes, float], None] | None = None,
    redact: Redactor | None = None,
) -> RunResult:
    """A non-200 answer before streaming: 400 is our request's fault, the rest Ollama's.

    Its body (the first 4 KiB, masked before it is cut) goes to `on_chunk` as the run's one
    chunk: the transcript.
    """
    try:
        text = await read_masked(response.content, _ERROR_BODY_LIMIT, redact or Redactor())
    except aiohttp.ClientError:
        text = ""
    if on_chunk is not None and text:
        on_chunk(text.encode(), clock.monotonic())
    reason = Reason.INVALID_REQUEST if response.status == 400 else Reason.OLLAMA_HTTP_ERROR
    location = response.headers.get("Location")
    where = f" (redirect to {location})" if location else ""
    return RunResult(reason, f"HTTP {response.status}{where}: {text.strip()}")


def _log_result(
    result: RunResult,
    run: RunProgress,
    duration: float,
    extra: dict[str, str],
    redact: Redactor,
) -> None:
    fields = {
        **extra,
        "result": "success" if result.succeeded else "failure",
        "duration_seconds": round(duration, 3),
        "downloaded_bytes": run.downloaded_bytes,
        "layers": run.layers,
    }
    if result.reason is None:
        log.info("pull finished", extra=fields)
    else:
        fields["reason"] = result.reason.value
        fields["detail"] = redact(result.detail)[:_DETAIL_LIMIT]  # Ollama may echo a header
        log.warning("pull failed", extra=fields)
