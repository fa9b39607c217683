"""collector/exporters/debug.py: a summary line per batch."""

from __future__ import annotations

import io

from collector.config import DebugExporterConfig
from collector.exporters.debug import DebugExporter
from tests.collector.wire_support import make_request


async def test_basic_is_one_summary_line_per_batch():
    out = io.StringIO()
    exporter = DebugExporter("debug", DebugExporterConfig(), stream=out)
    await exporter.start()
    assert await exporter.export(make_request(6)) == 0
    assert await exporter.export(make_request(1)) == 0
    await exporter.shutdown()
    lines = out.getvalue().splitlines()
    assert lines == ["debug: 6 log records in 1 resource logs (INFO=4 ERROR=2)",
                     "debug: 1 log records in 1 resource logs (ERROR=1)"]


async def test_normal_adds_a_line_per_record():
    out = io.StringIO()
    exporter = DebugExporter("debug/x", DebugExporterConfig(verbosity="normal"), stream=out)
    await exporter.export(make_request(2, body="hello {i}"))
    lines = out.getvalue().splitlines()
    assert lines[1:] == ["  ERROR hello 0", "  INFO hello 1"]


async def test_detailed_adds_the_batch_as_json():
    out = io.StringIO()
    exporter = DebugExporter("debug", DebugExporterConfig(verbosity="detailed"), stream=out)
    await exporter.export(make_request(1))
    assert out.getvalue().splitlines()[-1].startswith('{"resourceLogs":[')


async def test_writes_to_stderr_by_default(capsys):
    exporter = DebugExporter("debug", DebugExporterConfig())
    await exporter.export(make_request(1))
    assert "debug: 1 log records" in capsys.readouterr().err
