"""Writing one answer of a streaming endpoint: NDJSON chunks, a cut connection, a buffered reply.

Endpoint families (`pull` today) hand their wire actions to these writers, so every stream the
simulator sends has the same headers, chunking and accounting.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import typing
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ollama_sim.record import OUTCOME_COMPLETED, RequestRecord
from ollama_sim.wire import NDJSON, go_json, progress_line

if typing.TYPE_CHECKING:
    from collections.abc import Mapping


class StoppedError(Exception):
    """The simulator is stopping: end the stream at once."""


@dataclass(slots=True)
class Stream:
    """The live side of one request: where it writes and what it has sent."""

    request: web.Request
    record: RequestRecord
    response: web.StreamResponse | None = None
    buffered: list[bytes] = field(default_factory=list)


def response(
    status: int, body: bytes, content_type: str | None, location: str | None = None
) -> web.Response:
    """A whole (non-streamed) answer with exactly the given headers."""
    answer = web.Response(status=status, body=body)
    if content_type is not None:
        answer.headers["Content-Type"] = content_type
    if location is not None:
        answer.headers["Location"] = location
    return answer


async def emit(stream: Stream, data: bytes) -> None:
    """Send `data` as one chunk (the first starts the 200 NDJSON answer), or buffer it."""
    record = stream.record
    if not record.stream:
        stream.buffered.append(data)
        return
    if stream.response is None:
        started = web.StreamResponse(status=200)
        started.headers["Content-Type"] = NDJSON
        started.enable_chunked_encoding()
        await started.prepare(stream.request)
        stream.response, record.status = started, 200
    await stream.response.write(data)
    record.lines_sent += data.count(b"\n")
    record.bytes_sent += len(data)


def abort(stream: Stream, *, reset: bool, outcome: str) -> web.StreamResponse:
    """Cut the connection (`reset`: with a TCP RST instead of a FIN) and record `outcome`."""
    stream.record.finish(outcome)
    transport = stream.request.transport
    if transport is not None:
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
    return stream.response or web.Response()


def finish_unstreamed(stream: Stream) -> web.Response:
    """Answer like `waitForStream` (§5): the last progress line, or 500 on an error."""
    record = stream.record
    record.finish(OUTCOME_COMPLETED)
    if record.stream:  # a streaming run that sent no line at all
        record.status = 200
        return response(200, b"", NDJSON)
    latest: dict[str, object] = {"status": ""}
    for line in b"".join(stream.buffered).splitlines():
        with contextlib.suppress(ValueError):
            value = json.loads(line)
            if isinstance(value, dict) and "error" in value:
                record.status = 500
                return response(500, go_json({"error": value["error"]}), "application/json")
            if isinstance(value, dict):
                latest = value
    record.status = 200
    return response(200, progress_line(**_progress_args(latest)).rstrip(b"\n"), "application/json")


def _progress_args(value: Mapping[str, object]) -> dict[str, Any]:
    return {
        "status": str(value.get("status", "")),
        "digest": str(value.get("digest", "")),
        "total": int(str(value.get("total", 0))),
        "completed": int(str(value.get("completed", 0))),
    }
