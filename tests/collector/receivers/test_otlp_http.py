"""collector/receivers/otlp_http.py against real clients on loopback, feeding a real
Pipeline whose exporter records what arrives."""

from __future__ import annotations

import asyncio
import gzip
import json
import zlib

import aiohttp
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from collector.config import HttpServerConfig
from collector.receivers import codec
from collector.receivers.otlp_http import OtlpHttpReceiver
from tests.collector.wire_support import (
    TRACE_ID,
    RecordingExporter,
    deep_request_bytes,
    gzip_bomb,
    make_pipeline,
    make_request,
    metric,
    wait_for,
)

PROTO = "application/x-protobuf"
JSON = "application/json"
LIMIT = 256 * 1024


class Served:
    """A receiver + pipeline + recording exporter, and a client session."""

    def __init__(self, receiver, pipeline, exporter, session):
        self.receiver = receiver
        self.pipeline = pipeline
        self.exporter = exporter
        self.session = session
        self.url = f"http://127.0.0.1:{receiver.port}/v1/logs"

    async def post(self, body: bytes, content_type: str = PROTO, **headers: str):
        headers = {"Content-Type": content_type, **headers}
        async with self.session.post(self.url, data=body, headers=headers) as resp:
            return resp.status, resp.headers, await resp.read()

    async def assert_still_serves(self) -> None:
        before = self.exporter.record_count
        status, _, _ = await self.post(make_request(2).SerializeToString())
        assert status == 200
        await wait_for(lambda: self.exporter.record_count == before + 2)


@pytest.fixture
async def served(request):
    name = f"otlp/{request.node.name}"[:60]
    exporter = RecordingExporter()
    pipeline = make_pipeline(exporter, queue_size=getattr(request, "param", 10_000))
    await pipeline.start()
    receiver = OtlpHttpReceiver(
        name, HttpServerConfig(endpoint="127.0.0.1:0", max_request_body_size=LIMIT), pipeline)
    await receiver.start()
    session = aiohttp.ClientSession(auto_decompress=False)
    try:
        yield Served(receiver, pipeline, exporter, session)
    finally:
        await session.close()
        await receiver.stop()
        await pipeline.shutdown(5)


# --------------------------------------------------------------------------- success


async def test_protobuf_request_arrives_intact(served):
    req = make_request(5)
    accepted_before = metric("otelcol_receiver_accepted_log_records_total",
                             receiver=served.receiver.name, transport="http")
    status, headers, body = await served.post(req.SerializeToString())
    assert status == 200
    assert headers["Content-Type"] == PROTO
    assert not ExportLogsServiceResponse.FromString(body).HasField("partial_success")
    await wait_for(lambda: served.exporter.record_count == 5)
    assert served.exporter.requests[0] == req
    assert metric("otelcol_receiver_accepted_log_records_total", receiver=served.receiver.name,
                  transport="http") == accepted_before + 5


async def test_json_request_arrives_intact_and_is_answered_in_json(served):
    req = make_request(4)
    status, headers, body = await served.post(codec.encode_json(req).encode(), JSON)
    assert status == 200
    assert headers["Content-Type"] == JSON
    assert json.loads(body) == {}
    await wait_for(lambda: served.exporter.record_count == 4)
    assert served.exporter.requests[0] == req


async def test_json_mapping_hex_ids_int64_forms_enums_unknown_fields(served):
    text = json.dumps({"resourceLogs": [{"scopeLogs": [{"logRecords": [
        {"timeUnixNano": "1700000000000000001", "observedTimeUnixNano": 1700000000000000002,
         "severityNumber": 17, "traceId": TRACE_ID.hex(), "spanId": "eee19b7ec3c1b174",
         "body": {"stringValue": "from curl"}, "someNewField": {"x": 1}}]}]}],
        "extra": [1, 2]})
    status, _, _ = await served.post(text.encode(), JSON)
    assert status == 200
    await wait_for(lambda: served.exporter.record_count == 1)
    rec = served.exporter.requests[0].resource_logs[0].scope_logs[0].log_records[0]
    assert (rec.time_unix_nano, rec.observed_time_unix_nano, rec.severity_number) == (
        1700000000000000001, 1700000000000000002, 17)
    assert rec.trace_id == TRACE_ID and rec.span_id.hex() == "eee19b7ec3c1b174"
    assert rec.body.string_value == "from curl"


