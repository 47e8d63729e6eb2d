"""The shared fixtures of tests/conftest.py in the integration tier (tests/unit/repo/test_tiers.py
checks the guards in the unit tier, where nothing runs but the test itself)."""

from __future__ import annotations

import asyncio
import subprocess
from typing import TYPE_CHECKING

from ollama_sim import up_to_date
from tests.harness import parse_samples

if TYPE_CHECKING:
    from collections.abc import Callable
    from contextlib import AbstractAsyncContextManager

    from ollama_sim import OllamaSimulator
    from tests.inprocess import Client


def test_the_shared_fixtures_run_the_exporter_against_the_simulator(
    simulator: OllamaSimulator,
    inprocess_exporter: Callable[..., AbstractAsyncContextManager[tuple[Client, object]]],
) -> None:
    simulator.set_runs("small", [up_to_date([1000])])
    config = (
        "defaults: {interval: 1h, jitter: 0, timeout: 1h, stall_timeout: 10m}\n"
        f"servers:\n  - name: sim\n    url: {simulator.url}\n    models: [small]\n"
    )

    async def scenario() -> str:
        async with inprocess_exporter(config) as (client, _):
            for _ in range(600):  # the run on start: up to 30 s on a loaded machine
                async with client.get("/metrics") as response:
                    body = await response.text()
                if any(
                    name == "ollama_pull_last_success"
                    and ("server", "sim") in labels
                    and value == 1
                    for (name, labels), value in parse_samples(body).items()
                ):
                    return body
                await asyncio.sleep(0.05)
        raise AssertionError(body)

    asyncio.run(scenario())
    assert simulator.run_count("small") == 1


def test_the_fixture_tools_may_run() -> None:
    """git, openssl and tests/raw_http.py make an integration test's inputs (FIXTURE_TOOLS)."""
    assert subprocess.run(["git", "--version"], capture_output=True, check=False).returncode == 0
