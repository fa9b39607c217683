"""ExportQueue: bounds (records, bytes), batching (min_size, max_size, flush_timeout),
retries with backoff, Retry-After, permanent errors (counted, logged once per interval),
413 split, partial success, drain and its deadline."""

from __future__ import annotations

import asyncio
import random

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from collector import metrics
from collector.config import BatchConfig, RetryConfig, SendingQueueConfig
from collector.exporters.base import ExportError
from collector.queue import (
    ExportQueue,
    backoff_delays,
    chunk_request,
    slice_request,
    split_request,
)
from processors.base import count_records
from tests.collector.test_pipeline import bodies, make_request
from tests.collector.wire_support import RecordingExporter, wait_for

FAST = RetryConfig(initial_interval=0.01, max_interval=0.05, max_elapsed_time=5,
                   randomization_factor=0.5)


class Scripted:
    """Exporter answering from a script: each entry is an ExportError to raise or an int
    (rejected count) to return; after the script, success."""

    def __init__(self, name: str, script: list[object]) -> None:
        self.name = name
        self.script = list(script)
        self.delivered: list[ExportLogsServiceRequest] = []
        self.attempts = 0

    async def start(self) -> None: ...

    async def shutdown(self) -> None: ...

    async def export(self, request: ExportLogsServiceRequest) -> int:
        self.attempts += 1
        step = self.script.pop(0) if self.script else 0
        if isinstance(step, ExportError):
            raise step
        if step == "too_large_if_big" and count_records(request) > 2:
            raise ExportError("413", retryable=False, too_large=True)
        self.delivered.append(request)
        return step if isinstance(step, int) else 0


def counter(metric, name: str) -> float:
    return metric.labels(name)._value.get()


async def run_queue(exporter: Scripted, req: ExportLogsServiceRequest,
                    retry: RetryConfig = FAST) -> None:
    q = ExportQueue(exporter, SendingQueueConfig(queue_size=1000, num_consumers=2), retry)
    await q.start()
    q.put(req, count_records(req))
    assert await q.drain(10)


async def test_retryable_errors_are_retried_until_success() -> None:
    exp = Scripted("t-retry", [ExportError("503", retryable=True)] * 3)
    await run_queue(exp, make_request([[5]]))
    assert exp.attempts == 4
    assert len(exp.delivered) == 1
    assert counter(metrics.EXPORTER_SENT, "t-retry") == 5
    assert counter(metrics.EXPORTER_RETRIES, "t-retry") == 3


async def test_permanent_error_is_not_retried_and_counted() -> None:
    exp = Scripted("t-perm", [ExportError("400 bad", retryable=False)])
    await run_queue(exp, make_request([[3]]))
    assert exp.attempts == 1 and not exp.delivered
    assert counter(metrics.EXPORTER_SEND_FAILED, "t-perm") == 3


async def test_retry_after_is_honoured(monkeypatch) -> None:
    slept: list[float] = []
    import collector.queue as qmod

    real_sleep = qmod.asyncio.sleep

    async def fake_sleep(d: float) -> None:
        slept.append(d)
        await real_sleep(0)

    monkeypatch.setattr(qmod.asyncio, "sleep", fake_sleep)
    exp = Scripted("t-after", [ExportError("429", retryable=True, retry_after=2.5)])
    await run_queue(exp, make_request([[1]]))
    assert exp.attempts == 2
    assert max(slept) >= 2.5


async def test_max_elapsed_time_gives_up() -> None:
    retry = RetryConfig(initial_interval=0.05, max_interval=0.05, max_elapsed_time=0.2,
                        randomization_factor=0)
    exp = Scripted("t-elapsed", [ExportError("503", retryable=True)] * 100)
    await run_queue(exp, make_request([[2]]), retry)
    assert not exp.delivered
    assert 2 <= exp.attempts < 10
    assert counter(metrics.EXPORTER_SEND_FAILED, "t-elapsed") == 2


async def test_413_splits_the_batch_and_sends_the_halves() -> None:
    exp = Scripted("t-413", ["too_large_if_big"] * 20)
    req = make_request([[3, 2], [2]])
    expected = bodies(req)
    await run_queue(exp, req)
    got = [b for r in exp.delivered for b in bodies(r)]
    assert got == expected
    assert all(count_records(r) <= 2 for r in exp.delivered)


async def test_partial_success_is_counted() -> None:
    exp = Scripted("t-partial", [2])
    await run_queue(exp, make_request([[5]]))
    assert counter(metrics.EXPORTER_REJECTED, "t-partial") == 2
    assert counter(metrics.EXPORTER_SENT, "t-partial") == 3


def test_split_request_keeps_resources_and_order() -> None:
    req = make_request([[1, 2], [3]])
    a, b = split_request(req)
    assert bodies(a) + bodies(b) == bodies(req)
    assert count_records(a) == 3 and count_records(b) == 3
    assert all(rl.resource.attributes[0].key == "service.name"
               for part in (a, b) for rl in part.resource_logs)


