"""collector/exporters/file.py: OTLP JSON lines, as the Collector's file exporter writes."""

from __future__ import annotations

import asyncio
import errno
import json
import os

import pytest

from collector.config import FileExporterConfig, load_config_tree
from collector.exporters.base import ExportError
from collector.exporters.file import FileExporter
from collector.pipeline import Pipeline
from collector.receivers import codec
from tests.collector.wire_support import make_pipeline, make_request, metric, wait_for


async def test_one_request_per_line_readable_back(tmp_path):
    path = tmp_path / "deep" / "er" / "logs.jsonl"
    exporter = FileExporter("file", FileExporterConfig(path=str(path)))
    await exporter.start()
    first, second = make_request(3), make_request(2, service="billing")
    assert await exporter.export(first) == 0
    assert await exporter.export(second) == 0
    await exporter.shutdown()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 2
    assert [codec.decode_json(line) for line in lines] == [first, second]
    doc = json.loads(lines[0])
    rec = doc["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    assert rec["traceId"] == "5b8efff798038103d269b633813fc60c"  # hex, as OTLP/JSON says
    assert rec["timeUnixNano"] == "1700000000000000000"
    assert rec["severityNumber"] == 17


async def test_appends_to_an_existing_file(tmp_path):
    path = tmp_path / "logs.jsonl"
    path.write_text("previous line\n")
    exporter = FileExporter("file", FileExporterConfig(path=str(path)))
    await exporter.start()
    await exporter.export(make_request(1))
    await exporter.shutdown()
    assert path.read_text().splitlines()[0] == "previous line"
    assert len(path.read_text().splitlines()) == 2


async def test_every_export_is_in_the_file_when_it_returns(tmp_path):
    # A line kept in a buffer until a timed flush was lost, yet counted as sent, when that
    # flush failed (disk full; fresh-user trial with LIPSERVICE_OUTPUT=/dev/full).
    path = tmp_path / "logs.jsonl"
    exporter = FileExporter("file", FileExporterConfig(path=str(path), flush_interval=60))
    await exporter.start()
    await exporter.export(make_request(1))
    assert len(path.read_text().splitlines()) == 1  # before shutdown, before 60 s
    await exporter.shutdown()


async def test_a_full_disk_is_a_retryable_error_and_nothing_counts_as_sent():
    exporter = FileExporter("file/full", FileExporterConfig(path="/dev/full"))
    pipeline = make_pipeline(exporter)
    await pipeline.start()
    with pytest.raises(ExportError, match="No space left on device") as err:
        await exporter.export(make_request(1))
    assert err.value.retryable
    sent = metric("otelcol_exporter_sent_log_records_total", exporter="file/full")
    failed = metric("otelcol_exporter_send_failed_log_records_total", exporter="file/full")
    pipeline.consume(make_request(3))
    await pipeline.shutdown(5)
    assert metric("otelcol_exporter_sent_log_records_total", exporter="file/full") == sent
    assert metric("otelcol_exporter_send_failed_log_records_total",
                  exporter="file/full") == failed + 3


async def test_a_full_disk_is_retried_by_the_sidecar_not_dropped(tmp_path):
    # With no retry policy a write error dropped the records at the first attempt, logged
    # as "the backend refused them (not retryable)" (third fresh-user trial).
    cfg = load_config_tree({
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": "127.0.0.1:0"}}}},
        "exporters": {"file": {"path": "/dev/full",
                               "retry_on_failure": {"initial_interval": "50ms"}}},
        "service": {"telemetry": {"metrics": {"address": "127.0.0.1:0"}},
                    "pipelines": {"logs": {"receivers": ["otlp"], "exporters": ["file"]}}},
        "storage": {"directory": str(tmp_path)},
    })
    assert cfg.exporters["file"].retry_on_failure.enabled
    pipeline = Pipeline.from_config(cfg)
    await pipeline.start()
    queue = pipeline.queues[0]
    dropped = metric("lipservice_exporter_dropped_log_records_total", exporter="file",
                     reason="permanent")
    pipeline.consume(make_request(2))
    await asyncio.sleep(0.5)  # several attempts at 50 ms backoff
    assert queue.size == 2  # still held, being retried
    assert metric("lipservice_exporter_dropped_log_records_total", exporter="file",
                  reason="permanent") == dropped
    await pipeline.shutdown(0.2)


async def test_a_failed_write_leaves_no_partial_line(tmp_path, monkeypatch):
    path = tmp_path / "logs.jsonl"
    exporter = FileExporter("file", FileExporterConfig(path=str(path)))
    await exporter.start()
    await exporter.export(make_request(1))
    before = path.read_bytes()
    real_write = os.write

    def half_then_full(fd, data):
        if len(data) > 10:
            real_write(fd, bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(ExportError):
        await exporter.export(make_request(2))
    monkeypatch.setattr(os, "write", real_write)
    assert path.read_bytes() == before
    await exporter.export(make_request(2))  # the retry: one whole line
    await exporter.shutdown()
    assert [len(codec.decode_json(x).resource_logs[0].scope_logs[0].log_records)
            for x in path.read_text().splitlines()] == [1, 2]


async def test_flush_interval_zero_writes_every_batch(tmp_path):
    path = tmp_path / "logs.jsonl"
    exporter = FileExporter("file", FileExporterConfig(path=str(path), flush_interval=0))
    await exporter.start()
    await exporter.export(make_request(1))
    assert len(path.read_text().splitlines()) == 1  # before shutdown
    await exporter.shutdown()


async def test_lines_reach_the_file_within_the_flush_interval(tmp_path):
    path = tmp_path / "logs.jsonl"
    exporter = FileExporter("file", FileExporterConfig(path=str(path), flush_interval=0.05))
    await exporter.start()
    await exporter.export(make_request(1))
    await wait_for(lambda: path.read_text().count("\n") == 1, timeout=5)
    await exporter.shutdown()


@pytest.mark.parametrize("make_bad", [
    lambda tmp: tmp / "a-file" / "logs.jsonl",  # parent is a regular file
    lambda tmp: tmp,  # a directory
])
async def test_unwritable_path_fails_at_start_naming_it(tmp_path, make_bad):
    (tmp_path / "a-file").write_text("x")
    bad = make_bad(tmp_path)
    exporter = FileExporter("file/out", FileExporterConfig(path=str(bad)))
    with pytest.raises(OSError, match=f"exporter file/out: cannot write to {bad}"):
        await exporter.start()


async def test_through_a_real_pipeline(tmp_path):
    path = tmp_path / "out.jsonl"
    exporter = FileExporter("file", FileExporterConfig(path=str(path)))
    pipeline = make_pipeline(exporter)
    await pipeline.start()
    for i in range(3):
        pipeline.consume(make_request(2, body=f"batch {i} record {{i}}"))
    assert await pipeline.shutdown(5)
    bodies = [rec.body.string_value
              for line in path.read_text().splitlines()
              for rl in codec.decode_json(line).resource_logs
              for sl in rl.scope_logs for rec in sl.log_records]
    assert bodies == [f"batch {b} record {r}" for b in range(3) for r in range(2)]
