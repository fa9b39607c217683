"""The running sidecar: builds the pipeline, receivers and telemetry server from a Config,
serves until SIGTERM/SIGINT, then shuts down in order:

1. readiness goes to 503, receivers stop accepting (requests in flight finish, so every
   record answered with success is already in the exporter queues);
2. the exporter queues drain within ``service.shutdown_timeout``; what is left then stays
   in the persistent queues (``sending_queue.storage``) for the next start, or is counted
   as dropped for in-memory queues;
3. the control loop stops; processor state is saved to the state store
   (``storage.directory``);
4. the telemetry server stops. Exit code 0.

SIGHUP re-reads the config file and applies changed sampling policies (the ``control``
extension; collector/control/extension.py).

Startup failures (port in use, unwritable path, unusable state directory) raise
:class:`StartupError` with one line naming the cause; the CLI prints it and exits non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable
from typing import Any

from collector.admin import pattern_routes
from collector.config import Config, OtlpReceiverConfig, load_config
from collector.control.extension import build_control
from collector.persistent_queue import StorageError
from collector.pipeline import Pipeline
from collector.state import StateError, StateStore
from collector.telemetry import TelemetryServer
from processors.base import NATIVE_PROBLEM, NATIVE_SCAN

log = logging.getLogger("lipservice.service")

SNAPSHOT_INTERVAL = 60.0  # seconds between saves of processor state


GC_THRESHOLDS = (20_000, 20, 50)
"""Cyclic GC thresholds while serving (Python's defaults: 700, 10, 10)."""


def settle_gc() -> None:
    """Tune the cyclic garbage collector once everything is started (DESIGN.md §Hot path).

    What exists now (modules, config, restored processor state) lives as long as the
    process, so it is frozen out of collections: a full collection scanned its ~60k objects
    in about 100 ms, a pause every few seconds under load (bench/e2e.py). The higher
    young-generation threshold lets a batch's short-lived objects (protobuf wrappers, side
    lists) die by reference counting before a collection promotes them, so full collections
    stay rare; cycles are still collected.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


class StartupError(Exception):
    """The sidecar cannot start; the message is one line naming the cause."""


def build_receivers(config: Config, pipeline: Pipeline) -> list[Any]:
    """Receiver instances for the pipeline's receivers (one per enabled OTLP protocol)."""
    from collector.receivers.otlp_grpc import OtlpGrpcReceiver
    from collector.receivers.otlp_http import OtlpHttpReceiver

    receivers: list[Any] = []
    for key in config.service.pipelines.logs.receivers:
        cfg = config.receivers[key]
        assert isinstance(cfg, OtlpReceiverConfig)
        if cfg.protocols.grpc is not None:
            receivers.append(OtlpGrpcReceiver(key, cfg.protocols.grpc, pipeline))
        if cfg.protocols.http is not None:
            receivers.append(OtlpHttpReceiver(key, cfg.protocols.http, pipeline))
    return receivers


def endpoints(config: Config) -> list[str]:
    """Human-readable receiver endpoints, e.g. ``grpc 127.0.0.1:4317``."""
    out = []
    for key in config.service.pipelines.logs.receivers:
        cfg = config.receivers[key]
        assert isinstance(cfg, OtlpReceiverConfig)
        if cfg.protocols.grpc is not None:
            out.append(f"grpc {cfg.protocols.grpc.endpoint}")
        if cfg.protocols.http is not None:
            out.append(f"http {cfg.protocols.http.endpoint}")
    return out


def restore_processors(store: StateStore, processors: list[tuple[str, Any]]) -> None:
    for name, proc in processors:
        restore = getattr(proc, "restore", None)
        state = store.get(f"processor/{name}") if restore is not None else None
        if state is not None:
            try:
                restore(state)
                log.info("restored state of processor %s", name)
            except Exception:  # noqa: BLE001 - a bad snapshot must not stop the sidecar
                log.exception("could not restore state of processor %s; starting fresh", name)


def save_processors(store: StateStore, processors: list[tuple[str, Any]]) -> None:
    for name, proc in processors:
        snapshot = getattr(proc, "snapshot", None)
        if snapshot is not None:
            try:
                store.put(f"processor/{name}", snapshot())
            except Exception:  # noqa: BLE001
                log.exception("could not save state of processor %s", name)


class Service:
    """One sidecar process's components. ``await run()`` serves until ``stop()``.

    reload: returns the config re-read from its source (for SIGHUP / file watch); None =
    re-read ``config.source`` as is.
    """

    def __init__(self, config: Config, reload: Callable[[], Config] | None = None) -> None:
        self.config = config
        self.pipeline = Pipeline.from_config(config)
        self.telemetry = TelemetryServer(config.service.telemetry.metrics.address,
                                         self.pipeline.processors)
        self.telemetry.add_routes(pattern_routes(self.pipeline.processors))
        self.receivers = build_receivers(config, self.pipeline)
        if reload is None and config.source:
            reload = lambda: load_config(config.source)  # noqa: E731
        self.control = build_control(config, self.pipeline.processors, self.telemetry.host,
                                     reload)
        if self.control is not None:
            self.telemetry.add_routes(self.control.routes())
        self.store: StateStore | None = None
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    async def start(self) -> None:
        """Start everything; raises StartupError (after undoing what had started)."""
        if not NATIVE_SCAN:
            log.warning("the C reader of OTLP bytes (processors/_logscan.c) is not in use: "
                        "%s. Records are read through upb, about a quarter more CPU per "
                        "record (docs/performance.md)", NATIVE_PROBLEM)
        try:
            self.store = StateStore(self.config.storage.directory)
        except StateError as err:
            raise StartupError(str(err)) from None
        restore_processors(self.store, self.pipeline.processors)
        started: list[Any] = []
        try:
            if self.control is not None:
                await self.control.start(self.store)
                started.append(self.control)
            await self.pipeline.start()
            await self.telemetry.start()
            started.append(self.telemetry)
            for r in self.receivers:
                await r.start()
                started.append(r)
        except (OSError, ValueError, StorageError) as err:
            for part in reversed(started):
                await part.stop()
            await self.pipeline.shutdown(0)
            raise StartupError(str(err)) from None
        settle_gc()
        self.telemetry.ready = True

    async def run(self) -> int:
        """Start, serve until stop() or a signal, shut down. Returns the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self.stop)
        if self.control is not None:
            with contextlib.suppress(NotImplementedError, RuntimeError, AttributeError):
                loop.add_signal_handler(signal.SIGHUP, self.control.request_reload)
        await self.start()
        saver = asyncio.create_task(self._save_periodically())
        log.info("ready: receiving OTLP on %s; telemetry on http://%s:%d/metrics",
                 ", ".join(endpoints(self.config)), self.telemetry.host, self.telemetry.port)
        await self._stop.wait()
        log.info("shutting down (timeout %.1fs)", self.config.service.shutdown_timeout)
        saver.cancel()
        return await self.shutdown()

    async def shutdown(self) -> int:
        self.telemetry.ready = False
        for r in self.receivers:
            await r.stop()
        drained = await self.pipeline.shutdown(self.config.service.shutdown_timeout)
        if self.control is not None:
            await self.control.stop()
        if self.store is not None:
            save_processors(self.store, self.pipeline.processors)
            self.store.close()
        await self.telemetry.stop()
        log.info("stopped%s", "" if drained else " (some records were not sent in time)")
        return 0

    async def _save_periodically(self) -> None:
        while True:
            await asyncio.sleep(SNAPSHOT_INTERVAL)
            if self.store is not None:
                save_processors(self.store, self.pipeline.processors)