def test_backoff_grows_to_the_cap_with_bounded_jitter() -> None:
    cfg = RetryConfig(initial_interval=1, multiplier=2, max_interval=8, randomization_factor=0.5)
    delays = backoff_delays(cfg, random.Random(1))
    got = [next(delays) for _ in range(8)]
    bases = [1, 2, 4, 8, 8, 8, 8, 8]
    for d, base in zip(got, bases, strict=True):
        assert 0.5 * base <= d <= 1.5 * base


# --------------------------------------------------------------------------- bounds


def sized(n: int) -> ExportLogsServiceRequest:
    return make_request([[n]])


def test_queue_is_bounded_by_records_and_by_bytes() -> None:
    q = ExportQueue(Scripted("t-bounds", []),
                    SendingQueueConfig(queue_size=10, queue_size_bytes=1000))
    assert q.full_reason(50, 10_000) is None  # an empty queue takes any one request
    q.put(sized(6), 6, 400)
    assert q.full_reason(4, 600) is None
    assert q.full_reason(5, 100) == "queue_full"
    assert q.full_reason(1, 601) == "queue_full_bytes"
    q.put(sized(4), 4, 600)
    assert (q.size, q.size_bytes) == (10, 1000)
    assert q.full_reason(1, 0) == "queue_full"
    assert metrics.REGISTRY.get_sample_value(
        "lipservice_exporter_queue_size_bytes", {"exporter": "t-bounds"}) == 1000
    assert metrics.REGISTRY.get_sample_value(
        "otelcol_exporter_queue_capacity", {"exporter": "t-bounds"}) == 10


def test_queue_size_bytes_zero_means_no_byte_limit() -> None:
    q = ExportQueue(Scripted("t-nobytes", []),
                    SendingQueueConfig(queue_size=100, queue_size_bytes=0))
    q.put(sized(1), 1, 10**9)
    assert q.full_reason(1, 10**9) is None


async def test_disabled_queue_takes_a_request_only_when_a_consumer_is_free() -> None:
    exp = RecordingExporter("t-disabled")
    exp.gate.clear()
    q = ExportQueue(exp, SendingQueueConfig(enabled=False, num_consumers=1))
    await q.start()
    q.put(sized(2), 2)
    assert q.full_reason(1) == "queue_full"
    await wait_for(lambda: not q._pending)  # taken by the consumer, which is now blocked
    assert q.full_reason(1) == "queue_full"
    exp.gate.set()
    await wait_for(lambda: q.size == 0)
    assert q.full_reason(1) is None
    assert await q.drain(5)


async def test_closing_queue_refuses_as_shutting_down() -> None:
    q = ExportQueue(Scripted("t-closing", []), SendingQueueConfig())
    await q.start()
    assert await q.drain(5)
    assert q.full_reason(1) == "shutting_down"


# --------------------------------------------------------------------------- batching


def batching(min_size: int, max_size: int, flush_timeout: float = 60.0,
             consumers: int = 1) -> SendingQueueConfig:
    return SendingQueueConfig(num_consumers=consumers, batch=BatchConfig(
        min_size=min_size, max_size=max_size, flush_timeout=flush_timeout))


async def test_small_requests_wait_for_min_size_then_go_as_one() -> None:
    exp = RecordingExporter("t-min")
    q = ExportQueue(exp, batching(min_size=5, max_size=100))
    await q.start()
    first, second = make_request([[2]]), make_request([[2]], service="other")
    q.put(first, 2)
    q.put(second, 2)
    await asyncio.sleep(0.1)
    assert exp.requests == []  # 4 < min_size and the flush timeout is a minute away
    third = make_request([[2]], service="third")
    q.put(third, 2)
    await wait_for(lambda: exp.record_count == 6)
    assert len(exp.requests) == 1
    merged = exp.requests[0]
    assert bodies(merged) == bodies(first) + bodies(second) + bodies(third)
    assert [rl.resource.attributes[0].value.string_value for rl in merged.resource_logs] == [
        "svc0", "other0", "third0"]
    assert await q.drain(5)


async def test_flush_timeout_sends_a_batch_below_min_size() -> None:
    exp = RecordingExporter("t-flush")
    q = ExportQueue(exp, batching(min_size=1000, max_size=0, flush_timeout=0.05))
    await q.start()
    for _ in range(3):
        q.put(sized(2), 2)
    await wait_for(lambda: exp.record_count == 6)  # well before drain is called
    assert len(exp.requests) == 1
    assert await q.drain(5)


async def test_batches_never_exceed_max_size_and_big_requests_are_cut() -> None:
    exp = RecordingExporter("t-max")
    q = ExportQueue(exp, batching(min_size=4, max_size=4))
    for _ in range(5):
        q.put(sized(2), 2)
    big = sized(10)
    q.put(big, 10)
    await q.start()
    assert await q.drain(5)
    sizes = [count_records(r) for r in exp.requests]
    assert sizes == [4, 4, 2, 4, 4, 2]
    assert [b for r in exp.requests[3:] for b in bodies(r)] == bodies(big)


