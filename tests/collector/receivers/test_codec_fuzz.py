"""Property tests of the decode paths (protobuf, OTLP/JSON, gzip): on any input they return
a request or raise DecodeError with a message, never anything else; the fast JSON path
agrees with json_format wherever it accepts; JSON encoding matches the reference mapping.

Small by default (60 examples per test, about 700 in all) so ``make test`` stays quick; set
``LIPSERVICE_FUZZ_EXAMPLES=20000`` for a longer run.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import os

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.receivers import codec
from tests.collector.wire_support import deep_request_bytes, make_request, reference_json

EXAMPLES = int(os.environ.get("LIPSERVICE_FUZZ_EXAMPLES", "60"))
QUICK = settings(max_examples=EXAMPLES, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

SEEDS = [make_request(2).SerializeToString(), deep_request_bytes(8),
         make_request(1, body="").SerializeToString()]


def must_decode_or_explain(fn, data):
    try:
        return fn(data)
    except codec.DecodeError as err:
        assert str(err).strip(), "a DecodeError must carry a message"
        return None


@st.composite
def mutated(draw, seeds=SEEDS):
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["truncate", "flip", "insert", "delete"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "truncate":
            del data[i:]
        elif op == "flip":
            data[i] = draw(st.integers(0, 255))
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            del data[i:i + draw(st.integers(1, 8))]
    return bytes(data)


# --------------------------------------------------------------------------- protobuf


@QUICK
@given(st.binary(max_size=400))
def test_protobuf_random_bytes(data):
    must_decode_or_explain(codec.decode_protobuf, data)


@QUICK
@given(mutated())
def test_protobuf_mutated_requests(data):
    must_decode_or_explain(codec.decode_protobuf, data)


# --------------------------------------------------------------------------- JSON

KEYS = ["resourceLogs", "resource_logs", "scopeLogs", "scope_logs", "logRecords",
        "log_records", "resource", "scope", "attributes", "key", "value", "values", "body",
        "stringValue", "intValue", "doubleValue", "boolValue", "arrayValue", "kvlistValue",
        "bytesValue", "string_value", "timeUnixNano", "observedTimeUnixNano",
        "severityNumber", "severity_number", "severityText", "traceId", "trace_id", "spanId",
        "flags", "eventName", "droppedAttributesCount", "name", "version", "schemaUrl",
        "entityRefs", "unknownField"]
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from(["", "0", "12", "-5", "1e3", " 7", "NaN", "Infinity", "AAEC", "SEVERITY_NUMBER_INFO",
                     "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "\ud800"]))
TREES = st.recursive(
    SCALARS,
    lambda children: st.one_of(st.lists(children, max_size=3),
                               st.dictionaries(st.sampled_from(KEYS), children, max_size=4)),
    max_leaves=25)


def hex_id(n):
    return st.binary(min_size=n, max_size=n).map(bytes.hex)


INT_LIKE = st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1).map(str))
ANY_VALUES = st.deferred(lambda: st.one_of(
    st.builds(lambda s: {"stringValue": s}, st.text(max_size=20)),
    st.builds(lambda i: {"intValue": i},
              st.one_of(st.integers(-(2**63), 2**63 - 1),
                        st.integers(-(2**63), 2**63 - 1).map(str))),
    st.builds(lambda b: {"boolValue": b}, st.booleans()),
    st.builds(lambda f: {"doubleValue": f}, st.floats(allow_nan=False, allow_infinity=False)),
    st.builds(lambda b: {"bytesValue": base64.b64encode(b).decode()}, st.binary(max_size=8)),
    st.builds(lambda v: {"arrayValue": {"values": v}}, st.lists(ANY_VALUES, max_size=3)),
    st.builds(lambda v: {"kvlistValue": {"values": v}}, st.lists(KEY_VALUES, max_size=3)),
    st.just({}),
))
KEY_VALUES = st.deferred(lambda: st.fixed_dictionaries(
    {"key": st.text(max_size=8)}, optional={"value": ANY_VALUES}))
RECORDS = st.fixed_dictionaries({}, optional={
    "timeUnixNano": INT_LIKE, "observedTimeUnixNano": INT_LIKE,
    "severityNumber": st.integers(0, 24), "severityText": st.text(max_size=8),
    "body": ANY_VALUES, "attributes": st.lists(KEY_VALUES, max_size=4),
    "droppedAttributesCount": st.integers(0, 2**32 - 1), "flags": st.integers(0, 2**32 - 1),
    "traceId": st.one_of(hex_id(16), st.just("")), "spanId": st.one_of(hex_id(8), st.just("")),
    "eventName": st.text(max_size=8), "futureField": TREES,
})
SCOPES = st.fixed_dictionaries({}, optional={
    "name": st.text(max_size=8), "version": st.text(max_size=8),
    "attributes": st.lists(KEY_VALUES, max_size=2),
    "droppedAttributesCount": st.integers(0, 5)})
VALID_REQUESTS = st.fixed_dictionaries({"resourceLogs": st.lists(st.fixed_dictionaries({}, optional={
    "resource": st.fixed_dictionaries({}, optional={
        "attributes": st.lists(KEY_VALUES, max_size=3),
        "droppedAttributesCount": st.integers(0, 5)}),
    "schemaUrl": st.text(max_size=8),
    "scopeLogs": st.lists(st.fixed_dictionaries({}, optional={
        "scope": SCOPES, "schemaUrl": st.text(max_size=8),
        "logRecords": st.lists(RECORDS, max_size=4)}), max_size=2),
}), max_size=2)})


@st.composite
def corrupted(draw):
    """A valid request tree with one subtree replaced by arbitrary JSON."""
    tree = draw(VALID_REQUESTS)
    node = tree
    for _ in range(draw(st.integers(0, 8))):
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node)))
            child = node[key]
            if not isinstance(child, dict | list) or draw(st.booleans()):
                node[key] = draw(TREES)
                return tree
            node = child
        elif isinstance(node, list) and node:
            i = draw(st.integers(0, len(node) - 1))
            if not isinstance(node[i], dict | list) or draw(st.booleans()):
                node[i] = draw(TREES)
                return tree
            node = node[i]
        else:
            break
    return tree


@QUICK
@given(st.binary(max_size=300))
def test_json_random_bytes(data):
    must_decode_or_explain(codec.decode_json, data)


@QUICK
@given(TREES)
def test_json_random_trees(tree):
    must_decode_or_explain(codec.decode_json, json.dumps(tree))


@QUICK
@given(mutated([codec.encode_json(make_request(2)).encode()]))
def test_json_mutated_text(data):
    must_decode_or_explain(codec.decode_json, data)


def assert_fast_agrees_with_reference(tree):
    try:
        fast = codec._fast_request(copy.deepcopy(tree))
    except Exception:  # noqa: BLE001 - the fast path may give up on anything
        fast = None
    try:
        reference = codec._reference_request(copy.deepcopy(tree))
    except codec.DecodeError:
        assert fast is None, "fast path accepted what json_format rejects"
        return
    if fast is not None:
        assert fast.SerializeToString(deterministic=True) == reference.SerializeToString(
            deterministic=True)
    decoded = codec.decode_json(json.dumps(tree))
    assert decoded.SerializeToString(deterministic=True) == reference.SerializeToString(
        deterministic=True)


@QUICK
@given(VALID_REQUESTS)
def test_json_fast_path_equals_reference_on_valid_requests(tree):
    assert_fast_agrees_with_reference(tree)


@QUICK
@given(corrupted())
def test_json_fast_path_equals_reference_on_corrupted_requests(tree):
    assert_fast_agrees_with_reference(tree)


@QUICK
@given(VALID_REQUESTS)
def test_json_encoding_matches_reference_and_round_trips(tree):
    msg = codec._reference_request(tree)
    text = codec.encode_json(msg)
    assert json.loads(text) == reference_json(msg)
    back = codec.decode_json(text)
    assert back.SerializeToString(deterministic=True) == msg.SerializeToString(
        deterministic=True)


# --------------------------------------------------------------------------- gzip


@QUICK
@given(st.binary(max_size=300))
def test_gzip_random_bytes(data):
    must_decode_or_explain(lambda d: codec.decompress(d, "gzip", 4096), data)


@QUICK
@given(mutated([gzip.compress(s) for s in SEEDS]))
def test_gzip_mutated_then_decoded(data):
    body = must_decode_or_explain(lambda d: codec.decompress(d, "gzip", 1 << 20), data)
    if body is not None:
        must_decode_or_explain(codec.decode_protobuf, body)
