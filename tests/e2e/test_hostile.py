"""Hostile and broken streams: each run ends with the contract's reason, the daemon goes on.

One simulator plays a hostile scenario per model on every request; the exporter pulls
every model every 2 s. For each model the test waits for several finished runs and then
requires that every one ended with the expected reason, that `/metrics` kept answering,
and that the process stayed small.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from exporter.ollama.protocol import MAX_LINE_BYTES, Reason
from ollama_sim import (
    Disconnect,
    HttpError,
    Layer,
    Manifest,
    OllamaSimulator,
    Raw,
    Scenario,
    Sleep,
    Stall,
    Success,
    Verify,
    Write,
    go_json,
    interrupted,
    progress_line,
)
from tests.harness import Exporter, free_port, run_exporter

if TYPE_CHECKING:
    from collections.abc import Iterator

TIME_SCALE = 0.05
DIGEST = "sha256:" + "ab" * 32


def _line(**fields: object) -> bytes:
    return go_json(fields) + b"\n"


def _many_digests(count: int) -> bytes:
    return b"".join(
        progress_line(f"pulling {i:012x}", f"sha256:{i:064x}", 10, 10) for i in range(count)
    )


def _trickle() -> Scenario:
    steps: list[Raw | Stall] = []
    for byte in b'{"status":"pulling manifest"':
        steps += [Raw(bytes([byte])), Stall(0.5)]
    return Scenario(*steps, Stall())


MANIFEST = _line(status="pulling manifest")
OK_TAIL = _line(status="verifying sha256 digest") + _line(status="writing manifest")
SUCCESS = _line(status="success")

FORGED = "ts=2026-01-01T00:00:00.000Z level=info msg=forged-by-ollama"
INJECTION = "".join(
    f"boom{breaker}{FORGED}"
    for breaker in ("\n", "\r", "\x00", "\x1b[2K", "\x85", "\u2028", "\u2029")
)

HOSTILE: dict[str, tuple[Scenario, Reason | None]] = {
    "log-injection": (Scenario(Raw(MANIFEST + _line(error=INJECTION))), Reason.OTHER),
    "no-headers": (Scenario(Sleep(3600), HttpError(500, "never sent")), Reason.STALLED),
    "reset": (interrupted([2_000_000], reset=True, rate=20_000_000), Reason.STREAM_INTERRUPTED),
    "eof-before-headers": (Scenario(Disconnect()), Reason.OLLAMA_UNREACHABLE),
    "trickle": (_trickle(), Reason.STALLED),
    "huge-line": (
        Scenario(Raw(MANIFEST + b'{"status":"' + b"x" * (MAX_LINE_BYTES + 10) + b'"}\n'), Stall()),
        Reason.PROTOCOL_ERROR,
    ),
    "huge-no-newline": (
        Scenario(Raw(MANIFEST + b"y" * (MAX_LINE_BYTES + 10)), Stall()),
        Reason.PROTOCOL_ERROR,
    ),
    "bad-utf8": (Scenario(Raw(MANIFEST + b'{"status":"\xff\xfe"}\n')), Reason.PROTOCOL_ERROR),
    "array": (Scenario(Raw(MANIFEST + b"[]\n")), Reason.PROTOCOL_ERROR),
    "string": (Scenario(Raw(MANIFEST + b'"x"\n')), Reason.PROTOCOL_ERROR),
    "json-null": (Scenario(Raw(MANIFEST + b"null\n")), Reason.PROTOCOL_ERROR),
    "string-number": (
        Scenario(
            Raw(
                MANIFEST
                + b'{"status":"pulling ab","digest":"'
                + DIGEST.encode()
                + b'","total":"5"}\n'
            )
        ),
        Reason.PROTOCOL_ERROR,
    ),
    "negative": (
        Scenario(Raw(MANIFEST + _line(status="pulling ab", digest=DIGEST, total=-5))),
        Reason.PROTOCOL_ERROR,
    ),
    "above-2-63": (
        Scenario(Raw(MANIFEST + _line(status="pulling ab", digest=DIGEST, total=2**63))),
        Reason.PROTOCOL_ERROR,
    ),
    "completed-above-total": (
        Scenario(
            Raw(MANIFEST + _line(status="pulling ab", digest=DIGEST, total=10, completed=50)),
            Raw(OK_TAIL + SUCCESS),
        ),
        None,
    ),
    "lines-after-success": (
        Scenario(
            Manifest(), Layer(1000, present=True), Verify(), Write(), Raw(SUCCESS + b"[]\n<html>")
        ),
        None,
    ),
    "two-successes": (
        Scenario(Manifest(), Layer(1000, present=True), Verify(), Write(), Raw(SUCCESS + SUCCESS)),
        None,
    ),
    "html-200": (
        Scenario(Raw(b"<!DOCTYPE html>\n<html><body><h1>Welcome to nginx!</h1></body></html>\n")),
        Reason.PROTOCOL_ERROR,
    ),
    "http-500": (Scenario(HttpError(500, {"error": "boom"})), Reason.OLLAMA_HTTP_ERROR),
    "http-503": (Scenario(HttpError(503, "Service Unavailable")), Reason.OLLAMA_HTTP_ERROR),
    "http-403-empty": (Scenario(HttpError(403)), Reason.OLLAMA_HTTP_ERROR),
    "many-digests": (
        Scenario(Raw(MANIFEST + _many_digests(12_000) + OK_TAIL + SUCCESS)),
        Reason.PROTOCOL_ERROR,
    ),
    "no-success": (
        Scenario(Manifest(), Layer(1000, present=True), Verify(), Write()),
        Reason.STREAM_INTERRUPTED,
    ),
    "ok-control": (
        Scenario(Manifest(), Layer(1000, present=True), Verify(), Write(), Success()),
        None,
    ),
}
OVERRIDES = {"no-headers": "stall_timeout: 1s", "trickle": "stall_timeout: 1s"}
RUNS_WANTED = 2


def _config(url: str, redirect_url: str, dead: str) -> str:
    entries = "".join(
        f"      - name: {name}\n        {OVERRIDES[name]}\n"
        if name in OVERRIDES
        else f"      - {name}\n"
        for name in HOSTILE
    )
    return (
        "defaults: {interval: 2s, jitter: 0, timeout: 20s, stall_timeout: 10s}\n"
        f"servers:\n  - name: sim\n    url: {url}\n    max_concurrent_pulls: 30\n    models:\n{entries}"
        f"  - name: refused\n    url: {dead}\n    models: [any]\n"
        f"  - name: redirect\n    url: {redirect_url}\n    models: [ok-control]\n"
    )


class Scraper(threading.Thread):
    """Scrapes `/metrics` every 50 ms while the hostile runs go on; counts failures."""

    def __init__(self, exporter: Exporter) -> None:
        super().__init__(daemon=True)
        self.exporter = exporter
        self.done = threading.Event()
        self.ok = 0
        self.failed: list[str] = []

    def run(self) -> None:
        while not self.done.wait(0.05):
            try:
                status, _ = self.exporter.get("/metrics")
            except OSError as exc:
                self.failed.append(repr(exc))
            else:
                if status == 200:
                    self.ok += 1
                else:
                    self.failed.append(str(status))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Exporter, Scraper]]:
    sim = OllamaSimulator({name: [s] for name, (s, _) in HOSTILE.items()}, time_scale=TIME_SCALE)
    workdir = tmp_path_factory.mktemp("hostile")
    with sim.running() as url:
        # A proxy that redirects to the real server: followed, it would work, but it would
        # also carry our headers somewhere the config never named.
        moved = Scenario(HttpError(307, "moved", location=f"{url}/api/pull"))
        redirector = OllamaSimulator({"ok-control": [moved]}, time_scale=TIME_SCALE)
        with redirector.running() as redirect_url:
            yield from _run(workdir, url, redirect_url)


def _run(workdir: Path, url: str, redirect_url: str) -> Iterator[tuple[Exporter, Scraper]]:
    config = _config(url, redirect_url, f"http://127.0.0.1:{free_port()}")
    with run_exporter(config, workdir) as exporter:
        scraper = Scraper(exporter)
        scraper.start()
        try:
            deadline = time.monotonic() + 60
            pairs = [("sim", n) for n in HOSTILE] + [
                ("refused", "any"),
                ("redirect", "ok-control"),
            ]
            while time.monotonic() < deadline:
                exporter.scrape()
                if all(_finished(exporter, *pair) >= RUNS_WANTED for pair in pairs):
                    break
                time.sleep(0.2)
            exporter.scrape()
        finally:
            scraper.done.set()
            scraper.join(5)
        yield exporter, scraper


def _finished(exporter: Exporter, server: str, model: str) -> float:
    runs = exporter.value("ollama_pull_runs_total", server=server, model=model) or 0
    return runs - (exporter.value("ollama_pull_in_progress", server=server, model=model) or 0)


def _failures(exporter: Exporter, server: str, model: str) -> dict[Reason, float]:
    return {
        reason: exporter.value(
            "ollama_pull_failures_total", server=server, model=model, reason=reason.value
        )
        or 0
        for reason in Reason
    }


@pytest.mark.parametrize("model", list(HOSTILE))
def test_each_hostile_stream_ends_with_its_reason_every_time(
    hostile: tuple[Exporter, Scraper], model: str
) -> None:
    exporter, _ = hostile
    _, reason = HOSTILE[model]
    finished = _finished(exporter, "sim", model)
    assert finished >= RUNS_WANTED, f"the next run did not happen: {finished} finished"
    failures = _failures(exporter, "sim", model)
    succeeded = exporter.value("ollama_pull_duration_seconds_count", server="sim", model=model)
    if reason is None:
        assert set(failures.values()) == {0}
        assert succeeded == finished
    else:
        assert failures == {r: (finished if r is reason else 0) for r in Reason}
        assert succeeded == 0


def test_refused_connection_and_redirect(hostile: tuple[Exporter, Scraper]) -> None:
    exporter, _ = hostile
    refused = _failures(exporter, "refused", "any")
    assert refused[Reason.OLLAMA_UNREACHABLE] >= RUNS_WANTED
    assert exporter.value("ollama_pull_server_up", server="refused") == 0
    redirected = _failures(exporter, "redirect", "ok-control")
    assert redirected[Reason.OLLAMA_HTTP_ERROR] >= RUNS_WANTED
    assert exporter.value("ollama_pull_server_up", server="redirect") == 1


def test_metrics_kept_answering_and_memory_stayed_bounded(
    hostile: tuple[Exporter, Scraper],
) -> None:
    exporter, scraper = hostile
    assert scraper.failed == []
    assert scraper.ok > 20
    status = Path(f"/proc/{exporter.process.pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    assert rss_kb < 150 * 1024, f"RSS {rss_kb} kB"
    assert exporter.process.poll() is None


def test_ollama_error_text_cannot_forge_a_log_line(hostile: tuple[Exporter, Scraper]) -> None:
    exporter, _ = hostile
    raw = exporter.log_path.read_bytes().decode()
    records = raw.split("\n")  # the only record separator; every other breaker is escaped
    assert all(record.isprintable() for record in records), "a raw control or separator char"
    forged = [record for record in raw.splitlines() if "forged-by-ollama" in record]
    assert forged, "the injection run was not logged"
    assert all(
        record.startswith("ts=")
        and 'msg="pull failed"' in record
        and "model=log-injection" in record
        for record in forged
    ), forged[:3]
