"""The sending queue between the pipeline and one exporter: bounded, batching, retrying,
optionally persistent. User documentation: docs/delivery.md.

Semantics (names and behaviour from the Collector's exporterhelper):

- **Bounded** by ``queue_size`` log records and ``queue_size_bytes`` bytes of serialized
  OTLP, counting what waits and what is being sent. The pipeline asks
  :meth:`ExportQueue.full_reason` *before* it accepts a request, so a full queue becomes a
  retryable refusal at the receiver (HTTP 429 / gRPC RESOURCE_EXHAUSTED), never a silent
  drop. An empty queue takes any one request, however large.
- **Batching** (``batch``): an idle consumer waits until ``min_size`` records are queued
  or the oldest request has waited ``flush_timeout``, then takes requests, oldest first,
  until it has ``min_size`` records or the next would pass ``max_size``, and merges them
  into one request (a single request over ``max_size`` is cut into pieces of
  ``max_size``). Batches are formed only when a consumer is free, so a slow backend gets
  fewer, larger requests; requests already as large as ``min_size`` are not merged (a
  merge copies every record: about 2 µs per record here).
- **Consumers**: ``num_consumers`` tasks send concurrently.
- **Retry** (``retry_on_failure``): a retryable :class:`ExportError` is retried with
  exponential backoff and jitter, waiting at least the backend's ``Retry-After`` /
  ``RetryInfo``; a permanent one is not retried. After ``max_elapsed_time`` (0 = never) or
  on a permanent error the records are dropped and counted
  (``otelcol_exporter_send_failed_log_records`` and ``lipservice_exporter_dropped_log_records``
  by reason), with the backend's reason logged at most once per 10 s per reason.
  A 413 splits the request in halves, sent separately; partial success is counted.
- **Persistent** (``storage``): each accepted request is committed to SQLite
  (collector/persistent_queue.py) inside :meth:`ExportQueue.put`, before the receiver
  answers; rows are deleted after their batch is sent or dropped. Rows left at shutdown or
  by a crash are loaded at the next :meth:`ExportQueue.start` and sent (at-least-once;
  possible duplicates counted in ``lipservice_exporter_persistent_queue_redelivered_log_records``).
- **Drain**: :meth:`ExportQueue.drain` sends what is queued, without waiting for
  ``min_size``, until a deadline. What is left then is counted as dropped (memory queue) or
  stays on disk for the next start (persistent queue).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from collector import metrics
from collector.config import BatchConfig, RetryConfig, SendingQueueConfig
from collector.exporters.base import Exporter, ExportError, merge_requests
from collector.persistent_queue import PersistentStore, StorageError, quarantine
from collector.receivers import ThrottledLog
from processors.base import count_records

log = logging.getLogger("lipservice.queue")


def backoff_delays(cfg: RetryConfig, rng: random.Random | None = None) -> Iterator[float]:
    """Yield successive retry delays (seconds): initial_interval × multiplier^k, capped at
    max_interval, each randomised by ±randomization_factor."""
    rng = rng or random.Random()
    interval = cfg.initial_interval
    while True:
        jitter = cfg.randomization_factor * interval
        yield max(0.0, interval + rng.uniform(-jitter, jitter))
        interval = min(interval * cfg.multiplier, cfg.max_interval)


def slice_request(request: ExportLogsServiceRequest, lo: int, hi: int,
                  ) -> ExportLogsServiceRequest:
    """Records ``[lo, hi)`` of ``request`` (in flat order) in a new request, each under a
    copy of its resource and scope (schema URLs kept); empty scopes/resources omitted."""
    out = ExportLogsServiceRequest()
    seen = 0
    for rl in request.resource_logs:
        out_rl = None
        for sl in rl.scope_logs:
            n = len(sl.log_records)
            a, b = max(lo - seen, 0), min(hi - seen, n)
            seen += n
            if b <= a:
                continue
            if out_rl is None:
                out_rl = out.resource_logs.add()
                out_rl.resource.CopyFrom(rl.resource)
                out_rl.schema_url = rl.schema_url
            out_sl = out_rl.scope_logs.add()
            out_sl.scope.CopyFrom(sl.scope)
            out_sl.schema_url = sl.schema_url
            out_sl.log_records.extend(sl.log_records[a:b])
        if seen >= hi:
            break
    return out


def split_request(request: ExportLogsServiceRequest) -> tuple[ExportLogsServiceRequest,
                                                              ExportLogsServiceRequest]:
    """The first and the second half of the records. Used when a backend answers 413."""
    total = count_records(request)
    return slice_request(request, 0, total // 2), slice_request(request, total // 2, total)


def chunk_request(request: ExportLogsServiceRequest, size: int, total: int | None = None,
                  ) -> list[ExportLogsServiceRequest]:
    """``request`` cut into requests of at most ``size`` records (the request itself when
    it is small enough)."""
    total = count_records(request) if total is None else total
    if size <= 0 or total <= size:
        return [request]
    return [slice_request(request, lo, lo + size) for lo in range(0, total, size)]


@dataclass(slots=True, eq=False)
class _Item:
    """One accepted request in the queue. ``request`` is None for a row loaded from the
    persistent queue at start-up (read from disk when sent); ``row`` is its row id."""

    request: ExportLogsServiceRequest | None
    records: int
    nbytes: int
    row: int | None
    since: float  # time.monotonic() when queued
    redelivery: bool = False  # loaded at start-up, had been handed to the exporter before


class _Deferred(Exception):
    """Sending stopped at the shutdown deadline; the rows stay in the persistent queue."""


class ExportQueue:
    """Bounded, batching, retrying (optionally persistent) queue for one exporter. Lives on
    the event loop; every method but :meth:`start`/:meth:`drain` is synchronous.

    exporter: an Exporter; queue: its ``sending_queue`` settings; retry: its
    ``retry_on_failure`` (None = no retries); storage: the persistent queue file (None =
    memory only; see ``persistent_queue.resolve_storage_path``); fsync: ``storage.fsync``.
    """

    def __init__(self, exporter: Exporter, queue: SendingQueueConfig,
                 retry: RetryConfig | None = None, storage: Path | None = None,
                 fsync: bool = False) -> None:
        self.exporter = exporter
        self.name = exporter.name
        self.enabled = queue.enabled
        self.capacity = queue.queue_size
        self.capacity_bytes = queue.queue_size_bytes
        self.num_consumers = queue.num_consumers
        self.batch: BatchConfig = queue.batch if queue.enabled else BatchConfig(enabled=False)
        self.retry = retry or RetryConfig(enabled=False)
        self.storage_path = storage
        self.fsync = fsync
        self.store: PersistentStore | None = None
        self._pending: deque[_Item] = deque()
        self._pending_records = 0
        self._size = 0  # records queued or in flight
        self._bytes = 0  # bytes queued or in flight
        self._busy = 0  # consumers sending
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._forming = asyncio.Lock()  # one idle consumer forms the next batch
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._deadline: float | None = None
        self._cut_short = False  # the shutdown deadline stopped some sending
        self._deferred = 0  # records left on disk by the shutdown deadline
        self._log = ThrottledLog(log)
        self._m_size = metrics.EXPORTER_QUEUE_SIZE.labels(self.name)
        self._m_bytes = metrics.EXPORTER_QUEUE_SIZE_BYTES.labels(self.name)
        self._m_sent = metrics.EXPORTER_SENT.labels(self.name)
        self._m_failed = metrics.EXPORTER_SEND_FAILED.labels(self.name)
        self._m_batch = metrics.EXPORTER_BATCH_SEND_SIZE.labels(self.name)
        metrics.EXPORTER_QUEUE_CAPACITY.labels(self.name).set(self.capacity)
        metrics.EXPORTER_QUEUE_CAPACITY_BYTES.labels(self.name).set(self.capacity_bytes)
        self._m_size.set(0)
        self._m_bytes.set(0)

    # ------------------------------------------------------------------ admission and put

    @property
    def size(self) -> int:
        """Log records queued or being sent."""
        return self._size

    @property
    def size_bytes(self) -> int:
        """Bytes of serialized OTLP queued or being sent."""
        return self._bytes

    def full_reason(self, n: int, nbytes: int = 0) -> str | None:
        """None when a request of ``n`` records and ``nbytes`` bytes can be queued now;
        else the refusal reason: ``queue_full`` (records), ``queue_full_bytes`` or
        ``shutting_down``. With ``enabled: false`` a request is taken only when a consumer
        can send it at once."""
        if self._closing:
            return "shutting_down"
        if not self.enabled:
            return None if not self._pending and self._busy < self.num_consumers \
                else "queue_full"
        if self._size == 0:
            return None
        if self._size + n > self.capacity:
            return "queue_full"
        if self.capacity_bytes and self._bytes + nbytes > self.capacity_bytes:
            return "queue_full_bytes"
        return None

    def has_room(self, n: int, nbytes: int = 0) -> bool:
        return self.full_reason(n, nbytes) is None

    def put(self, request: ExportLogsServiceRequest, n: int, nbytes: int = 0) -> None:
        """Queue a request of ``n`` records (``nbytes``: its serialized size, an estimate
        is fine). The caller checked :meth:`full_reason`. With a persistent queue the
        request is committed to disk before this returns; raises StorageError if it cannot
        be (nothing is queued then)."""
        if n == 0:
            return
        row = None
        if self.store is not None:
            body = request.SerializeToString()
            row = self.store.append(body, n)
            nbytes = len(body)
        self._enqueue(_Item(request, n, nbytes, row, time.monotonic()))

    def _enqueue(self, item: _Item) -> None:
        self._pending.append(item)
        self._pending_records += item.records
        self._size += item.records
        self._bytes += item.nbytes
        self._idle.clear()
        self._m_size.set(self._size)
        self._m_bytes.set(self._bytes)
        self._wakeup.set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the persistent queue (loading what a previous run left), start the exporter
        and the consumers. Raises StorageError or the exporter's start error."""
        if self.storage_path is not None:
            self.store = self._open_store(self.storage_path)
            self._recover(self.store)
        await self.exporter.start()
        self._tasks = [asyncio.create_task(self._consume(), name=f"export:{self.name}:{i}")
                       for i in range(self.num_consumers)]

    def _open_store(self, path: Path) -> PersistentStore:
        try:
            return PersistentStore(path, self.fsync)
        except StorageError as err:
            if not err.corrupt:
                raise
            moved = quarantine(path)
            log.error("exporter %s: %s; moved it to %s and starting with an empty queue",
                      self.name, err, moved)
            return PersistentStore(path, self.fsync)

    def _recover(self, store: PersistentStore) -> None:
        rows = store.pending()
        if not rows:
            return
        now = time.monotonic()
        for r in rows:
            self._enqueue(_Item(None, r.records, r.nbytes, r.id, now, r.dispatched))
        metrics.PERSISTENT_QUEUE_RECOVERED.labels(self.name).inc(self._size)
        log.info("exporter %s: %d log records (%d requests) left in %s by the previous run; "
                 "sending them", self.name, self._size, len(rows), store.path)

    async def drain(self, timeout: float) -> bool:
        """Stop taking work, send what is queued (batches no longer wait for ``min_size``)
        for up to ``timeout`` seconds, then stop the consumers and the exporter. Returns True
        when everything was sent (or dropped for a permanent reason) before the deadline.
        What is left is counted as dropped (memory queue) or kept on disk for the next
        start."""
        self._closing = True
        self._deadline = time.monotonic() + timeout
        self._wakeup.set()
        done = self._idle.is_set()  # wait_for(…, 0) would time out even on an idle queue
        if not done:
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
                done = True
            except TimeoutError:
                done = False
        unsent = self._size
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.store is not None:
            try:
                kept = sum(r.records for r in self.store.pending())
            except StorageError:
                kept = self._deferred + self._size
            if kept:
                log.warning("exporter %s: shutdown timeout; %d log records stay in %s and are "
                            "sent at the next start", self.name, kept, self.store.path)
            self.store.close()
        else:
            if self._size:  # never taken by a consumer (in-flight ones were counted)
                self._drop(self._size, "shutdown")
            if not done and unsent:
                log.error("exporter %s: shutdown timeout with %d log records unsent; they are "
                          "dropped (a persistent queue would keep them)", self.name, unsent)
        await self.exporter.shutdown()
        return done and not self._cut_short

    # ------------------------------------------------------------------ consumers

    async def _consume(self) -> None:
        while True:
            async with self._forming:
                items = await self._next_batch()
            if items is None:
                return
            await self._send_items(items)

    async def _next_batch(self) -> list[_Item] | None:
        """Wait for work and take the next batch (None when closing and empty)."""
        while not self._pending:
            if self._closing:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        if self.batch.enabled:
            flush_at = self._pending[0].since + self.batch.flush_timeout
            while self._pending_records < self.batch.min_size and not self._closing:
                remaining = flush_at - time.monotonic()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except TimeoutError:
                    break
        items = [self._pending.popleft()]
        total = items[0].records
        limit = self.batch.max_size if self.batch.enabled else 0
        while (self.batch.enabled and self._pending and total < self.batch.min_size
               and (not limit or total + self._pending[0].records <= limit)):
            item = self._pending.popleft()
            items.append(item)
            total += item.records
        self._pending_records -= total
        return items

    async def _send_items(self, items: list[_Item]) -> None:
        n = sum(i.records for i in items)
        nbytes = sum(i.nbytes for i in items)
        rows = [i.row for i in items if i.row is not None]
        finished = False
        settled = 0  # records of this batch already sent or dropped (counted)
        self._busy += 1
        try:
            parts, settled = self._materialize(items)
            if self.store is not None and rows:
                try:
                    self.store.mark_dispatched(rows)
                except StorageError as err:  # only duplicate accounting suffers
                    self._log.error("storage", "exporter %s: %s", self.name, err)
            limit = self.batch.max_size if self.batch.enabled else 0
            if len(parts) == 1:  # one request: cut it if it is over max_size
                for piece in chunk_request(parts[0], limit):
                    k = count_records(piece)
                    await self._send([piece], k)
                    settled += k
            elif parts:
                await self._send(parts, n - settled)
            redelivered = sum(i.records for i in items if i.redelivery)
            if redelivered:
                metrics.PERSISTENT_QUEUE_REDELIVERED.labels(self.name).inc(redelivered)
            finished = True
        except _Deferred:
            self._deferred += n - settled
        except asyncio.CancelledError:
            if self.store is None:
                self._drop(n - settled, "shutdown")
            raise
        except StorageError as err:
            self._log.error("storage", "exporter %s: %s; the batch stays queued on disk",
                            self.name, err)
        except Exception:  # noqa: BLE001 - an exporter bug must not kill the consumer
            log.exception("exporter %s failed unexpectedly; dropping %d log records",
                          self.name, n - settled)
            self._drop(n - settled, "exporter_error")
            finished = True
        finally:
            self._busy -= 1
            if finished and self.store is not None and rows:
                try:
                    self.store.delete(rows)
                except StorageError as err:
                    self._log.error("storage", "exporter %s: %s (they may be sent again "
                                    "after a restart)", self.name, err)
            self._size -= n
            self._bytes -= nbytes
            self._m_size.set(self._size)
            self._m_bytes.set(self._bytes)
            if self._size == 0:
                self._idle.set()

    def _materialize(self, items: list[_Item]) -> tuple[list[ExportLogsServiceRequest], int]:
        """The items' requests (rows loaded at start-up are read from disk here; an
        unreadable one is dropped and counted) and the number of records dropped so."""
        missing = [i.row for i in items if i.request is None and i.row is not None]
        bodies = self.store.read(missing) if missing and self.store is not None else {}
        parts: list[ExportLogsServiceRequest] = []
        dropped = 0
        for item in items:
            req = item.request
            if req is None:
                try:
                    req = ExportLogsServiceRequest.FromString(bodies[item.row])  # type: ignore[index]
                except (KeyError, DecodeError):
                    self._drop(item.records, "unreadable")
                    log.error("exporter %s: stored request %s in %s cannot be read; %d log "
                              "records dropped", self.name, item.row, self.storage_path,
                              item.records)
                    dropped += item.records
                    continue
            parts.append(req)
        return parts, dropped

    async def _send(self, parts: list[ExportLogsServiceRequest], n: int) -> None:
        """Export ``parts`` (``n`` records) as one request, with retries. Returns when sent
        or dropped (counted); raises _Deferred at the shutdown deadline when the persistent
        queue keeps the records."""
        if n == 0:
            return
        self._m_batch.observe(n)
        send_parts = getattr(self.exporter, "export_parts", None)
        merged: ExportLogsServiceRequest | None = None
        start = time.monotonic()
        delays = backoff_delays(self.retry)
        while True:
            try:
                if len(parts) == 1:
                    rejected = await self.exporter.export(parts[0])
                elif send_parts is not None:
                    rejected = await send_parts(parts)
                else:
                    merged = merged or merge_requests(parts)
                    rejected = await self.exporter.export(merged)
            except ExportError as err:
                if err.too_large and n > 1:
                    first, second = split_request(merge_requests(parts))
                    await self._send([first], count_records(first))
                    await self._send([second], count_records(second))
                    return
                delay = next(delays)
                if err.retry_after is not None:
                    delay = max(delay, err.retry_after)
                now = time.monotonic()
                if not err.retryable or not self.retry.enabled:
                    self._drop(n, "permanent")
                    self._log.error("permanent", "exporter %s: dropping %d log records, the "
                                    "backend refused them (not retryable): %s", self.name, n,
                                    self._text(err))
                    return
                if self.retry.max_elapsed_time and now - start + delay > \
                        self.retry.max_elapsed_time:
                    self._drop(n, "retries_exhausted")
                    self._log.error("exhausted", "exporter %s: dropping %d log records after "
                                    "retrying for %.0fs (max_elapsed_time): %s", self.name, n,
                                    now - start, self._text(err))
                    return
                if self._deadline is not None and now + delay > self._deadline:
                    self._cut_short = True
                    if self.store is not None:
                        raise _Deferred() from None
                    self._drop(n, "shutdown")
                    log.error("exporter %s: shutdown deadline; dropping %d log records: %s",
                              self.name, n, self._text(err))
                    return
                metrics.EXPORTER_RETRIES.labels(self.name).inc()
                self._log.warning("retry", "exporter %s: %s; retrying in %.1fs", self.name,
                                  self._text(err), delay)
                await asyncio.sleep(delay)
                continue
            if rejected:
                metrics.EXPORTER_REJECTED.labels(self.name).inc(rejected)
            self._m_sent.inc(n - rejected)
            return

    def _text(self, err: Exception) -> str:
        """The error's message without a leading ``exporter <name>: `` (the log line
        names the exporter already)."""
        return str(err).removeprefix(f"exporter {self.name}: ")

    def _drop(self, n: int, reason: str) -> None:
        self._m_failed.inc(n)
        metrics.EXPORTER_DROPPED.labels(self.name, reason).inc(n)
