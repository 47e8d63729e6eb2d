"""A byte-transparent TCP relay between the exporter and Ollama that records each pull's answer.

The exporter talks to the tap as if it were Ollama; every byte goes through unchanged and in
the same TCP reads. On the side the tap parses both directions with h11 and records, per
`POST /api/pull`, the request body, the status and content type, each line of the answer with
its arrival time (seconds since the request arrived) and how the answer ended. When Ollama
is down the tap resets the exporter's connection, so the exporter sees what it would see
without the tap: no response.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import h11

from tests.harness import free_port

if TYPE_CHECKING:
    from collections.abc import Iterator

END_COMPLETE: Final = "complete"
"""The answer ended properly (the last chunk)."""
END_CUT: Final = "cut"
"""Ollama's side of the connection closed mid-answer (the server died)."""
END_LEFT: Final = "left"
"""The exporter closed the connection before the answer ended (stall, timeout)."""


@dataclass
class Exchange:
    """One request through the tap and the answer as it arrived."""

    method: str = ""
    target: str = ""
    request_body: bytes = b""
    status: int | None = None
    content_type: str | None = None
    lines: list[tuple[float, bytes]] = field(default_factory=list)
    end: str | None = None
    started: float = 0.0
    _partial: bytes = b""

    def feed(self, data: bytes, now: float) -> None:
        """Body bytes arrived at `now`: record each line completed by them."""
        buffered = self._partial + data
        *complete, self._partial = buffered.split(b"\n")
        self.lines.extend((round(now - self.started, 4), line) for line in complete)

    def close(self, end: str) -> None:
        """The answer ended; a last line without a newline is kept as it came."""
        if self.end is None:
            self.end = end
            if self._partial:
                self.lines.append((self.lines[-1][0] if self.lines else 0.0, self._partial))
                self._partial = b""


class _Connection:
    """One exporter connection: two sockets, two h11 parsers, the exchanges seen."""

    def __init__(self, tap: Tap) -> None:
        self.tap = tap
        self.server = h11.Connection(h11.SERVER)  # parses what the exporter sends
        self.client = h11.Connection(h11.CLIENT)  # parses what Ollama answers
        self.current: Exchange | None = None
        self.pending: list[Exchange] = []
        self.parse_ok = True

    def from_exporter(self, data: bytes, now: float) -> None:
        if not self.parse_ok:
            return
        try:
            self.server.receive_data(data)
            while True:
                event = self.server.next_event()
                if event is h11.NEED_DATA or event is h11.PAUSED:
                    break
                if isinstance(event, h11.Request):
                    exchange = Exchange(event.method.decode(), event.target.decode(), started=now)
                    self.pending.append(exchange)
                    self.client.send(event)
                elif isinstance(event, h11.Data):
                    self.pending[-1].request_body += event.data
                    self.client.send(event)
                elif isinstance(event, h11.EndOfMessage):
                    self.client.send(event)
                    self.pending[-1].started = now
                    self.tap.exchanges.append(self.pending[-1])
        except h11.ProtocolError:
            self.parse_ok = False

    def from_ollama(self, data: bytes, now: float) -> None:
        if not self.parse_ok:
            return
        try:
            self.client.receive_data(data)
            self._events(now)
        except h11.ProtocolError:
            self.parse_ok = False

    def _events(self, now: float) -> None:
        while True:
            event = self.client.next_event()
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Response):
                self.current = self.pending.pop(0)
                self.current.status = event.status_code
                for name, value in event.headers:
                    if name == b"content-type":
                        self.current.content_type = value.decode()
            elif isinstance(event, h11.Data) and self.current is not None:
                self.current.feed(event.data, now)
            elif isinstance(event, h11.EndOfMessage) and self.current is not None:
                self.current.close(END_COMPLETE)
                self.current = None
                self.server.start_next_cycle()
                self.client.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                return

    def closed(self, end: str) -> bool:
        """The connection ended: True if an answer was cut short by it."""
        if self.current is None:
            return False
        self.current.close(end)
        return True


@dataclass
class Tap:
    """The running relay: point the exporter at `url`, read `exchanges` afterwards."""

    upstream_port: int
    port: int = field(default_factory=free_port)
    exchanges: list[Exchange] = field(default_factory=list)
    refused: int = 0
    """Connections reset because Ollama was not listening (the exporter saw no answer)."""
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    @property
    def url(self) -> str:
        """Where the exporter connects."""
        return f"http://127.0.0.1:{self.port}"

    def pulls(self) -> list[Exchange]:
        """The `POST /api/pull` exchanges so far, oldest first."""
        return [e for e in self.exchanges if e.method == "POST" and e.target == "/api/pull"]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            self.refused += 1
            _reset(writer)
            return
        self._writers.add(writer)
        conn = _Connection(self)
        ended: list[str] = []

        async def pump(
            src: asyncio.StreamReader, dst: asyncio.StreamWriter, from_ollama: bool
        ) -> None:
            try:
                while data := await src.read(65536):
                    now = time.monotonic()
                    (conn.from_ollama if from_ollama else conn.from_exporter)(data, now)
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            ended.append(END_CUT if from_ollama else END_LEFT)

        tasks = [
            asyncio.create_task(pump(reader, up_writer, from_ollama=False)),
            asyncio.create_task(pump(up_reader, writer, from_ollama=True)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        end = ended[0] if ended else END_CUT
        mid_answer = conn.closed(end)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._writers.discard(writer)
        if mid_answer and end == END_CUT:
            # Ollama went away: pass the abrupt end on as it came (no orderly close).
            _reset(writer)
        else:
            writer.close()
        up_writer.close()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST: the peer sees a refused or reset connection, no answer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@contextlib.contextmanager
def running_tap(upstream_port: int) -> Iterator[Tap]:
    """Relay 127.0.0.1:tap.port to 127.0.0.1:upstream_port in a thread of its own."""
    tap = Tap(upstream_port)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        server = await asyncio.start_server(tap._relay, "127.0.0.1", tap.port)
        started.set()
        await stop.wait()
        server.close()
        for writer in list(tap._writers):
            writer.transport.abort()
        await server.wait_closed()

    thread = threading.Thread(target=lambda: loop.run_until_complete(serve()), daemon=True)
    thread.start()
    assert started.wait(10), "tap did not start"
    try:
        yield tap
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(15)
        loop.close()
