"""What bench/e2e.py relies on: its load generator sends valid OTLP (decoded with the real
protobuf classes, over real HTTP and gRPC servers on loopback) with a readable latency
probe, and the table's columns are computed correctly from raw observations."""

from __future__ import annotations

import asyncio
import math
import os
import random
from pathlib import Path

import grpc
import pytest
from aiohttp import web
from grpc import aio
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from bench import e2e
from collector.replay import severity_of

REPO = Path(__file__).resolve().parents[2]


def loghub_dir() -> Path:
    env = os.environ.get("LIPSERVICE_LOGHUB_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "loghub_2k"
    if not (path / "HDFS" / "HDFS_2k.log").is_file():
        pytest.skip(f"Loghub-2k data not found at {path} (set LIPSERVICE_LOGHUB_DIR)")
    return path


def records(req: ExportLogsServiceRequest) -> list:
    return [r for rl in req.resource_logs for sl in rl.scope_logs for r in sl.log_records]


def probe_times(body: bytes) -> list[int]:
    return [int(m) for m in e2e.PROBE_RE.findall(body)]


# --------------------------------------------------------------------------- payloads


def test_loghub_payloads_are_otlp_requests_of_1000_records_with_one_probe() -> None:
    root = loghub_dir()
    payloads = e2e.loghub_payloads(root, variants=2)
    assert len(payloads) == 11 * 4  # 4,000 lines per system: 4 requests of 999 + probe
    services = set()
    for k, p in enumerate(payloads):
        sent = 1_790_000_000_000_000_000 + k
        body = p.body(sent)
        req = ExportLogsServiceRequest.FromString(body)
        assert req.SerializeToString() == body  # nothing unknown or mangled
        recs = records(req)
        assert len(recs) == p.records == 1000
        service = req.resource_logs[0].resource.attributes[0].value.string_value
        services.add(service)
        *lines, probe = recs
        for rec in lines:
            assert (rec.severity_number, rec.severity_text) == severity_of(rec.body.string_value)
        assert probe.severity_number == 17 and probe.body.string_value == e2e.PROBE_BODY
        assert [(kv.key, kv.value.string_value) for kv in probe.attributes] == [
            (e2e.PROBE_KEY, f"{sent:019d}")]
        assert probe_times(body) == [sent]
    assert services == set(e2e.SYSTEMS)


def test_varied_lines_keep_constants_and_change_parameters() -> None:
    root = loghub_dir()
    lines = e2e.varied_lines(root, "Zookeeper", 2, random.Random(3))
    assert len(lines) == 4000
    first, again = lines[0], lines[2000]
    assert first != again
    # the class@line and the listen port are constants of this log statement
    for constant in ("FastLeaderElection@774", "0:2181", "Notification time out:"):
        assert constant in first and constant in again
    assert len(first) == len(again)


def test_redraw_keeps_words_and_hex_prefixes() -> None:
    out = e2e._redraw("dbcr0=0x62493124 took 105 ms, ssh2", random.Random(1))
    assert out.startswith("dbcr0=0x") and out.endswith(" ms, ssh2")
    assert len(out) == len("dbcr0=0x62493124 took 105 ms, ssh2")


def test_synthetic_templates_are_distinct_patterns() -> None:
    from processors.signature import Config, SignatureProcessor

    templates = e2e.synthetic_templates(300)
    proc = SignatureProcessor(Config())
    rng = random.Random(1)
    ids = {proc.pattern_of_body(e2e.fill(t, rng)).id for t in templates}
    assert len(ids) == 300
    payloads = e2e.pattern_payloads(300, passes=2)
    assert len(payloads) == 2
    req = ExportLogsServiceRequest.FromString(payloads[0].body(5))
    assert len(records(req)) == 301 and probe_times(payloads[0].body(5)) == [5]


# --------------------------------------------------------------------------- load generator


async def test_http_load_generator_sends_valid_otlp_over_real_http() -> None:
    root = loghub_dir()
    payloads = e2e.loghub_payloads(root, variants=1)[:3]
    got: list[ExportLogsServiceRequest] = []
    probes: list[int] = []
    answers = iter([429] + [200] * 1000)

    async def handle(request: web.Request) -> web.Response:
        body = await request.read()
        assert request.content_type == "application/x-protobuf"
        status = next(answers)
        if status == 200:
            got.append(ExportLogsServiceRequest.FromString(body))
            probes.extend(probe_times(body))
        return web.Response(status=status, body=ExportLogsServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_post("/v1/logs", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        result = await e2e.load_run("http", port, payloads, concurrency=2, seconds=0.5,
                                    rate_=None)
    finally:
        await runner.cleanup()
    sends = result["sends"]
    accepted = [s for s in sends if s[3] == 0]
    assert [s[3] for s in sends].count(1) == 1  # the 429, sent again
    assert len(accepted) == len(got) > 0
    assert all(len(records(r)) == 1000 for r in got)
    assert sorted(probes) == sorted(s[0] for s in accepted)  # the probe carries the send time


async def test_grpc_load_generator_sends_valid_otlp_over_real_grpc() -> None:
    root = loghub_dir()
    payloads = e2e.loghub_payloads(root, variants=1)[:2]
    got: list[ExportLogsServiceRequest] = []

    async def export(body: bytes, context: aio.ServicerContext) -> bytes:
        got.append(ExportLogsServiceRequest.FromString(body))
        return ExportLogsServiceResponse().SerializeToString()

    server = aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.logs.v1.LogsService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        result = await e2e.load_run("grpc", port, payloads, concurrency=2, seconds=0.3,
                                    rate_=None)
    finally:
        await server.stop(0)
    assert len(got) == sum(1 for s in result["sends"] if s[3] == 0) > 0
    assert all(len(records(r)) == 1000 for r in got)


async def test_paced_load_generator_keeps_the_rate() -> None:
    """rate_ paces the sends: 20 requests of 1000 records at 40,000 records/s take ~0.5 s."""
    slots = []
    sched = e2e.Schedule([e2e.Payload(b"", b"", 1000)], asyncio.get_running_loop().time() + 60,
                         40_000)
    sched.end = float("inf")
    for _ in range(20):
        await sched.next()
        slots.append(asyncio.get_running_loop().time())
    assert slots[-1] - slots[0] >= 19 * 1000 / 40_000 - 0.01


# --------------------------------------------------------------------------- table columns


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]  # 1..100, unsorted
    assert e2e.percentile(values, 50) == 50
    assert e2e.percentile(values, 99) == 99
    assert e2e.percentile(values, 100) == 100
    assert e2e.percentile([7.0], 99) == 7.0
    assert math.isnan(e2e.percentile([], 50))


def test_summarize_computes_rates_latencies_and_cpu_from_raw_observations() -> None:
    s = 1_000_000_000  # ns per second
    t0 = 1_800_000_000 * s
    start, end = t0 + 2 * s, t0 + 12 * s  # a 10 s window after 2 s of warm-up
    sends = [(t0 + k * s // 2, t0 + k * s // 2 + s // 100, 1000, 0) for k in range(26)]
    sends.append((t0 + 5 * s, t0 + 5 * s + 1, 1000, 1))  # refused: not counted
    sends.append((t0 + 6 * s, t0 + 6 * s + 1, 1000, 2))  # error
    arrivals = [(t0 + k * s, 300) for k in range(14)]
    probes = [(t0 + 3 * s + k, t0 + 3 * s + k + (k + 1) * 1_000_000) for k in range(100)]
    probes.append((t0, t0 + 900 * 1_000_000))  # sent during warm-up: not in the columns
    cpu = [(t0 + k * s, 0.25 * k) for k in range(0, 15)]  # a quarter of a core
    row = e2e.summarize("full", "http", 4, None, sends, arrivals, probes, cpu, start, end,
                        rss_peak_kib=204_800, load=(1.0, 2.0))
    # accepted requests completing in [2 s, 12 s): k = 4 .. 23 -> 20 x 1000 records
    assert row.rate_in == pytest.approx(2000.0)
    assert row.rate_out == pytest.approx(300.0)  # arrivals at 2 .. 11 s: 10 x 300 / 10 s
    assert row.p50_ms == pytest.approx(50.0) and row.p99_ms == pytest.approx(99.0)
    assert row.probes == 100
    assert row.cpu_share == pytest.approx(0.25)
    assert row.cpu_per_m == pytest.approx(2.5 / 20_000 * 1e6)  # 125 s per million
    assert row.rss_peak_mib == 200.0
    assert (row.refused, row.errors) == (1, 1)
    assert row.probes_lost == 0
    # probes lost: accepted requests sent in the window whose probe never reached the sink
    short = e2e.summarize("full", "http", 4, None, sends, arrivals, probes[:15], cpu, start,
                          end, rss_peak_kib=0, load=(0.0, 0.0))
    assert short.probes_lost == 5


def test_interpolate_and_cpu_per_million() -> None:
    cpu = [(0, 0.0), (10, 1.0), (20, 3.0)]
    assert e2e.interpolate(cpu, 5) == 0.5
    assert e2e.interpolate(cpu, 15) == 2.0
    assert e2e.interpolate(cpu, -5) == 0.0 and e2e.interpolate(cpu, 99) == 3.0
    assert e2e.cpu_per_million(cpu, 0, 20, 1_000_000) == 3.0
    assert math.isnan(e2e.cpu_per_million(cpu, 0, 20, 0))


def test_proc_readers_on_this_process() -> None:
    assert e2e.proc_cpu_seconds(os.getpid()) > 0
    assert e2e.proc_status_kib(os.getpid(), "VmHWM") >= e2e.proc_status_kib(os.getpid(),
                                                                             "VmRSS") > 0
