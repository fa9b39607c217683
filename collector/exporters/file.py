"""``file`` exporter: one OTLP/JSON ``ExportLogsServiceRequest`` per line (JSON Lines), as
the OpenTelemetry Collector's file exporter writes, so its output can be read back by
``lipservice replay``, ``otelcol``'s ``otlpjsonfile`` receiver or ``jq``.

| setting          | default  | meaning                                                     |
|------------------|----------|-------------------------------------------------------------|
| path             | —        | output file, appended to; parent directories are created    |
| flush_interval   | 1s       | written lines reach the file at most this late; 0 = every batch |
| sending_queue    |          | handled by ``collector/queue.py``                           |

``start()`` raises OSError naming the path when it cannot be opened for appending. A write
error (disk full) raises a retryable ExportError; ``shutdown()`` flushes and closes.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TextIO

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from collector.config import FileExporterConfig
from collector.exporters.base import ExportError
from collector.receivers import codec

log = logging.getLogger("lipservice.exporter.file")


class FileExporter:
    """Appends each request as one JSON line to ``config.path``."""

    def __init__(self, name: str, config: FileExporterConfig) -> None:
        self.name = name
        self.config = config
        self.path = Path(config.path).expanduser()
        self._file: TextIO | None = None
        self._flush_handle: asyncio.TimerHandle | None = None

    async def start(self) -> None:
        """Open the file for appending (creating parent directories). Raises OSError."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        except OSError as err:
            reason = os.strerror(err.errno) if err.errno else str(err)
            raise OSError(err.errno, f"exporter {self.name}: cannot write to {self.path}: "
                                     f"{reason}") from None
        log.info("exporter %s: writing OTLP JSON lines to %s", self.name, self.path.resolve())

    async def export(self, request: ExportLogsServiceRequest) -> int:
        if self._file is None:
            raise ExportError(f"exporter {self.name}: not started", retryable=False)
        line = codec.encode_json(request) + "\n"
        try:
            self._file.write(line)
            if self.config.flush_interval <= 0:
                self._file.flush()
            elif self._flush_handle is None:
                self._flush_handle = asyncio.get_running_loop().call_later(
                    self.config.flush_interval, self._flush)
        except OSError as err:
            raise ExportError(f"exporter {self.name}: cannot write to {self.path}: "
                              f"{os.strerror(err.errno) if err.errno else err}",
                              retryable=True) from None
        return 0

    def _flush(self) -> None:
        self._flush_handle = None
        if self._file is not None:
            try:
                self._file.flush()
            except OSError as err:
                log.error("exporter %s: cannot flush %s: %s", self.name, self.path, err)

    async def shutdown(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.close()
            except OSError as err:
                log.error("exporter %s: cannot close %s: %s", self.name, self.path, err)
