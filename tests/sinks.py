"""OTLP sinks for tests: real HTTP (aiohttp) and gRPC (grpc.aio) servers on 127.0.0.1 that
record every request and can be told to fail, delay or answer partial success.

Each sink runs its own event loop in a background thread, so a test (sync or async) can
start it, point a sidecar at it, and read what arrived.
"""

from __future__ import annotations

import asyncio
import gzip
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
from aiohttp import web
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2_grpc
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Reply:
    """What the sink answers to one request: an HTTP status (or gRPC code), optional
    headers, delay in seconds before answering."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: bytes | None = None
    grpc_code: grpc.StatusCode | None = None


class _Base:
    def __init__(self, port: int | None = None) -> None:
        self.requests: list[ExportLogsServiceRequest] = []
        self.headers: list[dict[str, str]] = []
        self.replies: list[Reply] = []  # consumed one per request; then `default`
        self.default = Reply()
        # chaos: after `replies`, answer `failure` to this fraction of requests (seeded)
        self.fail_rate = 0.0
        self.failure = Reply(status=503, grpc_code=grpc.StatusCode.UNAVAILABLE)
        self._rng = random.Random(7)
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._lock = threading.Lock()

    def next_reply(self) -> Reply:
        with self._lock:
            if self.replies:
                return self.replies.pop(0)
            if self.fail_rate and self._rng.random() < self.fail_rate:
                return self.failure
            return self.default

    def record(self, req: ExportLogsServiceRequest, headers: dict[str, str]) -> None:
        with self._lock:
            self.requests.append(req)
            self.headers.append(headers)

    def records(self) -> list:
        with self._lock:
            return [r for q in self.requests for rl in q.resource_logs
                    for sl in rl.scope_logs for r in sl.log_records]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return predicate()

    def _run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)


class HttpSink(_Base):
    """OTLP/HTTP sink: ``POST /v1/logs`` (protobuf, gzip or not)."""

    def __enter__(self) -> HttpSink:
        self._thread.start()
        self._run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._run(self._runner.cleanup())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _start(self) -> None:
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_post("/v1/logs", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _handle(self, request: web.Request) -> web.Response:
        reply = self.next_reply()
        data = await request.read()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.status != 200:
            return web.Response(status=reply.status, headers=reply.headers,
                                body=reply.body or b"sink says no")
        if data[:2] == b"\x1f\x8b":  # aiohttp may already have decompressed it
            data = gzip.decompress(data)
        self.record(ExportLogsServiceRequest.FromString(data), dict(request.headers))
        body = reply.body if reply.body is not None else \
            ExportLogsServiceResponse().SerializeToString()
        return web.Response(status=200, body=body, headers={
            "Content-Type": "application/x-protobuf", **reply.headers})


class GrpcSink(_Base, logs_service_pb2_grpc.LogsServiceServicer):
    """OTLP/gRPC sink (insecure)."""

    def __enter__(self) -> GrpcSink:
        self._thread.start()
        self._run(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self._run(self._server.stop(0))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def _start(self) -> None:
        self._server = grpc.aio.server()
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(self, self._server)
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        await self._server.start()

    async def Export(self, request, context):  # noqa: N802 - gRPC method name
        reply = self.next_reply()
        if reply.delay:
            await asyncio.sleep(reply.delay)
        if reply.grpc_code is not None and reply.grpc_code != grpc.StatusCode.OK:
            await context.abort(reply.grpc_code, "sink says no")
        self.record(request, {k: v for k, v in context.invocation_metadata()})
        return ExportLogsServiceResponse()
