"""memory_limiter: soft and hard limits on RSS; refusals are retryable (HTTP 503 +
Retry-After, gRPC UNAVAILABLE + RetryInfo) and take nothing in; config as the Collector's."""

from __future__ import annotations

import aiohttp
import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc import aio
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from collector.config import (
    ConfigError,
    GrpcServerConfig,
    HttpServerConfig,
    SendingQueueConfig,
    load_config_tree,
)
from collector.memory_limiter import MIB, Config, MemoryLimiter, available_memory, read_rss
from collector.pipeline import Pipeline
from collector.queue import ExportQueue
from collector.receivers.otlp_grpc import STATUS_DETAILS_KEY, OtlpGrpcReceiver
from collector.receivers.otlp_http import OtlpHttpReceiver
from tests.collector.wire_support import EXPORT_METHOD, RecordingExporter, make_request, metric


class Meter:
    """A settable RSS reading that counts how often it is read."""

    def __init__(self, mib: int) -> None:
        self.value = mib * MIB
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.value


def limiter(meter: Meter, **cfg) -> MemoryLimiter:
    return MemoryLimiter(Config(check_interval=0.000001, **cfg), usage=meter,
                         name="memory_limiter/test")


def test_below_soft_accepts_at_soft_refuses_at_hard_refuses_harder(caplog) -> None:
    meter = Meter(100)
    ml = limiter(meter, limit_mib=200, spike_limit_mib=50)
    assert (ml.soft_limit, ml.hard_limit) == (150 * MIB, 200 * MIB)
    assert ml.check_admission() is None
    meter.value = 150 * MIB
    soft = ml.check_admission()
    assert soft is not None and soft.unavailable and soft.reason == "memory_soft_limit"
    assert "soft limit of 150 MiB" in str(soft) and soft.retry_after >= 1
    meter.value = 260 * MIB
    with caplog.at_level("ERROR", logger="lipservice.memory_limiter"):
        hard = ml.check_admission()
    assert hard is not None and hard.reason == "memory_hard_limit"
    assert any("hard limit" in r.getMessage() for r in caplog.records)
    assert metric("lipservice_memory_limiter_refusing", processor="memory_limiter/test") == 1
    meter.value = 120 * MIB
    assert ml.check_admission() is None
    assert metric("lipservice_memory_limiter_refusing", processor="memory_limiter/test") == 0


def test_spike_defaults_to_a_fifth_of_the_limit_and_percentages_use_the_total() -> None:
    assert limiter(Meter(0), limit_mib=500).soft_limit == 400 * MIB
    ml = MemoryLimiter(Config(limit_percentage=50, spike_limit_percentage=10), usage=Meter(0),
                       total=1000 * MIB)
    assert (ml.hard_limit, ml.soft_limit) == (500 * MIB, 400 * MIB)


def test_memory_is_read_at_most_once_per_check_interval() -> None:
    meter = Meter(10)
    ml = MemoryLimiter(Config(check_interval=3600, limit_mib=100), usage=meter)
    for _ in range(50):
        assert ml.check_admission() is None
    assert meter.reads == 1


def test_unknown_usage_never_refuses(caplog) -> None:
    ml = MemoryLimiter(Config(check_interval=0.000001, limit_mib=1), usage=lambda: None)
    assert ml.check_admission() is None
    assert any("cannot read" in r.getMessage() for r in caplog.records)


def test_real_readings_are_plausible() -> None:
    rss = read_rss()
    assert rss is not None and 1 * MIB < rss < 64 * 1024 * MIB
    total = available_memory()
    assert total is not None and total > rss


@pytest.mark.parametrize(("body", "fragment"), [
    ({}, "set limit_mib or limit_percentage"),
    ({"limit_mib": 100, "spike_limit_mib": 100}, "spike_limit_mib (100) must be below"),
    ({"limit_mib": 100, "check_interval": "soon"}, "check_interval"),
])
def test_config_errors_name_the_key(body, fragment) -> None:
    tree = {"receivers": {"otlp": {"protocols": {"http": {}}}},
            "processors": {"memory_limiter": body},
            "exporters": {"debug": {}},
            "service": {"pipelines": {"logs": {"receivers": ["otlp"],
                                               "processors": ["memory_limiter"],
                                               "exporters": ["debug"]}}}}
    with pytest.raises(ConfigError) as info:
        load_config_tree(tree)
    assert "processors.memory_limiter" in str(info.value) and fragment in str(info.value)


def test_collector_style_config_builds_a_pipeline_with_the_admission_check() -> None:
    tree = {"receivers": {"otlp": {"protocols": {"http": {}}}},
            "processors": {"memory_limiter": {"check_interval": "1s", "limit_mib": 4000,
                                              "spike_limit_mib": 800}},
            "exporters": {"debug": {}},
            "service": {"pipelines": {"logs": {"receivers": ["otlp"],
                                               "processors": ["memory_limiter"],
                                               "exporters": ["debug"]}}}}
    pipe = Pipeline.from_config(load_config_tree(tree))
    assert [type(p).__name__ for p in pipe.admission] == ["MemoryLimiter"]
    assert pipe.admission[0].soft_limit == 3200 * MIB


async def test_receivers_answer_503_and_unavailable_while_over_the_limit() -> None:
    meter = Meter(500)
    ml = limiter(meter, limit_mib=400, spike_limit_mib=100)
    exporter = RecordingExporter("ml-exp")
    pipe = Pipeline([("memory_limiter", ml)],
                    [ExportQueue(exporter, SendingQueueConfig(num_consumers=1))])
    await pipe.start()
    http = OtlpHttpReceiver("otlp/ml", HttpServerConfig(endpoint="127.0.0.1:0"), pipe)
    grpc_rx = OtlpGrpcReceiver("otlp/ml", GrpcServerConfig(endpoint="127.0.0.1:0"), pipe)
    await http.start()
    await grpc_rx.start()
    channel = aio.insecure_channel(f"127.0.0.1:{grpc_rx.port}",
                                   options=[("grpc.enable_retries", 0)])
    export = channel.unary_unary(EXPORT_METHOD,
                                 request_serializer=ExportLogsServiceRequest.SerializeToString,
                                 response_deserializer=ExportLogsServiceResponse.FromString)
    url = f"http://127.0.0.1:{http.port}/v1/logs"
    before = metric("otelcol_receiver_refused_log_records_total", receiver="otlp/ml",
                    transport="http", reason="memory_hard_limit")
    try:
        async with aiohttp.ClientSession() as session:
            body = make_request(3).SerializeToString()
            headers = {"Content-Type": "application/x-protobuf"}
            async with session.post(url, data=body, headers=headers) as resp:
                assert resp.status == 503
                assert int(resp.headers["Retry-After"]) >= 1
                status = status_pb2.Status.FromString(await resp.read())
                assert "hard limit" in status.message
            with pytest.raises(aio.AioRpcError) as info:
                await export(make_request(2), timeout=10)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
            details = status_pb2.Status.FromString(
                dict(info.value.trailing_metadata())[STATUS_DETAILS_KEY])
            assert details.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)
            assert pipe.queues[0].size == 0 and exporter.requests == []
            assert metric("otelcol_receiver_refused_log_records_total", receiver="otlp/ml",
                          transport="http", reason="memory_hard_limit") == before + 3

            meter.value = 100 * MIB  # memory back under the soft limit: accepted again
            async with session.post(url, data=body, headers=headers) as resp:
                assert resp.status == 200
            await export(make_request(2), timeout=10)
    finally:
        await channel.close()
        await http.stop()
        await grpc_rx.stop(0)
        await pipe.shutdown(5)
    assert exporter.record_count == 5
