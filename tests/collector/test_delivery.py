"""Delivery under faults, in one process: real receivers (OTLP/HTTP and OTLP/gRPC), a real
Pipeline and ExportQueue, the real otlphttp and otlp exporters, and sink servers on
loopback that fail as each test scripts. Records carry a unique ``uid`` attribute so every
acknowledged record can be looked for at the sink.

Faults (issue 7): 503/UNAVAILABLE then success; 429 + Retry-After / RESOURCE_EXHAUSTED +
RetryInfo honoured; 400/INVALID_ARGUMENT not retried; connection refused for a while;
a slow sink (client timeouts); the sink down until the queue fills (clients get retryable
refusals; after recovery every acknowledged record arrives, no refused one does).
"""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from collector.config import (
    BatchConfig,
    GrpcServerConfig,
    HttpServerConfig,
    OtlpGrpcExporterConfig,
    OtlpHttpExporterConfig,
    RetryConfig,
    SendingQueueConfig,
    TlsClientConfig,
)
from collector.exporters.otlp import OtlpGrpcExporter
from collector.exporters.otlphttp import OtlpHttpExporter
from collector.pipeline import Pipeline
from collector.queue import ExportQueue
from collector.receivers import codec
from collector.receivers.otlp_grpc import STATUS_DETAILS_KEY, OtlpGrpcReceiver
from collector.receivers.otlp_http import OtlpHttpReceiver
from tests.collector.wire_support import (
    EXPORT_METHOD,
    GrpcAnswer,
    GrpcSink,
    HttpAnswer,
    HttpSink,
    metric,
    wait_for,
)
from tests.sinks import free_port

RETRY = RetryConfig(initial_interval=0.02, max_interval=0.2, randomization_factor=0.2,
                    max_elapsed_time=0)
ONE_BY_ONE = SendingQueueConfig(num_consumers=2, batch=BatchConfig(enabled=False))


def uid_request(first: int, n: int) -> ExportLogsServiceRequest:
    """``n`` records with uid attributes first … first+n-1."""
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = "delivery"
    sl = rl.scope_logs.add()
    for uid in range(first, first + n):
        rec = sl.log_records.add(severity_number=9)
        rec.body.string_value = f"record {uid}"
        rec.attributes.add(key="uid").value.int_value = uid
    return req


def uids(requests: list[ExportLogsServiceRequest]) -> list[int]:
    return [kv.value.int_value for req in requests for rl in req.resource_logs
            for sl in rl.scope_logs for r in sl.log_records for kv in r.attributes
            if kv.key == "uid"]


def exporter(transport: str, target: str, timeout: float = 5.0):
    if transport == "http":
        return OtlpHttpExporter("otlphttp/fault", OtlpHttpExporterConfig(
            endpoint=target, timeout=timeout, compression="none"))
    return OtlpGrpcExporter("otlp/fault", OtlpGrpcExporterConfig(
        endpoint=target, timeout=timeout, tls=TlsClientConfig(insecure=True),
        compression="none"))


async def sink_for(transport: str, port: int = 0):
    return await (HttpSink() if transport == "http" else GrpcSink()).start(port)


def target(transport: str, sink) -> str:
    return sink.url if transport == "http" else sink.endpoint


def failing(transport: str, kind: str, retry_after: float | None = None):
    """One scripted failure answer of the given kind for the sink of ``transport``."""
    http = {"unavailable": 503, "throttled": 429, "bad": 400}[kind]
    code = {"unavailable": grpc.StatusCode.UNAVAILABLE,
            "throttled": grpc.StatusCode.RESOURCE_EXHAUSTED,
            "bad": grpc.StatusCode.INVALID_ARGUMENT}[kind]
    if transport == "http":
        headers = {"Retry-After": str(int(retry_after))} if retry_after else {}
        return HttpAnswer(status=http, headers=headers, content_type="application/json",
                          body=b'{"code": 3, "message": "field uid is not allowed here"}'
                          if kind == "bad" else b"{}")
    trailing: tuple = ()
    if retry_after:
        status = codec.make_status(code.value[0], "slow down", retry_after)
        trailing = ((STATUS_DETAILS_KEY, status.SerializeToString()),)
    return GrpcAnswer(code=code, details="field uid is not allowed here" if kind == "bad"
                      else "try later", trailing=trailing)


