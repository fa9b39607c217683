"""``file`` exporter: one OTLP/JSON ``ExportLogsServiceRequest`` per line (JSON Lines), as
the OpenTelemetry Collector's file exporter writes, so its output can be read back by
``lipservice replay``, ``otelcol``'s ``otlpjsonfile`` receiver or ``jq``.

| setting          | default  | meaning                                                     |
|------------------|----------|-------------------------------------------------------------|
| path             | —        | output file, appended to; parent directories are created    |
| flush_interval   | 1s       | accepted (the Collector's setting); lines are written at once |
| retry_on_failure |          | a write error (disk full) is retried (``collector/queue.py``) |
| sending_queue    |          | handled by ``collector/queue.py``                           |

Each export is written to the file (one unbuffered ``write``) before it counts as sent, so
nothing acknowledged waits in a buffer that a later write error (disk full) would lose.
``start()`` raises OSError naming the path when it cannot be opened for appending. A write
error raises a retryable ExportError after cutting the file back to its size before the
write (no partial line is left); ``shutdown()`` closes the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import BinaryIO

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
        self._file: BinaryIO | None = None

    async def start(self) -> None:
        """Open the file for appending (creating parent directories). Raises OSError."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open
        except OSError as err:
            reason = os.strerror(err.errno) if err.errno else str(err)
            raise OSError(err.errno, f"exporter {self.name}: cannot write to {self.path}: "
                                     f"{reason}") from None
        log.info("exporter %s: writing OTLP JSON lines to %s", self.name, self.path.resolve())

    async def export(self, request: ExportLogsServiceRequest) -> int:
        if self._file is None:
            raise ExportError(f"exporter {self.name}: not started", retryable=False)
        data = memoryview((codec.encode_json(request) + "\n").encode("utf-8"))
        fd = self._file.fileno()
        size = None
        try:
            size = os.lseek(fd, 0, os.SEEK_END)
            while data:
                data = data[os.write(fd, data):]
        except OSError as err:
            if size is not None:  # no partial line: a retry writes the whole line again
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, size)
            raise ExportError(f"exporter {self.name}: cannot write to {self.path}: "
                              f"{os.strerror(err.errno) if err.errno else err}",
                              retryable=True) from None
        return 0

    async def shutdown(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            try:
                f.close()
            except OSError as err:
                log.error("exporter %s: cannot close %s: %s", self.name, self.path, err)
