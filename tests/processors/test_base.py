"""LogBatch (processors/base.py): retain against a plain filter, the side lists it keeps
aligned (bodies included), and compacted()."""

from __future__ import annotations

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
