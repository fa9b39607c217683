"""collector/receivers/otlp_grpc.py against real grpc.aio clients on loopback, feeding a
real Pipeline whose exporter records what arrives."""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from collector.config import GrpcServerConfig
from collector.receivers.otlp_grpc import STATUS_DETAILS_KEY, OtlpGrpcReceiver
from tests.collector.wire_support import (
    EXPORT_METHOD,
    RecordingExporter,
    deep_request_bytes,
    make_pipeline,
    make_request,
    metric,
    wait_for,
)


class Served:
    def __init__(self, receiver, pipeline, exporter, channel):
        self.receiver = receiver
        self.pipeline = pipeline
        self.exporter = exporter
        self.channel = channel
        self.export = channel.unary_unary(
            EXPORT_METHOD, request_serializer=ExportLogsServiceRequest.SerializeToString,
            response_deserializer=ExportLogsServiceResponse.FromString)
        self.export_raw = channel.unary_unary(
            EXPORT_METHOD, request_serializer=None,
            response_deserializer=ExportLogsServiceResponse.FromString)

    async def assert_still_serves(self) -> None:
        before = self.exporter.record_count
        await self.export(make_request(2), timeout=10)
        await wait_for(lambda: self.exporter.record_count == before + 2)


@pytest.fixture
async def served(request):
    exporter = RecordingExporter()
    pipeline = make_pipeline(exporter, queue_size=getattr(request, "param", 10_000))
    await pipeline.start()
    receiver = OtlpGrpcReceiver(f"otlp/{request.node.name}"[:60],
                                GrpcServerConfig(endpoint="127.0.0.1:0", max_recv_msg_size_mib=1),
                                pipeline)
    await receiver.start()
    channel = aio.insecure_channel(f"127.0.0.1:{receiver.port}",
                                   options=[("grpc.enable_retries", 0)])
    try:
        yield Served(receiver, pipeline, exporter, channel)
    finally:
        await channel.close()
        await receiver.stop(0)
        await pipeline.shutdown(5)


async def test_export_arrives_intact(served):
    req = make_request(5)
    before = metric("otelcol_receiver_accepted_log_records_total",
                    receiver=served.receiver.name, transport="grpc")
    resp = await served.export(req, timeout=10)
    assert not resp.HasField("partial_success")
    await wait_for(lambda: served.exporter.record_count == 5)
    assert served.exporter.requests[0] == req
    assert metric("otelcol_receiver_accepted_log_records_total", receiver=served.receiver.name,
                  transport="grpc") == before + 5


async def test_gzip_compressed_export(served):
    req = make_request(3)
    await served.export(req, timeout=10, compression=grpc.Compression.Gzip)
    await wait_for(lambda: served.exporter.record_count == 3)
    assert served.exporter.requests[0] == req


def invalid_utf8() -> bytes:
    good = make_request(1, body="payload-marker").SerializeToString()
    return good.replace(b"payload-marker", b"payload\xff\xfeaaaaa")


