"""`--demo`: the exporter with a simulated Ollama inside its own process and event loop.

A newcomer should see pulls, a failure and bytes moving within a minute, with no config file
and no Ollama anywhere. The simulator (`ollama_sim`, shipped in the same wheel) plays the
packaged demo scenarios (`ollama_sim/demo.yaml`) on 127.0.0.1 at a free port; the exporter's
config is built here, in memory, pointing at it. Everything else is the real exporter: the
page, `/metrics`, the API, the scheduler and the pull client talk to the simulator over a real
socket, as they would to Ollama.

The simulator's socket is bound before the event loop starts, so the config (which names the
URL) exists before anything runs, and the CLI goes on exactly as with a config file. The
simulator then starts in the same loop before the scheduler and stops after it: the first
pulls find it listening, and shutdown closes the exporter's streams before the simulator's.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from exporter.config.loader import parse_config

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiohttp import web

    from exporter.config.types import Config
    from ollama_sim import OllamaSimulator

log = logging.getLogger("exporter")

SOURCE: Final = "<demo>"
"""Where the demo's config comes from, as error messages and the start line name it."""
LISTEN_ADDRESS: Final = "127.0.0.1:11435"
"""`--web.listen-address` in demo mode unless given: a demo is for this machine's browser."""
SERVER: Final = "demo"

CONFIG: Final = """\
# The demo's exporter config: one simulated server, the four models of ollama_sim/demo.yaml.
defaults:
  interval: 1m          # a real fleet uses hours; one minute keeps the demo lively
  jitter: 0             # start each model on time, so the first pulls begin at once
  timeout: 5m
  stall_timeout: 15s    # qwen3:0.6b stalls every third run: reported as `stalled` after 15 s
  run_on_start: true

servers:
  - name: demo
    url: {url}
    max_concurrent_pulls: 4        # every model at once, none waits for another
    models:
      - llama3.2:1b                # a fresh 1.3 GB pull, about 40 s
      - gemma3:270m                # already up to date
      - mistral:7b                 # fails: disk full
      - qwen3:0.6b                 # about 20 s; every third run stalls
"""
"""The config, with `{url}` for the simulator's address (deploy/compose/exporter-demo.yaml is
the same with the compose network's address; tests/integration/test_demo.py keeps them in step)."""


def demo_config(url: str) -> Config:
    """The demo's config for a simulator at `url`."""
    return parse_config(CONFIG.format(url=url), SOURCE)


@dataclass(slots=True)
class Demo:
    """The embedded simulator, its bound socket, and the config that points at it."""

    simulator: OllamaSimulator
    sock: socket.socket
    url: str
    config: Config

    @classmethod
    def prepare(cls) -> Demo:
        """Bind 127.0.0.1 at a free port and build the config; nothing runs yet."""
        # Imported here, with --demo only: the CLI imports this module on every start, and the
        # simulator (its scenarios, its server) is about 1 MiB that no other run needs.
        from ollama_sim import OllamaSimulator, demo_scenarios  # noqa: PLC0415

        scenarios = demo_scenarios()
        simulator = OllamaSimulator(
            scenarios.models,
            time_scale=1.0 if scenarios.time_scale is None else scenarios.time_scale,
            unknown=scenarios.unknown,
            loop=scenarios.loop,
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind(("127.0.0.1", 0))
            sock.listen(128)
            sock.setblocking(False)  # noqa: FBT003 - the socket API's own flag
        except BaseException:
            sock.close()
            raise
        port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        return cls(simulator, sock, url, demo_config(url))

    def rebuild(self) -> Config:
        """The config again, for a reload (`SIGHUP`, `POST /-/reload`): there is no file."""
        return demo_config(self.url)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Serve the simulator in the running loop for the duration of the block."""
        await self.simulator.start(sock=self.sock)
        log.info("demo: a simulated Ollama serves the demo scenarios", extra={"url": self.url})
        try:
            yield
        finally:
            await self.simulator.stop()

    async def _app_context(self, app: web.Application) -> AsyncIterator[None]:
        del app
        async with self.running():
            yield

    def attach(self, app: web.Application) -> None:
        """Run the simulator with `app`: started before the scheduler, stopped after it."""
        app.cleanup_ctx.insert(0, self._app_context)

    def close(self) -> None:
        """Close the socket (the simulator's runner closes it too, if it ran)."""
        self.sock.close()
