"""The lease's SET NX PX acquire and its Lua compare-and-extend / compare-and-delete,
against a real redis-server."""

from __future__ import annotations

import asyncio

import redis.asyncio as aioredis

from collector.shared.lease import Lease


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def test_one_holder_at_a_time_and_the_key_holds_its_token(client: aioredis.Redis):
    a = Lease(client, "t:lease", ttl=10, token="a")
    b = Lease(client, "t:lease", ttl=10, token="b")
    assert await a.refresh() is True and a.held
    assert await b.refresh() is False and not b.held
    assert await client.get("t:lease") == "a"
    assert 9_000 < await client.pttl("t:lease") <= 10_000


async def test_renew_extends_only_the_holders_lease(client: aioredis.Redis):
    a = Lease(client, "t:lease", ttl=10, token="a")
    b = Lease(client, "t:lease", ttl=10, token="b")
    await a.refresh()
    await client.pexpire("t:lease", 500)
    assert await b.refresh() is False  # b's compare-and-extend must not touch a's key
    assert await client.pttl("t:lease") <= 500
    assert await a.refresh() is True
    assert await client.pttl("t:lease") > 9_000


async def test_release_deletes_only_its_own_lease(client: aioredis.Redis):
    a = Lease(client, "t:lease", ttl=10, token="a")
    b = Lease(client, "t:lease", ttl=10, token="b")
    await a.refresh()
    assert await b.release() is False
    assert await client.get("t:lease") == "a"
    assert await a.release() is True and not a.held
    assert await client.get("t:lease") is None
    assert await b.refresh() is True


async def test_an_expired_holder_cannot_renew_the_new_holders_lease(client: aioredis.Redis):
    a = Lease(client, "t:lease", ttl=1, token="a")
    b = Lease(client, "t:lease", ttl=1, token="b")
    await a.refresh()
    for _ in range(40):  # the key expires on the server within ~1 s
        if await client.get("t:lease") is None:
            break
        await asyncio.sleep(0.05)
    assert await b.refresh() is True
    assert await a.refresh() is False and not a.held
    assert await a.release() is False
    assert await client.get("t:lease") == "b"


async def test_held_ends_before_the_server_side_expiry(client: aioredis.Redis):
    clock = Clock()
    a = Lease(client, "t:lease", ttl=10, token="a", monotonic=clock)
    await a.refresh()
    clock.t = 8.9
    assert a.held
    clock.t = 9.0  # 90% of the TTL after the command was sent
    assert not a.held
    a.drop()
    clock.t = 0.0
    assert not a.held
