"""A scraper like Prometheus: GET /metrics every `--interval` seconds, record the latency.

Sends Prometheus's own Accept and Accept-Encoding headers (OpenMetrics preferred, gzip),
reads the whole body, and measures from sending the request to the last byte. Ends
after `--duration` seconds (bounded) and writes one JSON object to `--out`.

    python -m bench.scrape --url http://127.0.0.1:9000/metrics --interval 1 --duration 60
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
import urllib.parse
from pathlib import Path

ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


ACCEPT_TEXT = "text/plain;version=0.0.4"


def scrape_once(
    url: str, timeout: float = 30.0, *, accept: str = ACCEPT, encoding: str = "gzip"
) -> tuple[float, int, int]:
    """One scrape: (seconds, bytes on the wire, HTTP status)."""
    parts = urllib.parse.urlsplit(url)
    connection = http.client.HTTPConnection(
        parts.hostname or "127.0.0.1", parts.port, timeout=timeout
    )
    try:
        started = time.perf_counter()
        connection.request(
            "GET",
            parts.path or "/",
            headers={"Accept": accept, "Accept-Encoding": encoding},
        )
        response = connection.getresponse()
        body = response.read()
        return time.perf_counter() - started, len(body), response.status
    finally:
        connection.close()


def scrape_size(url: str, accept: str = ACCEPT_TEXT) -> int:
    """Bytes of one uncompressed exposition."""
    return scrape_once(url, accept=accept, encoding="identity")[1]


def run(url: str, interval: float, duration: float) -> dict[str, object]:
    """Scrape on a fixed grid for `duration` seconds."""
    latencies: list[float] = []
    sizes: list[int] = []
    errors = 0
    start = time.monotonic()
    deadline = start + duration
    tick = 0
    while True:
        at = start + tick * interval
        if at >= deadline:
            break
        time.sleep(max(0.0, at - time.monotonic()))
        try:
            seconds, size, status = scrape_once(url)
        except OSError:
            errors += 1
        else:
            if status == 200:
                latencies.append(seconds)
                sizes.append(size)
            else:
                errors += 1
        tick += 1
    return {"interval": interval, "latencies": latencies, "sizes": sizes, "errors": errors}


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    parser = argparse.ArgumentParser(prog="python -m bench.scrape", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    result = run(args.url, args.interval, args.duration)
    Path(args.out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
