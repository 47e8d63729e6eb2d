"""Refuse requests that name a host this exporter does not go by (DNS rebinding).

A page of `http://rebind.evil.example:11435/` whose name the attacker's DNS first points at
the attacker's server and then at the exporter's address is, for the browser, the same
origin as the exporter: its requests pass the cross-origin guard (`Origin` matches `Host`)
and it reads the answers. What gives it away is the `Host` header, which names the
attacker's domain. So every route that changes state or returns run data answers 421
unless `Host` is:

- `localhost` or a name under `.localhost` (browsers resolve these to loopback themselves);
- an IP address (no DNS is involved, so nothing to rebind: the page's origin is then that
  address, and the browser's same-origin rule holds); loopback addresses are among them;
- the host of the listen address (`--web.listen-address=exporter.lan:11435`);
- one of the names of `--web.allowed-hosts` (the names the exporter is reached by: a
  Kubernetes service, an ingress, a reverse proxy's host name).

The port is ignored, names compare case-insensitively and without a trailing dot, IPv6
addresses come in brackets. A request without `Host` (HTTP/1.0 tools) is no browser's, and
passes. `/metrics`, `/-/healthy` and `/-/ready` answer whatever the `Host`: Prometheus
scrapes by pod address and by service names nobody lists.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from typing import TYPE_CHECKING, Final

from aiohttp import hdrs, web

from exporter.core.ratelog import RateLimitedLog
from exporter.web.api import error

if TYPE_CHECKING:
    from collections.abc import Iterable

    from aiohttp.typedefs import Handler, Middleware

log = logging.getLogger("exporter.hosts")

OPEN_PATHS: Final = frozenset({"/metrics", "/-/healthy", "/-/ready"})
"""Routes that answer whatever the `Host` header says."""
STATUS: Final = 421
_LABEL: Final = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_NAME: Final = re.compile(rf"{_LABEL}(\.{_LABEL})*")
_SHOWN_LIMIT: Final = 100


class HostNameError(ValueError):
    """A name given to `--web.allowed-hosts` is not a host name or an address."""


def host_of(header: str) -> str | None:
    """The host of a `Host` value, lower case, without port, brackets or trailing dot.

    None when it is not a host name or an address.
    """
    value = header.strip().lower()
    if value.startswith("["):
        inside, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not re.fullmatch(r":\d*", rest)):
            return None
        return inside if _is_address(inside) else None
    if value.count(":") == 1:
        value, _, port = value.partition(":")
        if port and not port.isdigit():
            return None
    value = value.removesuffix(".")
    if _is_address(value) or _NAME.fullmatch(value):
        return value
    return None


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def allowed_name(text: str) -> str:
    """One name for `--web.allowed-hosts`, normalised; HostNameError when it is not one."""
    value = text.strip().lower()
    bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    if _is_address(bare):
        return bare
    name = bare.removesuffix(".")
    if _NAME.fullmatch(name):
        return name
    raise HostNameError(f"{text.strip()!r} is not a host name (no port, no scheme)")


class AllowedHosts:
    """The `Host` values routes with run data or side effects accept."""

    def __init__(self, names: Iterable[str] = (), listen_host: str | None = None) -> None:
        self.names = frozenset({"localhost", *(allowed_name(name) for name in names)})
        listen = host_of(listen_host) if listen_host else None
        if listen is not None:
            self.names |= {listen}

    def allows(self, header: str | None) -> bool:
        """Whether a request with this `Host` header (None: none) may go on."""
        if header is None:
            return True
        host = host_of(header)
        if host is None:
            return False
        return host in self.names or host.endswith(".localhost") or _is_address(host)


def make_middleware(allowed: AllowedHosts) -> Middleware:
    """A middleware answering 421 to requests for a host that is not `allowed`."""
    refused = RateLimitedLog(log, "request for a host this exporter does not serve refused")

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        header = request.headers.get(hdrs.HOST)
        if allowed.allows(header):
            return await handler(request)
        shown = (header or "")[:_SHOWN_LIMIT]
        refused.log(host=shown, path=request.path[:_SHOWN_LIMIT], remote=request.remote or "")
        message = f"this exporter does not serve host {shown!r}: add it with --web.allowed-hosts"
        if request.path.startswith("/api/"):
            return error(STATUS, message)
        return web.Response(status=STATUS, text=message + "\n")

    return check_host


def install(app: web.Application, allowed: AllowedHosts) -> None:
    """Check `Host` on every route but `OPEN_PATHS`.

    First, before basic auth: a rebound page gets no login prompt for its own name.
    """
    app.middlewares.insert(0, make_middleware(allowed))