@pytest.mark.parametrize("content_type", [PROTO, "application/protobuf", JSON])
@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_requests(served, content_type, encoding):
    req = make_request(3)
    raw = (codec.encode_json(req).encode() if content_type == JSON
           else req.SerializeToString())
    body = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    status, headers, _ = await served.post(body, content_type, **{"Content-Encoding": encoding})
    assert status == 200
    assert headers["Content-Type"] == content_type
    await wait_for(lambda: served.exporter.record_count == 3)
    assert served.exporter.requests[0] == req


async def test_observed_time_is_filled_where_zero(served):
    req = make_request(1)
    req.resource_logs[0].scope_logs[0].log_records[0].observed_time_unix_nano = 0
    assert (await served.post(req.SerializeToString()))[0] == 200
    await wait_for(lambda: served.exporter.record_count == 1)
    rec = served.exporter.requests[0].resource_logs[0].scope_logs[0].log_records[0]
    assert rec.observed_time_unix_nano > 1_600_000_000 * 10**9


async def test_empty_request_is_answered_without_reaching_exporters(served):
    status, _, body = await served.post(b"", PROTO)
    assert status == 200 and body == b""
    status, _, body = await served.post(b"{}", JSON)
    assert status == 200 and json.loads(body) == {}
    assert served.exporter.requests == []


# --------------------------------------------------------------------------- errors


def deep_json(levels: int) -> bytes:
    value = '{"stringValue":"leaf"}'
    for _ in range(levels):
        value = '{"arrayValue":{"values":[' + value + "]}}"
    return ('{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":' + value
            + "}]}]}]}").encode()


def invalid_utf8_protobuf() -> bytes:
    good = make_request(1, body="payload-marker").SerializeToString()
    return good.replace(b"payload-marker", b"payload\xff\xfeaaaaa")


