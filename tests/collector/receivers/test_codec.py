"""collector/receivers/codec.py: OTLP protobuf and JSON decode/encode, bounded
decompression, Status bodies."""

from __future__ import annotations

import base64
import gzip
import json
import tracemalloc
import zlib

import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from collector.receivers import codec
from tests.collector.wire_support import (
    SPAN_ID,
    TRACE_ID,
    deep_request_bytes,
    gzip_bomb,
    make_request,
    reference_json,
)

# The example from the OTLP specification's JSON section, extended with the mapping's edge
# cases: 64-bit integers as strings and as numbers, an unknown field, integer enums.
SPEC_JSON = """{
  "resourceLogs": [{
    "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "my.service"}}]},
    "scopeLogs": [{
      "scope": {"name": "my.library", "version": "1.0.0",
                "attributes": [{"key": "my.scope.attribute", "value": {"stringValue": "x"}}]},
      "logRecords": [{
        "timeUnixNano": "1544712660300000000",
        "observedTimeUnixNano": 1544712660300000001,
        "severityNumber": 10,
        "severityText": "Information",
        "traceId": "5B8EFFF798038103D269B633813FC60C",
        "spanId": "EEE19B7EC3C1B174",
        "body": {"stringValue": "Example log record"},
        "attributes": [
          {"key": "string.attribute", "value": {"stringValue": "some string"}},
          {"key": "boolean.attribute", "value": {"boolValue": true}},
          {"key": "int.attribute", "value": {"intValue": "10"}},
          {"key": "int.number", "value": {"intValue": -3}},
          {"key": "double.attribute", "value": {"doubleValue": 637.704}},
          {"key": "array.attribute", "value": {"arrayValue": {"values": [
              {"stringValue": "many"}, {"stringValue": "values"}]}}},
          {"key": "map.attribute", "value": {"kvlistValue": {"values": [
              {"key": "some.map.key", "value": {"stringValue": "some value"}}]}}}
        ],
        "someFutureField": {"nested": [1, 2, 3]}
      }]
    }]
  }],
  "unknownTopLevel": true
}"""


# --------------------------------------------------------------------------- protobuf


def test_protobuf_round_trip():
    req = make_request(5)
    assert codec.decode_protobuf(req.SerializeToString()) == req


@pytest.mark.parametrize("body, reason", [
    (b"\x0a\x05\x12\x03", "truncated"),
    (b"\xff\xff\xff\xff", "truncated"),
    (deep_request_bytes(200), "nested deeper than 100"),
])
def test_protobuf_errors_are_decode_errors_with_a_reason(body, reason):
    with pytest.raises(codec.DecodeError, match=reason):
        codec.decode_protobuf(body)


def test_protobuf_invalid_utf8_names_the_cause():
    good = make_request(1, body="payload-marker").SerializeToString()
    bad = good.replace(b"payload-marker", b"payload\xff\xfeaaaaa")  # same length
    with pytest.raises(codec.DecodeError, match="invalid UTF-8"):
        codec.decode_protobuf(bad)


def test_protobuf_nesting_within_the_limit_is_accepted():
    req = codec.decode_protobuf(deep_request_bytes(40))
    body = req.resource_logs[0].scope_logs[0].log_records[0].body
    for _ in range(40):
        body = body.array_value.values[0]
    assert body.string_value == "leaf"


# --------------------------------------------------------------------------- JSON decode


def test_json_spec_example_decodes_with_the_otlp_mapping():
    req = codec.decode_json(SPEC_JSON.encode())
    rec = req.resource_logs[0].scope_logs[0].log_records[0]
    assert rec.trace_id == TRACE_ID
    assert rec.span_id == SPAN_ID
    assert rec.time_unix_nano == 1544712660300000000
    assert rec.observed_time_unix_nano == 1544712660300000001
    assert rec.severity_number == 10
    assert rec.body.string_value == "Example log record"
    attrs = {kv.key: kv.value for kv in rec.attributes}
    assert attrs["int.attribute"].int_value == 10
    assert attrs["int.number"].int_value == -3
    assert attrs["boolean.attribute"].bool_value is True
    assert attrs["double.attribute"].double_value == 637.704
    assert [v.string_value for v in attrs["array.attribute"].array_value.values] == [
        "many", "values"]
    assert attrs["map.attribute"].kvlist_value.values[0].value.string_value == "some value"
    assert req.resource_logs[0].resource.attributes[0].value.string_value == "my.service"
    assert req.resource_logs[0].scope_logs[0].scope.version == "1.0.0"


def test_json_fast_path_matches_json_format_reference():
    doc = json.loads(SPEC_JSON)
    fast = codec._fast_request(doc)
    reference = codec._reference_request(json.loads(SPEC_JSON))
    assert fast.SerializeToString(deterministic=True) == reference.SerializeToString(
        deterministic=True)


def test_json_snake_case_and_enum_names_are_accepted_like_json_format():
    text = json.dumps({"resource_logs": [{"scope_logs": [{"log_records": [{
        "time_unix_nano": 5, "severity_number": "SEVERITY_NUMBER_WARN",
        "trace_id": TRACE_ID.hex(), "body": {"string_value": "snake"}}]}]}]})
    rec = codec.decode_json(text).resource_logs[0].scope_logs[0].log_records[0]
    assert (rec.time_unix_nano, rec.severity_number, rec.trace_id, rec.body.string_value) == (
        5, 13, TRACE_ID, "snake")


