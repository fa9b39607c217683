"""SharedState (collector/shared/replica.py) with two in-process replicas on one real
redis-server: change notices, the version check that catches a missed notice, the lease,
statistics of both replicas in the leader's snapshot, and what happens while Redis is
down."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from collector.config import StorageConfig
from collector.control.loop import ControlLoop
from collector.control.store import SqlitePolicyStore, StoreUnavailable
from collector.shared.replica import SharedState, safe_url
from collector.state import StateStore
from tests.collector.control.conftest import NOISY, SVC, control_config, feed, make_sampler
from tests.redis_server import RedisServer


class Replica:
    def __init__(self, shared: SharedState, loop: ControlLoop, state: StateStore) -> None:
        self.shared, self.loop, self.state = shared, loop, state
        self.sampler = loop.sampler


@pytest.fixture
async def replicas(redis_server: RedisServer, tmp_path: Path
                   ) -> AsyncIterator[Callable[..., asyncio.Future]]:
    made: list[Replica] = []

    async def make(name: str, sync_interval: str = "60s", start: bool = True) -> Replica:
        storage = StorageConfig.model_validate({
            "backend": "redis", "redis_url": redis_server.url,
            "redis": {"namespace": "unit", "lease_ttl": "3s", "sync_interval": sync_interval,
                      "timeout": "1s"}})
        cfg = control_config(interval="5m", anomaly_trigger=[])
        sampler = make_sampler()
        state = StateStore(tmp_path / name)
        shared = SharedState(storage, cfg, sampler, None, SqlitePolicyStore(state.db, 50))
        await shared.connect()
        loop = ControlLoop(cfg, sampler, shared.store, None, is_leader=shared.is_leader,
                           stats=shared.read_stats)
        await loop.resume()
        if start:
            await shared.start(loop)
        else:
            shared.loop = loop
        r = Replica(shared, loop, state)
        made.append(r)
        return r

    yield make
    for r in made:
        await r.shared.stop()
        await r.loop.stop()
        r.state.close()


async def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_a_notice_puts_the_new_version_in_force_on_the_other_replica(replicas):
    a, b = await replicas("a"), await replicas("b")  # 60 s between version checks
    verdict, rec = await a.loop.override(SVC, {"global_rate": 0.5})
    assert rec is not None
    await wait_for(lambda: b.sampler.policy(SVC).version == rec.version)
    assert b.sampler.policy(SVC).global_rate == 0.5
    assert b.loop._held[SVC] == rec.held_until  # the operator's hold applies there too
    mirrored = await b.shared.store.mirror.latest(SVC)
    assert mirrored is not None and mirrored.version == rec.version


async def test_the_version_check_catches_a_missed_notice(replicas):
    a = await replicas("a")
    b = await replicas("b", start=False)  # not subscribed: it misses the notice
    _, rec = await a.loop.override(SVC, {"global_rate": 0.2})
    assert b.sampler.policy(SVC).global_rate != 0.2
    assert await b.shared.check_versions("poll") == 1
    assert b.sampler.policy(SVC).version == rec.version
    assert await b.shared.check_versions("poll") == 0


async def test_one_leader_and_release_hands_over(replicas):
    a, b = await replicas("a"), await replicas("b")
    await wait_for(lambda: a.shared.is_leader() != b.shared.is_leader())
    leader, other = (a, b) if a.shared.is_leader() else (b, a)
    assert await other.shared.lease.refresh() is False
    await leader.shared.stop()  # releases the lease
    assert not leader.shared.is_leader()
    assert await other.shared.lease.refresh() is True and other.shared.is_leader()


async def test_the_leaders_snapshot_counts_both_replicas(replicas):
    a, b = await replicas("a"), await replicas("b")
    feed(a.sampler, time.time() - 5)
    feed(b.sampler, time.time() - 5, scale=2)
    await a.shared.sync_once()
    await b.shared.sync_once()
    rows = {r["pattern_id"]: r for r in await a.shared.read_stats(SVC)}
    assert rows[NOISY]["count"] == 3000 * 3
    results = await a.loop.run_once("api", SVC, force=True)
    assert results[0].outcome == "applied"  # heuristic policy from the summed counts
    await wait_for(lambda: b.sampler.policy(SVC).version == results[0].version)


async def test_with_redis_down_the_replica_keeps_its_policy_and_local_stats(
        replicas, redis_server: RedisServer):
    a = await replicas("a", sync_interval="200ms")
    _, rec = await a.loop.override(SVC, {"global_rate": 0.3})
    await wait_for(a.shared.is_leader)
    redis_server.stop()
    await wait_for(lambda: not a.shared.up)
    assert not a.shared.is_leader()
    assert a.sampler.policy(SVC).version == rec.version
    feed(a.sampler, time.time())
    rows = await a.shared.read_stats(SVC)  # the sampler's own
    assert {r["pattern_id"]: r["count"] for r in rows}[NOISY] == 3000
    with pytest.raises(StoreUnavailable):
        await a.loop.override(SVC, {"global_rate": 0.25})
    assert a.sampler.policy(SVC).version == rec.version
    assert (await a.loop.store.latest(SVC)).version == rec.version  # from the mirror
    redis_server.start()
    await wait_for(lambda: a.shared.up, timeout=15)
    await wait_for(a.shared.is_leader, timeout=5)
    # the counts it could not push arrive with the next push
    deadline = time.monotonic() + 5
    shared: dict[str, int] = {}
    while not shared and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        shared = {r["pattern_id"]: r["count"] for r in await a.shared.read_stats(SVC)
                  if "span" in r}
    assert shared[NOISY] == 3000


def test_safe_url_hides_the_password() -> None:
    assert safe_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert safe_url("rediss://user:pw@h/2") == "rediss://user:***@h/2"
    assert safe_url("redis://h:1") == "redis://h:1"
    assert safe_url("unix:///run/redis.sock") == "unix:///run/redis.sock"
