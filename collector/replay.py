"""``lipservice replay``: run log files through the configured processors and exporters
in-process (no network receiver), in input order, and report what would be kept.

Input, per line:
- OTLP JSON (a line that is a JSON object with ``resourceLogs``, as the ``file`` exporter
  and the Collector's file exporter write): one ExportLogsServiceRequest; the attributes
  this product writes (``log.pattern.id``, ``sampling.adjusted_count`` …) are removed
  first, so replaying the file exporter's output does not duplicate them;
- anything else: one plain-text record; body = the line, ``service.name`` = ``--service``
  or the file's stem, severity from the first standard level word in the line
  (``INFO``, ``WARN``, ``ERROR``, ``[error]``, ``level=debug`` …), else unspecified.

``rate``: records/s of a virtual clock (each batch's ``now`` advances by its records/rate),
so windows behave as in production; None uses the wall clock.
"""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from collector.config import Config
from collector.pipeline import Pipeline
from processors.base import LogBatch, count_records, strip_own_attrs

BATCH_SIZE = 1000

# (severity_number, severity_text) by level word (OTel log data model §Severity mapping).
_LEVELS = {
    "TRACE": (1, "TRACE"), "DEBUG": (5, "DEBUG"), "INFO": (9, "INFO"),
    "NOTICE": (10, "NOTICE"), "WARN": (13, "WARN"), "WARNING": (13, "WARNING"),
    "ERROR": (17, "ERROR"), "ERR": (17, "ERROR"), "SEVERE": (17, "SEVERE"),
    "CRIT": (21, "CRITICAL"), "CRITICAL": (21, "CRITICAL"), "FATAL": (21, "FATAL"),
    "ALERT": (22, "ALERT"), "EMERG": (23, "EMERGENCY"), "PANIC": (24, "PANIC"),
}
_WORDS = "|".join(sorted(_LEVELS, key=len, reverse=True))
_LEVEL_UPPER = re.compile(rf"\b({_WORDS})\b")
_LEVEL_TAGGED = re.compile(rf"(?:[\[<(]|\blevel[=:]\s*\"?)({_WORDS})\b", re.IGNORECASE)


def severity_of(line: str) -> tuple[int, str]:
    """(severity_number, severity_text) from a level word in a plain-text line, or (0, "")."""
    m = _LEVEL_UPPER.search(line) or _LEVEL_TAGGED.search(line)
    if m is None:
        return 0, ""
    return _LEVELS[m.group(1).upper()]


def _text_request(lines: list[str], service: str) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.append(KeyValue(key="service.name",
                                           value=AnyValue(string_value=service)))
    sl = rl.scope_logs.add()
    sl.scope.name = "lipservice.replay"
    recs = sl.log_records
    for line in lines:
        number, text = severity_of(line)
        recs.append(LogRecord(body=AnyValue(string_value=line), severity_number=number,
                              severity_text=text))
    return req


def read_requests(path: str, service: str | None,
                  batch_size: int = BATCH_SIZE) -> Iterator[tuple[ExportLogsServiceRequest, int]]:
    """(request, bytes read) in input order from one file (``-`` for stdin). Raises OSError
    if the file cannot be read and ValueError on an undecodable OTLP JSON line."""
    from collector.receivers.codec import decode_json

    svc = service or (Path(path).stem if path != "-" else "stdin")
    stream = sys.stdin.buffer if path == "-" else open(path, "rb")  # noqa: SIM115
    try:
        pending: list[str] = []
        pending_bytes = 0
        for lineno, raw in enumerate(stream, 1):
            text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            if text.startswith("{") and '"resourceLogs"' in text:
                if pending:
                    yield _text_request(pending, svc), pending_bytes
                    pending, pending_bytes = [], 0
                try:
                    request = decode_json(raw)
                except Exception as err:  # noqa: BLE001 - report the line, not a traceback
                    raise ValueError(f"{path}:{lineno}: not valid OTLP JSON: {err}") from None
                strip_own_attrs(request)  # re-mined and re-sampled below, not duplicated
                yield request, len(raw)
                continue
            if not text:
                continue
            pending.append(text)
            pending_bytes += len(raw)
            if len(pending) >= batch_size:
                yield _text_request(pending, svc), pending_bytes
                pending, pending_bytes = [], 0
        if pending:
            yield _text_request(pending, svc), pending_bytes
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def record_bytes(request: ExportLogsServiceRequest) -> int:
    """Serialized size of the log records alone (not the resource and scope framing, which
    depends on how records happen to be batched)."""
    return sum(r.ByteSize() for rl in request.resource_logs for sl in rl.scope_logs
               for r in sl.log_records)


