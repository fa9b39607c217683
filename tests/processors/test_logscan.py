"""The C reader of OTLP bytes (processors/_logscan.c) against upb, the source of truth.

``columns(data)`` must give exactly what upb reads from the decoded request (bodies'
string_value, severity_number, severity_text, trace_id, in request order) or None, for any
bytes, and never raise on bad bytes; ``skeletons(texts)`` must give the same bytes as the
signature processor's pure-Python passes. And a batch made with the bytes must be processed
exactly as one made without them.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from processors import base
from processors.base import LogBatch
from processors.sampling import Config as SamplingConfig
from processors.sampling import SamplingProcessor
from processors.signature import Config as SignatureConfig
from processors.signature import SignatureProcessor, _skeletons_py, skeletons

logscan = pytest.importorskip(
    "processors._logscan",
    reason="the C extension is not built (no C compiler at install time); the sidecar "
           "then reads upb, tested by the rest of the suite")


def upb_columns(data: bytes) -> tuple[list, list, list, list]:
    req = ExportLogsServiceRequest.FromString(data)
    recs = [r for rl in req.resource_logs for sl in rl.scope_logs for r in sl.log_records]
    return ([r.body.string_value for r in recs], [r.severity_number for r in recs],
            [r.severity_text for r in recs], [r.trace_id for r in recs])


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number: int, wire_type: int, payload: bytes) -> bytes:
    """One protobuf field: tag, then for LEN (2) a length prefix."""
    tag = varint(number << 3 | wire_type)
    return tag + (varint(len(payload)) + payload if wire_type == 2 else payload)


def request_of(*records: bytes) -> bytes:
    """Serialized request of one resource and one scope holding the given raw records."""
    scope = b"".join(field(2, 2, r) for r in records)
    return field(1, 2, field(2, 2, scope))


# ---------------------------------------------------------------------------- strategies

texts = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
STRINDEX = "string_value_strindex" in AnyValue.DESCRIPTOR.fields_by_name  # proto >= 1.45
any_values = st.one_of(
    st.integers(0, 2**31 - 1).map(lambda i: AnyValue(string_value_strindex=i)) if STRINDEX
    else st.none(),
    st.none(),
    texts.map(lambda s: AnyValue(string_value=s)),
    st.integers(-(2**63), 2**63 - 1).map(lambda i: AnyValue(int_value=i)),
    st.booleans().map(lambda b: AnyValue(bool_value=b)),
    st.binary(max_size=8).map(lambda b: AnyValue(bytes_value=b)),
    st.floats(allow_nan=False).map(lambda f: AnyValue(double_value=f)),
    st.lists(st.tuples(st.sampled_from(["message", "level", "k"]), texts), max_size=3).map(
        lambda kvs: AnyValue(kvlist_value=KeyValueList(values=[
            KeyValue(key=k, value=AnyValue(string_value=v)) for k, v in kvs]))),
)


@st.composite
def log_records(draw: st.DrawFn) -> LogRecord:
    rec = LogRecord(severity_number=draw(st.integers(0, 30)),
                    severity_text=draw(st.sampled_from(["", "INFO", "error", " Warn "])),
                    trace_id=draw(st.sampled_from([b"", bytes(16), bytes(range(16)), b"\x01"])),
                    span_id=draw(st.binary(max_size=8)),
                    time_unix_nano=draw(st.integers(0, 2**64 - 1)),
                    flags=draw(st.integers(0, 2**32 - 1)),
                    event_name=draw(texts))
    body = draw(any_values)
    if body is not None:
        rec.body.CopyFrom(body)
    for k in draw(st.lists(texts, max_size=2)):
        rec.attributes.add(key=k).value.string_value = k
    return rec


@st.composite
def requests(draw: st.DrawFn) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        rl = req.resource_logs.add()
        rl.resource.attributes.add(key="service.name").value.string_value = draw(
            st.sampled_from(["a", "b"]))
        rl.schema_url = draw(st.sampled_from(["", "https://opentelemetry.io/schemas/1.4.0"]))
        for _ in range(draw(st.integers(0, 3))):
            sl = rl.scope_logs.add()
            sl.scope.name = draw(texts)
            sl.log_records.extend(draw(st.lists(log_records(), max_size=5)))
    return req


# ---------------------------------------------------------------------------- columns


@settings(max_examples=300, deadline=None)
@given(requests())
def test_columns_equal_upb_reads(req: ExportLogsServiceRequest) -> None:
    """Exactly upb's reads; None (upb reads) only for a body whose oneof member is one the
    reader leaves to upb (above field 7)."""
    data = req.SerializeToString()
    left_to_upb = any(
        r.body.WhichOneof("value") and
        AnyValue.DESCRIPTOR.fields_by_name[r.body.WhichOneof("value")].number > 7
        for rl in req.resource_logs for sl in rl.scope_logs for r in sl.log_records)
    assert logscan.columns(data) == (None if left_to_upb else upb_columns(data))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(log_records(), st.lists(any_values, min_size=1, max_size=3)),
                max_size=4))
def test_columns_equal_upb_on_bodies_sent_in_pieces(
        records: list[tuple[LogRecord, list[AnyValue | None]]]) -> None:
    """A body whose AnyValue arrives as several serialized values one after the other (the
    wire allows it; upb merges them: the oneof's last member wins): columns() reads what
    upb reads, or leaves the request to upb."""
    raw = []
    for rec, values in records:
        rec.ClearField("body")
        body = b"".join(v.SerializeToString() for v in values if v is not None)
        raw.append(rec.SerializeToString() + field(5, 2, body))
    data = request_of(*raw)
    cols = logscan.columns(data)
    assert cols is None or cols == upb_columns(data)


@pytest.mark.parametrize("member", [f.name for f in
                                    AnyValue.DESCRIPTOR.oneofs_by_name["value"].fields])
def test_every_body_oneof_member_of_the_installed_schema_replaces_the_string(
        member: str) -> None:
    """For each member of AnyValue's oneof in the installed opentelemetry-proto (new
    members included, such as string_value_strindex in 1.45), a string then that member,
    and that member then a string: columns() agrees with upb or leaves it to upb."""
    value = AnyValue()
    f = AnyValue.DESCRIPTOR.fields_by_name[member]
    if f.message_type is not None:
        getattr(value, member).SetInParent()
    else:
        setattr(value, member, {f.TYPE_STRING: "s", f.TYPE_BYTES: b"b", f.TYPE_BOOL: True,
                                f.TYPE_DOUBLE: 1.5}.get(f.type, 3))
    text = AnyValue(string_value="hello 42").SerializeToString()
    for body in (text + value.SerializeToString(), value.SerializeToString() + text):
        data = request_of(field(5, 2, body))
        cols = logscan.columns(data)
        assert cols is None or cols == upb_columns(data), (member, body)


def test_schema_check_refuses_a_schema_the_reader_does_not_follow(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert base._native_schema_problem() is None  # the pinned schema: the reader is used
    monkeypatch.setattr(base, "NATIVE_FIELDS", [(LogRecord, "body", 6)])
    assert base._native_schema_problem() == "LogRecord.body is not field 6"
    monkeypatch.setattr(base, "NATIVE_FIELDS", [(AnyValue, "string_value", 1),
                                                (LogRecord, "severity_text", 3)])
    assert base._native_schema_problem() is None
    monkeypatch.setattr(base, "NATIVE_FIELDS", [(LogRecord, "severity_number", 2),
                                                (AnyValue, "string_value", 1),
                                                (ExportLogsServiceRequest, "resource_logs", 1)])
    assert base._native_schema_problem() is None


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.data())
def test_mangled_bytes_never_raise_and_never_disagree_with_upb(
        req: ExportLogsServiceRequest, data: st.DataObject) -> None:
    """Flipped, cut and inserted bytes: columns() never raises, and whenever both it and
    upb accept the bytes, they read the same values."""
    raw = bytearray(req.SerializeToString() or b"\x0a\x00")
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if op == "flip" and raw:
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del raw[at:at + data.draw(st.integers(1, 3))]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=3))
    cols = logscan.columns(bytes(raw))
    try:
        expected = upb_columns(bytes(raw))
    except Exception:  # noqa: BLE001 - upb refuses them: the receiver answers 400 first
        return
    assert cols is None or cols == expected


@pytest.mark.parametrize("records, why", [
    ([field(5, 2, field(1, 2, b"a")) + field(5, 2, field(3, 0, varint(1)))],
     "a body sent twice (upb merges the two)"),
    ([field(2, 0, varint(2**64 - 1))], "a negative severity_number"),
    ([field(2, 0, varint(2**31))], "a severity_number over int32"),
    ([field(2, 2, b"\x09")], "severity_number with a LEN wire type"),
    ([field(5, 2, field(2, 2, b"x"))], "an AnyValue member with the wrong wire type"),
    ([field(3, 2, b"\xff\xfe")], "a severity_text that is not UTF-8"),
    ([field(5, 2, field(1, 2, b"hello") + field(8, 0, varint(3)))],
     "an AnyValue member above 7 (string_value_strindex in 1.45 replaces the string)"),
    ([field(5, 2, field(9, 2, b"x"))], "an AnyValue field the schema may add"),
    ([field(20, 3, b"")], "a group"),
])
def test_columns_leave_what_they_do_not_follow_to_upb(records: list[bytes], why: str) -> None:
    assert logscan.columns(request_of(*records)) is None, why


def test_columns_follow_protobuf_last_one_wins() -> None:
    """Singular fields sent twice: the last wins; in the body's oneof, the last member
    set wins (a string after an int is the body's string, an int after a string is not
    a string body); unknown fields are skipped."""
    data = request_of(
        field(2, 0, varint(5)) + field(2, 0, varint(17)) + field(3, 2, b"a")
        + field(3, 2, b"ERROR") + field(99, 2, b"unknown") + field(98, 5, b"1234"),
        field(5, 2, field(3, 0, varint(7)) + field(1, 2, b"then a string")),
        field(5, 2, field(1, 2, b"first a string") + field(3, 0, varint(7))),
        field(5, 2, field(1, 2, b"one") + field(1, 2, b"two")),
        b"",
    )
    cols = logscan.columns(data)
    assert cols == upb_columns(data)
    assert cols == (["", "then a string", "", "two", ""], [17, 0, 0, 0, 0],
                    ["ERROR", "", "", "", ""], [b""] * 5)


def test_columns_never_raise_on_any_short_input() -> None:
    rng = random.Random(7)
    for _ in range(3000):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 24)))
        cols = logscan.columns(raw)
        assert cols is None or all(isinstance(c, list) for c in cols)
    with pytest.raises(TypeError):
        logscan.columns("not bytes")


# ---------------------------------------------------------------------------- skeletons


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(st.sampled_from("0123456789xX a.é✓\0\ud800"), max_size=20),
                max_size=8))
def test_skeletons_equal_the_python_passes(texts_: list[str]) -> None:
    """The one-pass C skeletons (and skeletons(), which also handles surrogates) are the
    pure-Python passes' bytes; None exactly when a text holds a NUL."""
    expected = _skeletons_py(texts_)
    assert skeletons(texts_) == expected
    if not any("\ud800" in t for t in texts_):
        assert logscan.skeletons(texts_) == expected
    assert (expected is None) == any("\0" in t for t in texts_)


