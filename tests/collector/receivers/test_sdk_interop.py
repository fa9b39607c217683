"""The real OpenTelemetry Python SDK (stdlib logging handler, OTLP gRPC and HTTP exporters)
sends to the receivers in-process; a real Pipeline exports with the ``otlphttp`` and ``otlp``
exporters to sink servers. Body, severity, attributes, resource, scope and trace/span ids
arrive intact at both sinks."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from collector.config import (
    GrpcServerConfig,
    HttpServerConfig,
    OtlpGrpcExporterConfig,
    OtlpHttpExporterConfig,
    RetryConfig,
    SendingQueueConfig,
)
from collector.exporters.otlp import OtlpGrpcExporter
from collector.exporters.otlphttp import OtlpHttpExporter
from collector.pipeline import Pipeline
from collector.queue import ExportQueue
from collector.receivers.otlp_grpc import OtlpGrpcReceiver
from collector.receivers.otlp_http import OtlpHttpReceiver
from tests.collector.wire_support import GrpcSink, HttpSink, RecordingExporter, wait_for


def records_by_body(requests):
    """body text → (resource, scope, record) over every request a sink received."""
    out = {}
    for req in requests:
        for rl in req.resource_logs:
            for sl in rl.scope_logs:
                for rec in sl.log_records:
                    key = (rec.body.string_value if rec.body.HasField("string_value")
                           else "<kvlist>")
                    out[key] = (rl.resource, sl.scope, rec)
    return out


def attrs(kvs):
    return {kv.key: kv.value for kv in kvs}


@pytest.fixture
async def sinks():
    http_sink, grpc_sink = await HttpSink().start(), await GrpcSink().start()
    yield http_sink, grpc_sink
    await http_sink.stop()
    await grpc_sink.stop()


async def test_sdk_logs_arrive_intact_through_both_receivers_and_exporters(sinks, monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    http_sink, grpc_sink = sinks
    recorder = RecordingExporter("recording")
    no_retry = RetryConfig(enabled=False)
    queues = [
        ExportQueue(OtlpHttpExporter("otlphttp/sink", OtlpHttpExporterConfig(
            endpoint=http_sink.url)), SendingQueueConfig(), no_retry),
        ExportQueue(OtlpGrpcExporter("otlp/sink", OtlpGrpcExporterConfig(
            endpoint=grpc_sink.endpoint, tls={"insecure": True})), SendingQueueConfig(),
            no_retry),
        ExportQueue(recorder, SendingQueueConfig(), no_retry),
    ]
    pipeline = Pipeline([], queues)
    await pipeline.start()
    grpc_receiver = OtlpGrpcReceiver("otlp", GrpcServerConfig(endpoint="127.0.0.1:0"), pipeline)
    http_receiver = OtlpHttpReceiver("otlp", HttpServerConfig(endpoint="127.0.0.1:0"), pipeline)
    await grpc_receiver.start()
    await http_receiver.start()

    sdk_exporters = {
        "grpc": GrpcLogExporter(endpoint=f"127.0.0.1:{grpc_receiver.port}", insecure=True,
                                compression=grpc.Compression.Gzip, timeout=10),
        "http": HttpLogExporter(endpoint=f"http://127.0.0.1:{http_receiver.port}/v1/logs",
                                compression=HttpCompression.Gzip, timeout=10),
    }
    tracer = TracerProvider().get_tracer("interop")
    span_ids = {}
    try:
        for protocol, sdk_exporter in sdk_exporters.items():
            provider = LoggerProvider(resource=Resource.create(
                {"service.name": f"shop-{protocol}", "deployment.environment": "test"}))
            provider.add_log_record_processor(BatchLogRecordProcessor(sdk_exporter))
            handler = LoggingHandler(level=logging.DEBUG, logger_provider=provider)
            logger = logging.getLogger(f"shop.payments.{protocol}")
            logger.propagate = False
            logger.setLevel(logging.DEBUG)
            logger.addHandler(handler)
            try:
                with tracer.start_as_current_span("charge") as span:
                    logger.warning("payment %s failed via %s", "p-17", protocol,
                                   extra={"order.id": 42, "amount": 9.5, "vip": True,
                                          "tags": ["a", "b"]})
                    span_ids[protocol] = span.get_span_context()
                logger.error("disk full on %s", protocol)
                logger.info({"event": "checkout", "items": 3})
                # The SDK exporters are blocking clients; the servers run on this loop.
                assert await asyncio.to_thread(provider.force_flush, 10_000)
            finally:
                logger.removeHandler(handler)
                await asyncio.to_thread(provider.shutdown)

        await wait_for(lambda: http_sink.record_count == 6 and grpc_sink.record_count == 6
                       and recorder.record_count == 6, timeout=20)
    finally:
        await grpc_receiver.stop(0)
        await http_receiver.stop()
        await pipeline.shutdown(5)

    received = records_by_body(recorder.requests)
    for sink_requests in (http_sink.requests, grpc_sink.requests):
        at_sink = records_by_body(sink_requests)
        assert set(at_sink) == set(received)
        for key, (resource, scope, rec) in at_sink.items():
            assert (resource, scope, rec) == received[key]  # byte-for-byte the same messages

        for protocol in ("grpc", "http"):
            resource, scope, rec = at_sink[f"payment p-17 failed via {protocol}"]
            assert rec.severity_number == 13 and rec.severity_text == "WARN"
            a = attrs(rec.attributes)
            assert a["order.id"].int_value == 42
            assert a["amount"].double_value == 9.5
            assert a["vip"].bool_value is True
            assert [v.string_value for v in a["tags"].array_value.values] == ["a", "b"]
            ctx = span_ids[protocol]
            assert rec.trace_id == ctx.trace_id.to_bytes(16, "big")
            assert rec.span_id == ctx.span_id.to_bytes(8, "big")
            assert rec.time_unix_nano > 0 and rec.observed_time_unix_nano > 0
            r = attrs(resource.attributes)
            assert r["service.name"].string_value == f"shop-{protocol}"
            assert r["deployment.environment"].string_value == "test"
            assert r["telemetry.sdk.language"].string_value == "python"
            assert scope.name == f"shop.payments.{protocol}"

            _, _, err = at_sink[f"disk full on {protocol}"]
            assert err.severity_number == 17 and err.severity_text == "ERROR"
            assert err.trace_id == b""  # logged outside the span

    kvlist_bodies = [rec.body for req in grpc_sink.requests for rl in req.resource_logs
                     for sl in rl.scope_logs for rec in sl.log_records
                     if rec.body.HasField("kvlist_value")]
    assert len(kvlist_bodies) == 2
    assert {kv.key: kv.value for kv in kvlist_bodies[0].kvlist_value.values}[
        "items"].int_value == 3
