"""The operator API probed from outside: schemathesis against the running exporter, basic auth.

schemathesis (PyPI) reads the exporter's own `/api/v1/openapi.json` and sends generated and
mutated requests (coverage, fuzzing and stateful phases, every check): no answer may be a
server error or break the document. With `--web.config.file` basic auth, every API route
answers 401 without credentials.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import bcrypt
import pytest

from ollama_sim import OllamaSimulator, error_after_manifest, fresh_pull
from tests.e2e.test_api import request
from tests.harness import run_exporter, wait_for

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.harness import Exporter

SCHEMATHESIS = shutil.which("schemathesis", path=str(Path(sys.executable).parent))
ROUTES = (
    ("GET", "/api/v1/status"),
    ("GET", "/api/v1/runs"),
    ("GET", "/api/v1/runs/1"),
    ("POST", "/api/v1/pulls"),
    ("GET", "/api/v1/openapi.json"),
    ("GET", "/api/v1/nothing"),
)


def config_text(url: str) -> str:
    return (
        "defaults: {interval: 1h, jitter: 0}\n"
        f"servers:\n  - name: s\n    url: {url}\n    models: [fast, bad]\n"
    )


@pytest.fixture(scope="module")
def sim_url() -> Iterator[str]:
    sim = OllamaSimulator(
        {"fast": [fresh_pull([3_000_000], rate=10_000_000)], "bad": [error_after_manifest("boom")]},
        time_scale=0.2,
    )
    with sim.running() as url:
        yield url


@pytest.mark.skipif(SCHEMATHESIS is None, reason="schemathesis is not installed (test extra)")
def test_schemathesis_finds_no_server_error_or_schema_violation(
    sim_url: str, tmp_path: Path
) -> None:
    assert SCHEMATHESIS is not None
    with run_exporter(config_text(sim_url), tmp_path, "--web.enable-admin-api") as exporter:
        wait_for(lambda: "bad" in request(exporter, "GET", "/api/v1/runs")[2], 10, "a run")
        result = subprocess.run(
            [
                SCHEMATHESIS,
                "run",
                f"{exporter.url}/api/v1/openapi.json",
                "--checks=all",
                "--max-examples=30",
                "--workers=1",
                "--generation-deterministic",
                "--request-timeout=10",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
            cwd=tmp_path,
            env={"NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false", "PATH": "/usr/bin:/bin"},
        )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]


def web_config(tmp_path: Path) -> Path:
    digest = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    path = tmp_path / "web.yml"
    path.write_text(f"basic_auth_users:\n  alice: '{digest}'\n")
    return path


@pytest.fixture
def guarded(sim_url: str, tmp_path: Path) -> Iterator[Exporter]:
    authorization = "Basic " + base64.b64encode(b"alice:pw").decode()
    with run_exporter(
        config_text(sim_url),
        tmp_path,
        "--web.enable-admin-api",
        f"--web.config.file={web_config(tmp_path)}",
        headers={"Authorization": authorization},
    ) as exporter:
        yield exporter


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_api_route_needs_credentials(guarded: Exporter, method: str, path: str) -> None:
    body = b'{"server": "s", "model": "fast"}' if method == "POST" else None
    headers = {"Content-Type": "application/json"}
    guarded.headers.clear()
    status, _, _ = request(guarded, method, path, body=body, headers=headers)
    assert status == 401
    wrong = {**headers, "Authorization": "Basic " + base64.b64encode(b"alice:no").decode()}
    assert request(guarded, method, path, body=body, headers=wrong)[0] == 401


def test_api_answers_with_credentials(guarded: Exporter) -> None:
    status, content_type, _ = request(guarded, "GET", "/api/v1/status")
    assert (status, content_type.split(";")[0]) == (200, "application/json")
