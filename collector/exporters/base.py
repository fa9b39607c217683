"""The exporter contract: what the sending queue calls.

An exporter sends one ``ExportLogsServiceRequest`` per call and reports the outcome:

- returns the number of records the backend rejected in a partial-success answer (0 when
  all were accepted);
- raises :class:`ExportError` otherwise, saying whether the failure is retryable and, when
  the backend said so (HTTP ``Retry-After``, gRPC ``RetryInfo``), after how long.

An exporter may also offer ``export_parts(parts) -> int``: send the records of several
requests as one request (the sending queue's batches). Without it the queue merges the
parts with :func:`merge_requests` (a copy of every record) and calls ``export``.

Retries, backoff and queueing live in ``collector/queue.py``, not in exporters.
"""

from __future__ import annotations

from typing import Protocol

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest


class ExportError(Exception):
    """A failed export.

    retryable: True for transient failures (HTTP 429/502/503/504, connection errors,
        timeouts, retryable gRPC codes); False for permanent ones (other 4xx, bad config).
    retry_after: seconds the backend asked us to wait, or None.
    too_large: the backend answered 413: the queue splits the batch and sends the halves.
    """

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None,
                 too_large: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after
        self.too_large = too_large


def merge_requests(parts: list[ExportLogsServiceRequest]) -> ExportLogsServiceRequest:
    """One request holding every part's resource_logs, in order (the part itself when
    there is one)."""
    if len(parts) == 1:
        return parts[0]
    merged = ExportLogsServiceRequest()
    for part in parts:
        merged.MergeFrom(part)  # appends resource_logs
    return merged


class Exporter(Protocol):
    name: str

    async def start(self) -> None: ...

    async def export(self, request: ExportLogsServiceRequest) -> int: ...

    async def shutdown(self) -> None: ...
