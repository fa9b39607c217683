"""collector/exporters/otlphttp.py against a sink OTLP/HTTP server on loopback."""

from __future__ import annotations

import email.utils
import gzip
import json
import socket

import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse

from collector.config import OtlpHttpExporterConfig, RetryConfig, SendingQueueConfig
from collector.exporters.base import ExportError
from collector.exporters.otlphttp import OtlpHttpExporter, parse_retry_after
from collector.queue import ExportQueue
from tests.collector.wire_support import HttpAnswer, HttpSink, make_request, metric, wait_for

TOKEN = "phx_s3cr3tT0kenValue0123456789"


@pytest.fixture
async def sink():
    s = await HttpSink().start()
    yield s
    await s.stop()


async def make_exporter(sink_or_url, **config):
    url = sink_or_url if isinstance(sink_or_url, str) else sink_or_url.url
    cfg = OtlpHttpExporterConfig(endpoint=url, headers={"Authorization": f"Bearer {TOKEN}"},
                                 **config)
    exporter = OtlpHttpExporter("otlphttp/test", cfg)
    await exporter.start()
    return exporter


async def export(sink, *answers: HttpAnswer, **config):
    sink.answers.extend(answers)
    exporter = await make_exporter(sink, **config)
    try:
        return await exporter.export(make_request(4))
    finally:
        await exporter.shutdown()


async def export_error(sink, *answers: HttpAnswer, **config) -> ExportError:
    with pytest.raises(ExportError) as info:
        await export(sink, *answers, **config)
    assert TOKEN not in str(info.value)
    return info.value


# --------------------------------------------------------------------------- success


async def test_sends_gzipped_protobuf_with_headers(sink):
    assert await export(sink) == 0
    headers = sink.headers[0]
    assert headers["Content-Type"] == "application/x-protobuf"
    assert headers["Content-Encoding"] == "gzip"
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert headers["User-Agent"].startswith("lipservice")
    assert sink.requests[0] == make_request(4)
    assert gzip.decompress(sink.raw_bodies[0]) == make_request(4).SerializeToString()


async def test_logs_endpoint_is_used_as_given(sink):
    cfg = OtlpHttpExporterConfig(logs_endpoint=sink.url + "/v1/logs")
    exporter = OtlpHttpExporter("otlphttp/posthog", cfg)
    await exporter.start()
    try:
        assert await exporter.export(make_request(1)) == 0
    finally:
        await exporter.shutdown()
    assert sink.record_count == 1


async def test_uncompressed_and_json_encodings(sink):
    assert await export(sink, compression="none") == 0
    assert "Content-Encoding" not in sink.headers[0]
    assert await export(sink, encoding="json") == 0
    assert sink.headers[1]["Content-Type"] == "application/json"
    assert sink.requests[1] == make_request(4)


async def test_json_empty_object_success_body_as_posthog_sends(sink):
    answer = HttpAnswer(body=b"{}", content_type="application/json")
    assert await export(sink, answer) == 0


async def test_partial_success_in_protobuf(sink):
    resp = ExportLogsServiceResponse()
    resp.partial_success.rejected_log_records = 3
    resp.partial_success.error_message = "3 too old"
    assert await export(sink, HttpAnswer(body=resp.SerializeToString())) == 3


async def test_partial_success_in_json(sink):
    body = json.dumps({"partialSuccess": {"rejectedLogRecords": "2", "errorMessage": "x"}})
    answer = HttpAnswer(body=body.encode(), content_type="application/json")
    assert await export(sink, answer) == 2


async def test_unparseable_success_body_counts_as_accepted(sink):
    answer = HttpAnswer(status=202, body=b"\xff\xfe garbage", content_type="text/plain")
    assert await export(sink, answer) == 0
    deep = b'{"partialSuccess":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    answer = HttpAnswer(body=deep, content_type="application/json")
    assert await export(sink, answer) == 0


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_retryable_statuses(sink, status):
    err = await export_error(sink, HttpAnswer(status=status, body=b"busy",
                                              content_type="text/plain"))
    assert err.retryable and not err.too_large
    assert f"HTTP {status}" in str(err) and "busy" in str(err)


async def test_retry_after_seconds_is_honoured(sink):
    err = await export_error(sink, HttpAnswer(status=429, headers={"Retry-After": "7"}))
    assert err.retryable and err.retry_after == 7.0


async def test_retry_after_http_date_is_honoured(sink):
    import time
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    err = await export_error(sink, HttpAnswer(status=503, headers={"Retry-After": when}))
    assert err.retryable and 100 < err.retry_after <= 120


async def test_413_asks_the_queue_to_split(sink):
    err = await export_error(sink, HttpAnswer(status=413))
    assert err.too_large and not err.retryable


@pytest.mark.parametrize("status", [400, 401, 403, 404, 500, 501])
async def test_other_statuses_are_permanent(sink, status):
    err = await export_error(sink, HttpAnswer(status=status, body=b"nope",
                                              content_type="text/plain"))
    assert not err.retryable and not err.too_large
    assert f"HTTP {status}" in str(err)


