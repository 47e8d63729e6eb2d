"""Run a README's commands as a user would, and report what a browser and Prometheus would see.

`tests/integration/test_demo.py` starts this script inside a network namespace of its own (so the demo's
fixed port 11435 cannot clash with anything on the machine). It brings the
namespace's loopback up and starts every command (split like a shell would; no pipes or `&&`)
in a process group of its own, each once the one before has printed something. Then it prints
one JSON line per poll: the status and body of `/` and of `/metrics` (asked for with
Prometheus' own `Accept` header), or the error. It stops every command (SIGTERM, then SIGKILL)
when it gets SIGTERM, when stdin closes, or after `--lifetime` seconds, whichever comes first.

    python tests/demo_driver.py --base-url http://127.0.0.1:11435 --logs DIR -- 'CMD' 'CMD'
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import select
import shlex
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0;escaping=underscores;q=0.5,"
    "application/openmetrics-text;version=0.0.1;q=0.4,"
    "text/plain;version=1.0.0;escaping=underscores;q=0.3,"
    "text/plain;version=0.0.4;q=0.2,*/*;q=0.1"
)
_SIOCGIFFLAGS, _SIOCSIFFLAGS, _IFF_UP = 0x8913, 0x8914, 0x1
_IFREQ = "16sH22x"  # struct ifreq: the name, then ifr_flags, padded to 40 bytes


def loopback_up() -> None:
    """Bring `lo` up: a new network namespace starts with it down (no `ip` binary needed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack(_IFREQ, b"lo", 0)
        flags = struct.unpack(_IFREQ, fcntl.ioctl(sock, _SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, _SIOCSIFFLAGS, struct.pack(_IFREQ, b"lo", flags | _IFF_UP))


def fetch(url: str, accept: str | None = None) -> dict[str, object]:
    """GET `url`: its status and body, or the error as text."""
    headers = {"Accept": accept} if accept else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as r:
            return {
                "status": r.status,
                "content_type": r.headers.get("Content-Type", ""),
                "body": r.read().decode(),
            }
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "body": exc.read().decode(errors="replace")}
    except OSError as exc:
        return {"error": repr(exc)}


def stop(processes: list[subprocess.Popen[bytes]]) -> list[int]:
    """SIGTERM every process group, give them 10 s, then SIGKILL; return the exit codes."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for process in processes:
        try:
            process.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return [process.returncode for process in processes]


def _wait_for_output(log: Path, process: subprocess.Popen[bytes], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and process.poll() is None:
        if log.stat().st_size > 0:
            return
        time.sleep(0.05)


def _terminate(signum: int, frame: object) -> None:
    del signum, frame
    raise SystemExit(0)


def main() -> int:
    """Start the commands, poll until told to stop, stop the commands."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--logs", required=True, type=Path)
    parser.add_argument("--lifetime", type=float, default=110)
    parser.add_argument("--no-loopback", action="store_true", help="lo is up already")
    parser.add_argument("commands", nargs="+")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    if not args.no_loopback:
        loopback_up()
    processes: list[subprocess.Popen[bytes]] = []
    deadline = time.monotonic() + args.lifetime
    try:
        for index, command in enumerate(args.commands):
            if processes:  # as a user would: start the next one once the last one says it runs
                _wait_for_output(args.logs / f"command-{index - 1}.log", processes[-1])
            with (args.logs / f"command-{index}.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        shlex.split(command),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                    )
                )
        while time.monotonic() < deadline:
            report = {
                "exited": [p.poll() for p in processes],
                "page": fetch(args.base_url + "/"),
                "metrics": fetch(args.base_url + "/metrics", PROMETHEUS_ACCEPT),
            }
            print(json.dumps(report), flush=True)
            readable, _, _ = select.select([sys.stdin], [], [], 0.5)
            if readable and not os.read(sys.stdin.fileno(), 4096):
                break
    finally:
        codes = stop(processes)
        print(json.dumps({"stopped": codes}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
