"""Command line: flags, exit codes, `--config.check`, `--once`, `--demo`; starts the app.

Exit codes: 0 success; 1 invalid config or (with `--once`, `exporter.app.once`) a failed pull or
check; 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import TYPE_CHECKING, Final, NoReturn

from exporter import __version__
from exporter.app import assemble, demo
from exporter.app.demo import Demo
from exporter.config.loader import ConfigError, load_config
from exporter.core import collector, signals
from exporter.core.logs import FORMATS, LEVEL_NAMES, setup_logging
from exporter.fleet.sharding import Shard, ShardError, resolve_shard
from exporter.storage.errors import StorePathError
from exporter.web import hosts, listener

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from exporter.config.types import Config
    from exporter.config.webconfig import WebConfig

log = logging.getLogger("exporter")

CONFIG_FILE = "config.yaml"
"""`--config.file` when not given (and not `--demo`)."""
LISTEN_ADDRESS = ":11435"
"""`--web.listen-address` when not given (with `--demo`: `exporter.app.demo.LISTEN_ADDRESS`)."""


MAX_TOTAL_SHARDS: Final = 1024
"""More exporters than this splitting one config is a typo, not a deployment."""


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line that names the flag, exit 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        """Print `prog: error: message` and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number (ASCII digits) from `low` to `high`.

    Checked before `int()` sees it: `int` accepts other scripts' digits, underscores and
    thousands of digits (which it refuses only past 4,300, with an error of its own).
    """

    def parse(text: str) -> int:
        digits = text.strip()
        if not (digits.isascii() and digits.isdigit()) or len(digits) > len(str(high)):
            raise argparse.ArgumentTypeError(
                f"want a whole number from {low} to {high}, got {text[:40]!r}"
            )
        value = int(digits)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"want a number from {low} to {high}, got {value}")
        return value

    return parse


def parse_shard(text: str) -> str:
    """`--shard`: `auto` or a shard number (checked against `--total-shards` later)."""
    if text == "auto":
        return text
    return str(bounded_int(0, MAX_TOTAL_SHARDS - 1)(text))


def parse_listen_address(text: str) -> tuple[str | None, int]:
    """`host:port`, `[v6]:port` or `:port` (all interfaces) -> (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            sep = ""
    elif ":" in host:
        raise argparse.ArgumentTypeError(
            f"invalid listen address {text[:80]!r}: want host:port (IPv6 in brackets, [::1]:11435)"
        )
    if not sep or not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        raise argparse.ArgumentTypeError(f"invalid listen address {text[:80]!r}: want host:port")
    if not 0 <= int(port_text) <= 65535:
        raise argparse.ArgumentTypeError(f"invalid listen address {text[:80]!r}: want host:port")
    return (host or None), int(port_text)


class _HelpFormatter(argparse.HelpFormatter):
    """`--help` shows each flag's default, so it is the reference a user has at hand."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def parse_allowed_hosts(text: str) -> tuple[str, ...]:
    """`NAME,NAME,...` for `--web.allowed-hosts`: host names or addresses, no ports."""
    try:
        return tuple(hosts.allowed_name(name) for name in text.split(",") if name.strip())
    except hosts.HostNameError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """Prometheus-style dotted flags; `--flag=value` and `--flag value` both work."""
    parser = _Parser(
        prog="ollama-pull-exporter",
        description="Runs Ollama pulls on a schedule and exports their progress to Prometheus.",
        allow_abbrev=False,
        formatter_class=_HelpFormatter,
    )
    add = parser.add_argument
    add(
        "--config.file",
        dest="config_file",
        metavar="FILE",
        default=None,
        help=f"YAML config file (default: {CONFIG_FILE})",
    )
    add(
        "--config.check",
        dest="config_check",
        action="store_true",
        help="validate the config, print a summary or the errors, and exit",
    )
    add(
        "--web.listen-address",
        dest="listen_address",
        metavar="HOST:PORT",
        type=parse_listen_address,
        default=None,
        help=f"host:port to serve HTTP on; :port means all interfaces (default: {LISTEN_ADDRESS};"
        " with --demo 127.0.0.1:11435)",
    )
    add("--log.level", dest="log_level", choices=LEVEL_NAMES, default="info", help="log level")
    add(
        "--log.format",
        dest="log_format",
        choices=FORMATS,
        default="logfmt",
        help="log line format",
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
    add(
        "--web.config.file",
        dest="web_config_file",
        metavar="FILE",
        default=None,
        help="TLS and basic auth",
    )
    add(
        "--storage.path",
        dest="storage_path",
        metavar="FILE",
        default=None,
        help="SQLite file for last results",
    )
    add(
        "--shard",
        type=parse_shard,
        default="0",
        help="schedule only the servers of this shard (0..N-1), or auto: the host name's -<N>",
    )
    add(
        "--total-shards",
        dest="total_shards",
        type=bounded_int(1, MAX_TOTAL_SHARDS),
        default=1,
        help="number of exporters splitting the servers (hashmod of the server name),"
        f" 1 to {MAX_TOTAL_SHARDS}",
    )
    add(
        "--demo",
        action="store_true",
        help="run with a simulated Ollama inside this process, serving demo pulls (no config"
        " file, no Ollama needed); with --once, one round of them",
    )
    add("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def resolve(args: argparse.Namespace) -> str | None:
    """Fill in the defaults that depend on `--demo`; return a usage error, if any."""
    if args.demo and args.config_file is not None:
        return "--demo runs without a config file: drop --config.file (or --demo)"
    if args.config_file is None:
        args.config_file = CONFIG_FILE
    if args.listen_address is None:
        args.listen_address = parse_listen_address(
            demo.LISTEN_ADDRESS if args.demo else LISTEN_ADDRESS
        )
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script and of `python -m exporter`."""
    signals.install()  # again, for callers that did not come through exporter.__main__
    parser = build_parser()
    args = parser.parse_args(argv)
    if (usage := resolve(args)) is not None:
        print(f"ollama-pull-exporter: {usage}", file=sys.stderr)  # noqa: T201
        return 2
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
    if args.demo:
        embedded = Demo.prepare()
        try:
            return _run(args, shard, embedded.config, embedded)
        finally:
            embedded.close()
    try:
        config = load_config(args.config_file)
    except ConfigError as exc:
        print("\n".join(exc.errors), file=sys.stderr)  # noqa: T201 - the CLI's own output
        return 1
    return _run(args, shard, config, None)


def _run(args: argparse.Namespace, shard: Shard, config: Config, embedded: Demo | None) -> int:
    """Everything after the config is known: `--config.check`, `--once` or serving."""
    web_config = None
    if args.web_config_file:
        # With --web.config.file only: its parser, TLS and basic auth are ~0.3 MiB otherwise.
        from exporter.config.webconfig import WebConfigError, load_web_config  # noqa: PLC0415

        try:
            web_config = load_web_config(args.web_config_file)
        except WebConfigError as exc:
            print("\n".join(exc.errors), file=sys.stderr)  # noqa: T201
            return 1
    if args.config_check:
        found = f" and {_count(len(config.discovery), 'server_discovery entr', 'y', 'ies')}"
        servers = _count(len(config.servers), "server")
        models = _count(config.model_count, "model")
        print(f"config OK: {servers}, {models}{found if config.discovery else ''}")  # noqa: T201
        return 0
    options = assemble.Options(
        config_path=demo.SOURCE if embedded is not None else args.config_file,
        shard=shard,
        storage_path=args.storage_path,
        enable_lifecycle=args.enable_lifecycle,
        enable_admin_api=args.enable_admin_api,
        exit_on_hang=True,
    )
    try:
        with assemble.open_program(options, config, embedded) as program:
            if args.once:
                from exporter.app import once  # noqa: PLC0415 - --once only (0.15 MiB otherwise)

                return asyncio.run(once.run(program))
            return _serve(args, program, web_config)
    except StorePathError as exc:
        print(f"--storage.path: {exc}", file=sys.stderr)  # noqa: T201
        return 1


def _count(number: int, noun: str, one: str = "", many: str = "s") -> str:
    """`1 server`, `2 servers`: a count with its noun in the right number."""
    return f"{number} {noun}{one if number == 1 else many}"


def _serve(
    args: argparse.Namespace, program: assemble.Program, web_config: WebConfig | None
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
    config = program.fleet.effective(program.config)  # this shard's servers, before discovery
    guard = listener.ConnectionGuard(fd_limit, config.model_count)
    log.info(
        "starting",
        extra={
            "version": __version__,
            "config": program.options.config_path,
            "address": ",".join(listener.bound_addresses(sockets)),
            "pairs": config.model_count,
            "tls": web_config is not None and web_config.tls is not None,
            "basic_auth": web_config is not None and bool(web_config.users),
            "max_connections": guard.cap,
            "fd_limit": fd_limit,
        },
    )
    if program.demo is not None:
        shown = listener.bound_addresses(sockets)[0].replace("0.0.0.0:", "127.0.0.1:")
        log.info("demo: open the page in a browser", extra={"url": f"http://{shown}/"})
    allowed = hosts.AllowedHosts(args.allowed_hosts, host)
    collector.tune()
    asyncio.run(assemble.serve(program, web_config, sockets, guard, allowed))
    signals.install()  # the loop's handlers are gone: stay in charge until the exit
    log.info("stopped")
    return 0
