"""The sidecar end to end: the real OpenTelemetry SDK → `lipservice run` (subprocess) →
otlphttp and otlp exporters → sinks on loopback."""

from __future__ import annotations

import gzip
import logging
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request

import pytest
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter as GrpcLogExporter
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLogExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from tests.e2e.conftest import REPO
from tests.sinks import GrpcSink, HttpSink, free_port


def pipeline_config(http_sink: HttpSink, grpc_sink: GrpcSink) -> dict:
    return {
        "processors": {"signature": {}, "sampling": {"dry_run": True}},
        "exporters": {
            "otlphttp/sink": {"endpoint": http_sink.endpoint,
                              "headers": {"Authorization": "Bearer secret-token-123456"},
                              "retry_on_failure": {"initial_interval": "100ms"}},
            "otlp/sink": {"endpoint": grpc_sink.endpoint, "tls": {"insecure": True},
                          "retry_on_failure": {"initial_interval": "100ms"}},
        },
        "service": {"pipelines": {"logs": {
            "receivers": ["otlp"], "processors": ["signature", "sampling"],
            "exporters": ["otlphttp/sink", "otlp/sink"]}}},
    }


def attrs(kvs) -> dict:
    return {kv.key: kv.value for kv in kvs}


@pytest.mark.parametrize("transport, native", [("http", "1"), ("grpc", "1"), ("http", "0"),
                                               ("grpc", "0")])
def test_otel_sdk_logs_arrive_intact(sidecar_factory, transport: str, native: str) -> None:
    """Also with the C reader of OTLP bytes turned off (LIPSERVICE_NATIVE=0): the same
    records arrive, and the sidecar said at start that it reads records through upb."""
    with HttpSink() as hs, GrpcSink() as gs:
        sc = sidecar_factory(pipeline_config(hs, gs), {"LIPSERVICE_NATIVE": native}).start()
        exporter = (HttpLogExporter(endpoint=f"{sc.http_endpoint}/v1/logs") if transport == "http"
                    else GrpcLogExporter(endpoint=f"127.0.0.1:{sc.grpc_port}", insecure=True))
        provider = LoggerProvider(resource=Resource.create({"service.name": "checkout",
                                                            "deployment.environment": "test"}))
        provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
        logger = logging.getLogger(f"e2e.{transport}")
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        logger.addHandler(LoggingHandler(level=logging.DEBUG, logger_provider=provider))
        tracer = TracerProvider().get_tracer("e2e")
        with tracer.start_as_current_span("request") as span:
            logger.warning("payment %s declined", "p-42", extra={"order.id": 7})
            ctx = span.get_span_context()
        logger.error("database unavailable")
        provider.shutdown()

        for sink in (hs, gs):
            assert sink.wait_for(lambda s=sink: len(s.records()) >= 2), sc.stderr()
            recs = {r.body.string_value: r for r in sink.records()}
            warn = recs["payment p-42 declined"]
            assert warn.severity_number == 13 and warn.severity_text == "WARN"
            a = attrs(warn.attributes)
            assert a["order.id"].int_value == 7
            assert "log.pattern.id" in a  # the signature processor annotated it
            assert warn.trace_id == ctx.trace_id.to_bytes(16, "big")
            assert warn.span_id == ctx.span_id.to_bytes(8, "big")
            assert warn.observed_time_unix_nano > 0
            assert recs["database unavailable"].severity_number == 17
            rl = sink.requests[0].resource_logs[0]
            res = attrs(rl.resource.attributes)
            assert res["service.name"].string_value == "checkout"
            assert res["deployment.environment"].string_value == "test"
            assert rl.scope_logs[0].scope.name == f"e2e.{transport}"
        assert hs.headers[0]["Authorization"] == "Bearer secret-token-123456"
        metrics = sc.metrics()
        assert "otelcol_receiver_accepted_log_records_total" in metrics
        assert "secret-token-123456" not in metrics
        assert sc.stop() == 0
        assert "secret-token-123456" not in sc.stderr()
        warned = "not in use: turned off by LIPSERVICE_NATIVE" in sc.stderr()
        assert warned == (native == "0"), sc.stderr()


APP = textwrap.dedent("""
    import logging
    from opentelemetry._logs import set_logger_provider
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    provider = LoggerProvider()
    provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter()))
    set_logger_provider(provider)
    logging.getLogger().addHandler(LoggingHandler(logger_provider=provider))
    logging.getLogger().setLevel(logging.INFO)
    for i in range(50):
        logging.getLogger("app").info("user %d logged in", i)
    provider.shutdown()
""")


