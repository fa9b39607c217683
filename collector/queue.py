"""The sending queue between the pipeline and one exporter, with retries.

Semantics (as the Collector's exporterhelper):

- bounded by ``queue_size`` log records; :meth:`ExportQueue.has_room` is checked by the
  pipeline *before* a batch is accepted, so a full queue becomes a retryable refusal at the
  receiver (HTTP 429 / gRPC RESOURCE_EXHAUSTED), never a silent drop;
- ``num_consumers`` tasks send concurrently;
- a retryable :class:`ExportError` is retried with exponential backoff and jitter
  (``retry_on_failure``), waiting at least the backend's ``Retry-After``; after
  ``max_elapsed_time`` the records count as ``otelcol_exporter_send_failed_log_records``;
- a 413 splits the request in halves, sent separately;
- :meth:`ExportQueue.drain` waits for everything queued or in flight, up to a deadline.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from collector import metrics
from collector.config import RetryConfig, SendingQueueConfig
from collector.exporters.base import Exporter, ExportError
from processors.base import count_records

log = logging.getLogger("lipservice.queue")


def backoff_delays(cfg: RetryConfig, rng: random.Random | None = None):
    """Yield successive retry delays (seconds): initial_interval × multiplier^k, capped at
    max_interval, each randomised by ±randomization_factor."""
    rng = rng or random.Random()
    interval = cfg.initial_interval
    while True:
        jitter = cfg.randomization_factor * interval
        yield max(0.0, interval + rng.uniform(-jitter, jitter))
        interval = min(interval * cfg.multiplier, cfg.max_interval)


def split_request(request: ExportLogsServiceRequest) -> tuple[ExportLogsServiceRequest,
                                                              ExportLogsServiceRequest]:
    """Two requests holding the first and the second half of the records (resources and
    scopes copied as needed). Used when a backend answers 413."""
    total = count_records(request)
    half = total // 2
    first, second = ExportLogsServiceRequest(), ExportLogsServiceRequest()
    seen = 0
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            n = len(sl.log_records)
            for target, lo, hi in ((first, 0, max(0, min(n, half - seen))),
                                   (second, max(0, min(n, half - seen)), n)):
                if hi <= lo:
                    continue
                out_rl = target.resource_logs.add()
                out_rl.resource.CopyFrom(rl.resource)
                out_rl.schema_url = rl.schema_url
                out_sl = out_rl.scope_logs.add()
                out_sl.scope.CopyFrom(sl.scope)
                out_sl.schema_url = sl.schema_url
                out_sl.log_records.extend(sl.log_records[lo:hi])
            seen += n
    return first, second


class ExportQueue:
    """Bounded queue + consumers + retry for one exporter. Lives on the event loop."""

    def __init__(self, exporter: Exporter, queue: SendingQueueConfig,
                 retry: RetryConfig | None = None) -> None:
        self.exporter = exporter
        self.name = exporter.name
        self.capacity = queue.queue_size
        self.num_consumers = queue.num_consumers
        self.retry = retry or RetryConfig(enabled=False)
        self._items: deque[tuple[ExportLogsServiceRequest, int]] = deque()
        self._size = 0  # records queued or in flight
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._deadline: float | None = None
        metrics.EXPORTER_QUEUE_CAPACITY.labels(self.name).set(self.capacity)
        metrics.EXPORTER_QUEUE_SIZE.labels(self.name).set(0)

    @property
    def size(self) -> int:
        """Log records queued or being sent."""
        return self._size

    def has_room(self, n: int) -> bool:
        return self._size + n <= self.capacity or self._size == 0

    async def start(self) -> None:
        await self.exporter.start()
        self._tasks = [asyncio.create_task(self._consume(), name=f"export:{self.name}:{i}")
                       for i in range(self.num_consumers)]

    def put(self, request: ExportLogsServiceRequest, n: int) -> None:
        """Enqueue a request of ``n`` records. The caller checked :meth:`has_room`."""
        if n == 0:
            return
        self._items.append((request, n))
        self._size += n
        self._idle.clear()
        metrics.EXPORTER_QUEUE_SIZE.labels(self.name).set(self._size)
        self._wakeup.set()

    async def _consume(self) -> None:
        while True:
            while not self._items:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
            request, n = self._items.popleft()
            try:
                await self._send(request, n)
            except asyncio.CancelledError:
                metrics.EXPORTER_SEND_FAILED.labels(self.name).inc(n)
                raise
            except Exception:  # noqa: BLE001 - an exporter bug must not kill the consumer
                log.exception("exporter %s failed unexpectedly; %d records lost", self.name, n)
                metrics.EXPORTER_SEND_FAILED.labels(self.name).inc(n)
            finally:
                self._size -= n
                metrics.EXPORTER_QUEUE_SIZE.labels(self.name).set(self._size)
                if self._size == 0:
                    self._idle.set()

    async def _send(self, request: ExportLogsServiceRequest, n: int) -> None:
        start = time.monotonic()
        delays = backoff_delays(self.retry)
        while True:
            try:
                rejected = await self.exporter.export(request)
            except ExportError as err:
                if err.too_large and n > 1:
                    first, second = split_request(request)
                    await self._send(first, count_records(first))
                    await self._send(second, count_records(second))
                    return
                delay = next(delays)
                if err.retry_after is not None:
                    delay = max(delay, err.retry_after)
                elapsed = time.monotonic() - start
                give_up = (not err.retryable or not self.retry.enabled
                           or (self.retry.max_elapsed_time
                               and elapsed + delay > self.retry.max_elapsed_time)
                           or (self._deadline is not None
                               and time.monotonic() + delay > self._deadline))
                if give_up:
                    log.error("exporter %s: dropping %d log records: %s%s", self.name, n, err,
                              "" if err.retryable else " (not retryable)")
                    metrics.EXPORTER_SEND_FAILED.labels(self.name).inc(n)
                    return
                metrics.EXPORTER_RETRIES.labels(self.name).inc()
                log.warning("exporter %s: %s; retrying in %.1fs", self.name, err, delay)
                await asyncio.sleep(delay)
                continue
            if rejected:
                metrics.EXPORTER_REJECTED.labels(self.name).inc(rejected)
            metrics.EXPORTER_SENT.labels(self.name).inc(n - rejected)
            return

    async def drain(self, timeout: float) -> bool:
        """Stop taking work once the queue is empty; wait up to ``timeout`` seconds for
        queued and in-flight records. Returns True when everything was sent (or failed
        permanently), False when the deadline passed first."""
        self._closing = True
        self._deadline = time.monotonic() + timeout
        self._wakeup.set()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            done = True
        except TimeoutError:
            done = False
            log.error("exporter %s: shutdown timeout with %d log records unsent",
                      self.name, self._size)
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.exporter.shutdown()
        return done
