"""Command line: flags, exit codes, `--config.check`, `--once`; starts the app.

Exit codes: 0 success; 1 invalid config or (with `--once`, `exporter.app.once`) a failed pull or
check; 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sqlite3
import sys
from typing import TYPE_CHECKING

from exporter import __version__
from exporter.app import once
from exporter.app.runtime import Runtime
from exporter.config.loader import ConfigError, load_config
from exporter.config.webconfig import WebConfig, WebConfigError, load_web_config
from exporter.core import signals
from exporter.core.logs import FORMATS, LEVEL_NAMES, setup_logging
from exporter.fleet.servers import Fleet
from exporter.fleet.sharding import Shard, ShardError, resolve_shard
from exporter.metrics.families import build_registry
from exporter.state.history import History
from exporter.state.pairs import ExporterState
from exporter.storage.last_runs import (
    Store,
    StoredPair,
    StoreError,
    StorePathError,
    StoreWriter,
    restore,
    restore_digests,
)
from exporter.storage.run_history import HistoryDB
from exporter.web import hosts, listener
from exporter.web.app import make_app

if TYPE_CHECKING:
    from collections.abc import Sequence

    from exporter.config.loader import Config

log = logging.getLogger("exporter")


def parse_listen_address(text: str) -> tuple[str | None, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces) -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            sep = ""
    elif ":" in host:
        raise argparse.ArgumentTypeError(
            f"invalid listen address {text!r}: want host:port (IPv6 in brackets, [::1]:11435)"
        )
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid listen address {text!r}: want host:port")
    return (host or None), int(port_text)


def parse_allowed_hosts(text: str) -> tuple[str, ...]:
    """`NAME,NAME,...` for `--web.allowed-hosts`: host names or addresses, no ports."""
    try:
        return tuple(hosts.allowed_name(name) for name in text.split(",") if name.strip())
    except hosts.HostNameError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


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
    add(
        "--web.allowed-hosts",
        dest="allowed_hosts",
        metavar="NAME,...",
        type=parse_allowed_hosts,
        default=(),
        help="host names accepted in the Host header of the page, the API and /-/reload,"
        " besides localhost, IP addresses and the listen address; others get 421"
        " (default: none)",
    )
    add("--log.level", dest="log_level", choices=LEVEL_NAMES, default="info")
    add("--log.format", dest="log_format", choices=FORMATS, default="logfmt")
    add(
        "--once",
        action="store_true",
        help="run every configured pair once (pull, or check in check mode), print one line per"
        " model, exit 0 if all succeeded",
    )
    add(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        help="allow POST /-/reload",
    )
    add(
        "--web.enable-admin-api",
        dest="enable_admin_api",
        action="store_true",
        help="allow POST /api/v1/pulls (start a pull now)",
    )
    add("--web.config.file", dest="web_config_file", default=None, help="TLS and basic auth")
    add("--storage.path", dest="storage_path", default=None, help="SQLite file for last results")
    add(
        "--shard",
        default="0",
        help="schedule only the servers of this shard (0..N-1), or auto: the host name's -<N>",
    )
    add(
        "--total-shards",
        dest="total_shards",
        type=int,
        default=1,
        help="number of exporters splitting the servers (hashmod of the server name)",
    )
    add("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m exporter`."""
    signals.install()  # again, for callers that did not come through exporter.__main__
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        shard = Shard() if args.config_check else resolve_shard(args.shard, args.total_shards)
    except ShardError as exc:
        print(f"ollama-pull-exporter: {exc}", file=sys.stderr)  # noqa: T201
        return 2
    try:
        return _main(args, shard)
    except signals.Interrupted as exc:
        print(f"stopped by {exc.name} during start-up", file=sys.stderr)  # noqa: T201
        return 0 if not args.once else 1


