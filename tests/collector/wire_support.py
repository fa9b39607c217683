"""Shared parts for the receiver and exporter tests: OTLP requests with every field kind,
a recording exporter, a real Pipeline around it, and sink servers (OTLP/HTTP and
OTLP/gRPC) on loopback that record what they receive and answer as a test scripts them."""

from __future__ import annotations

import asyncio
import base64
import gzip
import zlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from google.protobuf import json_format
from grpc import aio
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from prometheus_client import CollectorRegistry

from collector import metrics
from collector.config import RetryConfig, SendingQueueConfig
from collector.pipeline import Pipeline
from collector.queue import ExportQueue
from processors.base import count_records

EXPORT_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
TRACE_ID = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN_ID = bytes.fromhex("eee19b7ec3c1b174")


def make_request(n: int = 3, service: str = "checkout", body: str = "user {i} logged in",
                 ) -> ExportLogsServiceRequest:
    """A request of ``n`` records using every field kind OTLP logs have (string, int,
    double, bool, bytes, array and map values; ids; flags; event name; dropped counts)."""
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add(schema_url="https://opentelemetry.io/schemas/1.24.0")
    rl.resource.attributes.add(key="service.name").value.string_value = service
    rl.resource.attributes.add(key="host.cpus").value.int_value = 8
    rl.resource.dropped_attributes_count = 1
    sl = rl.scope_logs.add(schema_url="https://example.test/scope")
    sl.scope.name = "app.module"
    sl.scope.version = "1.2.3"
    sl.scope.attributes.add(key="scope.attr").value.bool_value = True
    for i in range(n):
        rec = sl.log_records.add(
            time_unix_nano=1_700_000_000_000_000_000 + i,
            observed_time_unix_nano=1_700_000_000_000_000_500 + i,
            severity_number=9 if i % 3 else 17, severity_text="INFO" if i % 3 else "ERROR",
            trace_id=TRACE_ID, span_id=SPAN_ID, flags=1, dropped_attributes_count=2,
            event_name="user.login")
        rec.body.string_value = body.format(i=i)
        rec.attributes.add(key="http.status").value.int_value = -200 - i
        rec.attributes.add(key="ratio").value.double_value = 0.25 * i
        rec.attributes.add(key="ok").value.bool_value = i % 2 == 0
        rec.attributes.add(key="raw").value.bytes_value = bytes([0, 1, 254, i % 256])
        arr = rec.attributes.add(key="tags").value.array_value
        arr.values.add().string_value = "a"
        arr.values.add().int_value = 2**62
        kv = rec.attributes.add(key="ctx").value.kvlist_value
        kv.values.add(key="nested").value.array_value.values.add().double_value = -1.5
        kv.values.add(key="empty").value.SetInParent()
        rec.attributes.add(key="unicode").value.string_value = "héllo \u2603 \"q\" \n\t\\"
    return req


def reference_json(message) -> dict:
    """json_format's proto3 JSON with ids in hex: what OTLP/JSON must look like."""
    doc = json_format.MessageToDict(message, use_integers_for_enums=True)
    for rl in doc.get("resourceLogs", []):
        for sl in rl.get("scopeLogs", []):
            for rec in sl.get("logRecords", []):
                for key in ("traceId", "spanId"):
                    if key in rec:
                        rec[key] = base64.b64decode(rec[key]).hex()
    return doc