async def test_backend_status_message_is_reported_and_truncated(sink):
    status = status_pb2.Status(code=3, message="attribute too long: " + "x" * 5000)
    err = await export_error(sink, HttpAnswer(status=400, body=status.SerializeToString()))
    assert "attribute too long" in str(err)
    assert len(str(err)) < 600
    doc = {"code": 3, "message": "bad field resourceLogs"}
    err = await export_error(sink, HttpAnswer(status=400, body=json.dumps(doc).encode(),
                                              content_type="application/json"))
    assert "bad field resourceLogs" in str(err)


async def test_header_values_never_appear_in_errors(sink):
    echo = f"invalid API key: Bearer {TOKEN}; token {TOKEN} rejected".encode()
    err = await export_error(sink, HttpAnswer(status=401, body=echo, content_type="text/plain"))
    assert "[REDACTED]" in str(err)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_connection_refused_is_retryable():
    exporter = await make_exporter(f"http://127.0.0.1:{closed_port()}")
    try:
        with pytest.raises(ExportError) as info:
            await exporter.export(make_request(1))
    finally:
        await exporter.shutdown()
    assert info.value.retryable
    assert TOKEN not in str(info.value)
    assert "cannot send to http://127.0.0.1:" in str(info.value)


async def test_timeout_is_retryable(sink):
    err = await export_error(sink, HttpAnswer(delay=5), timeout=0.3)
    assert err.retryable and "within 0.3s" in str(err)


def test_missing_endpoint_is_a_clear_error():
    with pytest.raises(ValueError, match="otlphttp/x: otlphttp needs `endpoint`"):
        OtlpHttpExporter("otlphttp/x", OtlpHttpExporterConfig())


@pytest.mark.parametrize("value, expected", [
    ("0", 0.0), ("30", 30.0), (" 5 ", 5.0), (None, None), ("", None), ("soon", None),
    ("-3", None), ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
])
def test_parse_retry_after(value, expected):
    assert parse_retry_after(value, now=2_000_000_000) == expected


def test_parse_retry_after_date_counts_from_now():
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now=40) == 60.0


# --------------------------------------------------------------------------- with the queue


async def test_queue_retries_a_503_then_delivers_once(sink):
    sink.answers.extend([HttpAnswer(status=503, headers={"Retry-After": "0"}),
                         HttpAnswer(status=502)])
    exporter = OtlpHttpExporter("otlphttp/queue", OtlpHttpExporterConfig(endpoint=sink.url))
    retry = RetryConfig(initial_interval=0.01, max_interval=0.05, max_elapsed_time=10)
    queue = ExportQueue(exporter, SendingQueueConfig(num_consumers=1), retry)
    await queue.start()
    sent_before = metric("otelcol_exporter_sent_log_records_total", exporter="otlphttp/queue")
    queue.put(make_request(4), 4)
    await wait_for(lambda: sink.record_count == 4)
    assert await queue.drain(5)
    assert len(sink.raw_bodies) == 3 and len(sink.requests) == 1
    assert metric("otelcol_exporter_sent_log_records_total",
                  exporter="otlphttp/queue") == sent_before + 4


async def test_queue_splits_on_413(sink):
    sink.answers.append(HttpAnswer(status=413))
    exporter = OtlpHttpExporter("otlphttp/split", OtlpHttpExporterConfig(endpoint=sink.url))
    queue = ExportQueue(exporter, SendingQueueConfig(num_consumers=1), RetryConfig(enabled=False))
    await queue.start()
    queue.put(make_request(4), 4)
    assert await queue.drain(5)
    assert [len(r.resource_logs[0].scope_logs[0].log_records) for r in sink.requests] == [2, 2]


# --------------------------------------------------------------------------- encoding cost


@pytest.mark.parametrize(("level", "xfl"), [(1, 4), (9, 2)])
async def test_gzip_level_from_compression_params(sink, level, xfl):
    """compression_params.level reaches zlib: the gzip header's XFL byte says 4 (fastest)
    for level 1 and 2 (best) for level 9 (RFC 1952)."""
    assert await export(sink, compression_params={"level": level}) == 0
    raw = sink.raw_bodies[0]
    assert raw[:2] == b"\x1f\x8b" and raw[8] == xfl
    assert gzip.decompress(raw) == make_request(4).SerializeToString()


def test_compression_level_out_of_range_is_a_config_error():
    with pytest.raises(ValueError, match="level"):
        OtlpHttpExporterConfig(endpoint="http://x", compression_params={"level": 0})


async def test_a_retry_sends_the_bytes_encoded_for_the_first_attempt(sink, monkeypatch):
    """The queue calls export() again with the same request after a retryable failure: the
    body is serialised and compressed once, and the same bytes go out again."""
    sink.answers.append(HttpAnswer(status=503))
    exporter = await make_exporter(sink)
    encoded = []
    real = exporter._encode

    async def counting(request):
        encoded.append(request)
        return await real(request)

    monkeypatch.setattr(exporter, "_encode", counting)
    request = make_request(4)
    try:
        with pytest.raises(ExportError):
            await exporter.export(request)
        assert await exporter.export(request) == 0
        assert await exporter.export(make_request(4)) == 0  # another request: encoded anew
    finally:
        await exporter.shutdown()
    assert len(encoded) == 2
    assert sink.raw_bodies[0] == sink.raw_bodies[1]
    assert len(sink.requests) == 2