def test_json_bytes_value_is_base64():
    text = ('{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"bytesValue":"'
            + base64.b64encode(b"\x00\xffbin").decode() + '"}}]}]}]}')
    rec = codec.decode_json(text).resource_logs[0].scope_logs[0].log_records[0]
    assert rec.body.bytes_value == b"\x00\xffbin"


@pytest.mark.parametrize("body, message", [
    (b'{"resourceLogs": [', "malformed JSON at line 1 column"),
    (b"[1, 2]", "expected a JSON object"),
    (b"\xff\xfe{}", "not valid UTF-8"),
    (b'{"resourceLogs": 5}', "resourceLogs"),
    (b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"traceId":"zz"}]}]}]}',
     r"logRecords\[0\]\.traceId: expected 32 hex digits"),
    (b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"spanId":"abcd"}]}]}]}',
     r"spanId: expected 16 hex digits"),
    (b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":"soon"}]}]}]}',
     "timeUnixNano"),
    (b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"timeUnixNano":-1}]}]}]}',
     "out of range"),
    (b'{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"\\ud800"}}]}]}]}',
     "surrogate"),
])
def test_json_errors_are_decode_errors_with_a_reason(body, message):
    with pytest.raises(codec.DecodeError, match=message):
        codec.decode_json(body)


def severity_json(value: str) -> str:
    return ('{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"x"}},'
            '{"severityNumber":' + value + ',"body":{"stringValue":"disk full"}}]}]}]}')


@pytest.mark.parametrize("value", ['"lots"', '"ERROR"', "1.5", "true", "[17]", '"17x"',
                                   "4294967313", '"9007199254740993"', "2147483648"])
def test_json_severity_number_that_is_no_severity_is_an_error_naming_the_record(value):
    # json_format alone takes 1.5 and true as 1 and, ignoring unknown fields, "lots" as 0:
    # an ERROR sent that way would silently lose its "always kept" (issue 9 trial).
    with pytest.raises(codec.DecodeError, match=r"logRecords\[1\]\.severityNumber: expected "
                                                r"a severity number .* or a name such as"):
        codec.decode_json(severity_json(value))


def test_json_severity_number_is_checked_under_both_spellings_of_the_lists():
    # camelCase empty, snake_case full: json_format reads both, so both are checked (trial 3:
    # 4294967313 got through as 17, and the snake list's hex trace id was read as base64).
    body = ('{"resourceLogs":[{"scopeLogs":[{"logRecords":[],"log_records":[{'
            '"severityNumber":4294967313,"traceId":"0123456789abcdef0123456789abcdef"}]}]}]}')
    with pytest.raises(codec.DecodeError, match="severityNumber: expected a severity number"):
        codec.decode_json(body)
    ok = body.replace("4294967313", "9")
    rec = codec.decode_json(ok).resource_logs[0].scope_logs[0].log_records[0]
    assert rec.trace_id == bytes.fromhex("0123456789abcdef0123456789abcdef")


@pytest.mark.parametrize("value, number", [
    ("17", 17), ('"SEVERITY_NUMBER_ERROR"', 17), ('"21"', 21), ("1e1", 10), ("null", 0),
    ("999", 999),  # proto3 enums are open: unknown numbers pass (sampling clamps them)
])
def test_json_severity_numbers_and_names_are_accepted(value, number):
    rec = codec.decode_json(severity_json(value)).resource_logs[0].scope_logs[0].log_records[1]
    assert rec.severity_number == number


def test_json_integer_literal_too_long_for_python_is_a_clean_error():
    with pytest.raises(codec.DecodeError, match="malformed JSON"):
        codec.decode_json('{"resourceLogs": ' + "9" * 5000 + "}")


def test_json_deep_nesting_is_a_clean_error():
    value = '{"stringValue":"leaf"}'
    for _ in range(200):
        value = '{"arrayValue":{"values":[' + value + "]}}"
    body = '{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":' + value + "}]}]}]}"
    with pytest.raises(codec.DecodeError, match="nested deeper"):
        codec.decode_json(body)


def test_json_extremely_deep_brackets_are_a_clean_error():
    with pytest.raises(codec.DecodeError):
        codec.decode_json("[" * 100_000 + "]" * 100_000)


def test_json_accepted_nesting_also_decodes_as_protobuf():
    """Whatever JSON accepts can be exported as protobuf and read back by a receiver."""
    for levels in range(30, 60):
        value = '{"stringValue":"leaf"}'
        for _ in range(levels):
            value = '{"arrayValue":{"values":[' + value + "]}}"
        body = '{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":' + value + "}]}]}]}"
        try:
            req = codec.decode_json(body)
        except codec.DecodeError:
            continue
        codec.decode_protobuf(req.SerializeToString())


# --------------------------------------------------------------------------- JSON encode


