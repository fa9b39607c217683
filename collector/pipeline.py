"""The logs pipeline: receiver → processors (in YAML order) → every exporter's queue.

This file is the data path; read it top to bottom::

    request (decoded OTLP, protobuf)             from a receiver, or `lipservice replay`
      │  admission, else Refused (retryable at the receiver; nothing accepted):
      │    memory_limiter (if configured): RSS under the soft limit   → else 503/UNAVAILABLE
      │    every exporter queue has room (records and bytes)          → else 429/RESOURCE_EXHAUSTED
      ▼
    LogBatch(request, now)                       flat view + per-record side data
      ▼
    processor 1 … processor N                    in place; a processor that raises fails
      │                                          open: the batch goes on as it was
      │  observed_time_unix_nano filled where 0 (on the records that are left)
      ▼
    ExportQueue per exporter                     bounded, batching, retrying; with
                                                 `sending_queue.storage` committed to
                                                 disk here, before the receiver answers
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
from collector.persistent_queue import StorageError, resolve_storage_path
from collector.queue import ExportQueue
from processors import load_processor_class
from processors.base import LogBatch, count_records

log = logging.getLogger("lipservice.pipeline")


class Refused(Exception):
    """The pipeline cannot take a request now; nothing of it was accepted. The receiver
    answers with a retryable refusal: HTTP 429 + Retry-After and gRPC RESOURCE_EXHAUSTED +
    RetryInfo (a full queue: slow down), or with ``unavailable`` HTTP 503 + Retry-After and
    gRPC UNAVAILABLE + RetryInfo (memory limit, storage failure, shutting down).

    reason: label for ``otelcol_receiver_refused_log_records`` (``queue_full``,
    ``queue_full_bytes``, ``memory_soft_limit``, ``memory_hard_limit``, ``storage_error``,
    ``shutting_down``); retry_after: seconds to suggest to the client.
    """

    def __init__(self, message: str, reason: str, retry_after: float = 1.0,
                 unavailable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.retry_after = retry_after
        self.unavailable = unavailable


class Pipeline:
    """Processors in order, then every exporter queue.

    processors: (name, processor) pairs, run in order; a processor with a
    ``check_admission() -> Refused | None`` method (the memory limiter) is also asked before
    each request is accepted, and one with a ``bind_upstream(processors)`` method is given,
    once, the processors that run before it (the clustering processor reads the signature
    processor's pattern aliases that way). queues: one per exporter; clock: seconds since
    the epoch (replay passes a virtual clock).
    """

    def __init__(self, processors: list[tuple[str, Any]], queues: list[ExportQueue],
                 clock: Callable[[], float] = time.time) -> None:
        self.processors = processors
        for i, (_, proc) in enumerate(processors):
            bind = getattr(proc, "bind_upstream", None)
            if callable(bind):
                bind([p for _, p in processors[:i]])
        self.queues = queues
        self.clock = clock
        self.admission = [p for _, p in processors if hasattr(p, "check_admission")]
        self._in = [metrics.PROCESSOR_IN.labels(n, "logs") for n, _ in processors]
        self._out = [metrics.PROCESSOR_OUT.labels(n, "logs") for n, _ in processors]

    @classmethod
    def from_config(cls, config: Config, clock: Callable[[], float] = time.time,
                    persistent: bool = True) -> Pipeline:
        """Build the processors and exporter queues the YAML's logs pipeline names.
        ``persistent=False`` ignores ``sending_queue.storage`` (used by replay)."""
        spec = config.service.pipelines.logs
        processors = []
        for name in spec.processors:
            proc_cls = load_processor_class(component_type(name))
            processors.append((name, proc_cls(config.processors[name])))
        queues = []
        for name in spec.exporters:
            exp_cfg = config.exporters[name]
            exporter = build_exporter(name, exp_cfg)
            storage = resolve_storage_path(exp_cfg.sending_queue.storage, name,
                                           config.storage.directory) if persistent else None
            queues.append(ExportQueue(exporter, exp_cfg.sending_queue,
                                      getattr(exp_cfg, "retry_on_failure", None),
                                      storage, config.storage.fsync))
        return cls(processors, queues, clock)

    def has_room(self, n: int, nbytes: int = 0) -> bool:
        """True when every exporter queue can take ``n`` more records (``nbytes`` bytes)."""
        return all(q.has_room(n, nbytes) for q in self.queues)

    def admit(self, n: int, nbytes: int = 0) -> None:
        """Raise Refused unless the admission checks pass and every exporter queue has room
        for ``n`` more records of ``nbytes`` bytes."""
        for check in self.admission:
            refused = check.check_admission()
            if refused is not None:
                raise refused
        for q in self.queues:
            reason = q.full_reason(n, nbytes)
            if reason == "shutting_down":
                raise Refused("the sidecar is shutting down", reason, unavailable=True)
            if reason is not None:
                metrics.EXPORTER_ENQUEUE_FAILED.labels(q.name).inc(n)
                what = (f"{q.size}/{q.capacity} log records" if reason == "queue_full" else
                        f"{q.size_bytes}/{q.capacity_bytes} bytes")
                raise Refused(f"sending queue of exporter {q.name!r} is full ({what})", reason)

    def process(self, request: ExportLogsServiceRequest, raw: bytes | None = None) -> LogBatch:
        """Run the processors over one request, in place; returns the batch. ``raw``: the
        protobuf bytes the request was decoded from, when the caller has them (the batch
        then reads the records' bodies and severities from them: LogBatch)."""
        batch = LogBatch(request, self.clock(), defer_attributes=True, raw=raw)
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
        # After the processors, so that records they drop never cost the writes.
        batch.write_attributes()
        now_ns = int(batch.now * 1e9)
        for rec in batch.records:
            if not rec.observed_time_unix_nano:
                rec.observed_time_unix_nano = now_ns
        metrics.BATCH_DURATION.observe(time.perf_counter() - started)
        return batch

    def consume(self, request: ExportLogsServiceRequest, nbytes: int | None = None,
                raw: bytes | None = None) -> int:
        """Admit, process and enqueue one request. ``nbytes``: its serialized size when the
        caller knows it (the receiver's body length; computing it costs as much as
        serializing); ``raw``: the protobuf bytes it was decoded from, if any (see
        process). Returns the number of records accepted; raises Refused (nothing
        accepted) when a limit is reached or a persistent queue cannot store it."""
        n = count_records(request)
        if nbytes is None:
            nbytes = request.ByteSize()
        self.admit(n, nbytes)
        batch = self.process(request, raw)
        self.emit(batch, nbytes * len(batch) // n if n else 0)
        return n

    def emit(self, batch: LogBatch, nbytes: int | None = None) -> None:
        """Hand the surviving records to every exporter queue (``nbytes``: their estimated
        serialized size). Raises Refused when a persistent queue cannot store them; queues
        earlier in the list keep the request (the client's retry may duplicate it there)."""
        request = batch.compacted()
        if nbytes is None:
            nbytes = request.ByteSize() if self.queues else 0
        for q in self.queues:
            try:
                q.put(request, len(batch), nbytes)
            except StorageError as err:
                log.error("%s", err)
                raise Refused(f"cannot store the request: {err}", "storage_error",
                              unavailable=True) from None

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
