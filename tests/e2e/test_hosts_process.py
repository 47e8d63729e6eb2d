"""The `Host` check against DNS rebinding: the parsing rules, then the real exporter.

A rebound page names the attacker's domain in `Host` and passes the cross-origin guard (its
`Origin` matches). The real process, over real sockets, must refuse it on every route that
changes state or returns run data, and keep `/metrics` and the health checks open to any
`Host`.

This module holds the tests that start processes; tests/integration/test_hosts.py holds the
in-process ones and the helpers both use.
"""

from __future__ import annotations

import http.client
import json
from typing import TYPE_CHECKING

from tests.harness import run_cli, run_exporter

if TYPE_CHECKING:
    from pathlib import Path

    from tests.harness import Exporter

from tests.integration.test_hosts import EVIL

CONFIG = (
    "defaults: {interval: 1h, jitter: 0, run_on_start: false}\n"
    "servers:\n  - name: s\n    url: http://127.0.0.1:1\n    models: [a]\n"
)


def test_the_flag_is_in_help_with_its_default_and_checked(tmp_path: Path) -> None:
    done = run_cli("--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    assert "--web.allowed-hosts NAME,..." in text
    assert "(default: none)" in text.split("--web.allowed-hosts NAME,...")[-1].split("--log")[0]
    bad = run_cli(f"--config.file={tmp_path / 'none.yaml'}", "--web.allowed-hosts=a.lan,b.lan:80")
    assert bad.returncode == 2
    assert "--web.allowed-hosts: 'b.lan:80' is not a host name" in bad.stderr
    assert "Traceback" not in bad.stderr


def _ask(
    exporter: Exporter, method: str, path: str, host: str, body: bytes | None = None
) -> tuple[int, str]:
    """One request with this `Host` (and a matching `Origin`, as a rebound page sends)."""
    port = int(exporter.url.rsplit(":", 1)[1])
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Host": f"{host}:{port}", "Origin": f"http://{host}:{port}"}
        if body is not None:
            headers["Content-Type"] = (
                "application/json"
                if path.startswith("/api/")
                else "application/x-www-form-urlencoded"
            )
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        connection.close()


PULL = json.dumps({"server": "s", "model": "a"}).encode()
GUARDED = [
    ("POST", "/api/v1/pulls", PULL),
    ("POST", "/pull-now", b"server=s&model=a"),
    ("POST", "/-/reload", b""),
    ("GET", "/api/v1/status", None),
    ("GET", "/api/v1/runs", None),
    ("GET", "/api/v1/runs/1", None),
    ("GET", "/runs/1", None),
    ("GET", "/history", None),
    ("GET", "/", None),
]
OPEN = ["/metrics", "/-/healthy", "/-/ready"]


def test_a_rebound_page_is_refused_and_scrapes_are_not(tmp_path: Path) -> None:
    """Defect N10: `Host: rebind.evil.example:PORT` with a matching `Origin` started pulls
    and reloads, and read `/api/v1/*` with transcripts."""
    with run_exporter(
        CONFIG,
        tmp_path,
        "--web.enable-admin-api",
        "--web.enable-lifecycle",
        "--web.allowed-hosts=exporter.lan,other.lan",
    ) as exporter:
        for method, path, body in GUARDED:
            status, text = _ask(exporter, method, path, EVIL, body)
            assert status == 421, (method, path, status, text[:200])
            assert "--web.allowed-hosts" in text
        for path in OPEN:
            assert _ask(exporter, "GET", path, EVIL)[0] == 200, path
        for host in ("localhost", "127.0.0.1", "exporter.lan", "OTHER.LAN"):
            status, text = _ask(exporter, "GET", "/api/v1/status", host)
            assert status == 200, (host, text[:200])
        status, _ = _ask(exporter, "POST", "/api/v1/pulls", "exporter.lan", PULL)
        assert status == 202
        exporter.stop()
        logs = exporter.logs()
    refused = [line for line in logs.splitlines() if "does not serve refused" in line]
    assert 1 <= len(refused) <= 2, refused  # rate-limited: one line per 10 s
    assert f"host={EVIL}" in refused[0]
