"""Basic auth and response headers of `--web.config.file`, applied to every route of the app.

bcrypt is slow on purpose (~70 ms at cost 10) and Prometheus sends the same credentials
every scrape, so a verified (user, password) pair is remembered, as the exporter-toolkit
does: a known good login is answered without any bcrypt and without waiting. The cache keys
are HMACs under a per-process random key, so neither passwords nor fast hashes of them stay in
memory, and looking one up reveals nothing through its timing.

Everything else waits for one bcrypt worker thread (a password-guessing flood costs at most
one core, and the event loop keeps serving), in a fair queue (`FairQueue`): per remote
address, served in turns, addresses without a recent failed check before the others, so a
fresh login gets through a flood from many addresses after the check in progress. At most
`MAX_PENDING` checks wait, `MAX_PENDING_PER_CLIENT` per address; when all is full a newcomer
takes the place of the newest waiter of the address with most of them (answered 429), and
what does not fit is answered 429 at once. A check whose client has gone while it waited is
dropped.

Every check costs the same whoever the user is: one bcrypt at each cost the file's hashes
have, in ascending order; the user's own hash takes the place of the decoy of its cost, and
an unknown user is checked against decoys only. So neither a user's existence nor its cost
shows in the answer time (a cost-8 user and an unknown one took 12.7 and 202 ms before).

Passwords longer than 72 bytes never match (bcrypt would ignore what follows).
"""

from __future__ import annotations

import asyncio
import binascii
import enum
import hmac
import logging
import secrets
import time
from collections import OrderedDict, deque
from typing import TYPE_CHECKING, Final

from aiohttp import hdrs, web

from exporter.core.ratelog import RateLimitedLog

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

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
FAILURE_MEMORY: Final = 60.0
"""Seconds an address whose check failed waits behind the addresses without failures."""
MAX_REMEMBERED_FAILURES: Final = 4096
"""Addresses with a recent failure remembered at most (the oldest forgotten first)."""
RETRY_AFTER: Final = "1"
_MAX_PASSWORD_BYTES: Final = 72
"""bcrypt only reads this much; longer passwords never match instead of matching a prefix."""
_CACHE_SIZE: Final = 256
_BCRYPT_ALPHABET: Final = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


class Verdict(enum.Enum):
    """The answer to one `Authorization` header."""

    OK = "ok"
    DENIED = "denied"
    BUSY = "busy"
    """Too many checks waiting: try again later (429)."""


def bcrypt_cost(hashed: bytes) -> int:
    """The cost (log2 rounds) of a `$2?$NN$...` hash."""
    return int(hashed[4:6])


def decoy_hash(cost: int) -> bytes:
    """A hash of `cost` that no password matches: a random salt and a random digest.

    Checking against it costs what checking against a real hash of that cost does, and
    making it costs nothing (no bcrypt at start-up).
    """
    import bcrypt  # noqa: PLC0415 - only with basic auth users: its library is 0.4 MiB of RSS

    digest = bytes(secrets.choice(_BCRYPT_ALPHABET) for _ in range(31))
    return bcrypt.gensalt(rounds=cost) + digest


