"""`python -m exporter.app.healthcheck`: is the exporter serving? For a container's HEALTHCHECK.

A health check with its own idea of the address breaks as soon as the exporter runs with
another `--web.listen-address`, TLS or basic auth. This one reads the running exporter's own
flags (from `/proc/PID/cmdline`, PID 1 in a container by default, or given after `--`), and
parses them with the exporter's own parser, so it asks where the exporter listens, the way it
listens:

- the port and address of `--web.listen-address` (an all-interfaces address is asked on
  loopback; `--demo`'s default is followed too);
- HTTPS when `--web.config.file` has `tls_server_config` (the exporter's own certificate is not
  verified: this is loopback, and the certificate names the host clients use);
- with `basic_auth_users` the check has no password (the file holds only hashes), so the
  exporter's 401 with its own realm counts as serving; without them, only a 200 does.

Exit 0: serving; 1: not, with one line saying why.

    python -m exporter.app.healthcheck                      # the flags of PID 1
    python -m exporter.app.healthcheck --pid=1234
    python -m exporter.app.healthcheck -- --web.listen-address=:9100
"""

from __future__ import annotations

import argparse
import http.client
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

from exporter.app.cli import build_parser, resolve
from exporter.config.webconfig import WebConfigError, load_web_config

if TYPE_CHECKING:
    from collections.abc import Sequence

TIMEOUT: Final = 4.0
"""Seconds for the whole check; below Docker's default `--timeout` of the HEALTHCHECK (5 s)."""
REALM: Final = 'realm="ollama-pull-exporter"'
LOOPBACK: Final = {None: "127.0.0.1", "": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}  # noqa: S104


class CheckError(Exception):
    """The exporter is not serving, or its flags cannot be read; the message says which."""


def exporter_flags(cmdline: Sequence[str]) -> list[str]:
    """The exporter's own flags in a process's command line (the console script or `-m`)."""
    for index, arg in enumerate(cmdline):
        if arg == "-m" and index + 1 < len(cmdline) and cmdline[index + 1] == "exporter":
            return list(cmdline[index + 2 :])
        if Path(arg).name == "ollama-pull-exporter":
            return list(cmdline[index + 1 :])
    raise CheckError(f"not an ollama-pull-exporter command line: {' '.join(cmdline)[:200]}")


def process_flags(pid: int) -> tuple[list[str], Path]:
    """The exporter flags and the working directory of process `pid`."""
    proc = Path("/proc") / str(pid)
    try:
        raw = (proc / "cmdline").read_bytes()
        cwd = (proc / "cwd").readlink()
    except OSError as exc:
        raise CheckError(f"cannot read the flags of process {pid}: {exc.strerror}") from None
    cmdline = [part.decode(errors="surrogateescape") for part in raw.split(b"\0") if part]
    return exporter_flags(cmdline), cwd


def check(flags: Sequence[str], cwd: Path) -> str:
    """Ask `/-/healthy` where and how the exporter with `flags` serves; the answer, or raise."""
    args = build_parser().parse_args(list(flags))
    if (usage := resolve(args)) is not None:
        raise CheckError(usage)
    host, port = args.listen_address
    if port == 0:
        raise CheckError("the exporter listens on a port of the system's choice (:0)")
    host = LOOPBACK.get(host, host)
    tls, users = False, False
    if args.web_config_file:
        try:
            web_config = load_web_config(str(cwd / args.web_config_file))
        except WebConfigError as exc:
            raise CheckError(exc.errors[0]) from None
        tls, users = web_config.tls is not None, bool(web_config.users)
    connection: http.client.HTTPConnection
    if tls:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # our own server on loopback (see the docstring)
        connection = http.client.HTTPSConnection(host, port, timeout=TIMEOUT, context=context)
    else:
        connection = http.client.HTTPConnection(host, port, timeout=TIMEOUT)
    where = f"{'https' if tls else 'http'}://{_shown(host)}:{port}/-/healthy"
    try:
        connection.request("GET", "/-/healthy", headers={"User-Agent": "healthcheck"})
        answer = connection.getresponse()
        answer.read(4096)
    except (OSError, http.client.HTTPException) as exc:
        raise CheckError(f"{where}: {exc}") from None
    finally:
        connection.close()
    if answer.status == 200:
        return f"{where}: {answer.status} {answer.reason}"
    challenge = answer.getheader("WWW-Authenticate") or ""
    if answer.status == 401 and users and REALM in challenge:
        return f"{where}: 401 from the exporter (basic auth on; the check has no password)"
    raise CheckError(f"{where}: {answer.status} {answer.reason}")


def _shown(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def main(argv: Sequence[str] | None = None) -> int:
    """Exit 0 if the exporter serves, else 1; one line either way."""
    parser = argparse.ArgumentParser(
        prog="python -m exporter.app.healthcheck",
        description="Is the exporter serving? Reads its flags from its process.",
    )
    parser.add_argument("--pid", type=int, default=1, help="the exporter's process (default: 1)")
    parser.add_argument("flags", nargs="*", help="the exporter's flags instead, after --")
    args = parser.parse_args(argv)
    try:
        if args.flags:
            said = check(args.flags, Path.cwd())
        else:
            flags, cwd = process_flags(args.pid)
            said = check(flags, cwd)
    except CheckError as exc:
        print(f"unhealthy: {exc}", file=sys.stderr)  # noqa: T201 - a command's one line
        return 1
    print(f"healthy: {said}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
