"""The shared policy store: a :class:`~collector.control.store.PolicyStore` in Redis.

Every replica of a namespace reads and appends the same versions (keys.py):

- ``append`` runs :data:`APPEND` (one Lua script, atomic): version = max(stored, the
  caller's) + 1; the entry ``"<version> <record JSON>"`` becomes the scope's latest and
  the head of its history (trimmed to ``keep``); ``"<version> <scope>"`` is published on
  ``policy:changed`` so every replica fetches it within a round trip (replica.py).
- reads (``latest``, ``history``, ``scopes``, ``get_meta``) come from Redis while it
  answers, else from the local mirror: the replica's SQLite policy table, where every
  record this replica stored or put in force is copied (``mirror.put``), so a restart
  without Redis resumes the last shared policy.
- writes while Redis is unreachable raise :class:`StoreUnavailable` (nothing is stored and
  the policy in force stays; the API answers 503).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from collector.control.store import SqlitePolicyStore, StoredPolicy, StoreUnavailable
from collector.shared.keys import Keys
from processors.policy import Policy

APPEND = """
local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local v = math.max(cur, tonumber(ARGV[2])) + 1
local entry = v .. ' ' .. ARGV[3]
redis.call('HSET', KEYS[1], ARGV[1], v)
redis.call('HSET', KEYS[2], ARGV[1], entry)
redis.call('LPUSH', KEYS[3], entry)
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[4]) - 1)
redis.call('PUBLISH', ARGV[5], v .. ' ' .. ARGV[1])
return v
"""
"""KEYS: versions hash, latest hash, history list. ARGV: scope, the caller's version,
record JSON, history length, notice channel. Returns the new version."""


def encode(rec: StoredPolicy) -> str:
    """The record as JSON without its version (the entry carries it in front)."""
    doc = rec.to_json()
    doc["scope"] = rec.scope
    return json.dumps(doc, separators=(",", ":"))


def decode(scope: str, entry: str) -> StoredPolicy:
    """A stored entry ``"<version> <JSON>"`` → StoredPolicy. Raises ValueError."""
    head, _, text = entry.partition(" ")
    version = int(head)
    doc = json.loads(text)
    policy = Policy.model_validate({**doc["policy"], "version": version})
    return StoredPolicy(scope, version, str(doc["source"]), float(doc["stored_at"]),
                        str(doc["reasoning"]), str(doc["stats_digest"]),
                        float(doc["held_until"] or 0.0), policy)


class RedisPolicyStore:
    """Policies of one namespace in Redis, mirrored into the local SQLite store.

    client: ``redis.asyncio.Redis`` (``decode_responses=True``); keys: the namespace's
    keys; keep: versions kept per scope; mirror: the local store; is_up: False while the
    replica knows Redis is unreachable (reads go straight to the mirror then).
    """

    def __init__(self, client: Any, keys: Keys, keep: int, mirror: SqlitePolicyStore,
                 is_up: Callable[[], bool] = lambda: True) -> None:
        self.client = client
        self.keys = keys
        self.keep = keep
        self.mirror = mirror
        self.is_up = is_up
        self._append = client.register_script(APPEND)

    async def append(self, scope: str, policy: Policy, stats_digest: str, stored_at: float,
                     held_until: float = 0.0) -> StoredPolicy:
        rec = StoredPolicy(scope, 0, policy.generated_by, stored_at, policy.reasoning,
                           stats_digest, held_until, policy)
        k = self.keys
        try:
            version = int(await self._append(
                keys=[k.versions, k.latest, k.history(scope)],
                args=[scope, policy.version, encode(rec), self.keep, k.changed]))
        except RedisError as err:
            raise StoreUnavailable(f"shared policy store unreachable ({type(err).__name__}); "
                                   "the policy in force stays") from None
        policy = policy.model_copy(update={"version": version})
        rec = StoredPolicy(scope, version, rec.source, stored_at, rec.reasoning, stats_digest,
                           held_until, policy)
        await self.mirror.put(rec)
        return rec

    async def versions(self) -> dict[str, int]:
        """Scope → latest version in Redis. Raises RedisError."""
        return {s: int(v) for s, v in (await self.client.hgetall(self.keys.versions)).items()}

    async def shared_latest(self, scope: str) -> StoredPolicy | None:
        """The scope's latest record in Redis (no fallback). Raises RedisError, ValueError."""
        entry = await self.client.hget(self.keys.latest, scope)
        return decode(scope, entry) if entry else None

    async def latest(self, scope: str) -> StoredPolicy | None:
        if self.is_up():
            try:
                return await self.shared_latest(scope)
            except RedisError:
                pass
        return await self.mirror.latest(scope)

    async def history(self, scope: str, limit: int = 50) -> list[StoredPolicy]:
        if self.is_up():
            try:
                entries = await self.client.lrange(self.keys.history(scope), 0, limit - 1)
                return [decode(scope, e) for e in entries]
            except RedisError:
                pass
        return await self.mirror.history(scope, limit)

    async def scopes(self) -> list[str]:
        if self.is_up():
            try:
                return sorted(await self.client.hkeys(self.keys.latest))
            except RedisError:
                pass
        return await self.mirror.scopes()

    async def get_meta(self, key: str) -> str | None:
        if self.is_up():
            try:
                return await self.client.hget(self.keys.meta, key)
            except RedisError:
                pass
        return await self.mirror.get_meta(key)

    async def set_meta(self, key: str, value: str) -> None:
        try:
            await self.client.hset(self.keys.meta, key, value)
        except RedisError as err:
            raise StoreUnavailable(f"shared policy store unreachable ({type(err).__name__})"
                                   ) from None
        await self.mirror.set_meta(key, value)