TRANSPORTS = ["http", "grpc"]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_unavailable_then_success_delivers_everything(transport) -> None:
    sink = await sink_for(transport)
    sink.answers.extend([failing(transport, "unavailable")] * 3)
    exp = exporter(transport, target(transport, sink))
    q = ExportQueue(exp, ONE_BY_ONE, RETRY)
    retries = metric("lipservice_exporter_retries_total", exporter=exp.name)
    await q.start()
    for i in range(4):
        q.put(uid_request(i * 10, 10), 10)
    try:
        assert await q.drain(20)
    finally:
        await sink.stop()
    assert sorted(uids(sink.requests)) == list(range(40))
    assert metric("lipservice_exporter_retries_total", exporter=exp.name) == retries + 3


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_throttling_answer_with_a_retry_hint_is_honoured(transport) -> None:
    sink = await sink_for(transport)
    sink.answers.append(failing(transport, "throttled", retry_after=1))
    q = ExportQueue(exporter(transport, target(transport, sink)), ONE_BY_ONE, RETRY)
    await q.start()
    q.put(uid_request(0, 5), 5)
    try:
        assert await q.drain(20)
    finally:
        await sink.stop()
    assert uids(sink.requests) == list(range(5))
    assert len(sink.arrivals) == 2
    # the backoff alone would have retried after ~20 ms; the hint said 1 s
    assert sink.arrivals[1] - sink.arrivals[0] >= 0.99


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_bad_request_is_not_retried_dropped_counted_and_logged_with_reason(
        transport, caplog) -> None:
    sink = await sink_for(transport)
    sink.answers.append(failing(transport, "bad"))
    exp = exporter(transport, target(transport, sink))
    q = ExportQueue(exp, SendingQueueConfig(num_consumers=1, batch=BatchConfig(enabled=False)),
                    RETRY)
    failed = metric("otelcol_exporter_send_failed_log_records_total", exporter=exp.name)
    await q.start()
    q.put(uid_request(0, 7), 7)
    q.put(uid_request(7, 3), 3)
    try:
        assert await q.drain(20)
    finally:
        await sink.stop()
    assert len(sink.arrivals) == 2  # one attempt each: the first was refused for good
    assert uids(sink.requests) == [7, 8, 9]
    assert metric("otelcol_exporter_send_failed_log_records_total",
                  exporter=exp.name) == failed + 7
    assert metric("lipservice_exporter_dropped_log_records_total", exporter=exp.name,
                  reason="permanent") >= 7
    logged = [r.getMessage() for r in caplog.records if "dropping 7 log records" in
              r.getMessage()]
    assert len(logged) == 1 and "field uid is not allowed here" in logged[0]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_connection_refused_for_a_while_then_back(transport) -> None:
    port = free_port()  # nothing listens there yet
    addr = f"http://127.0.0.1:{port}" if transport == "http" else f"127.0.0.1:{port}"
    exp = exporter(transport, addr, timeout=2)
    q = ExportQueue(exp, ONE_BY_ONE, RETRY)
    retries = metric("lipservice_exporter_retries_total", exporter=exp.name)
    await q.start()
    for i in range(3):
        q.put(uid_request(i * 4, 4), 4)
    await wait_for(lambda: metric("lipservice_exporter_retries_total",
                                  exporter=exp.name) >= retries + 3)
    assert q.size == 12  # nothing lost while the backend is away
    sink = await sink_for(transport, port)
    try:
        assert await q.drain(30)
    finally:
        await sink.stop()
    assert sorted(uids(sink.requests)) == list(range(12))


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_slow_sink_times_out_and_the_request_is_sent_again(transport) -> None:
    sink = await sink_for(transport)
    slow = (HttpAnswer(delay=1.5, body=ExportLogsServiceResponse().SerializeToString())
            if transport == "http" else GrpcAnswer(delay=1.5))
    sink.answers.extend([slow, slow])
    exp = exporter(transport, target(transport, sink), timeout=0.3)
    q = ExportQueue(exp, SendingQueueConfig(num_consumers=1, batch=BatchConfig(enabled=False)),
                    RETRY)
    retries = metric("lipservice_exporter_retries_total", exporter=exp.name)
    await q.start()
    q.put(uid_request(0, 6), 6)
    try:
        assert await q.drain(20)
        await asyncio.sleep(1.6)  # let the slow answers finish inside the sink
    finally:
        await sink.stop()
    assert len(sink.arrivals) >= 3
    assert set(uids(sink.requests)) == set(range(6))  # at least once; timeouts may duplicate
    assert metric("lipservice_exporter_retries_total", exporter=exp.name) >= retries + 2


