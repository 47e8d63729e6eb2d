"""A TCP server that answers every request with fixed raw bytes: HTTP no polite server sends.

Run as its own process (`python -m tests.raw_http`), so sending a flood costs the process
under test nothing, not even the GIL. Reads from stdin: a flag byte (`c`: close the
connection after the parts, `h`: hold it open) and the parts, each an 8-byte big-endian
length and the bytes. Prints the port, then serves until stdin closes.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator


def _read_exactly(size: int) -> bytes:
    data = sys.stdin.buffer.read(size)
    if len(data) != size:
        raise SystemExit("truncated input")
    return data


def _serve(conn: socket.socket, parts: list[bytes], close: bool, stop: threading.Event) -> None:
    with conn:
        try:
            conn.settimeout(10)
            request = b""
            while b"\r\n\r\n" not in request:
                data = conn.recv(65536)
                if not data:
                    return
                request += data
            for part in parts:
                conn.sendall(part)
                time.sleep(0.05)
            if not close:
                stop.wait()
        except OSError:
            pass


def _stop_at_eof(stop: threading.Event) -> None:
    sys.stdin.buffer.read()
    stop.set()


def main() -> int:
    """Serve the parts given on stdin until stdin closes."""
    close = _read_exactly(1) == b"c"
    count = int.from_bytes(_read_exactly(8), "big")
    parts = [_read_exactly(int.from_bytes(_read_exactly(8), "big")) for _ in range(count)]
    stop = threading.Event()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.1)
        print(listener.getsockname()[1], flush=True)
        watcher = threading.Thread(target=_stop_at_eof, args=(stop,))
        watcher.start()
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=_serve, args=(conn, parts, close, stop), daemon=True).start()
        watcher.join()
    return 0


@contextlib.contextmanager
def raw_http_server(parts: list[bytes], *, close: bool = False) -> Iterator[str]:
    """Start the server process with `parts`; yield its URL; stop it on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.raw_http"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert process.stdin is not None
    assert process.stdout is not None
    try:
        header = (b"c" if close else b"h") + len(parts).to_bytes(8, "big")
        process.stdin.write(header + b"".join(len(p).to_bytes(8, "big") + p for p in parts))
        process.stdin.flush()
        port = int(process.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()


if __name__ == "__main__":
    sys.exit(main())
