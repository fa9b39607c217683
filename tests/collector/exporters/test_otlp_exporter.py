"""collector/exporters/otlp.py (OTLP/gRPC) against a sink gRPC server on loopback."""

from __future__ import annotations

import socket

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from collector.config import OtlpGrpcExporterConfig, RetryConfig, SendingQueueConfig
from collector.exporters.base import ExportError
from collector.exporters.otlp import OtlpGrpcExporter, parse_target
from collector.queue import ExportQueue
from collector.receivers import codec
from tests.collector.wire_support import GrpcAnswer, GrpcSink, make_request, wait_for

TOKEN = "phx_grpcT0kenValue0123456789"


@pytest.fixture
async def sink():
    s = await GrpcSink().start()
    yield s
    await s.stop()


def config(endpoint: str, **extra) -> OtlpGrpcExporterConfig:
    return OtlpGrpcExporterConfig(endpoint=endpoint, tls={"insecure": True},
                                  headers={"Authorization": f"Bearer {TOKEN}",
                                           "X-Tenant": "team-a"}, **extra)


async def export(sink, *answers: GrpcAnswer, **extra):
    sink.answers.extend(answers)
    exporter = OtlpGrpcExporter("otlp/test", config(sink.endpoint, **extra))
    await exporter.start()
    try:
        return await exporter.export(make_request(4))
    finally:
        await exporter.shutdown()


async def export_error(sink, *answers: GrpcAnswer, **extra) -> ExportError:
    with pytest.raises(ExportError) as info:
        await export(sink, *answers, **extra)
    assert TOKEN not in str(info.value)
    return info.value


def retry_info_trailer(seconds: float) -> tuple[tuple[str, bytes], ...]:
    status = codec.make_status(codec.RESOURCE_EXHAUSTED, "slow down", seconds)
    return (("grpc-status-details-bin", status.SerializeToString()),)


async def test_sends_request_with_metadata(sink):
    assert await export(sink) == 0
    assert sink.requests[0] == make_request(4)
    assert sink.metadata[0]["authorization"] == f"Bearer {TOKEN}"
    assert sink.metadata[0]["x-tenant"] == "team-a"


async def test_uncompressed(sink):
    assert await export(sink, compression="none") == 0
    assert sink.record_count == 4


async def test_http_scheme_means_plaintext(sink):
    cfg = OtlpGrpcExporterConfig(endpoint=f"http://{sink.endpoint}")
    exporter = OtlpGrpcExporter("otlp/scheme", cfg)
    await exporter.start()
    try:
        assert await exporter.export(make_request(2)) == 0
    finally:
        await exporter.shutdown()
    assert sink.record_count == 2


async def test_partial_success(sink):
    resp = ExportLogsServiceResponse()
    resp.partial_success.rejected_log_records = 3
    assert await export(sink, GrpcAnswer(response=resp)) == 3


@pytest.mark.parametrize("code", [
    grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS])
async def test_retryable_codes(sink, code):
    err = await export_error(sink, GrpcAnswer(code=code, details="try later"))
    assert err.retryable
    assert code.name in str(err) and "try later" in str(err)


@pytest.mark.parametrize("code", [
    grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.FAILED_PRECONDITION])
async def test_permanent_codes(sink, code):
    err = await export_error(sink, GrpcAnswer(code=code, details="no"))
    assert not err.retryable


async def test_resource_exhausted_without_retry_info_is_permanent(sink):
    err = await export_error(sink, GrpcAnswer(code=grpc.StatusCode.RESOURCE_EXHAUSTED,
                                              details="quota exceeded"))
    assert not err.retryable and not err.too_large


async def test_resource_exhausted_with_retry_info_is_retried_after_its_delay(sink):
    err = await export_error(sink, GrpcAnswer(code=grpc.StatusCode.RESOURCE_EXHAUSTED,
                                              details="busy", trailing=retry_info_trailer(3.5)))
    assert err.retryable and err.retry_after == 3.5


async def test_retry_info_on_unavailable_is_honoured(sink):
    err = await export_error(sink, GrpcAnswer(code=grpc.StatusCode.UNAVAILABLE,
                                              trailing=retry_info_trailer(2)))
    assert err.retryable and err.retry_after == 2


async def test_message_over_the_server_limit_asks_the_queue_to_split(sink):
    big = make_request(1, body="b" * (5 * 1024 * 1024))  # over gRPC's default 4 MiB
    exporter = OtlpGrpcExporter("otlp/big", config(sink.endpoint, compression="none"))
    await exporter.start()
    try:
        with pytest.raises(ExportError) as info:
            await exporter.export(big)
    finally:
        await exporter.shutdown()
    assert info.value.too_large and not info.value.retryable


async def test_deadline_is_retryable(sink):
    err = await export_error(sink, GrpcAnswer(delay=5), timeout=0.3)
    assert err.retryable and "DEADLINE_EXCEEDED" in str(err)


async def test_header_values_never_appear_in_errors(sink):
    err = await export_error(sink, GrpcAnswer(code=grpc.StatusCode.UNAUTHENTICATED,
                                              details=f"bad token Bearer {TOKEN}"))
    assert "[REDACTED]" in str(err)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_unreachable_backend_is_retryable():
    exporter = OtlpGrpcExporter("otlp/down", config(f"127.0.0.1:{closed_port()}", timeout=2))
    await exporter.start()
    try:
        with pytest.raises(ExportError) as info:
            await exporter.export(make_request(1))
    finally:
        await exporter.shutdown()
    assert info.value.retryable


async def test_unreadable_ca_file_fails_at_start(tmp_path):
    cfg = OtlpGrpcExporterConfig(endpoint="example.test:4317",
                                 tls={"ca_file": str(tmp_path / "missing.pem")})
    with pytest.raises(OSError, match="cannot read tls.ca_file"):
        await OtlpGrpcExporter("otlp/tls", cfg).start()


@pytest.mark.parametrize("endpoint, insecure, expected", [
    ("collector:4317", False, ("collector:4317", True)),
    ("collector:4317", True, ("collector:4317", False)),
    ("http://collector:4317", False, ("collector:4317", False)),
    ("https://collector:4317/", True, ("collector:4317", True)),
])
def test_parse_target(endpoint, insecure, expected):
    assert parse_target(endpoint, insecure) == expected


async def test_queue_retries_unavailable_then_delivers(sink):
    sink.answers.extend([GrpcAnswer(code=grpc.StatusCode.UNAVAILABLE),
                         GrpcAnswer(code=grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    trailing=retry_info_trailer(0.01))])
    exporter = OtlpGrpcExporter("otlp/queue", config(sink.endpoint))
    retry = RetryConfig(initial_interval=0.01, max_interval=0.05, max_elapsed_time=10)
    queue = ExportQueue(exporter, SendingQueueConfig(num_consumers=1), retry)
    await queue.start()
    queue.put(make_request(3), 3)
    await wait_for(lambda: sink.record_count == 3)
    assert await queue.drain(5)
    assert len(sink.metadata) == 3