@pytest.mark.parametrize("body, fragment", [
    (b"\x0a\xff\xff\xff", "invalid OTLP protobuf"),
    (make_request(3).SerializeToString()[:-7], "truncated"),
    (invalid_utf8(), "UTF-8"),
    (deep_request_bytes(300), "nested deeper"),
], ids=["malformed", "truncated", "invalid-utf8", "deep-nesting"])
async def test_undecodable_request_is_invalid_argument(served, body, fragment):
    labels = {"receiver": served.receiver.name, "transport": "grpc", "reason": "malformed"}
    before = metric("lipservice_receiver_bad_requests_total", **labels)
    with pytest.raises(aio.AioRpcError) as info:
        await served.export_raw(body, timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in info.value.details()
    assert "Content-Type" not in info.value.details()  # an HTTP notion, no help over gRPC
    assert metric("lipservice_receiver_bad_requests_total", **labels) == before + 1
    assert served.exporter.requests == []
    await served.assert_still_serves()


@pytest.mark.parametrize("method, hint", [
    ("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
     "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"),
    ("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
     "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT"),
    ("/opentelemetry.proto.collector.logs.v1.LogsService/export", "has one method, Export"),
])
async def test_other_methods_are_unimplemented_with_what_to_do(served, method, hint):
    # An app with OTEL_EXPORTER_OTLP_ENDPOINT sends traces and metrics here too; grpc's
    # own answer was a bare 'Method not found!'.
    call = served.channel.unary_unary(method, request_serializer=None,
                                      response_deserializer=None)
    with pytest.raises(aio.AioRpcError) as info:
        await call(b"", timeout=10)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert method in info.value.details()
    assert hint in info.value.details()
    await served.assert_still_serves()


async def test_message_over_the_size_limit_is_resource_exhausted(served):
    big = make_request(1, body="z" * (2 * 1024 * 1024))
    with pytest.raises(aio.AioRpcError) as info:
        await served.export(big, timeout=10)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await served.assert_still_serves()


async def test_gzip_bomb_is_refused_by_size_after_decompression(served):
    bomb = make_request(1, body="\0" * (16 * 1024 * 1024))  # gzip makes it ~16 KiB
    with pytest.raises(aio.AioRpcError) as info:
        await served.export(bomb, timeout=30, compression=grpc.Compression.Gzip)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert served.exporter.requests == []
    await served.assert_still_serves()


@pytest.mark.parametrize("served", [5], indirect=True)
async def test_full_queue_is_resource_exhausted_with_retry_info(served):
    served.exporter.gate.clear()
    first = make_request(4)
    await served.export(first, timeout=10)
    labels = {"receiver": served.receiver.name, "transport": "grpc", "reason": "queue_full"}
    before = metric("otelcol_receiver_refused_log_records_total", **labels)
    with pytest.raises(aio.AioRpcError) as info:
        await served.export(make_request(3), timeout=10)
    err = info.value
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "full" in err.details()
    details = dict(err.trailing_metadata())[STATUS_DETAILS_KEY]
    status = status_pb2.Status.FromString(details)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]
    retry = error_details_pb2.RetryInfo()
    assert status.details[0].Unpack(retry)
    assert retry.retry_delay.ToTimedelta().total_seconds() > 0
    assert metric("otelcol_receiver_refused_log_records_total", **labels) == before + 3

    served.exporter.gate.set()
    await wait_for(lambda: served.exporter.record_count == 4)
    assert served.exporter.requests[0] == first
    await served.assert_still_serves()


async def test_partial_success_when_the_pipeline_accepts_fewer():
    """Also: the pipeline is handed the protobuf bytes the request was decoded from."""
    raws: list[bytes | None] = []

    class AcceptsAllButTwo:
        def consume(self, request: ExportLogsServiceRequest, nbytes: int | None = None,
                    raw: bytes | None = None) -> int:
            raws.append(raw)
            return sum(len(sl.log_records) for rl in request.resource_logs
                       for sl in rl.scope_logs) - 2

    receiver = OtlpGrpcReceiver("otlp/partial-grpc", GrpcServerConfig(endpoint="127.0.0.1:0"),
                                AcceptsAllButTwo())
    await receiver.start()
    try:
        async with aio.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
            export = channel.unary_unary(
                EXPORT_METHOD, request_serializer=ExportLogsServiceRequest.SerializeToString,
                response_deserializer=ExportLogsServiceResponse.FromString)
            resp = await export(make_request(5), timeout=10)
    finally:
        await receiver.stop(0)
    assert resp.partial_success.rejected_log_records == 2
    assert raws == [make_request(5).SerializeToString()]


async def test_port_in_use_is_an_os_error_naming_the_endpoint(served):
    endpoint = f"127.0.0.1:{served.receiver.port}"
    other = OtlpGrpcReceiver("otlp/second", GrpcServerConfig(endpoint=endpoint),
                             served.pipeline)
    with pytest.raises(OSError, match=f"cannot listen on {endpoint}: Address already in use"):
        await other.start()
    await served.assert_still_serves()


async def test_bad_endpoint_is_an_os_error():
    # The config model refuses it at load time; a receiver given one anyway still fails
    # with a clear OSError rather than a traceback.
    with pytest.raises(ValueError, match="port 'http' is not a number"):
        GrpcServerConfig(endpoint="127.0.0.1:http")
    bad = GrpcServerConfig.model_construct(endpoint="127.0.0.1:http", max_recv_msg_size_mib=4)
    receiver = OtlpGrpcReceiver("otlp/bad", bad, make_pipeline(RecordingExporter()))
    with pytest.raises(OSError, match="port 'http' is not a number"):
        await receiver.start()
