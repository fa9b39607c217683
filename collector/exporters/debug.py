"""``debug`` exporter: a line per batch on stderr, for trying pipelines out.

| setting    | default | meaning                                                          |
|------------|---------|------------------------------------------------------------------|
| verbosity  | basic   | ``basic``: one summary line per batch; ``normal``: plus one line per record (severity and body); ``detailed``: plus the batch as OTLP JSON |
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import TextIO

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from collector.config import DebugExporterConfig
from collector.receivers import codec

_BODY_CHARS = 200


def summarize(request: ExportLogsServiceRequest) -> tuple[int, int, Counter[str]]:
    """(log records, resources, count per severity text or number)."""
    records = 0
    severities: Counter[str] = Counter()
    for rl in request.resource_logs:
        for sl in rl.scope_logs:
            for rec in sl.log_records:
                records += 1
                severities[rec.severity_text or (f"SEV{rec.severity_number}"
                                                 if rec.severity_number else "UNSET")] += 1
    return records, len(request.resource_logs), severities


class DebugExporter:
    """Writes to ``stream`` (default stderr)."""

    def __init__(self, name: str, config: DebugExporterConfig,
                 stream: TextIO | None = None) -> None:
        self.name = name
        self.config = config
        self.stream = stream

    async def start(self) -> None:
        return None

    async def export(self, request: ExportLogsServiceRequest) -> int:
        out = self.stream or sys.stderr
        records, resources, severities = summarize(request)
        sev = " ".join(f"{k}={v}" for k, v in severities.most_common())
        lines = [f"{self.name}: {records} log records in {resources} resource logs ({sev})"]
        if self.config.verbosity in ("normal", "detailed"):
            for rl in request.resource_logs:
                for sl in rl.scope_logs:
                    for rec in sl.log_records:
                        body = (rec.body.string_value if rec.body.HasField("string_value")
                                else codec.encode_json(rec.body))
                        if len(body) > _BODY_CHARS:
                            body = body[:_BODY_CHARS] + "..."
                        lines.append(f"  {rec.severity_text or rec.severity_number} {body}")
        if self.config.verbosity == "detailed":
            lines.append(codec.encode_json(request))
        out.write("\n".join(lines) + "\n")
        out.flush()
        return 0

    async def shutdown(self) -> None:
        return None