async def test_drain_does_not_wait_for_min_size() -> None:
    exp = RecordingExporter("t-drainflush")
    q = ExportQueue(exp, batching(min_size=10_000, max_size=0, flush_timeout=3600))
    await q.start()
    q.put(sized(3), 3)
    assert await q.drain(5)
    assert exp.record_count == 3


async def test_batching_disabled_sends_each_request_alone() -> None:
    exp = RecordingExporter("t-nobatch")
    q = ExportQueue(exp, SendingQueueConfig(num_consumers=1, batch=BatchConfig(enabled=False)))
    for _ in range(3):
        q.put(sized(2), 2)
    await q.start()
    assert await q.drain(5)
    assert [count_records(r) for r in exp.requests] == [2, 2, 2]


# --------------------------------------------------------------------------- failures


async def test_permanent_failures_are_logged_once_per_interval_with_the_reason(caplog) -> None:
    errors = [ExportError(f"sink answered HTTP 400: field {i} is bad", retryable=False)
              for i in range(5)]
    exp = Scripted("t-permlog", errors)
    q = ExportQueue(exp, SendingQueueConfig(num_consumers=1, batch=BatchConfig(enabled=False)),
                    FAST)
    for _ in range(5):
        q.put(sized(1), 1)
    with caplog.at_level("ERROR", logger="lipservice.queue"):
        await q.start()
        assert await q.drain(5)
    assert exp.attempts == 5  # none retried
    lines = [r.getMessage() for r in caplog.records if "dropping" in r.getMessage()]
    assert len(lines) == 1
    assert "field 0 is bad" in lines[0] and "not retryable" in lines[0]
    assert counter(metrics.EXPORTER_SEND_FAILED, "t-permlog") == 5
    assert metrics.REGISTRY.get_sample_value(
        "lipservice_exporter_dropped_log_records_total",
        {"exporter": "t-permlog", "reason": "permanent"}) == 5


async def test_retries_disabled_means_a_retryable_error_drops_once() -> None:
    exp = Scripted("t-noretry", [ExportError("503", retryable=True)])
    await run_queue(exp, make_request([[2]]), RetryConfig(enabled=False))
    assert exp.attempts == 1
    assert counter(metrics.EXPORTER_SEND_FAILED, "t-noretry") == 2


async def test_shutdown_deadline_drops_and_counts_what_a_memory_queue_holds() -> None:
    exp = Scripted("t-deadline", [ExportError("503", retryable=True)] * 1000)
    retry = RetryConfig(initial_interval=0.02, max_interval=0.02, max_elapsed_time=0,
                        randomization_factor=0)
    q = ExportQueue(exp, SendingQueueConfig(num_consumers=1, batch=BatchConfig(enabled=False)),
                    retry)
    q.put(sized(3), 3)
    q.put(sized(4), 4)
    await q.start()
    assert not await q.drain(0.3)
    assert counter(metrics.EXPORTER_SEND_FAILED, "t-deadline") == 7
    assert metrics.REGISTRY.get_sample_value(
        "lipservice_exporter_dropped_log_records_total",
        {"exporter": "t-deadline", "reason": "shutdown"}) == 7


async def test_exporter_that_raises_unexpectedly_does_not_stop_the_consumer() -> None:
    class Buggy(Scripted):
        async def export(self, request: ExportLogsServiceRequest) -> int:
            self.attempts += 1
            if self.attempts == 1:
                raise RuntimeError("exporter bug")
            self.delivered.append(request)
            return 0

    exp = Buggy("t-buggy", [])
    q = ExportQueue(exp, SendingQueueConfig(num_consumers=1, batch=BatchConfig(enabled=False)))
    q.put(sized(2), 2)
    q.put(sized(3), 3)
    await q.start()
    assert await q.drain(5)
    assert [count_records(r) for r in exp.delivered] == [3]
    assert metrics.REGISTRY.get_sample_value(
        "lipservice_exporter_dropped_log_records_total",
        {"exporter": "t-buggy", "reason": "exporter_error"}) == 2


def test_chunk_and_slice_keep_every_record_once_in_order() -> None:
    req = make_request([[3, 0, 2], [1], [4]])
    for size in (1, 2, 3, 4, 7, 10, 11):
        parts = chunk_request(req, size)
        assert all(count_records(p) <= size for p in parts)
        assert [b for p in parts for b in bodies(p)] == bodies(req)
    assert chunk_request(req, 0) == [req]
    middle = slice_request(req, 2, 6)
    assert bodies(middle) == bodies(req)[2:6]
    # records of one resource stay under one resource entry
    assert len(middle.resource_logs) == 2
