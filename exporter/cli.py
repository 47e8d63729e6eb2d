"""Command line: flags, exit codes, `--config.check`, `--once`; starts the app.

Exit codes: 0 success; 1 invalid config or (with `--once`) a failed pull; 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING

from aiohttp import web

from exporter import __version__
from exporter.config import ConfigError, load_config
from exporter.logs import FORMATS, LEVEL_NAMES, setup_logging
from exporter.metrics import build_registry
from exporter.pull import make_session
from exporter.scheduler import Scheduler
from exporter.state import ExporterState, sync_pairs
from exporter.store import Store, StoreError, restore
from exporter.web import Runtime, make_app
from exporter.webconfig import WebConfig, WebConfigError, load_web_config

if TYPE_CHECKING:
    from collections.abc import Sequence

    from exporter.config import Config

log = logging.getLogger("exporter")

SHUTDOWN_TIMEOUT = 2.0
"""Seconds aiohttp waits for open HTTP requests on exit; pulls are cancelled at once."""


def parse_listen_address(text: str) -> tuple[str | None, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces) -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid listen address {text!r}: want host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host or None), int(port_text)


def build_parser() -> argparse.ArgumentParser:
    """Prometheus-style dotted flags; `--flag=value` and `--flag value` both work."""
    parser = argparse.ArgumentParser(
        prog="ollama-pull-exporter",
        description="Runs Ollama pulls on a schedule and exports their progress to Prometheus.",
        allow_abbrev=False,
    )
    add = parser.add_argument
    add("--config.file", dest="config_file", default="config.yaml", help="YAML config file")
    add(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the config, print a summary or the errors, and exit",
    )
    add(
        "--web.listen-address",
        dest="listen_address",
        type=parse_listen_address,
        default=parse_listen_address(":11435"),
        help="host:port to serve HTTP on (default :11435, all interfaces)",
    )
    add("--log.level", dest="log_level", choices=LEVEL_NAMES, default="info")
    add("--log.format", dest="log_format", choices=FORMATS, default="logfmt")
    add(
        "--once",
        action="store_true",
        help="run every configured pull once, print one line per model, exit 0 if all succeeded",
    )
    add(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        help="allow POST /-/reload",
    )
    add("--web.config.file", dest="web_config_file", default=None, help="TLS and basic auth")
    add("--storage.path", dest="storage_path", default=None, help="SQLite file for last results")
    add("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m exporter`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        config = load_config(args.config_file)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)  # noqa: T201 - the CLI's own output
        return 1
    web_config = None
    if args.web_config_file:
        try:
            web_config = load_web_config(args.web_config_file)
        except WebConfigError as exc:
            print("\n".join(exc.errors), file=sys.stderr)  # noqa: T201
            return 1
    if args.config_check:
        print(f"config OK: {len(config.servers)} servers, {config.model_count} models")  # noqa: T201
        return 0
    state = ExporterState()
    sync_pairs(state, config)
    state.config_reload_successful = True
    state.config_reload_success_at = time.time()
    try:
        store = Store.open(args.storage_path) if args.storage_path else None
    except StoreError as exc:
        print(f"{args.storage_path}: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    try:
        if store is not None:
            restored = restore(state, store.load())
            log.info("state restored", extra={"path": args.storage_path, "pairs": restored})
        if args.once:
            return asyncio.run(_run_once(config, state, store))
        return _serve(args, config, state, store, web_config)
    finally:
        if store is not None:
            store.close()


def _serve(
    args: argparse.Namespace,
    config: Config,
    state: ExporterState,
    store: Store | None,
    web_config: WebConfig | None,
) -> int:
    """Serve HTTP and run the schedule until SIGTERM or SIGINT."""
    host, port = args.listen_address
    log.info(
        "starting",
        extra={
            "version": __version__,
            "config": args.config_file,
            "address": f"{host or ''}:{port}",
            "pairs": config.model_count,
            "tls": web_config is not None and web_config.tls is not None,
            "basic_auth": web_config is not None and bool(web_config.users),
        },
    )
    runtime = Runtime(
        config_path=args.config_file,
        config=config,
        state=state,
        enable_lifecycle=args.enable_lifecycle,
        store=store,
    )
    app = make_app(runtime, build_registry(state), web_config)
    web.run_app(
        app,
        host=host,
        port=port,
        print=None,
        access_log=None,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        ssl_context=web_config.ssl_context() if web_config is not None else None,
    )
    log.info("stopped")
    return 0


async def _run_once(config: Config, state: ExporterState, store: Store | None) -> int:
    on_finished = store.save if store is not None else None
    async with make_session() as session:
        results = await Scheduler(session, state, on_finished=on_finished).run_once(config)
    failed = 0
    for server, model, result in results:
        pair = state.pairs[server.name, model.name]
        last = pair.last
        fields = [f"server={server.name}", f"model={model.name}"]
        if result.reason is None:
            fields.append("result=success")
        else:
            failed += 1
            fields += ["result=failure", f"reason={result.reason.value}"]
        if last is not None:
            fields += [
                f"duration={last.duration:.3f}s",
                f"downloaded_bytes={last.downloaded_bytes}",
            ]
        print(" ".join(fields))  # noqa: T201 - the CLI's own output
    return 1 if failed else 0
