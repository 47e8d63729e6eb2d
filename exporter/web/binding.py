"""Binding the listening sockets before anything starts, and the process's fd limit."""

from __future__ import annotations

import logging
import resource
import socket
from typing import Final

from exporter.web.quiet import reason

log = logging.getLogger("exporter.listener")

BACKLOG: Final = 128


class ListenError(Exception):
    """The address cannot be listened on; the message is one line for the operator."""


def format_address(host: str, port: int) -> str:
    """`host:port`, with IPv6 hosts in brackets (`[::1]:11435`)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(host: str | None, port: int) -> list[socket.socket]:
    """Listening sockets for `host:port` (all interfaces when `host` is None).

    Raises ListenError naming the address and the reason (in use, unknown host, ...).
    """
    shown = format_address(host or "", port)
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_ADDRCONFIG
        )
    except (socket.gaierror, UnicodeError) as exc:
        raise ListenError(f"cannot listen on {shown}: unknown host ({reason(exc)})") from None
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # one socket per family, as asyncio does
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)  # noqa: FBT003 - the socket API
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ListenError(f"cannot listen on {shown}: {reason(exc)}") from None
    return sockets


def bound_addresses(sockets: list[socket.socket]) -> list[str]:
    """What the sockets really listen on (the real port of `:0`)."""
    return [format_address(*sock.getsockname()[:2]) for sock in sockets]


def raise_fd_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError) as exc:
            log.warning("cannot raise the open file limit", extra={"error": reason(exc)})
        else:
            log.debug("open file limit raised", extra={"from": soft, "to": wanted})
            soft = wanted
    return soft
