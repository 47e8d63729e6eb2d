"""The real exporter in the test's own event loop: built by `exporter.app.assemble`, served by
aiohttp's test server on 127.0.0.1. What the process does, minus the process: the same
assembly, the same apply, the same app; no subprocess, no signals to wait for.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from exporter.app import assemble
from exporter.config.loader import parse_config
from exporter.fleet.sharding import Shard

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

Client = TestClient[web.Request, web.Application]


@contextlib.asynccontextmanager
async def exporter_in_process(
    config_text: str,
    *,
    admin: bool = False,
    lifecycle: bool = False,
    storage_path: str | None = None,
) -> AsyncIterator[tuple[Client, assemble.Program]]:
    """The exporter over `config_text`, scheduling and serving until the block ends."""
    options = assemble.Options(
        config_path="test.yml",
        shard=Shard(),
        storage_path=storage_path,
        enable_lifecycle=lifecycle,
        enable_admin_api=admin,
    )
    config = parse_config(config_text, "test.yml")
    with assemble.open_program(options, config) as program:
        async with (
            assemble.scheduling(program) as running,
            TestClient(TestServer(assemble.web_app(program, running), host="127.0.0.1")) as client,
        ):
            yield client, program
