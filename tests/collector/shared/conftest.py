"""Shared-state tests run against a real redis-server on loopback (tests/redis_server.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from tests.redis_server import RedisServer, redis_server  # noqa: F401 - fixture


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:  # noqa: F811
    c = aioredis.from_url(redis_server.url, decode_responses=True, socket_timeout=2)
    try:
        yield c
    finally:
        await c.aclose()
