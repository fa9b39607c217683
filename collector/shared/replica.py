"""One sidecar process's link to the shared state: the background tasks of
``storage.backend: redis`` (docs/scale.md).

=================  ==========================  ============================================
task               every                       does
=================  ==========================  ============================================
sync               ``sync_interval`` (backoff  checks the policy versions (fallback for a
                   0.5 s doubling to 5 s while  missed notice), pushes this replica's
                   Redis is unreachable)       pattern counts (stats.py), registers its
                                               templates and adopts shared ids
                                               (templates.py); reconnects
lease              ``lease_ttl / 3``           acquires or renews the leader lease
notices            (subscribed)                ``policy:changed`` messages: fetches the
                                               scope's latest version and puts it in force
=================  ==========================  ============================================

Redis unreachable: a command fails → the replica marks Redis down (``lipservice_redis_up``
0), drops the lease (no control loop runs anywhere until Redis is back), logs once per
minute, keeps the policies in force and its local statistics, and retries with backoff.
When Redis answers again it resubscribes, checks every version, re-registers its
templates and pushes the counts it could not send. Nothing here runs on the per-batch
path; the sampler and the miner are touched on the event loop between batches.

The URL (it may hold a password) is never logged: logs show :func:`safe_url`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from collector import metrics
from collector.config import StorageConfig
from collector.control.config import ControlConfig
from collector.control.loop import ControlLoop
from collector.control.store import DEFAULT_SCOPE, SqlitePolicyStore
from collector.logs import redact, register_secret
from collector.shared.keys import Keys
from collector.shared.lease import Lease
from collector.shared.stats import PUSH, READ, StatsPusher, read_rows
from collector.shared.store import RedisPolicyStore
from collector.shared.templates import TemplateSharing
from processors.sampling import SamplingProcessor
from processors.signature import SignatureProcessor

log = logging.getLogger("lipservice.shared")

BACKOFF_MIN, BACKOFF_MAX = 0.5, 5.0  # seconds between reconnect attempts
DOWN_LOG_INTERVAL = 60.0  # seconds between two "still unreachable" log lines
MAX_LOOKBACK = 3600.0  # seconds of shared statistics a snapshot reads at most
STOP_TIMEOUT = 2.0  # seconds for the last push and the lease release at shutdown


def safe_url(url: str) -> str:
    """``url`` without its password (``redis://user:***@host:6379/0``), for logs."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "redis (unparsable URL)"
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    user = f"{parts.username}:***@" if parts.username else ":***@" if parts.password else ""
    return f"{parts.scheme}://{user}{host}{port}{parts.path}"


def register_url_secrets(url: str) -> None:
    """Keep the URL's password (and the URL, when it holds one) out of every log line."""
    try:
        password = urlsplit(url).password
    except ValueError:
        password = None
    if password or "@" in url:
        register_secret(url)
    register_secret(password)


class SharedState:
    """The shared state of one process (module docstring).

    storage: ``storage:`` (backend redis); control: the control extension's config (history
    length, loop interval → statistics lookback); sampler / signature: the processors whose
    policy, statistics and templates are shared (signature None: no template sharing);
    mirror: the local policy table. Raises ValueError when the URL is empty or unusable
    (the message never contains it).
    """

    def __init__(self, storage: StorageConfig, control: ControlConfig,
                 sampler: SamplingProcessor, signature: SignatureProcessor | None,
                 mirror: SqlitePolicyStore, clock: Callable[[], float] = time.time) -> None:
        url = storage.redis_url or ""
        if not url:
            raise ValueError("storage.redis_url is empty: storage.backend redis needs it "
                             "(e.g. redis_url: ${env:LIPSERVICE_REDIS_URL})")
        register_url_secrets(url)
        cfg = storage.redis
        self.cfg = cfg
        self.where = safe_url(url)
        try:
            self.client = aioredis.from_url(
                url, decode_responses=True, socket_timeout=cfg.timeout,
                socket_connect_timeout=cfg.timeout, retry=Retry(NoBackoff(), 1),
                client_name="lipservice")
        except (ValueError, TypeError) as err:
            raise ValueError(f"storage.redis_url cannot be used ({type(err).__name__}); "
                             f"read as {self.where}") from None
        self.sampler = sampler
        self.signature = signature
        self.clock = clock
        self.keys = Keys(cfg.namespace)
        self.up = False
        self.lease = Lease(self.client, self.keys.lease, cfg.lease_ttl)
        self.store = RedisPolicyStore(self.client, self.keys, control.history, mirror,
                                      lambda: self.up)
        lookback = control.interval if control.interval > 0 else 300.0
        self.lookback = min(max(lookback, cfg.stats_window), MAX_LOOKBACK)
        self.pusher = StatsPusher(self.keys, cfg.stats_window, self.lookback)
        self._push = self.client.register_script(PUSH)
        self._read = self.client.register_script(READ)
        self.templates = (TemplateSharing(self.client, self.keys.templates, cfg.max_templates)
                          if signature is not None else None)
        self.loop: ControlLoop | None = None
        self.on_up: Callable[[], Awaitable[None]] | None = None
        self._generation = 0  # counts up-transitions (the notice task resubscribes)
        self._up_event = asyncio.Event()
        self._adopting = asyncio.Lock()
        self._next_down_log = float("-inf")
        self._tasks: list[asyncio.Task[None]] = []
        ns = cfg.namespace
        self._m_up = metrics.REDIS_UP.labels(ns)
        self._m_reconnects = metrics.REDIS_RECONNECTS.labels(ns)
        self._m_leader = metrics.CONTROL_IS_LEADER.labels(ns)
        self._m_lag = metrics.POLICY_SYNC_LAG.labels(ns)
        self._m_adopted = metrics.TEMPLATES_ADOPTED.labels(ns)
        self._m_up.set(0)
        self._m_leader.set(0)

    # ------------------------------------------------------------------ state

    def is_leader(self) -> bool:
        """True while Redis answers and this replica holds the lease."""
        return self.up and self.lease.held

    async def connect(self) -> bool:
        """One PING (at start, before policies are resumed). True when Redis answered."""
        try:
            await self.client.ping()
        except (RedisError, OSError) as err:
            self._down(err)
            return False
        self._mark_up()
        return True

    def _mark_up(self) -> bool:
        """Record that Redis answers; True on a transition from down."""
        if self.up:
            return False
        was_down = self._generation > 0 or self._next_down_log > float("-inf")
        self.up = True
        self._generation += 1
        self._up_event.set()
        self._m_up.set(1)
        if was_down:
            self._m_reconnects.inc()
            log.info("redis at %s reachable again", self.where)
        else:
            log.info("shared state in redis at %s (namespace %s)", self.where,
                     self.cfg.namespace)
        return True

    def _down(self, err: BaseException) -> None:
        """Record that Redis did not answer (a warning at most once per minute)."""
        self.up = False
        self._up_event.clear()
        self.lease.drop()
        self._m_up.set(0)
        self._m_leader.set(0)
        now = time.monotonic()
        if now >= self._next_down_log:
            log.warning("redis at %s unreachable (%s: %s); serving with the policies in "
                        "force and local statistics, reconnecting", self.where,
                        type(err).__name__, redact(str(err))[:200])
            self._next_down_log = now + DOWN_LOG_INTERVAL

    async def _became_up(self) -> None:
        """After a reconnect: forget what Redis may have lost, catch up."""
        self.pusher.forget_descriptions()
        if self.templates is not None:
            self.templates.forget()
        await self.check_versions("poll")
        if self.on_up is not None:
            await self.on_up()

    # ------------------------------------------------------------------ policies

    async def check_versions(self, trigger: str) -> int:
        """Put in force every scope whose shared version differs from the one in force
        here. Returns how many were adopted. Raises RedisError."""
        n = 0
        for scope, version in (await self.store.versions()).items():
            n += await self._sync_scope(scope, version, trigger)
        return n

    def _local_version(self, scope: str) -> int | None:
        assert self.loop is not None
        if scope == DEFAULT_SCOPE or scope in self.sampler.policies():
            return self.loop.in_force(scope).version
        return None

    async def _sync_scope(self, scope: str, version: int, trigger: str) -> int:
        if self.loop is None or self._local_version(scope) == version:
            return 0
        async with self._adopting:
            try:
                rec = await self.store.shared_latest(scope)
            except ValueError as err:
                log.error("shared policy for %s cannot be loaded (%s); the policy in force "
                          "stays", scope, type(err).__name__)
                return 0
            if rec is None or rec.version == self._local_version(scope):
                return 0
            self.loop.adopt(rec)
            await self.store.mirror.put(rec)
        lag = max(self.clock() - rec.stored_at, 0.0)
        self._m_lag.set(lag)
        metrics.POLICY_SYNCED.labels(self.cfg.namespace, trigger).inc()
        log.info("shared policy v%d for %s put in force (%s, %.2fs after it was stored)",
                 rec.version, scope, trigger, lag)
        return 1

    # ------------------------------------------------------------------ statistics

    async def read_stats(self, service: str | None) -> list[dict[str, Any]]:
        """Every replica's statistics of the last ``lookback`` seconds (stats.read_rows);
        this sampler's own when Redis does not answer."""
        if self.up:
            sampler = self.sampler

            def rate_for(svc: str, pid: str, family: str, sn: int) -> float:
                return sampler.policy(svc).rate_for(pid, family, sn)

            try:
                return await read_rows(self.client, self._read, self.keys,
                                       self.cfg.stats_window, self.lookback, self.clock(),
                                       rate_for, None if service is None else [service])
            except (RedisError, OSError) as err:
                self._down(err)
        return await asyncio.to_thread(self.sampler.pattern_stats, service)

    async def sync_once(self) -> None:
        """Version check, statistics push, template sharing. Raises RedisError."""
        await self.check_versions("poll")
        sampler = self.sampler
        rows, flags = await asyncio.to_thread(
            lambda: (sampler.pattern_stats(), sampler.anomaly_flags()))
        prepared = await asyncio.to_thread(self.pusher.prepare, rows, flags)
        await self.pusher.push(self.client, self._push, prepared, self.clock())
        if self.templates is not None and self.signature is not None:
            adopted = await self.templates.share(self.signature)
            if adopted:
                self._m_adopted.inc(adopted)
                log.info("%d pattern ids replaced by the shared ids of their templates",
                         adopted)

    # ------------------------------------------------------------------ tasks

    async def start(self, loop: ControlLoop,
                    on_up: Callable[[], Awaitable[None]] | None = None) -> None:
        """Start the background tasks (module docstring). on_up: awaited after each
        reconnect (the extension applies YAML policies that could not be stored)."""
        self.loop = loop
        self.on_up = on_up
        self._tasks = [asyncio.create_task(self._sync_task(), name="lipservice-shared-sync"),
                       asyncio.create_task(self._lease_task(), name="lipservice-lease"),
                       asyncio.create_task(self._notice_task(), name="lipservice-notices")]

    async def stop(self) -> None:
        """Stop the tasks; if Redis answers, push the last counts and release the lease
        (bounded by STOP_TIMEOUT); close the client."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self.up:
            with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                async with asyncio.timeout(STOP_TIMEOUT):
                    if self.lease.held:
                        await self.lease.release()
                        log.info("lease released")
                    rows, flags = self.sampler.pattern_stats(), self.sampler.anomaly_flags()
                    await self.pusher.push(self.client, self._push,
                                           self.pusher.prepare(rows, flags), self.clock())
        self._m_leader.set(0)
        with contextlib.suppress(RedisError, OSError):
            await self.client.aclose()

    async def _sync_task(self) -> None:
        backoff = BACKOFF_MIN
        while True:
            try:
                if not self.up:
                    await self.client.ping()
                    if self._mark_up():
                        await self._became_up()
                await self.sync_once()
                delay = self.cfg.sync_interval
                backoff = BACKOFF_MIN
            except (RedisError, OSError) as err:
                self._down(err)
                delay = backoff * random.uniform(0.8, 1.2)
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Exception:  # noqa: BLE001 - a bug here must not stop the sync for good
                log.exception("shared state sync failed; retrying")
                delay = self.cfg.sync_interval
            await asyncio.sleep(delay)

    async def _lease_task(self) -> None:
        period = self.cfg.lease_ttl / 3
        while True:
            if self.up:
                was = self.lease.held
                try:
                    held = await self.lease.refresh()
                except (RedisError, OSError) as err:
                    self._down(err)
                    held = False
                if held != was:
                    log.info("%s the control loop lease (namespace %s)",
                             "holding" if held else "lost", self.cfg.namespace)
                self._m_leader.set(1 if held else 0)
            await asyncio.sleep(period)

    async def _notice_task(self) -> None:
        while True:
            await self._up_event.wait()
            generation = self._generation
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self.keys.changed)
                await self.check_versions("poll")  # what changed before we listened
                while self.up and generation == self._generation:
                    msg = await pubsub.get_message(ignore_subscribe_messages=True,
                                                   timeout=1.0)
                    if msg is None:
                        continue
                    version, _, scope = str(msg["data"]).partition(" ")
                    await self._sync_scope(scope, int(version), "notice")
            except (RedisError, OSError) as err:
                self._down(err)
            except ValueError:
                log.warning("malformed policy notice ignored")
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()
            if not self.up:
                await asyncio.sleep(BACKOFF_MIN)