def test_app_with_only_the_endpoint_variable(sidecar_factory, tmp_path) -> None:
    """An app whose SDK has only OTEL_EXPORTER_OTLP_ENDPOINT set gets its logs through."""
    with HttpSink() as hs, GrpcSink() as gs:
        sc = sidecar_factory(pipeline_config(hs, gs)).start()
        script = tmp_path / "app.py"
        script.write_text(APP)
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env.update(OTEL_EXPORTER_OTLP_ENDPOINT=sc.http_endpoint,
                   OTEL_SERVICE_NAME="webapp")
        subprocess.run([sys.executable, str(script)], env=env, check=True, timeout=60)
        assert hs.wait_for(lambda: len(hs.records()) >= 50), sc.stderr()
        bodies = sorted(r.body.string_value for r in hs.records())
        assert bodies == sorted(f"user {i} logged in" for i in range(50))
        assert sc.stop() == 0


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def _request(batch: int, n: int) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    sl = req.resource_logs.add().scope_logs.add()
    for i in range(n):
        rec = sl.log_records.add()
        rec.body.string_value = f"batch {batch} record {i}"
        rec.severity_number = 9
        kv = rec.attributes.add()
        kv.key, kv.value.string_value = "uid", f"{batch}-{i}"
    return req


def test_sigterm_flushes_every_acknowledged_record(sidecar_factory) -> None:
    with HttpSink() as hs, GrpcSink() as gs:
        hs.default.delay = 0.05  # a slow backend: records are in flight at SIGTERM
        cfg = pipeline_config(hs, gs)
        cfg["service"]["shutdown_timeout"] = "20s"
        sc = sidecar_factory(cfg).start()
        acked: set[str] = set()
        for b in range(20):
            req = _request(b, 100)
            status = _post(f"{sc.http_endpoint}/v1/logs", gzip.compress(req.SerializeToString()),
                           {"Content-Type": "application/x-protobuf",
                            "Content-Encoding": "gzip"})
            if status == 200:
                acked.update(f"{b}-{i}" for i in range(100))
        assert acked, "nothing was acknowledged"
        assert sc.stop() == 0, sc.stderr()
        for sink in (hs, gs):
            got = {attrs(r.attributes)["uid"].string_value for r in sink.records()}
            assert acked <= got, f"{len(acked - got)} acknowledged records lost"


def error_lines(stderr: str) -> list[str]:
    """Lines logged at level error, and the CLI's final `lipservice: error:` line."""
    return [line for line in stderr.splitlines() if re.search(r"(^|\s)error(:|\s)", line)]


def test_port_in_use_is_one_clear_line(sidecar_factory, tmp_path) -> None:
    import socket

    with HttpSink() as hs, GrpcSink() as gs, socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        sc = sidecar_factory(pipeline_config(hs, gs))
        sc.http_port = taken.getsockname()[1]
        text = sc.config_path.read_text()
        import yaml

        tree = yaml.safe_load(text)
        tree["receivers"]["otlp"]["protocols"]["http"]["endpoint"] = f"127.0.0.1:{sc.http_port}"
        sc.config_path.write_text(yaml.safe_dump(tree))
        proc = subprocess.run([sys.executable, "-m", "collector", "run", "-c",
                               str(sc.config_path)], capture_output=True, text=True,
                              env=sc.env, timeout=60)
        assert proc.returncode != 0
        assert "Traceback" not in proc.stderr
        errors = error_lines(proc.stderr)
        assert len(errors) == 1, proc.stderr  # one clear line, not a cascade
        assert str(sc.http_port) in errors[0], proc.stderr


def test_unwritable_file_exporter_path_fails_cleanly(tmp_path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "collector", "run",
         "--set", f"exporters.file.path={blocker}/out.jsonl",
         "--set", f"receivers.otlp.protocols.grpc.endpoint=127.0.0.1:{free_port()}",
         "--set", f"receivers.otlp.protocols.http.endpoint=127.0.0.1:{free_port()}",
         "--set", f"service.telemetry.metrics.address=127.0.0.1:{free_port()}",
         "--set", f"storage.directory={tmp_path / 'state'}"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), "POSTHOG_API_KEY": ""})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = error_lines(proc.stderr)
    assert len(errors) == 1 and "not-a-dir" in errors[0], proc.stderr


def test_default_config_without_key_says_where_it_writes(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "POSTHOG_API_KEY": "",
           "LIPSERVICE_GRPC_ENDPOINT": f"127.0.0.1:{free_port()}",
           "LIPSERVICE_HTTP_ENDPOINT": f"127.0.0.1:{free_port()}",
           "LIPSERVICE_METRICS_ENDPOINT": f"127.0.0.1:{free_port()}",
           "LIPSERVICE_STORAGE": str(tmp_path / "state")}
    proc = subprocess.Popen([sys.executable, "-m", "collector", "run"], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        deadline = time.monotonic() + 30
        seen = ""
        while time.monotonic() < deadline and "ready" not in seen:
            line = proc.stderr.readline()
            if not line:
                break
            seen += line
        assert "POSTHOG_API_KEY is not set" in seen
        assert str(tmp_path / "lipservice-out" / "logs.jsonl") in seen
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