def test_skeletons_refuse_what_is_not_a_list_of_str() -> None:
    with pytest.raises(TypeError):
        logscan.skeletons(["a", b"b"])
    with pytest.raises(TypeError):
        logscan.skeletons(("a",))


# ---------------------------------------------------------------------------- the batch


def loghub_like_request(rng: random.Random, n: int) -> ExportLogsServiceRequest:
    lines = ["Accepted password for user{} from 10.0.{}.{} port {} ssh2",
             "Received block blk_{} of size {} from /10.250.{}.{}",
             '{{"level":"error","message":"db timeout after {} ms","shard":{}}}',
             "ERROR worker {} crashed: exit code {}", "cache hit ratio {}.{} for {}"]
    req = ExportLogsServiceRequest()
    for svc in ("api", "db"):
        rl = req.resource_logs.add()
        rl.resource.attributes.add(key="service.name").value.string_value = svc
        recs = rl.scope_logs.add().log_records
        for _ in range(n):
            line = rng.choice(lines).format(*(rng.randrange(1000) for _ in range(4)))
            rec = recs.add(severity_number=rng.choice([0, 0, 9, 17]))
            rec.body.string_value = line
            if rng.random() < 0.3:
                rec.trace_id = rng.randbytes(16)
        recs.add().body.int_value = 42
    return req


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_batch_made_from_bytes_is_processed_exactly_as_one_without(seed: int) -> None:
    """Signature then sampling (same seed) over the same requests, once with the bytes
    (columns from the C reader) and once without (upb reads): the same records survive
    with the same attributes; with the bytes, no record is wrapped until the kept ones
    are written."""
    outputs = []
    for with_raw in (True, False):
        rng = random.Random(seed)
        sig = SignatureProcessor(SignatureConfig())
        samp = SamplingProcessor(SamplingConfig(), rng=random.Random(seed))
        out = []
        for i in range(20):
            req = loghub_like_request(rng, 60)
            raw = req.SerializeToString()
            batch = LogBatch(req, 1000.0 + i, defer_attributes=True,
                             raw=raw if with_raw else None)
            assert (batch.severity_numbers is not None) == with_raw
            sig.process(batch)
            samp.process(batch)
            if with_raw:  # the processors read columns and record(i): nothing wrapped
                assert batch._records is None
            batch.write_attributes()
            out.append(batch.request.SerializeToString())
        outputs.append(out)
    assert outputs[0] == outputs[1]


def test_bytes_the_scan_does_not_follow_fall_back_to_upb() -> None:
    data = request_of(field(5, 2, field(1, 2, b"a")) + field(5, 2, field(1, 2, b"b")))
    batch = LogBatch(ExportLogsServiceRequest.FromString(data), 1.0, raw=data)
    assert batch.severity_numbers is None and batch.bodies is None
    assert base.NATIVE_SCAN


def test_lipservice_native_0_turns_the_extension_off() -> None:
    """LIPSERVICE_NATIVE=0 (or false, off, no; to compare, or to rule the extension out)
    reads upb."""
    code = "from processors import base; print(base.NATIVE_SCAN, base.native_skeletons)"
    for value, expected in (("0", "False None"), (" Off", "False None"),
                            ("false", "False None"), ("1", "True <built-in function skeletons>")):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "LIPSERVICE_NATIVE": value}, timeout=60,
                             check=True).stdout.strip()
        assert out == expected
