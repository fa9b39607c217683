"""The ``control`` extension: the control loop, the policy API and YAML hot reload, built
from ``extensions: control:`` and started by collector/service.py.

YAML hot reload: on SIGHUP, and when the config file's modification time or size changes
(polled every ``watch_interval``), the config is re-read (same file, same ``--set``
overrides) and validated; the sampling processor's ``policy:`` / ``policies:`` blocks that
changed become new policy versions (source ``yaml``, see ``ControlLoop.apply_yaml``). A file
that fails to load is logged and ignored; the policies in force stay. Other settings need a
restart.

With ``storage.backend: redis`` the policies live in the shared store (collector/shared/):
a YAML edit applied on one replica is put in force on all; YAML policies that cannot be
stored while Redis is unreachable are applied when it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from collector import metrics
from collector.config import Config, ConfigError, StorageConfig
from collector.control.api import PolicyApi
from collector.control.config import ControlConfig
from collector.control.llm import LlmClient
from collector.control.loop import ControlLoop
from collector.control.store import PolicyStore, SqlitePolicyStore, StoreUnavailable
from collector.logs import register_secret
from collector.state import StateStore
from processors.sampling import Config as SamplingConfig
from processors.sampling import SamplingProcessor
from processors.signature import SignatureProcessor

if TYPE_CHECKING:
    from collector.shared.replica import SharedState

log = logging.getLogger("lipservice.control")


def resolve_api_key(cfg: ControlConfig) -> str:
    """The LLM API key: ``llm.api_key`` when set (``""`` = none), else env OPENAI_API_KEY."""
    key = cfg.llm.api_key if cfg.llm.api_key is not None else os.environ.get(
        "OPENAI_API_KEY", "")
    key = key.strip()  # a secret file's final newline would fail every call
    register_secret(key)
    return key


def build_llm(cfg: ControlConfig) -> LlmClient | None:
    """The LLM client, or None when there is nothing to call (disabled, or neither a key
    nor a ``base_url`` of a server that needs none)."""
    key = resolve_api_key(cfg)
    if not cfg.llm.enabled or not (key or cfg.llm.base_url):
        return None
    return LlmClient(cfg.llm, key)


class ControlExtension:
    """Loop + API + reload for one sampling processor.

    sampler_key: the sampling processor's key in the config; telemetry_host: where the API
    is served; reload: returns a freshly loaded Config (raises ConfigError), None = no
    reload; config_path: file watched for changes; storage: ``storage:`` (``backend:
    redis`` shares policies, statistics, templates and the loop's lease across replicas,
    collector/shared/); signature: the signature processor whose ids are shared.
    """

    def __init__(self, cfg: ControlConfig, sampler: SamplingProcessor, sampler_key: str,
                 telemetry_host: str, reload: Callable[[], Config] | None = None,
                 config_path: str | None = None, storage: StorageConfig | None = None,
                 signature: SignatureProcessor | None = None) -> None:
        self.cfg = cfg
        self.sampler = sampler
        self.sampler_key = sampler_key
        self.reload = reload
        self.config_path = Path(config_path) if config_path else None
        self.storage = storage or StorageConfig()
        self.signature = signature
        self.api = PolicyApi(telemetry_host, cfg.api.token_env)
        self.loop: ControlLoop | None = None
        self.shared: SharedState | None = None
        self._pending_yaml: SamplingConfig | None = None  # not stored: Redis was down
        self._reload_requested = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    def routes(self) -> list[web.RouteDef]:
        return self.api.routes() if self.cfg.api.enabled else []

    async def start(self, state: StateStore) -> None:
        """Resume stored policies, apply the YAML ones that changed, start the schedule
        and the config watcher (and, with ``storage.backend: redis``, the shared state's
        tasks). Raises ValueError when the Redis URL is empty or unusable."""
        register_secret(os.environ.get(self.cfg.api.token_env))
        local = SqlitePolicyStore(state.db, self.cfg.history)
        store: PolicyStore = local
        if self.storage.backend == "redis":
            from collector.shared.replica import SharedState

            self.shared = SharedState(self.storage, self.cfg, self.sampler, self.signature,
                                      local)
            await self.shared.connect()
            store = self.shared.store
        shared = self.shared
        self.loop = ControlLoop(self.cfg, self.sampler, store, build_llm(self.cfg),
                                is_leader=shared.is_leader if shared else None,
                                stats=shared.read_stats if shared else None)
        await self.loop.resume()
        await self._apply_yaml(self.sampler.config, at_start=True)
        self.api.loop = self.loop
        await self.loop.start()
        if shared is not None:
            await shared.start(self.loop, on_up=self._apply_pending_yaml)
        if self.reload is not None:
            self._watcher = asyncio.create_task(self._watch(), name="lipservice-config-watch")
        mode = "LLM " + self.cfg.llm.model if self.loop.llm else "heuristic (no LLM key)"
        where = " on the replica holding the lease" if shared else ""
        log.info("control loop: every %gs%s, %s", self.cfg.interval, where, mode)

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        if self.loop is not None:
            await self.loop.stop()
        if self.shared is not None:
            await self.shared.stop()

    async def _apply_yaml(self, sampling: SamplingConfig, at_start: bool = False
                          ) -> list[str]:
        """apply_yaml, kept for later when the shared store is unreachable."""
        assert self.loop is not None
        try:
            applied = await self.loop.apply_yaml(sampling, at_start)
        except StoreUnavailable as err:
            self._pending_yaml = sampling
            log.warning("YAML policies not applied yet: %s; applied when Redis answers", err)
            return []
        self._pending_yaml = None
        return applied

    async def _apply_pending_yaml(self) -> None:
        if self._pending_yaml is not None:
            applied = await self._apply_yaml(self._pending_yaml, at_start=True)
            if applied:
                log.info("YAML policy applied after reconnect for %s", ", ".join(applied))

    def request_reload(self) -> None:
        """Ask for a config reload (the SIGHUP handler)."""
        self._reload_requested.set()

    def _stamp(self) -> tuple[float, int] | None:
        try:
            st = self.config_path.stat() if self.config_path else None
        except OSError:
            return None
        return (st.st_mtime, st.st_size) if st else None

    async def _watch(self) -> None:
        stamp = self._stamp()
        poll = self.cfg.watch_interval if self.cfg.watch_interval > 0 else None
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._reload_requested.wait(), poll)
            requested = self._reload_requested.is_set()
            self._reload_requested.clear()
            now = self._stamp()
            if requested or now != stamp:
                stamp = now
                await self.reload_now()

    async def reload_now(self) -> list[str]:
        """Re-read the config and apply changed YAML policies. Returns the scopes applied
        ([] when nothing changed or the file is bad)."""
        assert self.reload is not None and self.loop is not None
        try:
            config = self.reload()
        except (ConfigError, OSError, ValueError) as err:
            metrics.POLICY_REJECTED.labels("yaml", "invalid_config").inc()
            log.error("config reload failed, policies in force stay: %s", err)
            return []
        sampling: Any = config.processors.get(self.sampler_key)
        if not isinstance(sampling, SamplingConfig):
            metrics.POLICY_REJECTED.labels("yaml", "invalid_config").inc()
            log.error("config reload: processor %r is no longer a sampling processor; "
                      "policies in force stay", self.sampler_key)
            return []
        applied = await self._apply_yaml(sampling)
        log.info("config reloaded: %s", f"new YAML policy for {', '.join(applied)}"
                 if applied else "no policy change")
        return applied


def build_control(config: Config, processors: list[tuple[str, Any]], telemetry_host: str,
                  reload: Callable[[], Config] | None = None) -> ControlExtension | None:
    """The control extension when ``service.extensions`` enables one, else None."""
    for name in config.service.extensions:
        cfg = config.extensions[name]
        if isinstance(cfg, ControlConfig):
            key = cfg.sampler_key([n for n, _ in processors])
            sampler = dict(processors).get(key) if key else None
            if not isinstance(sampler, SamplingProcessor):
                raise ValueError(f"extensions.{name}: no sampling processor {key!r} in the "
                                 "logs pipeline")
            signature = next((p for _, p in processors if isinstance(p, SignatureProcessor)),
                             None)
            return ControlExtension(cfg, sampler, key or "", telemetry_host, reload,
                                    config.source or None, config.storage, signature)
    return None
