"""Self-telemetry HTTP server on ``service.telemetry.metrics.address``.

Routes:
    GET /metrics   Prometheus text format (collector/metrics.py + every processor's
                   ``collect_metrics()``, read at scrape time)
    GET /healthz   liveness: 200 while the process runs
    GET /readyz    readiness: 200 once every receiver listens, 503 before and while
                   shutting down
Other parts add their routes (admin API) with :meth:`TelemetryServer.add_routes` before
:meth:`TelemetryServer.start`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from collector.config import split_host_port
from collector.metrics import REGISTRY

log = logging.getLogger("lipservice.telemetry")


class _ProcessorMetrics(Collector):
    def __init__(self, processors: list[tuple[str, Any]]) -> None:
        self.processors = processors

    def collect(self) -> Iterable[Any]:
        for _name, proc in self.processors:
            collect = getattr(proc, "collect_metrics", None)
            if collect is not None:
                try:
                    yield from collect()
                except Exception:  # noqa: BLE001 - a scrape must not fail on one processor
                    log.exception("collect_metrics failed for a processor")


class TelemetryServer:
    """aiohttp server for metrics, health and admin routes.

    address: ``host:port``; processors: (name, processor) pairs whose metrics are exported.
    """

    def __init__(self, address: str, processors: list[tuple[str, Any]]) -> None:
        self.host, self.port = split_host_port(address)
        self.app = web.Application()
        self.app.router.add_get("/metrics", self._metrics)
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self.ready = False
        self._collector = _ProcessorMetrics(processors)
        self._runner: web.AppRunner | None = None

    def add_routes(self, routes: Iterable[web.AbstractRouteDef]) -> None:
        self.app.router.add_routes(list(routes))

    async def start(self) -> None:
        """Bind and serve. Raises OSError when the address is unusable."""
        REGISTRY.register(self._collector)
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True)
        try:
            await site.start()
        except OSError as err:
            await self.stop()
            raise OSError(err.errno, f"telemetry address {self.host}:{self.port}: "
                                     f"{err.strerror or err}") from None

    async def stop(self) -> None:
        with contextlib.suppress(KeyError):
            REGISTRY.unregister(self._collector)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        if self.ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready"}, status=503)
