"""Basic auth under a password-guessing flood from many addresses, over real sockets.

Linux routes all of 127.0.0.0/8 to the loopback interface, so each client here binds its
own 127.0.0.x source address: the server sees many remote addresses, as behind no proxy.
The server is the real stack in process: the listener, its guard and `auth.install`. A fresh
login's wait is counted in bcrypt checks, not seconds: how many wrong passwords the server
answered 401 between the login's arrival and its answer (each is one check of the one worker),
counted by a middleware outside auth's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import statistics
from typing import TYPE_CHECKING

import aiohttp
import bcrypt
from aiohttp import web

from exporter.config.webconfig import parse_web_config
from exporter.web import auth, listener
from exporter.web.listener import ConnectionGuard
from tests.virtual_time import run_virtual

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiohttp.typedefs import Handler

COST = 6
"""Slow enough (~5 ms a check) that the flood's 64 checks always wait while it lasts."""
FLOOD_ADDRESSES = [f"127.0.0.{10 + i}" for i in range(16)]
FRESH = 12
LANE_CHECKS = 2
"""Checks a fresh valid login may wait for under the flood (issue 17): the one in progress
(it waits for 1), with a margin of one. Behind a turn of every flood address it would be 17,
behind the whole flood 64."""


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


GUESS = _basic("user0", "guess")
"""The flood's wrong password."""


class Tally:
    """Where the server answers: wrong passwords checked, and each fresh login's wait in them."""

    def __init__(self) -> None:
        self.checked = 0
        self.waits: list[int] = []

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        arrived, status = self.checked, 0
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            status = exc.status
            raise
        else:
            status = response.status
            return response
        finally:
            if status == 401:
                self.checked += 1
            elif status == 200 and request.headers.get("Authorization") != GUESS:
                self.waits.append(self.checked - arrived)


@contextlib.asynccontextmanager
async def _server(users: dict[str, bytes], tally: Tally) -> AsyncIterator[str]:
    lines = "".join(f"  {name}: '{hashed.decode()}'\n" for name, hashed in users.items())
    web_config = parse_web_config(f"basic_auth_users:\n{lines}", "web.yml")

    async def ok(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/metrics", ok)
    auth.install(app, web_config)
    app.middlewares.insert(0, tally.middleware)  # outside auth's: it sees the whole wait
    sockets = listener.bind("127.0.0.1", 0)
    try:
        async with listener.start(app, sockets, ssl_context=None, guard=ConnectionGuard(4096, 0)):
            yield f"http://127.0.0.1:{sockets[0].getsockname()[1]}/metrics"
    finally:
        for sock in sockets:
            sock.close()


class Answers:
    """The statuses the flood got, in order; `warm` is set once it got `warm_after` 401s."""

    def __init__(self, warm_after: int) -> None:
        self.seen: list[int] = []
        self.warm = asyncio.Event()
        self._warm_after = warm_after

    def add(self, status: int) -> None:
        self.seen.append(status)
        if self.seen.count(401) >= self._warm_after:
            self.warm.set()


async def _flood(url: str, address: str, stop: asyncio.Event, answers: Answers) -> None:
    """Four wrong-password requests always waiting from `address`."""
    connector = aiohttp.TCPConnector(local_addr=(address, 0), limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> None:
            while not stop.is_set():
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(url, headers={"Authorization": GUESS}) as response:
                        answers.add(response.status)
                        if response.status == 429:
                            await asyncio.sleep(0.05)

        await asyncio.gather(*(one() for _ in range(auth.MAX_PENDING_PER_CLIENT)))


async def _login(url: str, address: str, user: str, password: str) -> int:
    connector = aiohttp.TCPConnector(local_addr=(address, 0))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.get(
            url,
            headers={"Authorization": _basic(user, password)},
            timeout=aiohttp.ClientTimeout(total=30),
        ) as response,
    ):
        return response.status


def test_a_fresh_valid_login_gets_through_a_flood_from_many_addresses() -> None:
    """Defect N7: 16 addresses x 4 waiting wrong passwords filled the queue (64): 11 of 12
    new valid logins got 429 while the flood lasted."""
    passwords = {f"user{i}": f"password-{i}" for i in range(FRESH + 1)}
    users = {
        name: bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=COST))
        for name, password in passwords.items()
    }

    async def scenario() -> tuple[list[int], list[int]]:
        async with _server(users, tally) as url:
            stop = asyncio.Event()
            answers = Answers(warm_after=2 * len(FLOOD_ADDRESSES))
            flood = [asyncio.ensure_future(_flood(url, a, stop, answers)) for a in FLOOD_ADDRESSES]
            try:
                async with asyncio.timeout(60):  # the flood got going: failures are answered
                    await answers.warm.wait()
                statuses = [
                    await _login(url, f"127.0.1.{i + 1}", f"user{i + 1}", passwords[f"user{i + 1}"])
                    for i in range(FRESH)
                ]
            finally:
                stop.set()
                await asyncio.gather(*flood)
            return statuses, answers.seen

    tally = Tally()
    statuses, seen = run_virtual(scenario())
    waits = tally.waits
    assert statuses == [200] * FRESH, statuses
    assert len(waits) == FRESH
    assert max(waits) <= LANE_CHECKS, f"wrong passwords checked while each login waited: {waits}"
    assert seen.count(401) > 0
    print(  # the numbers for the record: pytest -s shows them
        f"fresh logins under the flood waited for a median {statistics.median(waits)},"
        f" max {max(waits)} checks; flood answers: {seen.count(401)} x 401,"
        f" {seen.count(429)} x 429"
    )