class FairQueue:
    """Turns at the one bcrypt worker: per address in rotation, clean addresses first.

    One FIFO queue per address. At each turn the first address in the rotation without a
    failed check in the last `FAILURE_MEMORY` seconds goes (else the first of all), and
    moves to the end of the rotation.
    """

    def __init__(self) -> None:
        self._queues: OrderedDict[str, deque[asyncio.Future[bool]]] = OrderedDict()
        self._pending: dict[str, int] = {}
        """Checks per address, waiting or being made."""
        self._waiting = 0
        self._busy = False
        self._failed: OrderedDict[str, float] = OrderedDict()

    def failed(self, client: str) -> None:
        """A check of `client` failed: its next ones wait behind the clean addresses."""
        self._failed.pop(client, None)
        self._failed[client] = time.monotonic() + FAILURE_MEMORY
        while len(self._failed) > MAX_REMEMBERED_FAILURES:
            self._failed.popitem(last=False)

    def _suspect(self, client: str) -> bool:
        until = self._failed.get(client)
        if until is None:
            return False
        if until < time.monotonic():
            del self._failed[client]
            return False
        return True

    def enter(self, client: str) -> asyncio.Future[bool] | None:
        """A place in the queue for a check of `client`; None when there is no room.

        The future is True when it is this check's turn, False when a newcomer took the
        place (answer 429).
        """
        pending = self._pending.get(client, 0)
        if pending >= MAX_PENDING_PER_CLIENT:
            return None
        if self._waiting >= MAX_PENDING and not self._push_out(client, pending):
            return None
        turn: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queues.setdefault(client, deque()).append(turn)
        self._pending[client] = pending + 1
        self._waiting += 1
        self._next()
        return turn

    def leave(self, client: str) -> None:
        """The check of `client` that had its turn is done: the next one goes."""
        self._busy = False
        self._count_out(client)
        self._next()

    def _count_out(self, client: str) -> None:
        self._waiting -= 1
        if self._pending[client] <= 1:
            del self._pending[client]
        else:
            self._pending[client] -= 1

    def _push_out(self, client: str, pending: int) -> bool:
        """Make room by taking the newest waiter of the address with most of them waiting.

        A clean newcomer takes a suspect's place whatever its queue; otherwise only an
        address with at least two more waiting than the newcomer (`pending`) gives one up.
        """
        suspects = [each for each in self._queues if self._suspect(each)]
        clean = not self._suspect(client)
        victim = max(
            suspects if clean and suspects else self._queues,
            key=lambda each: len(self._queues[each]),
            default=None,
        )
        if victim is None:
            return False
        queue = self._queues[victim]
        if not (clean and suspects) and len(queue) < pending + 2:
            return False
        turn = queue.pop()
        if not queue:
            del self._queues[victim]
        self._count_out(victim)
        if not turn.done():
            turn.set_result(False)
        return True

    def _next(self) -> None:
        while not self._busy and self._queues:
            client = next(
                (each for each in self._queues if not self._suspect(each)),
                next(iter(self._queues)),
            )
            queue = self._queues.pop(client)
            turn = queue.popleft()
            if queue:
                self._queues[client] = queue  # to the end: the next address has its turn
            if turn.done():  # its waiter was cancelled (client gone)
                self._count_out(client)
            else:
                self._busy = True
                turn.set_result(True)


class BasicAuth:
    """Checks `Authorization: Basic` headers against bcrypt hashes; see the module docstring."""

    def __init__(self, users: Mapping[str, bytes]) -> None:
        if not users:
            raise ValueError("BasicAuth needs at least one user")
        self._users = {name.encode(): hashed for name, hashed in users.items()}
        self._decoys = {cost: decoy_hash(cost) for cost in sorted(map(bcrypt_cost, users.values()))}
        self._key = secrets.token_bytes(32)
        self._verified: OrderedDict[bytes, None] = OrderedDict()
        self._queue = FairQueue()

    async def check(
        self,
        authorization: str | None,
        client: str = "",
        connected: Callable[[], bool] = lambda: True,
    ) -> Verdict:
        """Whether the header holds the right password of a configured user.

        `client` (the remote address) is the unit of fairness of the queue; `connected`
        says whether anybody still waits for this answer.
        """
        credentials = _parse_basic(authorization)
        if credentials is None:
            return Verdict.DENIED
        user, password = credentials
        hashed = self._users.get(user)
        token = hmac.digest(self._key, len(user).to_bytes(4, "big") + user + password, "sha256")
        if hashed is not None and self._remembered(token):
            return Verdict.OK
        turn = self._queue.enter(client)
        if turn is None:
            return Verdict.BUSY
        try:
            if not await turn:
                return Verdict.BUSY  # a newcomer from a quieter address took the place
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled() and turn.result():
                self._queue.leave(client)  # it was our turn: pass it on
            raise
        try:
            verdict = await self._verify(user, password, token, connected)
        finally:
            self._queue.leave(client)
        if verdict is Verdict.DENIED and connected():
            self._queue.failed(client)
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
        hashes = [
            hashed if hashed is not None and cost == bcrypt_cost(hashed) else decoy
            for cost, decoy in self._decoys.items()
        ]
        matches = await asyncio.to_thread(_all_match, password, hashes, hashed)
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


def _all_match(password: bytes, hashes: Sequence[bytes], real: bytes | None) -> bool:
    """Whether `password` matches `real`, one of `hashes`, checked against every one of them.

    The same work whichever matches, and whether any does.
    """
    matched = False
    for hashed in hashes:
        result = _bcrypt_matches(password, hashed)
        matched |= result and hashed is real
    return matched


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
    import bcrypt  # noqa: PLC0415 - see decoy_hash (imported once, then a dict lookup)

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
