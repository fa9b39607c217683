"""The shared policy store against a real redis-server: atomic versions across stores,
history, change notices, the local mirror that serves reads (and a restart) while Redis is
down, and StoreUnavailable on writes then."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from collector.control.store import SqlitePolicyStore, StoreUnavailable
from collector.shared.keys import Keys
from collector.shared.store import RedisPolicyStore
from collector.state import StateStore
from processors.policy import Policy
from tests.redis_server import RedisServer

SVC = "checkout"
T0 = 1_700_000_000.0


@pytest.fixture
def mirrors(tmp_path: Path):
    made: list[StateStore] = []

    def make(name: str) -> SqlitePolicyStore:
        st = StateStore(tmp_path / name)
        made.append(st)
        return SqlitePolicyStore(st.db, keep=50)

    yield make
    for st in made:
        st.close()


async def test_two_replicas_append_one_version_sequence(client: aioredis.Redis, mirrors):
    keys = Keys("t")
    a = RedisPolicyStore(client, keys, 3, mirrors("a"))
    b = RedisPolicyStore(client, keys, 3, mirrors("b"))
    versions = await asyncio.gather(*(
        (a if i % 2 else b).append(SVC, Policy(global_rate=i / 100, generated_by="llm",
                                               reasoning=f"r{i}"), f"d{i}", T0 + i)
        for i in range(10)))
    assert sorted(r.version for r in versions) == list(range(1, 11))
    latest = await b.latest(SVC)
    assert latest is not None and latest.version == 10
    assert latest.policy.version == 10 and latest.source == "llm"
    assert [h.version for h in await a.history(SVC)] == [10, 9, 8]  # trimmed to keep=3
    assert await a.scopes() == [SVC]
    assert await a.versions() == {SVC: 10}
    # the version never falls below the one the caller had in force
    rec = await a.append("other", Policy(version=41), "", T0)
    assert rec.version == 42


async def test_a_record_round_trips_with_all_its_fields(client: aioredis.Redis, mirrors):
    store = RedisPolicyStore(client, Keys("t"), 10, mirrors("a"))
    policy = Policy(global_rate=0.2, pattern_rates={"a1a1a1a1a1a1a1a1": 1 / 3},
                    generated_by="operator", reasoning="why")
    rec = await store.append(SVC, policy, "abc", T0, held_until=T0 + 3600)
    got = await store.shared_latest(SVC)
    assert got == rec
    assert got.policy.pattern_rates == {"a1a1a1a1a1a1a1a1": 1 / 3}
    assert (got.held_until, got.stats_digest, got.reasoning) == (T0 + 3600, "abc", "why")


async def test_each_append_publishes_a_notice(client: aioredis.Redis, mirrors):
    keys = Keys("t")
    store = RedisPolicyStore(client, keys, 10, mirrors("a"))
    pubsub = client.pubsub()
    await pubsub.subscribe(keys.changed)
    try:
        await store.append("svc with spaces", Policy(), "", T0)
        msg = None
        for _ in range(50):
            msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if msg:
                break
        assert msg is not None and msg["data"] == "1 svc with spaces"
    finally:
        await pubsub.aclose()


async def test_mirror_serves_reads_and_writes_fail_clearly_while_redis_is_down(
        redis_server: RedisServer, mirrors):
    client = aioredis.from_url(redis_server.url, decode_responses=True, socket_timeout=1,
                               socket_connect_timeout=1)
    up = [True]
    mirror = mirrors("a")
    store = RedisPolicyStore(client, Keys("t"), 10, mirror, lambda: up[0])
    try:
        rec = await store.append(SVC, Policy(global_rate=0.3), "", T0)
        await store.set_meta("yaml/_default", "digest")
        redis_server.stop()
        # known down: straight to the mirror; not known yet: the failed read falls back
        for known_down in (True, False):
            up[0] = not known_down
            assert await store.latest(SVC) == rec
            assert [h.version for h in await store.history(SVC)] == [1]
            assert await store.scopes() == [SVC]
            assert await store.get_meta("yaml/_default") == "digest"
        with pytest.raises(StoreUnavailable, match="unreachable") as err:
            await store.append(SVC, Policy(global_rate=0.4), "", T0)
        assert str(redis_server.port) not in str(err.value)
        with pytest.raises(StoreUnavailable):
            await store.set_meta("k", "v")
        assert (await mirror.latest(SVC)) == rec  # nothing half-stored
    finally:
        await client.aclose()


async def test_mirror_put_keeps_the_exact_version_and_prunes(mirrors):
    mirror = mirrors("a")
    base = await mirror.append(SVC, Policy(), "", T0)
    for v in (5, 9):
        rec = type(base)(SVC, v, "llm", T0 + v, "", "", 0.0, Policy(version=v))
        await mirror.put(rec)
    assert [h.version for h in await mirror.history(SVC)] == [9, 5, 1]
    # a lower version put later (the shared store was emptied) becomes the latest
    await mirror.put(type(base)(SVC, 2, "yaml", T0, "", "", 0.0, Policy(version=2)))
    assert (await mirror.latest(SVC)).version == 2