def deep_request_bytes(levels: int) -> bytes:
    """Protobuf bytes of a request whose body nests ``levels`` arrays deep, built on the
    wire directly (the Python protobuf runtime itself refuses to build very deep messages).
    """
    def field(no: int, payload: bytes) -> bytes:
        return _varint(no << 3 | 2) + _varint(len(payload)) + payload

    value = field(1, b"leaf")  # AnyValue.string_value
    for _ in range(levels):
        value = field(5, field(1, value))  # AnyValue.array_value{values: value}
    record = field(5, value)  # LogRecord.body
    return field(1, field(2, field(2, record)))  # request.resource_logs.scope_logs.records


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def gzip_bomb(expanded: int) -> bytes:
    """gzip of ``expanded`` zero bytes (about 1000:1), built without holding them."""
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b"\0" * (1024 * 1024)
    parts = []
    for _ in range(expanded // len(chunk)):
        parts.append(z.compress(chunk))
    parts.append(z.compress(b"\0" * (expanded % len(chunk))))
    parts.append(z.flush())
    return b"".join(parts)


class RecordingExporter:
    """An Exporter that keeps what it is given. While ``gate`` is cleared, exports wait."""

    def __init__(self, name: str = "recording") -> None:
        self.name = name
        self.requests: list[ExportLogsServiceRequest] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def start(self) -> None:
        return None

    async def export(self, request: ExportLogsServiceRequest) -> int:
        await self.gate.wait()
        copy = ExportLogsServiceRequest()
        copy.CopyFrom(request)
        self.requests.append(copy)
        return 0

    async def shutdown(self) -> None:
        self.gate.set()

    @property
    def record_count(self) -> int:
        return sum(count_records(r) for r in self.requests)


def make_pipeline(*exporters: Any, queue_size: int = 10_000) -> Pipeline:
    """A real Pipeline (no processors) with one sending queue per exporter, no retries."""
    queues = [ExportQueue(e, SendingQueueConfig(queue_size=queue_size, num_consumers=1),
                          RetryConfig(enabled=False)) for e in exporters]
    return Pipeline([], queues)


async def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    """Poll ``predicate()`` every 10 ms until true; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


def metric(name: str, **labels: str) -> float:
    """Current value of a sample in collector.metrics.REGISTRY (0 when absent)."""
    registry: CollectorRegistry = metrics.REGISTRY
    return registry.get_sample_value(name, labels) or 0.0


# --------------------------------------------------------------------------- sinks


@dataclass
class HttpAnswer:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/x-protobuf"
    delay: float = 0.0


class HttpSink:
    """An OTLP/HTTP backend on 127.0.0.1: records each request (headers, decoded OTLP) and
    answers with the next scripted HttpAnswer (default: 200 with an empty protobuf
    ExportLogsServiceResponse). ``arrivals`` holds the loop time of every request received,
    answered with success or not."""

    def __init__(self) -> None:
        self.requests: list[ExportLogsServiceRequest] = []
        self.arrivals: list[float] = []
        self.headers: list[dict[str, str]] = []
        self.raw_bodies: list[bytes] = []
        self.answers: deque[HttpAnswer] = deque()
        self.fallback: HttpAnswer | None = None  # answer when `answers` is empty (None: 200)
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self, port: int = 0) -> HttpSink:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_post("/v1/logs", self._handle)
        self._runner = web.AppRunner(app, access_log=None, auto_decompress=False,
                                     shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _handle(self, request: web.Request) -> web.Response:
        self.arrivals.append(asyncio.get_running_loop().time())
        raw = await request.read()
        self.raw_bodies.append(raw)
        self.headers.append(dict(request.headers))
        body = gzip.decompress(raw) if request.headers.get("Content-Encoding") == "gzip" else raw
        answer = self.answers.popleft() if self.answers else self.fallback or HttpAnswer(
            body=ExportLogsServiceResponse().SerializeToString())
        if answer.delay:
            await asyncio.sleep(answer.delay)
        if 200 <= answer.status < 300:
            if request.content_type == "application/json":
                from collector.receivers import codec
                self.requests.append(codec.decode_json(body))
            else:
                self.requests.append(ExportLogsServiceRequest.FromString(body))
        return web.Response(status=answer.status, body=answer.body, headers=answer.headers,
                            content_type=answer.content_type)

    @property
    def record_count(self) -> int:
        return sum(count_records(r) for r in self.requests)


@dataclass
class GrpcAnswer:
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    trailing: tuple[tuple[str, bytes | str], ...] = ()
    response: ExportLogsServiceResponse | None = None
    delay: float = 0.0


class GrpcSink:
    """An OTLP/gRPC backend on 127.0.0.1 recording requests and their metadata, answering
    with the next scripted GrpcAnswer (default OK); ``arrivals`` as for HttpSink."""

    def __init__(self) -> None:
        self.requests: list[ExportLogsServiceRequest] = []
        self.arrivals: list[float] = []
        self.metadata: list[dict[str, str]] = []
        self.answers: deque[GrpcAnswer] = deque()
        self.fallback: GrpcAnswer | None = None  # answer when `answers` is empty (None: OK)
        self.endpoint = ""
        self._server: aio.Server | None = None

    async def start(self, port: int = 0) -> GrpcSink:
        server = aio.server(options=[("grpc.so_reuseport", 0)])
        handler = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.logs.v1.LogsService",
            {"Export": grpc.unary_unary_rpc_method_handler(
                self._export, request_deserializer=ExportLogsServiceRequest.FromString,
                response_serializer=ExportLogsServiceResponse.SerializeToString)})
        server.add_generic_rpc_handlers((handler,))
        port = server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        self._server = server
        self.endpoint = f"127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)

    async def _export(self, request: ExportLogsServiceRequest,
                      context: aio.ServicerContext) -> ExportLogsServiceResponse:
        self.arrivals.append(asyncio.get_running_loop().time())
        self.metadata.append({k: v for k, v in context.invocation_metadata() or ()
                              if isinstance(v, str)})
        answer = self.answers.popleft() if self.answers else self.fallback or GrpcAnswer()
        if answer.delay:
            await asyncio.sleep(answer.delay)
        if answer.code != grpc.StatusCode.OK:
            await context.abort(answer.code, answer.details, trailing_metadata=answer.trailing)
        self.requests.append(request)
        return answer.response or ExportLogsServiceResponse()

    @property
    def record_count(self) -> int:
        return sum(count_records(r) for r in self.requests)
