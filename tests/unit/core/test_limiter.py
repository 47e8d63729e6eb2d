"""exporter.core.limiter: a concurrency limit that can change while work waits on it."""

from __future__ import annotations

import asyncio

import pytest

from exporter.core.limiter import Limiter


async def hold(limiter: Limiter, log: list[str], name: str, release: asyncio.Event) -> None:
    async with limiter.slot():
        log.append(name)
        await release.wait()


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


def test_waiters_start_in_arrival_order_and_lowering_waits_for_holders() -> None:
    async def scenario() -> None:
        limiter = Limiter(2)
        gates = [asyncio.Event() for _ in range(5)]
        log: list[str] = []
        tasks = [asyncio.create_task(hold(limiter, log, f"t{i}", gates[i])) for i in range(5)]
        await settle()
        assert log == ["t0", "t1"]
        assert (limiter.held, limiter.waiting) == (2, 3)
        limiter.resize(1)
        gates[0].set()
        await settle()
        assert log == ["t0", "t1"]  # one still holds: at the new limit, nothing starts
        gates[1].set()
        await settle()
        assert log == ["t0", "t1", "t2"]
        limiter.resize(3)
        await settle()
        assert log == ["t0", "t1", "t2", "t3", "t4"]
        assert limiter.held == 3
        for gate in gates:
            gate.set()
        await asyncio.gather(*tasks)
        assert (limiter.held, limiter.waiting) == (0, 0)

    asyncio.run(scenario())


def test_a_cancelled_waiter_leaves_no_slot_behind() -> None:
    async def scenario() -> None:
        limiter = Limiter(1)
        first, log = asyncio.Event(), list[str]()
        holder = asyncio.create_task(hold(limiter, log, "holder", first))
        waiter = asyncio.create_task(hold(limiter, log, "waiter", asyncio.Event()))
        await settle()
        waiter.cancel()
        await settle()
        # A waiter cancelled just as the slot frees must not keep it either.
        late = asyncio.create_task(hold(limiter, log, "late", asyncio.Event()))
        await settle()
        first.set()
        late.cancel()
        await asyncio.gather(holder, waiter, late, return_exceptions=True)
        assert (limiter.held, limiter.waiting) == (0, 0)
        assert log == ["holder"]

    asyncio.run(scenario())


def test_none_is_unlimited_and_zero_is_refused() -> None:
    async def scenario() -> None:
        limiter = Limiter(None)
        gate, log = asyncio.Event(), list[str]()
        tasks = [asyncio.create_task(hold(limiter, log, str(i), gate)) for i in range(50)]
        await settle()
        assert limiter.held == 50
        gate.set()
        await asyncio.gather(*tasks)

    asyncio.run(scenario())
    with pytest.raises(ValueError, match="at least 1"):
        Limiter(0)
    with pytest.raises(ValueError, match="at least 1"):
        Limiter(1).resize(0)
