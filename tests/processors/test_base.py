"""LogBatch (processors/base.py): retain against a plain filter, the side lists it keeps
aligned (bodies included), and compacted()."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from processors.base import LogBatch


def make_request(shape: list[list[int]]) -> ExportLogsServiceRequest:
    """shape[r][s] = records in scope s of resource r; bodies are 'r.s.i'."""
    req = ExportLogsServiceRequest()
    for r, scopes in enumerate(shape):
        rl = req.resource_logs.add()
        rl.resource.attributes.append(KeyValue(key="service.name",
                                               value=AnyValue(string_value=f"svc{r}")))
        for s, n in enumerate(scopes):
            sl = rl.scope_logs.add()
            sl.scope.name = f"scope{s}"
            for i in range(n):
                sl.log_records.add().body.string_value = f"{r}.{s}.{i}"
    return req


def layout(req: ExportLogsServiceRequest) -> list[tuple[str, str, list[str]]]:
    return [(rl.resource.attributes[0].value.string_value, sl.scope.name,
             [rec.body.string_value for rec in sl.log_records])
            for rl in req.resource_logs for sl in rl.scope_logs]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.integers(1, 40), min_size=1, max_size=3), min_size=1, max_size=3),
       st.data())
def test_retain_equals_a_plain_filter(shape: list[list[int]], data: st.DataObject) -> None:
    """Twice in a row, retain keeps exactly the records whose flag is set, in order, in
    their resource and scope; drops emptied scopes and resources; keeps every side list
    aligned; records the dropped pattern ids."""
    req = make_request(shape)
    batch = LogBatch(req, now=1.0)
    batch.pattern_ids = [f"p{i}" for i in range(len(batch))]
    batch.bodies = [r.body.string_value for r in batch.records]
    dropped: list[str] = []
    for _ in range(2):
        keep = data.draw(st.lists(st.booleans(), min_size=len(batch), max_size=len(batch)))
        expected = [(svc, scope, [b for b, k in zip(bodies, flags, strict=True) if k])
                    for (svc, scope, bodies), flags in zip(layout(req), _split(keep, req),
                                                           strict=True)]
        expected = [e for e in expected if e[2]]
        dropped += [p for p, k in zip(batch.pattern_ids, keep, strict=True) if not k]
        survivors = [p for p, k in zip(batch.pattern_ids, keep, strict=True) if k]
        batch.retain(keep)
        assert layout(req) == expected
        bodies = [b for _, _, bs in expected for b in bs]
        assert [r.body.string_value for r in batch.records] == bodies
        assert batch.bodies == bodies
        assert batch.services == [svc for svc, _, bs in expected for _ in bs]
        assert batch.pattern_ids == survivors
        assert batch.dropped_pattern_ids == dropped
        assert len(batch.templates) == len(batch.families) == len(bodies)


def _split(flags: list[bool], req: ExportLogsServiceRequest) -> list[list[bool]]:
    out, i = [], 0
    for rl in req.resource_logs:
        for sl in rl.scope_logs:
            n = len(sl.log_records)
            out.append(flags[i:i + n])
            i += n
    return out


def test_compacted_copies_only_when_most_records_are_gone() -> None:
    req = make_request([[10]])
    batch = LogBatch(req, now=1.0)
    assert batch.received == 10
    batch.retain([i < 8 for i in range(10)])
    assert batch.compacted() is req  # 8 of 10 left: handed on as is
    batch.retain([i < 7 for i in range(8)])
    out = batch.compacted()
    assert out is not req and out == req  # 7 of 10: a copy, equal to what is left
    assert out.ByteSize() == req.ByteSize()


def _attr_bytes(key: str, value: str) -> bytes:
    from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

    return LogRecord(attributes=[KeyValue(key=key, value=AnyValue(string_value=value))]
                     ).SerializeToString()


def _attrs(req: ExportLogsServiceRequest) -> list[list[tuple[str, str]]]:
    return [[(kv.key, kv.value.string_value) for kv in rec.attributes]
            for rl in req.resource_logs for sl in rl.scope_logs for rec in sl.log_records]


def test_add_attributes_writes_at_once_unless_deferred() -> None:
    a = [_attr_bytes("k", f"v{i}") for i in range(5)]
    now = LogBatch(make_request([[3, 2]]), 0.0)
    now.add_attributes(a)
    assert _attrs(now.request) == [[("k", f"v{i}")] for i in range(5)]

    later = LogBatch(make_request([[3, 2]]), 0.0, defer_attributes=True)
    later.add_attributes(a)
    assert _attrs(later.request) == [[]] * 5  # nothing written yet
    later.write_attributes()
    assert _attrs(later.request) == [[("k", f"v{i}")] for i in range(5)]
    later.write_attributes()  # written once, not twice
    assert _attrs(later.request) == [[("k", f"v{i}")] for i in range(5)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(1, 30), min_size=1, max_size=3), min_size=1, max_size=3),
       st.data())
def test_deferred_attributes_follow_retain_and_land_in_order(
        shape: list[list[int]], data: st.DataObject) -> None:
    """Two processors add attributes, one drops records in between: each survivor gets
    exactly its own attributes, in the order they were added; the dropped get none (they
    are gone); summary records appended later get none."""
    batch = LogBatch(make_request(shape), 0.0, defer_attributes=True)
    n = len(batch)
    bodies = [r.body.string_value for r in batch.records]
    batch.add_attributes([_attr_bytes("first", b) for b in bodies])
    keep = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    batch.retain(keep)
    survivors = [b for b, k in zip(bodies, keep, strict=True) if k]
    batch.add_attributes([_attr_bytes("second", b) if i % 2 else b""
                          for i, b in enumerate(survivors)])
    extra = make_request([[2]]).resource_logs[0]
    batch.append_resource_logs(extra, ["p", "p"], ["t", "t"])
    batch.write_attributes()
    want = [[("first", b)] + ([("second", b)] if i % 2 else [])
            for i, b in enumerate(survivors)] + [[], []]
    assert _attrs(batch.request) == want


def test_add_attributes_rejects_a_misaligned_list() -> None:
    batch = LogBatch(make_request([[3]]), 0.0, defer_attributes=True)
    with pytest.raises(ValueError, match="2 attribute entries for 3 records"):
        batch.add_attributes([b""] * 2)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.integers(1, 30), min_size=1, max_size=3), min_size=1, max_size=3),
       st.data())
def test_records_are_wrapped_on_first_use_and_record_i_agrees(
        shape: list[list[int]], data: st.DataObject) -> None:
    """record(i) is records[i] whether or not the records were wrapped, before and after
    retain and append_resource_logs; len() follows; a batch whose processors use only
    record(i) never wraps every record."""
    req = make_request(shape)
    expected = [f"{r}.{s}.{i}" for r, scopes in enumerate(shape) for s, n in enumerate(scopes)
                for i in range(n)]
    wrap_first = data.draw(st.booleans())
    batch = LogBatch(req, now=1.0)
    if wrap_first:
        assert [r.body.string_value for r in batch.records] == expected
    assert [batch.record(i).body.string_value for i in range(len(batch))] == expected
    assert (batch._records is None) != wrap_first  # record(i) alone wrapped nothing
    with pytest.raises(IndexError):
        batch.record(len(batch))
    keep = data.draw(st.lists(st.booleans(), min_size=len(batch), max_size=len(batch)))
    batch.retain(keep)
    expected = [b for b, k in zip(expected, keep, strict=True) if k]
    batch.append_resource_logs(make_request([[2]]).resource_logs[0], ["p", "p"], ["t", "t"])
    expected += ["0.0.0", "0.0.1"]
    assert len(batch) == len(expected)
    assert [batch.record(i).body.string_value for i in range(len(batch))] == expected
    assert [r.body.string_value for r in batch.records] == expected