BAD_REQUESTS = {
    # name: (body, content type, extra headers, status, message fragment or None)
    "malformed protobuf": (b"\x0a\xff\xff\xff", PROTO, {}, 400, "invalid OTLP protobuf"),
    "truncated protobuf": (make_request(3).SerializeToString()[:-7], PROTO, {}, 400,
                           "truncated"),
    "malformed JSON": (b'{"resourceLogs": [', JSON, {}, 400, "malformed JSON"),
    "JSON of the wrong shape": (b'{"resourceLogs": {"a": 1}}', JSON, {}, 400, "resourceLogs"),
    "bad trace id": (b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"xyz"}]}]}]}',
                     JSON, {}, 400, "traceId"),
    "unknown severity name": (b'{"resourceLogs":[{"scopeLogs":[{"logRecords":['
                              b'{"severityNumber":"FATALISH"}]}]}]}', JSON, {}, 400,
                              "severityNumber: expected a severity number"),
    "invalid UTF-8 in protobuf": (invalid_utf8_protobuf(), PROTO, {}, 400, "UTF-8"),
    "invalid UTF-8 JSON": (b'{"a": "\xff"}', JSON, {}, 400, "UTF-8"),
    "deep nesting protobuf": (deep_request_bytes(300), PROTO, {}, 400, "nested deeper"),
    "deep nesting JSON": (deep_json(300), JSON, {}, 400, "nested deeper"),
    "bad gzip": (b"not gzip at all", PROTO, {"Content-Encoding": "gzip"}, 400,
                 "not valid gzip"),
    "truncated gzip": (gzip.compress(make_request(3).SerializeToString())[:-10], PROTO,
                       {"Content-Encoding": "gzip"}, 400, "truncated"),
    "oversize after gunzip": (gzip.compress(make_request(1, body="x" * (LIMIT + 10))
                                            .SerializeToString()), PROTO,
                              {"Content-Encoding": "gzip"}, 413, "after decompression"),
    "gzip bomb": (gzip_bomb(64 * 1024 * 1024), PROTO, {"Content-Encoding": "gzip"}, 413,
                  "max_request_body_size"),
    "oversize plain body": (make_request(1, body="y" * (LIMIT + 10)).SerializeToString(),
                            JSON, {}, 413, "larger than the limit"),
    "unsupported content encoding": (b"...", PROTO, {"Content-Encoding": "br"}, 415, "br"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
async def test_bad_request_gets_status_in_request_encoding_and_server_keeps_serving(
        served, case):
    body, ctype, headers, want_status, fragment = BAD_REQUESTS[case]
    status, resp_headers, resp_body = await served.post(body, ctype, **headers)
    assert status == want_status
    assert resp_headers["Content-Type"] == ctype
    if ctype == JSON:
        doc = json.loads(resp_body)
        message, code = doc["message"], doc["code"]
    else:
        parsed = status_pb2.Status.FromString(resp_body)
        message, code = parsed.message, parsed.code
    assert code == codec.INVALID_ARGUMENT
    assert fragment in message
    assert served.exporter.requests == []
    await served.assert_still_serves()


async def test_bad_requests_are_counted_by_reason(served):
    labels = {"receiver": served.receiver.name, "transport": "http", "reason": "malformed"}
    before = metric("lipservice_receiver_bad_requests_total", **labels)
    await served.post(b"\xff", PROTO)
    assert metric("lipservice_receiver_bad_requests_total", **labels) == before + 1


@pytest.mark.parametrize("ctype", ["text/plain", "application/xml", "application/octet-stream"])
async def test_wrong_content_type_is_415(served, ctype):
    status, headers, body = await served.post(make_request(1).SerializeToString(), ctype)
    assert status == 415
    assert b"application/x-protobuf or application/json" in body
    await served.assert_still_serves()


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_wrong_method_is_405(served, method):
    async with served.session.request(method, served.url) as resp:
        assert resp.status == 405
        assert resp.headers["Allow"] == "POST"
        assert "POST" in await resp.text()
    await served.assert_still_serves()


@pytest.mark.parametrize("path", ["/v1/traces", "/v1/metrics"])
async def test_traces_and_metrics_get_a_404_that_says_logs_only(served, path):
    url = served.url.replace("/v1/logs", path)
    async with served.session.post(url, data=b"x") as resp:
        assert resp.status == 404
        assert "logs only" in await resp.text()
    await served.assert_still_serves()


async def test_content_length_over_the_limit_is_413_before_reading(served):
    reader, writer = await asyncio.open_connection("127.0.0.1", served.receiver.port)
    writer.write(b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf"
                 b"\r\nContent-Length: %d\r\n\r\n" % (LIMIT * 100))
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), 10)
    assert status_line.startswith(b"HTTP/1.1 413")
    writer.close()
    await served.assert_still_serves()


async def test_client_that_disconnects_mid_body_does_not_hurt(served):
    labels = {"receiver": served.receiver.name, "transport": "http", "reason": "incomplete"}
    before = metric("lipservice_receiver_bad_requests_total", **labels)
    reader, writer = await asyncio.open_connection("127.0.0.1", served.receiver.port)
    writer.write(b"POST /v1/logs HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf"
                 b"\r\nContent-Length: 1000\r\n\r\n" + b"\x0a" * 10)
    await writer.drain()
    writer.close()
    await wait_for(lambda: metric("lipservice_receiver_bad_requests_total", **labels)
                   == before + 1)
    await served.assert_still_serves()
    assert served.exporter.record_count == 2


# --------------------------------------------------------------------------- backpressure


