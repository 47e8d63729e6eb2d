"""Run the exporter with the two changes to `exporter/web.py` that issue 5 proposes.

1. No cap on client connections. web.py opens its `aiohttp.ClientSession` with aiohttp's
   default connector, which allows at most 100 connections in total: however the servers'
   `max_concurrent_pulls` add up, at most 100 pulls stream at once and the rest wait for a
   connection, counted as started and stuck in `manifest`. Proposed: `aiohttp.ClientSession(
   timeout=make_timeout(), connector=aiohttp.TCPConnector(limit=0))` (the scheduler's
   per-server semaphores already bound the pulls).
2. `/metrics` served by `exporter.metrics.make_metrics_handler(registry)` instead of
   prometheus_client's `make_aiohttp_handler(registry)`: same answers, from the cached
   `Exposition` (only changed series are re-rendered).

This shim applies exactly those two changes in memory and then runs the real CLI, so the
fleet benchmark can measure the exporter as shipped and as proposed:

    python -m bench.fleet --exporter proposed

With `BENCH_COALESCE=SECONDS` in the environment it also applies a third, to `exporter/pull.py`
(measured, not yet agreed): after each read, `_consume` pauses the connection's reading for
that long, so the lines Ollama sends every 60 ms gather in the socket buffer and are read,
decoded and applied in one wakeup instead of one wakeup (event-loop turn, task step, future)
per line. Lines are then time-stamped up to that much late.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

import aiohttp

_original_init = aiohttp.ClientSession.__init__


def _init(self: aiohttp.ClientSession, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
    if kwargs.get("connector") is None:
        kwargs["connector"] = aiohttp.TCPConnector(limit=0)
    _original_init(self, *args, **kwargs)


def _coalescing_consume(seconds: float) -> Any:  # noqa: ANN401
    """`exporter.pull._consume` as it is, plus a pause of `seconds` after each read."""
    from exporter import pull  # noqa: PLC0415
    from exporter.protocol import LineDecoder, ProtocolError, Reason, classify_error  # noqa: PLC0415
    from exporter.state import RunResult  # noqa: PLC0415

    async def consume(response: aiohttp.ClientResponse, run: Any) -> RunResult:  # noqa: ANN401
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
                if run.layers > pull.MAX_LAYERS:
                    return RunResult(Reason.PROTOCOL_ERROR, "too many layers")
                if transport is not None and not transport.is_closing():
                    transport.pause_reading()
                    try:
                        await asyncio.sleep(seconds)
                    finally:
                        if not transport.is_closing():
                            transport.resume_reading()
        except ProtocolError as exc:
            return RunResult(Reason.PROTOCOL_ERROR, str(exc))
        except aiohttp.ClientError as exc:
            return RunResult(Reason.STREAM_INTERRUPTED, pull._describe(exc))  # noqa: SLF001

    return consume


def main() -> int:
    """Apply both changes, then hand over to the exporter's own entry point."""
    import exporter.web  # noqa: PLC0415
    from exporter.cli import main as exporter_main  # noqa: PLC0415
    from exporter.metrics import make_metrics_handler  # noqa: PLC0415

    aiohttp.ClientSession.__init__ = _init  # type: ignore[method-assign]
    exporter.web.make_aiohttp_handler = make_metrics_handler  # type: ignore[attr-defined,assignment]
    coalesce = float(os.environ.get("BENCH_COALESCE", "0"))
    if coalesce > 0:
        import exporter.pull  # noqa: PLC0415

        exporter.pull._consume = _coalescing_consume(coalesce)  # noqa: SLF001
    return exporter_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