def _main(args: argparse.Namespace, shard: Shard) -> int:
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
        found = f" and {len(config.discovery)} server_discovery entries" if config.discovery else ""
        print(f"config OK: {len(config.servers)} servers, {config.model_count} models{found}")  # noqa: T201
        return 0
    state = ExporterState()
    writer: StoreWriter | None = None
    stored: dict[tuple[str, str], StoredPair] = {}
    digests: dict[tuple[str, str], tuple[str, float | None]] = {}
    if args.storage_path:
        try:
            writer, stored, digests = _open_store(args.storage_path, state)
        except StorePathError as exc:
            print(f"--storage.path: {exc}", file=sys.stderr)  # noqa: T201
            return 1
    runtime = Runtime(
        config_path=args.config_file,
        config=config,
        state=state,
        enable_lifecycle=args.enable_lifecycle,
        enable_admin_api=args.enable_admin_api,
        save=writer.save if writer is not None else None,
        save_digest=writer.save_digest if writer is not None else None,
        fleet=Fleet(shard, state.fleet),
        stored=stored,
        exit_on_hang=True,
    )
    runtime.history = history = _history(config, args.storage_path if writer else None)
    runtime.apply(config)
    if stored:
        restored = restore(state, stored)
        log.info("state restored", extra={"path": args.storage_path, "pairs": restored})
    restore_digests(state, digests)
    try:
        if args.once:
            return asyncio.run(once.run(runtime))
        return _serve(args, config, runtime, web_config)
    finally:
        history.close()
        if writer is not None:
            writer.close()


def _history(config: Config, path: str | None) -> History:
    """The run history: in the state file's table when there is one, else in memory."""
    if path is None:
        return History(config.history_limit)
    try:
        return History(config.history_limit, HistoryDB.open(path))
    except sqlite3.Error as exc:
        log.warning(
            "cannot keep the run history in the state file; keeping it in memory",
            extra={"path": path, "error": str(exc)},
        )
        return History(config.history_limit)


def _open_store(
    path: str, state: ExporterState
) -> tuple[
    StoreWriter, dict[tuple[str, str], StoredPair], dict[tuple[str, str], tuple[str, float | None]]
]:
    """The writer for `--storage.path` and what the file holds.

    A file that cannot be used now costs the saved state, never the process.
    """
    try:
        store = Store.open(path)
    except StorePathError:
        raise
    except StoreError as exc:
        state.storage_failed()
        log.error(  # noqa: TRY400 - the message says it all
            "cannot use the state file; running without saved state",
            extra={"path": path, "error": exc.reason},
        )
        return StoreWriter(path, None, on_failure=state.storage_failed), {}, {}
    stored = store.load()
    return StoreWriter(path, store, on_failure=state.storage_failed), stored, store.load_digests()


def _serve(
    args: argparse.Namespace,
    config: Config,
    runtime: Runtime,
    web_config: WebConfig | None,
) -> int:
    """Bind, then serve HTTP and run the schedule until SIGTERM or SIGINT.

    The address is bound before anything starts, so a port in use or an unknown host is one
    clear line and exit 1.
    """
    host, port = args.listen_address
    fd_limit = listener.raise_fd_limit()
    try:
        sockets = listener.bind(host, port)
    except listener.ListenError as exc:
        log.error(str(exc))  # noqa: TRY400 - the reason is the message; no traceback helps
        return 1
    guard = runtime.connections = listener.ConnectionGuard(fd_limit, runtime.config.model_count)
    log.info(
        "starting",
        extra={
            "version": __version__,
            "config": args.config_file,
            "address": ",".join(listener.bound_addresses(sockets)),
            "pairs": config.model_count,
            "tls": web_config is not None and web_config.tls is not None,
            "basic_auth": web_config is not None and bool(web_config.users),
            "max_connections": guard.cap,
            "fd_limit": fd_limit,
        },
    )
    allowed = hosts.AllowedHosts(args.allowed_hosts, host)
    app = make_app(runtime, build_registry(runtime.state), web_config, allowed)
    ssl_context = web_config.ssl_context() if web_config is not None else None
    asyncio.run(listener.serve(app, sockets, ssl_context=ssl_context, guard=guard))
    signals.install()  # the loop's handlers are gone: stay in charge until the exit
    log.info("stopped")
    return 0
