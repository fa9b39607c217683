"""Statistics aggregation across replicas against a real redis-server: each replica
pushes only what it counted since its last push, the leader reads the sum of all."""

from __future__ import annotations

import math

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from collector.control.snapshot import RateTracker
from collector.shared.keys import Keys
from collector.shared.stats import PUSH, READ, StatsPusher, read_rows
from tests.collector.control.conftest import CACHE, NOISY, SLOW, SVC, TRAFFIC, feed, make_sampler
from tests.redis_server import RedisServer

WINDOW = 60.0
LOOKBACK = 300.0
NOW = 1_700_000_100.0
KEYS = Keys("t")


def rate_for(svc: str, pid: str, family: str, sn: int) -> float:
    return 0.25


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {r["pattern_id"]: r for r in rows}


async def push(client: aioredis.Redis, pusher: StatsPusher, sampler, now: float) -> int:
    prepared = pusher.prepare(sampler.pattern_stats(), sampler.anomaly_flags())
    return await pusher.push(client, client.register_script(PUSH), prepared, now)


async def read(client: aioredis.Redis, now: float = NOW) -> list[dict]:
    return await read_rows(client, client.register_script(READ), KEYS, WINDOW, LOOKBACK, now,
                           rate_for)


async def test_the_leader_reads_the_sum_of_every_replica(client: aioredis.Redis):
    replicas = [(make_sampler(), StatsPusher(KEYS, WINDOW, LOOKBACK)) for _ in range(3)]
    for i, (sampler, pusher) in enumerate(replicas):
        feed(sampler, NOW - 30, scale=i + 1)  # 1x, 2x, 3x the traffic
        assert await push(client, pusher, sampler, NOW - 20) == 1
    rows = by_id(await read(client))
    assert set(rows) == set(TRAFFIC)
    for pid, (n, _sev, template) in TRAFFIC.items():
        local = [by_id(s.pattern_stats())[pid] for s, _ in replicas]
        assert rows[pid]["count"] == sum(r["count"] for r in local) == n * 6
        assert rows[pid]["kept"] == sum(r["kept"] for r in local)
        assert rows[pid]["bytes_kept"] == sum(r["bytes_kept"] for r in local)
        assert rows[pid]["template"] == template and rows[pid]["service"] == SVC
        assert rows[pid]["rate"] == 0.25
    assert rows[NOISY]["severity"] == {"INFO": 3000 * 6}
    assert rows[SLOW]["severity"] == {"WARN": 40 * 6}


async def test_pushing_again_sends_only_what_is_new(client: aioredis.Redis):
    sampler, pusher = make_sampler(), StatsPusher(KEYS, WINDOW, LOOKBACK)
    feed(sampler, NOW - 50)
    await push(client, pusher, sampler, NOW - 40)
    await push(client, pusher, sampler, NOW - 30)  # nothing new: no double count
    feed(sampler, NOW - 25, {CACHE: TRAFFIC[CACHE]})
    await push(client, pusher, sampler, NOW - 20)
    rows = by_id(await read(client))
    assert rows[NOISY]["count"] == 3000
    assert rows[CACHE]["count"] == 1200


async def test_counts_a_failed_push_could_not_send_go_with_the_next(
        redis_server: RedisServer):
    sampler, pusher = make_sampler(), StatsPusher(KEYS, WINDOW, LOOKBACK)
    client = aioredis.from_url(redis_server.url, decode_responses=True, socket_timeout=1,
                               socket_connect_timeout=1)
    try:
        feed(sampler, NOW - 50)
        await push(client, pusher, sampler, NOW - 45)
        redis_server.stop()
        feed(sampler, NOW - 40)
        try:
            await push(client, pusher, sampler, NOW - 35)
            raise AssertionError("push to a stopped redis-server succeeded")
        except (RedisConnectionError, OSError):
            pass
        redis_server.start()  # a fresh, empty server on the same port
        feed(sampler, NOW - 30)
        await push(client, pusher, sampler, NOW - 25)
        rows = by_id(await read(client))
        assert rows[NOISY]["count"] == 2 * 3000  # the two feeds the first push had not sent
    finally:
        await client.aclose()


async def test_windows_outside_the_lookback_are_not_read_and_expire(client: aioredis.Redis):
    sampler, pusher = make_sampler(), StatsPusher(KEYS, WINDOW, LOOKBACK)
    feed(sampler, NOW - 1000)
    await push(client, pusher, sampler, NOW - 1000)
    old_key = KEYS.stats(SVC, math.floor((NOW - 1000) / WINDOW))
    assert 0 < await client.ttl(old_key) <= LOOKBACK + 2 * WINDOW
    feed(sampler, NOW - 10, {SLOW: TRAFFIC[SLOW]})
    await push(client, pusher, sampler, NOW - 5)
    rows = by_id(await read(client))
    assert set(rows) == {SLOW} and rows[SLOW]["count"] == 40


async def test_shared_rows_give_rates_over_their_span(client: aioredis.Redis):
    samplers = [make_sampler(), make_sampler()]
    for s in samplers:
        feed(s, NOW - 2000)  # the patterns are old: first seen long before the lookback
        await push(client, StatsPusher(KEYS, WINDOW, LOOKBACK), s, NOW - 10)
    rows = await read(client)
    span = NOW - math.floor((NOW - LOOKBACK) / WINDOW) * WINDOW
    assert all(r["span"] == span for r in rows)
    snap = RateTracker().build(SVC, rows, [], NOW)
    noisy = snap.by_id[NOISY]
    assert math.isclose(noisy.records_per_s, 2 * 3000 / span)


async def test_an_error_surge_on_one_replica_flags_the_service(client: aioredis.Redis):
    calm = make_sampler()
    feed(calm, NOW - 30)
    pusher = StatsPusher(KEYS, WINDOW, LOOKBACK)
    prepared = pusher.prepare(calm.pattern_stats(), [
        {"service": SVC, "kind": "error_surge", "pattern_id": None}])
    await pusher.push(client, client.register_script(PUSH), prepared, NOW - 20)
    rows = await read(client)
    assert rows and all(r["error_surge"] for r in rows)
    assert RateTracker().build(SVC, rows, [], NOW).error_surge
