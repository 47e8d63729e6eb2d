"""Sharding: three real exporters split one config of 30 servers, checked by a real Prometheus.

`--shard=I --total-shards=3` over the same config: the union of the three `/metrics` holds
every pair exactly once, every pair is pulled once per interval and never twice (the
simulators see every request), each server lands on the shard Prometheus' own `hashmod`
relabel action computes for its name (Debian's Prometheus does the relabelling; its targets
API shows the result), and killing one shard makes `OllamaPullExporterShardsIncomplete` fire
on that Prometheus.

The tests that start processes are in tests/e2e/test_sharding_process.py.
"""

from __future__ import annotations

import pytest

from exporter.fleet.sharding import ShardError, hashmod, ordinal_of, resolve_shard

SERVERS = [
    *(f"gpu-{i:02d}.lab" for i in range(20)),
    *(f"ollama.ns.svc.cluster.local/10.1.0.{i}:11434" for i in range(5)),
    "ollama-0.ollama-headless.default.svc.cluster.local:11434",
    "größe-ω",
    "[::1]:11434",
    "a",
    "Z z",
]


# ------------------------------------------------------------------ the function itself


def test_hashmod_known_values() -> None:
    # md5("a") = 0cc175b9c0f1b6a8 31c399e269772661: the last 8 bytes, big-endian.
    assert hashmod("a", 2**64 - 1) == 0x31C399E269772661 % (2**64 - 1)
    assert hashmod("a", 1) == 0
    assert {hashmod(name, 3) for name in SERVERS} == {0, 1, 2}


def test_shard_flags() -> None:
    assert ordinal_of("pulls-ollama-pull-exporter-12") == 12
    assert ordinal_of("pulls-2.pulls.default.svc.cluster.local") == 2
    assert resolve_shard("auto", 3, hostname="x-2").index == 2
    assert resolve_shard("1", 2).index == 1
    with pytest.raises(ShardError, match=r"host name 'laptop' does not end in -<number>"):
        resolve_shard("auto", 3, hostname="laptop")
    with pytest.raises(ShardError, match=r"--shard=3 \(from the host name\) is not below"):
        resolve_shard("auto", 3, hostname="x-3")
    with pytest.raises(ShardError, match="--total-shards must be at least 1"):
        resolve_shard("0", 0)
    with pytest.raises(ShardError, match="--shard must be a number"):
        resolve_shard("first", 2)


def on_fixed_rate_slots(times: list[float], interval: float) -> bool:
    """The k-th of `times` falls in slot k of one grid S + k * interval, for every k.

    Each start may be late by the event loop's lag, but by less than an interval: so one S
    fits them all exactly when the starts minus k intervals lie within one interval. A
    double pull or a missed slot moves every later start by a whole interval.
    """
    offsets = [t - k * interval for k, t in enumerate(times)]
    return max(offsets) - min(offsets) < interval


def test_fixed_rate_slots_allow_lag_but_no_double_or_missed_slot() -> None:
    # Seen on a starved machine: the fifth start 1.6 s late, the sixth on time. Rounding
    # to the first start's grid put both in slot 5.
    starved = [22.99, 24.86, 26.94, 28.52, 32.10, 32.55, 35.14, 36.80]
    assert on_fixed_rate_slots(starved, 2.0)
    assert on_fixed_rate_slots([0.0, 2.0, 4.0, 6.0], 2.0)
    assert not on_fixed_rate_slots([0.0, 2.0, 2.1, 4.0, 6.0], 2.0)  # twice in slot 1
    assert not on_fixed_rate_slots([0.0, 2.0, 6.0, 8.0], 2.0)  # slot 2 missed
