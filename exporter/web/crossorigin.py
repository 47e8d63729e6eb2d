"""Refuse state-changing requests that a browser sends on behalf of another site (CSRF).

A browser that has the exporter's basic-auth credentials sends them with any request to it,
also with a form that another site's page submits. So every request that may change something
(any method but GET, HEAD and OPTIONS: "pull now", `POST /api/v1/pulls`, `POST /-/reload`) is
refused with 403 when the browser says it comes from elsewhere. The rule is the one of Go's
`net/http.CrossOriginProtection`, which needs no token and no state:

- `Sec-Fetch-Site` (sent by every current browser): `same-origin` or `none` (typed by the user)
  pass; `same-site` (another port or subdomain) and `cross-site` are refused.
- Without it, an `Origin` header must name this host (the `Host` header); `null` never does.
- With neither header it is not a browser's cross-site request (curl, scripts, Prometheus), and
  it passes: API clients need nothing new.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import TYPE_CHECKING, Final

from aiohttp import web

from exporter.core.ratelog import RateLimitedLog
from exporter.web.api import error

if TYPE_CHECKING:
    from aiohttp.typedefs import Handler

log = logging.getLogger("exporter.crossorigin")

SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
_PASSING_FETCH_SITES: Final = frozenset({"same-origin", "none"})
_MESSAGE: Final = (
    "cross-site request refused: send it from the exporter's own page, or not from a browser"
)
_LOGGED_LIMIT: Final = 200
_refused = RateLimitedLog(log, "cross-site request refused")


def refusal(request: web.BaseRequest) -> str | None:
    """Why `request` counts as a cross-site browser request, or None when it may go on."""
    if request.method in SAFE_METHODS:
        return None
    fetch_site = request.headers.get("Sec-Fetch-Site")
    if fetch_site is not None:
        if fetch_site.strip().lower() in _PASSING_FETCH_SITES:
            return None
        return f"Sec-Fetch-Site: {fetch_site}"
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    host = request.headers.get("Host")
    if host is not None and _origin_host(origin) == host.strip().lower():
        return None
    return f"Origin {origin} is not this host ({host})"


def _origin_host(origin: str) -> str | None:
    """The `host[:port]` of an Origin value as the browser wrote it (None for `null`, garbage)."""
    try:
        parts = urllib.parse.urlsplit(origin.strip())
    except ValueError:
        return None
    if parts.scheme not in {"http", "https"} or not parts.netloc or "@" in parts.netloc:
        return None
    return parts.netloc.lower()


@web.middleware
async def _refuse_cross_site(request: web.Request, handler: Handler) -> web.StreamResponse:
    reason = refusal(request)
    if reason is None:
        return await handler(request)
    _refused.log(method=request.method, path=request.path, why=reason[:_LOGGED_LIMIT])
    if request.path.startswith("/api/"):
        return error(403, _MESSAGE)
    return web.Response(status=403, text=_MESSAGE + "\n")


def install(app: web.Application) -> None:
    """Refuse cross-site requests on every route; after basic auth, before everything else."""
    app.middlewares.append(_refuse_cross_site)