# --------------------------------------------------------------------------- backpressure


class Clients:
    """An OTLP/HTTP client (aiohttp) and an OTLP/gRPC client (grpc.aio) that record which
    uids were acknowledged and which were refused, and how."""

    def __init__(self, http_port: int, grpc_port: int) -> None:
        self.url = f"http://127.0.0.1:{http_port}/v1/logs"
        self.channel = aio.insecure_channel(f"127.0.0.1:{grpc_port}",
                                            options=[("grpc.enable_retries", 0)])
        self.export = self.channel.unary_unary(
            EXPORT_METHOD, request_serializer=ExportLogsServiceRequest.SerializeToString,
            response_deserializer=ExportLogsServiceResponse.FromString)
        self.session = aiohttp.ClientSession()
        self.acked: set[int] = set()
        self.refused: set[int] = set()
        self.answers: list[tuple[str, int | str, float]] = []  # (transport, status, retry)

    async def send(self, transport: str, req: ExportLogsServiceRequest) -> bool:
        ids = set(uids([req]))
        if transport == "http":
            async with self.session.post(self.url, data=req.SerializeToString(), headers={
                    "Content-Type": "application/x-protobuf"}) as resp:
                await resp.read()
                ok = resp.status == 200
                if not ok:
                    self.answers.append(("http", resp.status,
                                         float(resp.headers.get("Retry-After", "nan"))))
        else:
            try:
                await self.export(req, timeout=10)
                ok = True
            except aio.AioRpcError as err:
                ok = False
                raw = dict(err.trailing_metadata() or ()).get(STATUS_DETAILS_KEY)
                hint = codec.retry_delay(status_pb2.Status.FromString(raw)) if raw else None
                self.answers.append(("grpc", err.code().name, hint or float("nan")))
        (self.acked if ok else self.refused).update(ids)
        return ok

    async def close(self) -> None:
        await self.session.close()
        await self.channel.close()


@pytest.mark.parametrize(("reason", "queue"), [
    ("queue_full", SendingQueueConfig(queue_size=1000, num_consumers=2)),
    ("queue_full_bytes", SendingQueueConfig(queue_size=10**6, queue_size_bytes=12_000,
                                            num_consumers=2)),
])
async def test_sink_down_until_the_queue_fills_then_every_acknowledged_record_arrives(
        reason, queue) -> None:
    sink = await HttpSink().start()
    sink.fallback = HttpAnswer(status=503)  # the backend is down
    exp = OtlpHttpExporter("otlphttp/down", OtlpHttpExporterConfig(
        endpoint=sink.url, timeout=2, compression="none"))
    pipe = Pipeline([], [ExportQueue(exp, queue, RETRY)])
    await pipe.start()
    http = OtlpHttpReceiver("otlp/down", HttpServerConfig(endpoint="127.0.0.1:0"), pipe)
    grpc_rx = OtlpGrpcReceiver("otlp/down", GrpcServerConfig(endpoint="127.0.0.1:0"), pipe)
    await http.start()
    await grpc_rx.start()
    clients = Clients(http.port, grpc_rx.port)
    refused_before = sum(metric("otelcol_receiver_refused_log_records_total",
                                receiver="otlp/down", transport=t, reason=reason)
                         for t in ("http", "grpc"))
    enqueue_failed = metric("otelcol_exporter_enqueue_failed_log_records_total",
                            exporter="otlphttp/down")
    try:
        uid = 0
        for i in range(60):  # bounded: the queue holds about ten of these requests
            await clients.send("http" if i % 2 else "grpc", uid_request(uid, 100))
            uid += 100
            if len(clients.refused) >= 400:
                break
        assert clients.acked and len(clients.refused) >= 400
        assert {(t, s) for t, s, _ in clients.answers} <= {("http", 429),
                                                          ("grpc", "RESOURCE_EXHAUSTED")}
        assert all(hint >= 1 for _, _, hint in clients.answers)  # Retry-After / RetryInfo
        refused_now = sum(metric("otelcol_receiver_refused_log_records_total",
                                 receiver="otlp/down", transport=t, reason=reason)
                          for t in ("http", "grpc"))
        assert refused_now - refused_before == len(clients.refused)
        assert metric("otelcol_exporter_enqueue_failed_log_records_total",
                      exporter="otlphttp/down") - enqueue_failed == len(clients.refused)

        sink.fallback = None  # the backend is back
        await wait_for(lambda: clients.acked <= set(uids(sink.requests)), timeout=30)
        await clients.send("http", uid_request(uid, 10))  # room again
    finally:
        await clients.close()
        await http.stop()
        await grpc_rx.stop(0)
        assert await pipe.shutdown(10)
        await sink.stop()
    delivered = set(uids(sink.requests))
    assert clients.acked <= delivered
    assert not (clients.refused & delivered)  # a refusal took nothing in
    assert set(range(uid, uid + 10)) <= delivered


