"""The logs pipeline: receiver → processors (in YAML order) → every exporter's queue.

This file is the data path; read it top to bottom::

    request (decoded OTLP, protobuf)             from a receiver, or `lipservice replay`
      │  admission: every exporter queue has room, else Refused (retryable at the receiver)
      ▼
    LogBatch(request, now)                       flat view + per-record side data
      ▼
    processor 1 … processor N                    in place; a processor that raises fails
      │                                          open: the batch goes on as it was
      │  observed_time_unix_nano filled where 0 (on the records that are left)
      ▼
    ExportQueue per exporter                     bounded, retrying, drained on shutdown
                                                 (a copy of the request when most of its
                                                 records were dropped: LogBatch.compacted)

No processor is known here by name: the YAML's ``service.pipelines.logs.processors`` list
is built through the registry in ``processors/__init__.py``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from collector import metrics
from collector.config import Config, component_type
from collector.exporters import build_exporter
from collector.queue import ExportQueue
from processors import load_processor_class
from processors.base import LogBatch, count_records

log = logging.getLogger("lipservice.pipeline")


class Refused(Exception):
    """The pipeline cannot take a request now; the receiver answers with a retryable
    refusal (HTTP 429 + Retry-After, gRPC RESOURCE_EXHAUSTED + RetryInfo).

    reason: short label for metrics (``queue_full``); retry_after: seconds to suggest.
    """

    def __init__(self, message: str, reason: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after


class Pipeline:
    """Processors in order, then every exporter queue.

    processors: (name, processor) pairs, run in order; queues: one per exporter;
    clock: seconds since the epoch (replay passes a virtual clock).
    """

    def __init__(self, processors: list[tuple[str, Any]], queues: list[ExportQueue],
                 clock: Callable[[], float] = time.time) -> None:
        self.processors = processors
        self.queues = queues
        self.clock = clock
        self._in = [metrics.PROCESSOR_IN.labels(n, "logs") for n, _ in processors]
        self._out = [metrics.PROCESSOR_OUT.labels(n, "logs") for n, _ in processors]

    @classmethod
    def from_config(cls, config: Config, clock: Callable[[], float] = time.time) -> Pipeline:
        """Build the processors and exporter queues the YAML's logs pipeline names."""
        spec = config.service.pipelines.logs
        processors = []
        for name in spec.processors:
            proc_cls = load_processor_class(component_type(name))
            processors.append((name, proc_cls(config.processors[name])))
        queues = []
        for name in spec.exporters:
            exp_cfg = config.exporters[name]
            exporter = build_exporter(name, exp_cfg)
            queues.append(ExportQueue(exporter, exp_cfg.sending_queue,
                                      getattr(exp_cfg, "retry_on_failure", None)))
        return cls(processors, queues, clock)

    def has_room(self, n: int) -> bool:
        """True when every exporter queue can take ``n`` more records."""
        return all(q.has_room(n) for q in self.queues)

    def admit(self, n: int) -> None:
        """Raise Refused unless every exporter queue has room for ``n`` more records."""
        for q in self.queues:
            if not q.has_room(n):
                metrics.EXPORTER_ENQUEUE_FAILED.labels(q.name).inc(n)
                raise Refused(f"sending queue of exporter {q.name!r} is full "
                              f"({q.size}/{q.capacity} log records)", "queue_full")

    def process(self, request: ExportLogsServiceRequest) -> LogBatch:
        """Run the processors over one request, in place; returns the batch."""
        batch = LogBatch(request, self.clock())
        started = time.perf_counter()
        for i, (name, proc) in enumerate(self.processors):
            n = len(batch)
            self._in[i].inc(n)
            try:
                proc.process(batch)
            except Exception:  # noqa: BLE001 - fail open: a fault never drops data
                metrics.PROCESSOR_ERRORS.labels(name).inc()
                metrics.PROCESSOR_FAILED_OPEN_RECORDS.labels(name).inc(n)
                log.exception("processor %s raised on a batch of %d records; "
                              "passing the batch on unprocessed", name, n)
            self._out[i].inc(len(batch))
        # After the processors, so that records they drop never cost the write.
        now_ns = int(batch.now * 1e9)
        for rec in batch.records:
            if not rec.observed_time_unix_nano:
                rec.observed_time_unix_nano = now_ns
        metrics.BATCH_DURATION.observe(time.perf_counter() - started)
        return batch

    def consume(self, request: ExportLogsServiceRequest) -> int:
        """Admit, process and enqueue one request. Returns the number of records accepted;
        raises Refused (nothing accepted) when a queue is full."""
        n = count_records(request)
        self.admit(n)
        batch = self.process(request)
        self.emit(batch)
        return n

    def emit(self, batch: LogBatch) -> None:
        """Hand the surviving records to every exporter queue."""
        request = batch.compacted()
        for q in self.queues:
            q.put(request, len(batch))

    async def start(self) -> None:
        for q in self.queues:
            await q.start()

    async def shutdown(self, timeout: float) -> bool:
        """Drain every exporter queue within ``timeout`` seconds in all. True if all sent."""
        results = await asyncio.gather(*(q.drain(timeout) for q in self.queues))
        ok = all(results)
        for _, proc in self.processors:
            close = getattr(proc, "close", None)
            if close is not None:
                close()
        return ok