def test_hand_written_encoders_cover_the_installed_protos():
    assert codec.FAST_JSON_ENCODING, "LogRecord/AnyValue/KeyValue gained fields: update codec"


def test_json_encoding_matches_the_reference_mapping():
    req = make_request(4)
    text = codec.encode_json(req)
    assert json.loads(text) == reference_json(req)
    assert '"traceId":"5b8efff798038103d269b633813fc60c"' in text
    assert '"timeUnixNano":"1700000000000000000"' in text
    assert '"severityNumber":9' in text


def test_json_encoding_round_trips():
    req = make_request(4)
    assert codec.decode_json(codec.encode_json(req)) == req


def test_json_encoding_of_non_finite_doubles_and_empty_values():
    req = ExportLogsServiceRequest()
    rec = req.resource_logs.add().scope_logs.add().log_records.add()
    for i, x in enumerate([float("nan"), float("inf"), float("-inf"), 1e300]):
        rec.attributes.add(key=f"d{i}").value.double_value = x
    rec.attributes.add(key="empty_array").value.array_value.SetInParent()
    rec.attributes.add(key="empty_map").value.kvlist_value.SetInParent()
    rec.body.SetInParent()
    assert json.loads(codec.encode_json(req)) == reference_json(req)


def test_generic_encoder_matches_reference_for_other_messages():
    resp = ExportLogsServiceResponse()
    resp.partial_success.rejected_log_records = 2**40
    resp.partial_success.error_message = "über"
    assert json.loads(codec.encode_json(resp)) == json_format.MessageToDict(resp)


# --------------------------------------------------------------------------- decompression


def test_gzip_round_trip_and_concatenated_members():
    data = make_request(50).SerializeToString()
    assert codec.decompress(gzip.compress(data), "gzip", len(data)) == data
    two = gzip.compress(data[:100]) + gzip.compress(data[100:])
    assert codec.decompress(two, "gzip", len(data)) == data


def test_deflate_and_identity():
    assert codec.decompress(zlib.compress(b"abc"), "deflate", 10) == b"abc"
    assert codec.decompress(b"abc", "identity", 10) == b"abc"
    assert codec.decompress(b"abc", "", 10) == b"abc"


def test_limit_is_applied_after_decompression():
    data = b"x" * 1000
    assert codec.decompress(gzip.compress(data), "gzip", 1000) == data
    with pytest.raises(codec.BodyTooLarge, match="larger than the limit of 999 bytes"):
        codec.decompress(gzip.compress(data), "gzip", 999)
    with pytest.raises(codec.BodyTooLarge):
        codec.decompress(data, "identity", 999)


def test_gzip_bomb_stops_at_the_limit_without_expanding():
    bomb = gzip_bomb(64 * 1024 * 1024)
    assert len(bomb) < 256 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(codec.BodyTooLarge):
            codec.decompress(bomb, "gzip", 1024 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024  # the full expansion would be 64 MiB


def test_streaming_decompressor_counts_across_chunks():
    bomb = gzip_bomb(8 * 1024 * 1024)
    d = codec.Decompressor("gzip", 1024 * 1024)
    with pytest.raises(codec.BodyTooLarge):  # noqa: PT012 - the limit trips mid-stream
        for i in range(0, len(bomb), 100):
            d.feed(bomb[i:i + 100])


@pytest.mark.parametrize("body, message", [
    (gzip.compress(b"hello world")[:-6], "truncated"),
    (b"definitely not gzip", "not valid gzip"),
    (gzip.compress(b"hello") + b"trailing junk", "not valid gzip"),
    (b"", "empty body"),
])
def test_bad_gzip_is_a_decode_error(body, message):
    with pytest.raises(codec.DecodeError, match=message):
        codec.decompress(body, "gzip", 1000)


def test_unsupported_encoding():
    with pytest.raises(codec.UnsupportedEncoding, match="'br' is not supported"):
        codec.Decompressor("br", 10)


# --------------------------------------------------------------------------- responses


def test_status_with_retry_info_in_both_encodings():
    status = codec.make_status(codec.RESOURCE_EXHAUSTED, "queue full", 2.5)
    parsed = status_pb2.Status.FromString(codec.encode_status(status, as_json=False))
    assert parsed.code == 8 and parsed.message == "queue full"
    info = error_details_pb2.RetryInfo()
    assert parsed.details[0].Unpack(info)
    assert info.retry_delay.seconds == 2 and info.retry_delay.nanos == 500_000_000
    assert codec.retry_delay(parsed) == 2.5
    doc = json.loads(codec.encode_status(status, as_json=True))
    assert doc["code"] == 8 and doc["message"] == "queue full"
    assert doc["details"][0]["retryDelay"] == "2.500s"


def test_response_bodies():
    assert codec.encode_response(as_json=True) == b"{}"
    assert codec.encode_response(as_json=False) == b""
    doc = json.loads(codec.encode_response(3, "three bad", as_json=True))
    assert doc == {"partialSuccess": {"rejectedLogRecords": "3", "errorMessage": "three bad"}}
    resp = ExportLogsServiceResponse.FromString(codec.encode_response(3, "x", as_json=False))
    assert resp.partial_success.rejected_log_records == 3
