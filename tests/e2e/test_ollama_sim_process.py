"""The simulator emits exactly the wire shapes docs/simulator.md describes (Ollama's own).

Every test talks to a running simulator over a real socket with a plain aiohttp client.

This module holds the tests that start processes; tests/integration/test_ollama_sim.py holds the
in-process ones and the helpers both use.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
from pathlib import Path

from ollama_sim import (
    load_scenario_file,
)
from tests.integration.test_ollama_sim import MODEL, pull, run

REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- CLI


def test_cli_serves_a_json_scenario_file(tmp_path: Path) -> None:
    scenario_file = tmp_path / "scenarios.json"
    scenario_file.write_text(
        json.dumps(
            {
                "models": {
                    MODEL: [
                        [
                            {"step": "manifest"},
                            {"step": "layer", "size": 20_000_000, "rate": 1e8},
                            {"step": "verify"},
                            {"step": "write"},
                            {"step": "success"},
                        ]
                    ]
                }
            }
        )
    )
    expected = load_scenario_file(scenario_file).models[MODEL][0].expected_body(MODEL)
    command = [sys.executable, "-m", "ollama_sim", "--port", "0"]
    command += ["--scenarios", str(scenario_file), "--time-scale", "0.05"]
    with subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as proc:
        try:
            assert proc.stdout is not None
            readable, _, _ = select.select([proc.stdout], [], [], 20)
            assert readable, "no listening line within 20 s"
            first = proc.stdout.readline().decode()
            assert first.startswith("listening on http://127.0.0.1:")
            url = first.removeprefix("listening on ").strip()
            reply = run(pull(url, {"model": MODEL}))
            assert reply.body == expected
            missing = run(pull(url, {"model": "other"}))
            assert missing.lines[-1] == b'{"error":"pull model manifest: file does not exist"}'
        finally:
            proc.terminate()
            returncode = proc.wait(timeout=10)
    assert returncode == 0


def test_cli_names_a_bad_scenario_file_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  m: [{preset: nope}]\n")
    for path in (bad, tmp_path / "missing.json"):
        result = subprocess.run(
            [sys.executable, "-m", "ollama_sim", "--port=0", f"--scenarios={path}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
            cwd=REPO_ROOT,
        )
        assert result.returncode == 1
        assert result.stderr.startswith("error: ")
        assert str(path.name) in result.stderr
        assert "Traceback" not in result.stderr