@dataclass
class Report:
    """What a replay saw: totals, and per pattern id records kept and dropped."""

    records_in: int = 0
    records_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    kept: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    templates: dict[str, str] = field(default_factory=dict)

    def add(self, batch: LogBatch, bytes_in: int, records_in: int) -> None:
        self.records_in += records_in
        self.bytes_in += bytes_in
        self.records_out += len(batch)
        self.bytes_out += sum(r.ByteSize() for r in batch.records)
        self.kept.update(batch.pattern_ids)
        self.dropped.update(batch.dropped_pattern_ids)
        for pid, template in zip(batch.pattern_ids, batch.templates, strict=True):
            if pid not in self.templates:
                self.templates[pid] = template

    def render(self, top: int) -> str:
        def pct(out: int, inp: int) -> str:
            return f"{100 * (1 - out / inp):.1f}%" if inp else "-"

        lines = [
            f"records  in {self.records_in:>12,}  out {self.records_out:>12,}  "
            f"reduction {pct(self.records_out, self.records_in)}",
            f"bytes    in {self.bytes_in:>12,}  out {self.bytes_out:>12,}  "
            f"reduction {pct(self.bytes_out, self.bytes_in)}",
            f"patterns {len(set(self.kept) | set(self.dropped)):,}",
            "(bytes: serialized OTLP log records; kept ones carry the attributes added here, "
            "log.pattern.id and sampling.adjusted_count: 76 bytes)",
            "",
            f"{'pattern id':<16}  {'in':>9}  {'kept':>9}  {'dropped':>9}  template",
        ]
        totals = self.kept + self.dropped
        for pid, n in totals.most_common(top):
            template = "".join(c if c.isprintable() else f"\\x{ord(c):02x}"
                               for c in self.templates.get(pid, ""))
            if len(template) > 100:
                template = template[:97] + "..."
            lines.append(f"{pid or '(none)':<16}  {n:>9,}  {self.kept[pid]:>9,}  "
                         f"{self.dropped[pid]:>9,}  {template}")
        return "\n".join(lines)


async def replay(config: Config, files: list[str], rate: float | None = None,
                 service: str | None = None, top: int = 15) -> int:
    """Replay ``files`` through ``config``'s pipeline; prints the report to stdout.
    Returns the exit code."""
    virtual = [time.time()]
    clock = (lambda: virtual[0]) if rate else time.time
    # No persistent queue: what replay exports must not be left for a later sidecar run.
    pipeline = Pipeline.from_config(config, clock=clock, persistent=False)
    await pipeline.start()
    report = Report()
    batch_size = BATCH_SIZE if not rate else max(1, min(BATCH_SIZE, int(rate / 10) or 1))
    progress = _progress(files)
    try:
        for path in files:
            for request, nbytes in read_requests(path, service, batch_size):
                n = count_records(request)
                bytes_in = record_bytes(request)
                while not pipeline.has_room(n, bytes_in):  # backpressure from the exporters
                    await asyncio.sleep(0.01)
                batch = pipeline.process(request)
                report.add(batch, bytes_in, n)
                pipeline.emit(batch, bytes_in * len(batch) // n if n else 0)
                if rate:
                    virtual[0] += n / rate
                if progress is not None:
                    progress.update(nbytes)
                await asyncio.sleep(0)  # let exporter consumers run
    finally:
        if progress is not None:
            progress.close()
        await pipeline.shutdown(timeout=60.0)
    print(report.render(top))
    print(_destinations(config), file=sys.stderr)
    return 0


def _destinations(config: Config) -> str:
    """One line saying where the kept records went."""
    from collector.config import FileExporterConfig

    parts = []
    for name in config.service.pipelines.logs.exporters:
        cfg = config.exporters[name]
        if isinstance(cfg, FileExporterConfig):
            parts.append(f"{name} → {Path(cfg.path).resolve()}")
        else:
            parts.append(name)
    return "kept records exported to: " + ", ".join(parts)


class _Bar:
    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

        self._p = Progress("replay", BarColumn(), DownloadColumn(), TimeRemainingColumn(),
                           console=Console(stderr=True), transient=True)
        self._task = self._p.add_task("replay", total=total)
        self._p.start()

    def update(self, n: int) -> None:
        self._p.advance(self._task, n)

    def close(self) -> None:
        self._p.stop()


def _progress(files: list[str]) -> _Bar | None:
    """A progress bar when stderr is a terminal and the input is over 5 MB."""
    if not sys.stderr.isatty() or "-" in files:
        return None
    total = sum(Path(f).stat().st_size for f in files)
    return _Bar(total) if total > 5_000_000 else None
