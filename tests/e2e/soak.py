"""Soak driver shared by tests/e2e/test_soak.py (50k records) and bench/soak.py (≥ 1M).

A `lipservice run` subprocess receives OTLP/HTTP from client tasks that behave like an SDK
(retry on 429/503 after Retry-After) and exports with ``otlphttp`` to a counting sink that
fails a fraction of requests at random (503). Every record carries a unique integer ``uid``
attribute; the sink counts each uid it accepted, so the run ends with: acknowledged,
delivered, lost (acknowledged but never delivered), duplicates.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from tests.e2e.conftest import Sidecar
from tests.sinks import free_port


class CountingSink:
    """OTLP/HTTP sink in a background thread that keeps only a count per uid, answering 503
    to ``fail_rate`` of the requests (seeded) and 200 to the rest."""

    def __init__(self, capacity: int, fail_rate: float, seed: int = 1) -> None:
        self.counts = bytearray(capacity)
        self.fail_rate = fail_rate
        self.rng = random.Random(seed)
        self.requests = 0
        self.failed = 0
        self.port = free_port()
        self._ok = ExportLogsServiceResponse().SerializeToString()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> CountingSink:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _start(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/logs", self._handle)
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _handle(self, request: web.Request) -> web.Response:
        data = await request.read()
        self.requests += 1
        if self.rng.random() < self.fail_rate:
            self.failed += 1
            return web.Response(status=503, text="injected failure")
        if request.headers.get("Content-Encoding") == "gzip":
            data = gzip.decompress(data)
        counts = self.counts
        for rl in ExportLogsServiceRequest.FromString(data).resource_logs:
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    uid = rec.attributes[0].value.int_value
                    if counts[uid] < 255:
                        counts[uid] += 1
        return web.Response(body=self._ok, content_type="application/x-protobuf")


def soak_request(first: int, n: int) -> bytes:
    """A serialized request of records uid first … first+n-1 (uid is the first attribute)."""
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = "soak"
    sl = rl.scope_logs.add()
    sl.scope.name = "soak"
    for uid in range(first, first + n):
        rec = sl.log_records.add(severity_number=9, severity_text="INFO",
                                 time_unix_nano=1_700_000_000_000_000_000 + uid)
        rec.attributes.add(key="uid").value.int_value = uid
        rec.attributes.add(key="http.route").value.string_value = "/api/orders/{id}"
        rec.body.string_value = f"order {uid} shipped to warehouse {uid % 17} in {uid % 97} ms"
    return req.SerializeToString()


@dataclass
class SoakResult:
    records: int
    acked: int = 0
    delivered: int = 0
    lost: int = 0
    duplicates: int = 0
    client_refusals: dict[str, int] = field(default_factory=dict)
    sink_requests: int = 0
    sink_failures: int = 0
    seconds: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    sidecar_exit: int | None = None

    @property
    def records_per_second(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


async def _client(url: str, work: list[int], batch: int, acked: bytearray,
                  refusals: dict[str, int], deadline: float) -> None:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        while work and time.monotonic() < deadline:
            first = work.pop()
            body = soak_request(first, batch)
            while time.monotonic() < deadline:
                try:
                    async with session.post(url, data=body, headers={
                            "Content-Type": "application/x-protobuf"}) as resp:
                        await resp.read()
                        status, after = resp.status, resp.headers.get("Retry-After")
                except (aiohttp.ClientError, TimeoutError):
                    status, after = 0, None
                if status == 200:
                    acked[first:first + batch] = b"\x01" * batch
                    break
                key = str(status or "connection error")
                refusals[key] = refusals.get(key, 0) + 1
                if status not in (0, 429, 503):
                    break  # not retryable: these records stay unacknowledged
                await asyncio.sleep(float(after) if after and after.isdigit() else 0.5)


_METRIC = re.compile(r"^(otelcol_\w+|lipservice_exporter_\w+)\{[^}]*\} ([0-9.e+]+)$", re.M)


def scrape(sidecar: Sidecar) -> dict[str, float]:
    """Sum of every otelcol_* / lipservice_exporter_* sample by metric name."""
    out: dict[str, float] = {}
    for name, value in _METRIC.findall(sidecar.metrics()):
        if name.endswith("_created"):
            continue
        out[name] = out.get(name, 0.0) + float(value)
    return out


def run_soak(tmp: Path, records: int, fail_rate: float = 0.2, batch: int = 500,
             clients: int = 4, persistent: bool = True, timeout: float = 600.0,
             queue_size: int = 100_000) -> SoakResult:
    """Send ``records`` records through a sidecar subprocess to a sink failing
    ``fail_rate`` of requests; returns the accounting. ``queue_size`` (records) small
    enough makes the sidecar refuse with 429 at times (the clients retry). ``timeout``
    bounds the whole run."""
    records -= records % batch
    result = SoakResult(records)
    with CountingSink(records, fail_rate) as sink:
        # small batches: more export requests, so more injected failures to retry through
        queue: dict[str, Any] = {"num_consumers": 4, "queue_size": queue_size,
                                 "batch": {"min_size": 1000, "max_size": 2000,
                                           "flush_timeout": "100ms"}}
        if persistent:
            queue["storage"] = True
        config = {
            "exporters": {"otlphttp/sink": {
                "endpoint": sink.endpoint, "compression": "none", "timeout": "10s",
                "retry_on_failure": {"initial_interval": "50ms", "max_interval": "1s",
                                     "max_elapsed_time": 0},
                "sending_queue": queue}},
            "service": {"shutdown_timeout": "30s",
                        "pipelines": {"logs": {"receivers": ["otlp"],
                                               "exporters": ["otlphttp/sink"]}}},
        }
        sidecar = Sidecar(tmp, config).start()
        started = time.monotonic()
        deadline = started + timeout
        acked = bytearray(records)
        work = list(range(records - batch, -1, -batch))
        try:
            async def drive() -> None:
                await asyncio.gather(*(
                    _client(f"{sidecar.http_endpoint}/v1/logs", work, batch, acked,
                            result.client_refusals, deadline) for _ in range(clients)))
            asyncio.run(drive())
            result.acked = sum(acked)
            while time.monotonic() < deadline:  # wait for the sink to have every ack
                if all(c or not a for a, c in zip(acked, sink.counts, strict=True)):
                    break
                time.sleep(0.5)
            result.seconds = time.monotonic() - started
            result.metrics = scrape(sidecar)
        finally:
            result.sidecar_exit = sidecar.stop()
        counts = bytes(sink.counts)
        result.delivered = sum(1 for c in counts if c)
        result.duplicates = sum(c - 1 for c in counts if c > 1)
        result.lost = sum(1 for a, c in zip(acked, counts, strict=True) if a and not c)
        result.sink_requests, result.sink_failures = sink.requests, sink.failed
    return result
