"""Basic auth and response headers of `--web.config.file`, applied to every route of the app.

bcrypt is slow on purpose (~70 ms at cost 10) and Prometheus sends the same credentials
every scrape, so a verified (user, password) pair is remembered, as the exporter-toolkit
does: a known good login is answered without any bcrypt and without waiting. The cache keys
are HMACs under a per-process random key, so neither passwords nor fast hashes of them stay in
memory, and looking one up reveals nothing through its timing.

Everything else waits for one bcrypt worker thread (a password-guessing flood costs at most
one core, and the event loop keeps serving). The queue is bounded twice: `MAX_PENDING` checks
in all and `MAX_PENDING_PER_CLIENT` per remote address, so one client's flood cannot lock
Prometheus out; what does not fit is answered 429 at once. A check whose client has gone
while it waited is dropped. An unknown user is checked against the configured hash with the
highest cost, so the answer time does not tell which users exist.

Passwords longer than 72 bytes never match (bcrypt would ignore what follows).
"""

from __future__ import annotations

import asyncio
import binascii
import enum
import hmac
import logging
import secrets
from collections import OrderedDict
from typing import TYPE_CHECKING, Final

import bcrypt
from aiohttp import hdrs, web

from exporter.core.ratelog import RateLimitedLog

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from aiohttp.typedefs import Handler, Middleware

    from exporter.config.webconfig import WebConfig

log = logging.getLogger("exporter.webauth")

REALM: Final = "ollama-pull-exporter"
CHALLENGE: Final = f'Basic realm="{REALM}"'
"""The `WWW-Authenticate` value of every 401 answer."""
MAX_PENDING: Final = 64
"""bcrypt checks waiting at most, in all; more are answered 429."""
MAX_PENDING_PER_CLIENT: Final = 4
"""bcrypt checks waiting at most per remote address."""
RETRY_AFTER: Final = "1"
_MAX_PASSWORD_BYTES: Final = 72
"""bcrypt only reads this much; longer passwords never match instead of matching a prefix."""
_CACHE_SIZE: Final = 256


class Verdict(enum.Enum):
    """The answer to one `Authorization` header."""

    OK = "ok"
    DENIED = "denied"
    BUSY = "busy"
    """Too many checks waiting: try again later (429)."""


def bcrypt_cost(hashed: bytes) -> int:
    """The cost (log2 rounds) of a `$2?$NN$...` hash."""
    return int(hashed[4:6])


class BasicAuth:
    """Checks `Authorization: Basic` headers against bcrypt hashes; see the module docstring."""

    def __init__(self, users: Mapping[str, bytes]) -> None:
        if not users:
            raise ValueError("BasicAuth needs at least one user")
        self._users = {name.encode(): hashed for name, hashed in users.items()}
        self._decoy = max(self._users.values(), key=bcrypt_cost)
        self._key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._worker = asyncio.Lock()
        self._pending: dict[str, int] = {}
        self._waiting = 0

    async def check(
        self,
        authorization: str | None,
        client: str = "",
        connected: Callable[[], bool] = lambda: True,
    ) -> Verdict:
        """Whether the header holds the right password of a configured user.

        `client` (the remote address) bounds the checks one client may have waiting;
        `connected` says whether anybody still waits for this answer.
        """
        credentials = _parse_basic(authorization)
        if credentials is None:
            return Verdict.DENIED
        user, password = credentials
        hashed = self._users.get(user)
        token = hmac.digest(self._key, len(user).to_bytes(4, "big") + user + password, "sha256")
        if hashed is not None and self._remembered(token):
            return Verdict.OK
        pending = self._pending.get(client, 0)
        if self._waiting >= MAX_PENDING or pending >= MAX_PENDING_PER_CLIENT:
            return Verdict.BUSY
        self._waiting += 1
        self._pending[client] = pending + 1
        try:
            async with self._worker:
                verdict = await self._verify(user, password, token, connected)
        finally:
            self._waiting -= 1
            if self._pending[client] <= 1:
                del self._pending[client]
            else:
                self._pending[client] -= 1
        return verdict

    async def _verify(
        self, user: bytes, password: bytes, token: bytes, connected: Callable[[], bool]
    ) -> Verdict:
        """The bcrypt check, its turn come; the success is remembered."""
        hashed = self._users.get(user)
        if hashed is not None and self._remembered(token):  # verified while we waited
            return Verdict.OK
        if not connected():
            return Verdict.DENIED  # nobody is left to answer: no bcrypt for them
        matches = await asyncio.to_thread(_bcrypt_matches, password, hashed or self._decoy)
        if not matches or hashed is None:
            return Verdict.DENIED
        self._verified[token] = None
        if len(self._verified) > _CACHE_SIZE:
            self._verified.popitem(last=False)
        log.debug("basic auth verified", extra={"user": user.decode(errors="replace")})
        return Verdict.OK

    def _remembered(self, token: bytes) -> bool:
        if token not in self._verified:
            return False
        self._verified.move_to_end(token)
        return True


def _parse_basic(authorization: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) from `Basic base64(user:password)`, as bytes; None if malformed."""
    if authorization is None:
        return None
    scheme, _, encoded = authorization.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = binascii.a2b_base64(encoded.strip().encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    user, colon, password = decoded.partition(b":")
    return (user, password) if colon else None


def _bcrypt_matches(password: bytes, hashed: bytes) -> bool:
    if len(password) > _MAX_PASSWORD_BYTES:
        return False
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # a hash bcrypt cannot read: checked at load, so never expected
        return False


def _connected(request: web.Request) -> Callable[[], bool]:
    def connected() -> bool:
        transport = request.transport
        return transport is not None and not transport.is_closing()

    return connected


def make_auth_middleware(web_config: WebConfig) -> Middleware | None:
    """A middleware that answers 401 unless the request carries valid basic-auth credentials.

    None when `basic_auth_users` is empty. Put it first in the app's middlewares: it then
    guards every route, unknown paths included (they answer 401, not 404, to strangers).
    Requests that find the bcrypt queue full are answered 429 with `Retry-After`.
    """
    if not web_config.users:
        return None
    auth = BasicAuth(web_config.users)
    busy = RateLimitedLog(log, "basic auth queue full, answering 429")

    @web.middleware
    async def basic_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        remote = request.remote or ""
        verdict = await auth.check(
            request.headers.get(hdrs.AUTHORIZATION), remote, _connected(request)
        )
        if verdict is Verdict.OK:
            return await handler(request)
        if verdict is Verdict.BUSY:
            busy.log(remote=remote)
            return web.Response(
                status=429, text="Too many requests\n", headers={hdrs.RETRY_AFTER: RETRY_AFTER}
            )
        log.debug("basic auth failed", extra={"remote": remote})
        return web.Response(
            status=401, text="Unauthorized\n", headers={hdrs.WWW_AUTHENTICATE: CHALLENGE}
        )

    return basic_auth


def install(app: web.Application, web_config: WebConfig) -> None:
    """Apply `web_config`'s basic auth and response headers to every answer of `app`.

    Call it while building the app, before it starts. TLS is not the app's business: the
    listener serves with `web_config.ssl_context()`.
    """
    middleware = make_auth_middleware(web_config)
    if middleware is not None:
        app.middlewares.insert(0, middleware)
    if web_config.headers:
        headers = web_config.headers

        async def add_headers(_: web.Request, response: web.StreamResponse) -> None:
            for name, value in headers:
                response.headers[name] = value

        app.on_response_prepare.append(add_headers)
