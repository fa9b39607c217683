"""The leader lease: exactly one replica of a namespace runs the control loop.

The key ``{ns}:lease`` holds the holder's token and expires after ``ttl``:

- acquire: ``SET key token NX PX ttl``: only when nobody holds it;
- renew: :data:`RENEW`, compare-and-extend: ``PEXPIRE`` only while the value is our token;
- release: :data:`RELEASE`, compare-and-delete: ``DEL`` only while the value is our token.

So a replica whose lease expired (paused, partitioned) can neither extend nor delete the
lease another replica took since. The holder renews every ``ttl / 3``; a replica counts
itself leader until ``ttl - ttl/10`` after it *sent* its last successful acquire or renew
(the key outlives that on the server), so two replicas never both believe they lead, as
long as their clocks run at the same rate. Killed without release, the lease passes to
another replica within ``ttl`` plus one renew period.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from typing import Any

RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def new_token() -> str:
    """``host:pid:random``: readable in ``GET {ns}:lease``, unique per process start."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"


class Lease:
    """One replica's side of the lease.

    client: a ``redis.asyncio.Redis`` with ``decode_responses=True``; key: the lease key;
    ttl: seconds (>= 1); token: this replica's value (default :func:`new_token`);
    monotonic: clock for :attr:`held`. Redis errors propagate from every method (the
    caller treats the lease as lost, see :meth:`drop`).
    """

    def __init__(self, client: Any, key: str, ttl: float, token: str | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.key = key
        self.ttl = ttl
        self.token = token or new_token()
        self.monotonic = monotonic
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)
        self._valid_until = float("-inf")

    @property
    def held(self) -> bool:
        """True while this replica may act as the leader."""
        return self.monotonic() < self._valid_until

    async def refresh(self) -> bool:
        """Renew the lease if held, else try to acquire it. Returns :attr:`held`."""
        sent = self.monotonic()
        ms = int(self.ttl * 1000)
        ok = bool(await self._renew(keys=[self.key], args=[self.token, ms]))
        if not ok:
            ok = bool(await self.client.set(self.key, self.token, nx=True, px=ms))
        self._valid_until = sent + self.ttl * 0.9 if ok else float("-inf")
        return ok

    async def release(self) -> bool:
        """Give the lease up (only if still ours). True when it was deleted."""
        self._valid_until = float("-inf")
        return bool(await self._release(keys=[self.key], args=[self.token]))

    def drop(self) -> None:
        """Stop counting as leader now (Redis unreachable: the lease cannot be renewed)."""
        self._valid_until = float("-inf")

    async def holder(self) -> str | None:
        """The token of the current holder, or None."""
        return await self.client.get(self.key)