@pytest.mark.parametrize("served", [5], indirect=True)
@pytest.mark.parametrize("ctype", [PROTO, JSON])
async def test_full_queue_answers_429_with_retry_after_and_loses_nothing(served, ctype):
    served.exporter.gate.clear()  # the exporter hangs: the queue fills
    first = make_request(4)
    encode = (lambda r: codec.encode_json(r).encode()) if ctype == JSON else (
        lambda r: r.SerializeToString())
    assert (await served.post(encode(first), ctype))[0] == 200
    labels = {"receiver": served.receiver.name, "transport": "http", "reason": "queue_full"}
    refused_before = metric("otelcol_receiver_refused_log_records_total", **labels)

    status, headers, body = await served.post(encode(make_request(3)), ctype)
    assert status == 429
    assert int(headers["Retry-After"]) >= 1
    if ctype == JSON:
        doc = json.loads(body)
        assert doc["code"] == codec.RESOURCE_EXHAUSTED and "full" in doc["message"]
        assert doc["details"][0]["@type"].endswith("google.rpc.RetryInfo")
    else:
        parsed = status_pb2.Status.FromString(body)
        assert parsed.code == codec.RESOURCE_EXHAUSTED
        assert parsed.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    assert metric("otelcol_receiver_refused_log_records_total", **labels) == refused_before + 3

    served.exporter.gate.set()
    await wait_for(lambda: served.exporter.record_count == 4)
    assert served.exporter.requests[0] == first
    await served.assert_still_serves()  # room again: the retried request is accepted


async def test_partial_success_when_the_pipeline_accepts_fewer():
    """Also: the pipeline is handed the protobuf bytes the request was decoded from (the
    batch reads its columns from them), and no bytes for OTLP/JSON."""
    raws: list[bytes | None] = []

    class AcceptsAllButOne:
        def consume(self, request: ExportLogsServiceRequest, nbytes: int | None = None,
                    raw: bytes | None = None) -> int:
            raws.append(raw)
            return sum(len(sl.log_records) for rl in request.resource_logs
                       for sl in rl.scope_logs) - 1

    receiver = OtlpHttpReceiver("otlp/partial", HttpServerConfig(endpoint="127.0.0.1:0"),
                                AcceptsAllButOne())
    await receiver.start()
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{receiver.port}/v1/logs"
            async with session.post(url, data=make_request(3).SerializeToString(),
                                    headers={"Content-Type": PROTO}) as resp:
                assert resp.status == 200
                answer = ExportLogsServiceResponse.FromString(await resp.read())
            async with session.post(url, data=codec.encode_json(make_request(3)),
                                    headers={"Content-Type": JSON}) as resp:
                doc = await resp.json()
    finally:
        await receiver.stop()
    assert answer.partial_success.rejected_log_records == 1
    assert doc["partialSuccess"]["rejectedLogRecords"] in ("1", 1)
    assert raws == [make_request(3).SerializeToString(), None]


# --------------------------------------------------------------------------- lifecycle


async def test_port_in_use_is_an_os_error_naming_the_endpoint(served):
    endpoint = f"127.0.0.1:{served.receiver.port}"
    other = OtlpHttpReceiver("otlp/second", HttpServerConfig(endpoint=endpoint),
                             served.pipeline)
    with pytest.raises(OSError, match=f"cannot listen on {endpoint}: Address already in use"):
        await other.start()
    await served.assert_still_serves()


async def test_stop_releases_the_port():
    receiver = OtlpHttpReceiver("otlp/stop", HttpServerConfig(endpoint="127.0.0.1:0"),
                                make_pipeline(RecordingExporter()))
    await receiver.start()
    port = receiver.port
    await receiver.stop()
    again = OtlpHttpReceiver("otlp/stop2", HttpServerConfig(endpoint=f"127.0.0.1:{port}"),
                             make_pipeline(RecordingExporter()))
    await again.start()
    await again.stop()
