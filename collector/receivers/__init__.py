"""OTLP receivers: gRPC (``otlp_grpc``) and HTTP (``otlp_http``), sharing ``codec``.

A receiver is built as ``Cls(name, config, pipeline)``; ``await start()`` binds (raising
OSError with a message naming the endpoint when it cannot) and ``await stop()`` stops
accepting and lets requests in progress finish. The pipeline is anything with
``consume(request, nbytes, raw) -> int`` (records accepted; ``nbytes`` the decoded body's
length; ``raw`` the protobuf bytes, None for OTLP/JSON) that raises
``collector.pipeline.Refused`` when it cannot take the request now.
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest


class Consumer(Protocol):
    def consume(self, request: ExportLogsServiceRequest, nbytes: int | None = None,
                raw: bytes | None = None) -> int: ...


class ThrottledLog:
    """Logs at most one line per ``interval`` seconds per key, then reports how many it
    held back, so a client sending garbage in a loop cannot flood the sidecar's logs."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self.logger = logger
        self.interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.WARNING, key, msg, *args)

    def error(self, key: str, msg: str, *args: object) -> None:
        self.log(logging.ERROR, key, msg, *args)

    def log(self, level: int, key: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            self._held[key] = self._held.get(key, 0) + 1
            return
        held = self._held.pop(key, 0)
        self._last[key] = now
        if held:
            msg += " (%d similar messages suppressed)"
            args = (*args, held)
        self.logger.log(level, msg, *args)
