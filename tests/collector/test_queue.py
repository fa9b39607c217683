"""ExportQueue: retries with backoff, Retry-After, permanent errors, 413 split, drain."""

from __future__ import annotations

import random

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from collector import metrics
from collector.config import RetryConfig, SendingQueueConfig
from collector.exporters.base import ExportError
from collector.queue import ExportQueue, backoff_delays, split_request
from processors.base import count_records
from tests.collector.test_pipeline import bodies, make_request

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
