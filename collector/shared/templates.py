"""The shared template registry: replicas agree on one pattern id per template text.

A pattern's id is the hash of the template it was created from (processors/miner.py), so
two replicas that see the same lines in another order can mine the same final template
under different ids (one created ``session opened for user root`` and generalised it, the
other created ``session opened for user <*>`` directly). The rule that makes them agree:

    **the first replica to register a template text names it.** Every ``sync_interval``
    each replica registers the (template, id) of its live patterns that it has not
    registered yet, or whose template changed (:data:`REGISTER`, ``HSETNX`` semantics on
    ``{ns}:templates``), and gets back the registered id of each; a pattern whose
    registered id differs takes it (``SignatureProcessor.adopt_ids``): its own id becomes
    an alias, and records from then on carry the shared id.

Limits: agreement is on the exact template text: two replicas whose miners are at
different stages for the same lines (one has generalised a word, the other not yet) use
different ids until their templates match. Records annotated before the adoption keep the
local id (an alias). The registry stops growing at ``max_templates`` entries (templates
met later keep their local ids). Patterns are never seeded from the registry: a replica
holds only the patterns of its own traffic.
"""

from __future__ import annotations

from typing import Any

from processors.signature import SignatureProcessor

REGISTER = """
local out = {}
local full = redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[1])
for i = 2, #ARGV, 2 do
  local id = redis.call('HGET', KEYS[1], ARGV[i])
  if not id then
    if full then
      id = ''
    else
      redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
      id = ARGV[i + 1]
    end
  end
  out[#out + 1] = id
end
return out
"""
"""KEYS: the registry hash. ARGV: max entries, then template, id pairs. Returns the
registered id of each template ('' when the registry is full and it was not there)."""

CHUNK = 1000  # templates per script call


class TemplateSharing:
    """One replica's side of the registry (module docstring).

    client: ``redis.asyncio.Redis``; key: the registry hash; max_templates: its bound.
    """

    def __init__(self, client: Any, key: str, max_templates: int) -> None:
        self.key = key
        self.max_templates = max_templates
        self._register = client.register_script(REGISTER)
        self._registered: dict[str, str] = {}  # pattern id -> template registered

    def forget(self) -> None:
        """Register everything again at the next share (Redis may have lost its data)."""
        self._registered = {}

    async def share(self, signature: SignatureProcessor) -> int:
        """Register new templates and adopt the registered ids. Runs on the event loop
        (the miner's thread), awaiting Redis between chunks. Returns the ids adopted.
        Raises RedisError (what was not registered is tried again next time)."""
        live = signature.live_templates()
        todo = [(pid, t) for pid, t in live if self._registered.get(pid) != t]
        adopted = 0
        for i in range(0, len(todo), CHUNK):
            chunk = todo[i:i + CHUNK]
            args: list[Any] = [self.max_templates]
            for pid, template in chunk:
                args += (template, pid)
            ids = await self._register(keys=[self.key], args=args)
            live_now = signature.miner.patterns  # batches may have run while awaiting
            renames = {}
            for (pid, template), sid in zip(chunk, ids, strict=True):
                p = live_now.get(pid)
                if sid and sid != pid and p is not None and p.template == template:
                    renames[pid] = sid
                self._registered[pid] = template
                if sid:
                    self._registered[sid] = template
            adopted += signature.adopt_ids(renames) if renames else 0
        if len(self._registered) > 2 * len(live) + CHUNK:  # forget evicted patterns
            alive = {pid for pid, _ in signature.live_templates()}
            self._registered = {k: v for k, v in self._registered.items() if k in alive}
        return adopted
