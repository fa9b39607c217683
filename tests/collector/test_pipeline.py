"""Pipeline: processors in order, fail-open, observed time, admission, LogBatch.retain."""

from __future__ import annotations

import asyncio

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from collector.config import SendingQueueConfig
from collector.pipeline import Pipeline, Refused
from collector.queue import ExportQueue
from processors.base import LogBatch, count_records


def make_request(shape: list[list[int]], service: str = "svc") -> ExportLogsServiceRequest:
    """shape[r][s] = number of records in scope s of resource r; bodies are 'r.s.i'."""
    req = ExportLogsServiceRequest()
    for r, scopes in enumerate(shape):
        rl = req.resource_logs.add()
        rl.resource.attributes.append(KeyValue(key="service.name",
                                               value=AnyValue(string_value=f"{service}{r}")))
        for s, n in enumerate(scopes):
            sl = rl.scope_logs.add()
            sl.scope.name = f"scope{s}"
            for i in range(n):
                sl.log_records.add().body.string_value = f"{r}.{s}.{i}"
    return req


class Collecting:
    """A test exporter: records every request it is given."""

    def __init__(self, name: str = "collect") -> None:
        self.name = name
        self.requests: list[ExportLogsServiceRequest] = []

    async def start(self) -> None: ...

    async def export(self, request: ExportLogsServiceRequest) -> int:
        self.requests.append(request)
        return 0

    async def shutdown(self) -> None: ...


class DropOdd:
    def process(self, batch: LogBatch) -> None:
        batch.retain([i % 2 == 0 for i in range(len(batch))])


class Boom:
    def process(self, batch: LogBatch) -> None:
        raise RuntimeError("processor bug")


class Tag:
    def __init__(self) -> None:
        self.seen: list[int] = []

    def process(self, batch: LogBatch) -> None:
        self.seen.append(len(batch))
        for i, rec in enumerate(batch.records):
            batch.pattern_ids[i] = rec.body.string_value


def bodies(req: ExportLogsServiceRequest) -> list[str]:
    return [r.body.string_value for rl in req.resource_logs for sl in rl.scope_logs
            for r in sl.log_records]


def test_retain_keeps_order_structure_and_side_lists() -> None:
    req = make_request([[3, 0, 2], [1], [4]])
    batch = LogBatch(req, now=1.0)
    assert batch.services == ["svc0"] * 5 + ["svc1"] + ["svc2"] * 4
    for i, rec in enumerate(batch.records):
        batch.pattern_ids[i] = rec.body.string_value
    keep = [True, False, True, False, False, False, True, False, True, True]
    expected = [b for b, k in zip(bodies(req), keep, strict=True) if k]
    batch.retain(keep)
    assert bodies(req) == expected
    assert [r.body.string_value for r in batch.records] == expected
    assert batch.pattern_ids == expected
    assert batch.dropped_pattern_ids == ["0.0.1", "0.2.0", "0.2.1", "1.0.0", "2.0.1"]
    # resource 1 lost its only record: its resource entry is gone, as are empty scopes
    assert [len(rl.scope_logs) for rl in req.resource_logs] == [1, 1]
    # a second retain on the shrunken batch still lines up
    batch.retain([False, True, True, False, False])
    assert bodies(req) == [expected[1], expected[2]]


def test_retain_rejects_wrong_mask_length() -> None:
    batch = LogBatch(make_request([[2]]), now=0)
    with pytest.raises(ValueError, match="2 records"):
        batch.retain([True])


async def test_processors_run_in_order_and_fail_open() -> None:
    tag, sink = Tag(), Collecting()
    q = ExportQueue(sink, SendingQueueConfig(queue_size=100, num_consumers=1))
    pipe = Pipeline([("tag", tag), ("boom", Boom()), ("drop", DropOdd())], [q],
                    clock=lambda: 1234.5)
    await pipe.start()
    req = make_request([[4]])
    assert pipe.consume(req) == 4
    assert tag.seen == [4]
    await pipe.shutdown(5)
    assert len(sink.requests) == 1
    out = sink.requests[0]
    # Boom raised, yet the batch went on and DropOdd still ran after it.
    assert bodies(out) == ["0.0.0", "0.0.2"]
    assert all(r.observed_time_unix_nano == 1234500000000 for rl in out.resource_logs
               for sl in rl.scope_logs for r in sl.log_records)


class Binding(Tag):
    """A processor that wants to see the processors before it."""

    def __init__(self) -> None:
        super().__init__()
        self.upstream: list[list[object]] = []

    def bind_upstream(self, processors: list[object]) -> None:
        self.upstream.append(list(processors))


def test_bind_upstream_gets_the_processors_before_it_once() -> None:
    tag, first, second = Tag(), Binding(), Binding()
    Pipeline([("first", first), ("tag", tag), ("second", second)], [])
    assert first.upstream == [[]]
    assert second.upstream == [[first, tag]]


async def test_full_queue_refuses_before_accepting() -> None:
    sink = Collecting()
    q = ExportQueue(sink, SendingQueueConfig(queue_size=5, num_consumers=1))
    pipe = Pipeline([], [q])
    # consumers not started: the queue fills
    pipe.consume(make_request([[4]]))
    req = make_request([[3]])
    with pytest.raises(Refused) as info:
        pipe.consume(req)
    assert info.value.reason == "queue_full"
    assert count_records(req) == 3  # untouched
    await pipe.start()
    await pipe.shutdown(5)
    await asyncio.sleep(0)
    assert sum(count_records(r) for r in sink.requests) == 4