async def test_refusal_details_are_retryable_for_sdk_clients() -> None:
    """The answers SDKs see when the queue is full: HTTP 429 with a google.rpc.Status
    carrying RetryInfo; gRPC RESOURCE_EXHAUSTED with RetryInfo (retryable per OTLP only
    with it)."""
    sink = await HttpSink().start()
    sink.fallback = HttpAnswer(status=503)
    exp = OtlpHttpExporter("otlphttp/hint", OtlpHttpExporterConfig(endpoint=sink.url))
    pipe = Pipeline([], [ExportQueue(exp, SendingQueueConfig(queue_size=5), RETRY)])
    await pipe.start()
    grpc_rx = OtlpGrpcReceiver("otlp/hint", GrpcServerConfig(endpoint="127.0.0.1:0"), pipe)
    await grpc_rx.start()
    clients = Clients(free_port(), grpc_rx.port)
    try:
        assert await clients.send("grpc", uid_request(0, 5))
        with pytest.raises(aio.AioRpcError) as info:
            await clients.export(uid_request(5, 5), timeout=10)
        status = status_pb2.Status.FromString(
            dict(info.value.trailing_metadata())[STATUS_DETAILS_KEY])
        retry = error_details_pb2.RetryInfo()
        assert status.details[0].Unpack(retry)
        assert retry.retry_delay.seconds >= 1
    finally:
        sink.fallback = None
        await clients.close()
        await grpc_rx.stop(0)
        await pipe.shutdown(10)
        await sink.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_batched_requests_arrive_as_one_request_in_order(transport) -> None:
    sink = await sink_for(transport)
    q = ExportQueue(exporter(transport, target(transport, sink)), SendingQueueConfig(
        num_consumers=1, batch=BatchConfig(min_size=10, max_size=100, flush_timeout=60)),
        RETRY)
    await q.start()
    for i in range(4):
        q.put(uid_request(i * 3, 3), 3)  # 12 records >= min_size: one batch
    try:
        await wait_for(lambda: len(sink.requests) == 1)
        assert await q.drain(10)
    finally:
        await sink.stop()
    assert len(sink.requests) == 1
    assert uids(sink.requests) == list(range(12))
    assert len(sink.requests[0].resource_logs) == 4  # each part keeps its resource


async def test_413_on_a_batch_splits_it_and_delivers_both_halves() -> None:
    sink = await HttpSink().start()
    sink.answers.append(HttpAnswer(status=413, body=b"too big"))
    q = ExportQueue(exporter("http", sink.url), SendingQueueConfig(
        num_consumers=1, batch=BatchConfig(min_size=6, max_size=100, flush_timeout=60)),
        RETRY)
    await q.start()
    q.put(uid_request(0, 3), 3)
    q.put(uid_request(3, 3), 3)
    try:
        assert await q.drain(10)
    finally:
        await sink.stop()
    assert len(sink.arrivals) == 3
    assert [uids([r]) for r in sink.requests] == [[0, 1, 2], [3, 4, 5]]
