"""The aiohttp side of one run: POST `/api/pull`, stream it, watch the clock.

Everything that can go wrong becomes a `RunResult` with a contract reason; the
only exception that leaves `run_pull` is `CancelledError` (shutdown, reload),
which is always re-raised after the stream is closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Final

import aiohttp

from exporter.progress import RunProgress
from exporter.protocol import LineDecoder, ProtocolError, Reason, classify_error
from exporter.state import RunResult

if TYPE_CHECKING:
    from exporter.config import ModelConfig, ServerConfig
    from exporter.state import ExporterState, PairState

log = logging.getLogger("exporter.pull")

CONNECT_TIMEOUT: Final = 30.0
"""Seconds to open a TCP (and TLS) connection before the server counts as unreachable."""

_ERROR_BODY_LIMIT: Final = 4096
_DETAIL_LIMIT: Final = 2048
COALESCE_SECONDS: Final = 0.25
"""While a layer downloads, Ollama sends one line per 60 ms, each in its own TCP segment.
Pausing the socket this long after each read hands us ~4 lines per wake-up instead of one,
which cuts the exporter's CPU about 2x with 200 pulls streaming (docs/performance.md).
Only then: phase changes, errors and the end of a run that follow are seen at most this
late, and everything else (manifest, verify, up-to-date re-pulls) is read at once."""
COALESCE_BELOW_BYTES: Final = 8192
"""Pause only after a small read (the ticker's trickle). A stream that already arrives in big
chunks is read flat out, so a fast sender is never held back by our socket buffer."""
MAX_LAYERS: Final = 10_000
"""Distinct digests one run may show; real models have tens. Bounds memory on a hostile stream."""


def make_timeout() -> aiohttp.ClientTimeout:
    """No total timeout: aiohttp's default of 300 s would cut real multi-GB pulls.

    The run's own `timeout` and `stall_timeout` watchdogs bound every run instead.
    """
    return aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT, sock_read=None)


def make_session() -> aiohttp.ClientSession:
    """The one client session of the process.

    No connection-pool limit (aiohttp's default of 100 would queue pulls past the
    hundredth, counted as started with their stall clock running); `max_concurrent_pulls`
    per server is the limit that matters.
    """
    return aiohttp.ClientSession(
        timeout=make_timeout(), connector=aiohttp.TCPConnector(limit=0, limit_per_host=0)
    )


async def run_pull(
    session: aiohttp.ClientSession,
    server: ServerConfig,
    model: ModelConfig,
    state: ExporterState,
    pair: PairState,
) -> RunResult:
    """Run one pull of `model` on `server` and record it in `pair`; return how it ended."""
    settings = model.settings
    started_wall = time.time()
    started = time.monotonic()
    run = RunProgress(started)
    pair.start_run(run)
    extra = {"server": server.name, "model": model.name}
    log.debug("pull started", extra=extra)
    reader = asyncio.create_task(_stream(session, server, model, state, run))
    watchdog = asyncio.create_task(_watch_stall(run, settings.stall_timeout))
    try:
        done, _ = await asyncio.wait(
            {reader, watchdog}, timeout=settings.timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if reader in done:
            result = _result_of(reader)
        elif watchdog in done:
            result = RunResult(
                Reason.STALLED, f"no progress for {settings.stall_timeout:g}s in {run.phase.value}"
            )
        else:
            result = RunResult(Reason.TIMEOUT, f"run passed its timeout of {settings.timeout:g}s")
    except asyncio.CancelledError:
        await _cancel(reader, watchdog)
        pair.abandon_run(run)
        log.info("pull cancelled", extra=extra)
        raise
    await _cancel(reader, watchdog)
    ended = time.monotonic()
    run.finish(ended, succeeded=result.succeeded)
    duration = ended - started
    pair.finish_run(run, result, ended_at=started_wall + duration, duration=duration)
    _log_result(result, run, duration, extra)
    return result


def _result_of(reader: asyncio.Task[RunResult]) -> RunResult:
    """The reader's result; an unexpected exception is a bug, logged, and the run fails."""
    try:
        return reader.result()
    except Exception as exc:
        log.exception("pull reader crashed")
        return RunResult(Reason.STREAM_INTERRUPTED, _describe(exc))


async def _cancel(*tasks: asyncio.Task[object]) -> None:
    """Cancel and await tasks; closing the reader closes its HTTP stream."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _watch_stall(run: RunProgress, stall_timeout: float) -> None:
    """Return once `stall_timeout` passes with no progress; sleeps, never polls tightly."""
    while True:
        deadline = run.last_progress_at + stall_timeout
        delay = deadline - time.monotonic()
        if delay <= 0:
            return
        await asyncio.sleep(delay)


async def _stream(
    session: aiohttp.ClientSession,
    server: ServerConfig,
    model: ModelConfig,
    state: ExporterState,
    run: RunProgress,
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
            state.server_up[server.name] = 1
            if response.status != 200:
                return await _http_error(response)
            return await _consume(response, run)
    except (aiohttp.ClientError, OSError) as exc:
        # `_consume` handles everything after the headers, so this is "no response".
        state.server_up[server.name] = 0
        return RunResult(Reason.OLLAMA_UNREACHABLE, _describe(exc))


async def _consume(response: aiohttp.ClientResponse, run: RunProgress) -> RunResult:
    """Read chunks as they come and decode them a batch at a time."""
    decoder = LineDecoder()
    content = response.content
    apply = run.apply
    connection = response.connection
    transport = connection.transport if connection is not None else None
    try:
        while True:
            chunk = await content.readany()
            now = time.monotonic()
            lines = decoder.finish() if not chunk else decoder.feed(chunk)
            for line in lines:
                if line.error is not None:
                    return RunResult(classify_error(line.error), line.error)
                if line.status == "success":
                    return RunResult(None)
                apply(line, now)
            if not chunk:
                return RunResult(Reason.STREAM_INTERRUPTED, "stream ended without success")
            if run.layers > MAX_LAYERS:
                return RunResult(Reason.PROTOCOL_ERROR, f"more than {MAX_LAYERS} layers in one run")
            if len(chunk) < COALESCE_BELOW_BYTES and run.transferring and transport is not None:
                await _coalesce(transport)
    except ProtocolError as exc:
        return RunResult(Reason.PROTOCOL_ERROR, str(exc))
    except aiohttp.ClientError as exc:
        return RunResult(Reason.STREAM_INTERRUPTED, _describe(exc))


async def _coalesce(transport: asyncio.BaseTransport) -> None:
    """Let the next ticks of a download pile up in the socket (see COALESCE_SECONDS).

    The transport is paused directly: aiohttp's protocol-level pause asserts inside its parser.
    """
    if transport.is_closing() or not isinstance(transport, asyncio.ReadTransport):
        return
    transport.pause_reading()
    try:
        await asyncio.sleep(COALESCE_SECONDS)
    finally:
        if not transport.is_closing():
            transport.resume_reading()


async def _http_error(response: aiohttp.ClientResponse) -> RunResult:
    """A non-200 answer before streaming: 400 is our request's fault, the rest Ollama's."""
    try:
        text = (await response.content.read(_ERROR_BODY_LIMIT)).decode("utf-8", "replace")
    except aiohttp.ClientError:
        text = ""
    reason = Reason.INVALID_REQUEST if response.status == 400 else Reason.OLLAMA_HTTP_ERROR
    location = response.headers.get("Location")
    where = f" (redirect to {location})" if location else ""
    return RunResult(reason, f"HTTP {response.status}{where}: {text.strip()}")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _log_result(
    result: RunResult, run: RunProgress, duration: float, extra: dict[str, str]
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
        fields["detail"] = result.detail[:_DETAIL_LIMIT]
        log.warning("pull failed", extra=fields)
