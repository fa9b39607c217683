"""Delivery guarantees of the real process (`lipservice run` subprocess): kill -9 mid-stream
with the persistent queue then restart; SIGTERM with the backend down keeps the rest on
disk for the next start; the memory limiter answers 503 with Retry-After; an unusable
queue file stops startup with one clear line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from tests.e2e.conftest import REPO
from tests.sinks import HttpSink, Reply, free_port


def uid_request(first: int, n: int) -> bytes:
    req = ExportLogsServiceRequest()
    sl = req.resource_logs.add().scope_logs.add()
    for uid in range(first, first + n):
        rec = sl.log_records.add(severity_number=9)
        rec.body.string_value = f"record {uid}"
        rec.attributes.add(key="uid").value.int_value = uid
    return req.SerializeToString()


def post(url: str, body: bytes) -> tuple[int, dict[str, str]]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": "application/x-protobuf"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers)


def delivered(sink: HttpSink) -> list[int]:
    return [kv.value.int_value for r in sink.records() for kv in r.attributes if kv.key == "uid"]


def metric_value(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text,
                                            re.M))


def persistent_config(sink: HttpSink, shutdown_timeout: str = "10s") -> dict:
    return {
        "exporters": {"otlphttp/sink": {
            "endpoint": sink.endpoint, "compression": "none", "timeout": "5s",
            "retry_on_failure": {"initial_interval": "100ms", "max_interval": "500ms",
                                 "max_elapsed_time": 0},
            "sending_queue": {"storage": True, "num_consumers": 2,
                              "batch": {"min_size": 200, "max_size": 1000,
                                        "flush_timeout": "50ms"}}}},
        "service": {"shutdown_timeout": shutdown_timeout,
                    "pipelines": {"logs": {"receivers": ["otlp"],
                                           "exporters": ["otlphttp/sink"]}}},
    }


class Stream(threading.Thread):
    """Posts 50-record requests with consecutive uids until told to stop or the sidecar
    stops answering; remembers the uids answered with 200."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.acked: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        uid = 0
        for _ in range(2000):  # bounded
            if self.stop.is_set():
                return
            try:
                status, _ = post(self.url, uid_request(uid, 50))
            except OSError:
                return  # the sidecar is gone
            if status == 200:
                self.acked.update(range(uid, uid + 50))
            uid += 50


def test_kill_9_mid_stream_then_restart_delivers_every_acknowledged_record(
        sidecar_factory) -> None:
    with HttpSink() as sink:
        sink.fail_rate = 0.5  # a flaky backend: a backlog builds up in the queue
        sink.default = Reply(delay=0.02)
        sc = sidecar_factory(persistent_config(sink)).start()
        stream = Stream(f"{sc.http_endpoint}/v1/logs")
        stream.start()
        deadline = time.monotonic() + 30
        while len(stream.acked) < 3000 and stream.is_alive() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(stream.acked) >= 3000, sc.stderr()
        sc.proc.kill()  # SIGKILL, mid-stream: no shutdown code runs
        sc.proc.wait(10)
        stream.stop.set()
        stream.join(15)
        acked = set(stream.acked)
        before_restart = set(delivered(sink))
        assert not acked <= before_restart, "nothing was pending at the kill; test is void"

        sink.fail_rate = 0.0
        sink.default = Reply()
        sc.start()
        assert sink.wait_for(lambda: acked <= set(delivered(sink)), timeout=60), (
            f"{len(acked - set(delivered(sink)))} acknowledged records lost\n{sc.stderr()}")
        text = sc.metrics()
        assert sc.stop() == 0
    got = delivered(sink)
    duplicates = len(got) - len(set(got))
    assert metric_value(text, "lipservice_exporter_persistent_queue_recovered_log_records_total") > 0
    # duplicates exist only where a request had been handed to the backend before the kill
    assert duplicates <= metric_value(
        text, "lipservice_exporter_persistent_queue_redelivered_log_records_total")


def test_sigterm_with_the_backend_down_keeps_the_rest_for_the_next_start(
        sidecar_factory) -> None:
    with HttpSink() as sink:
        sink.default = Reply(status=503)  # the backend is down
        sc = sidecar_factory(persistent_config(sink, shutdown_timeout="1s")).start()
        acked: set[int] = set()
        for i in range(10):
            status, _ = post(f"{sc.http_endpoint}/v1/logs", uid_request(i * 100, 100))
            assert status == 200
            acked.update(range(i * 100, i * 100 + 100))
        started = time.monotonic()
        assert sc.stop() == 0
        assert time.monotonic() - started < 15  # the shutdown timeout bounds the wait
        assert "sent at the next start" in sc.stderr()
        assert not delivered(sink)

        sink.default = Reply()  # back up
        sc.start()
        assert sink.wait_for(lambda: acked <= set(delivered(sink)), timeout=30), sc.stderr()
        assert sc.stop() == 0


def test_memory_limiter_refuses_with_503_and_retry_after(sidecar_factory) -> None:
    with HttpSink() as sink:
        config = {
            "processors": {"memory_limiter": {"check_interval": "100ms", "limit_mib": 2,
                                              "spike_limit_mib": 1}},
            "exporters": {"otlphttp/sink": {"endpoint": sink.endpoint}},
            "service": {"pipelines": {"logs": {"receivers": ["otlp"],
                                               "processors": ["memory_limiter"],
                                               "exporters": ["otlphttp/sink"]}}},
        }
        sc = sidecar_factory(config).start()  # any Python process is over 2 MiB of RSS
        status, headers = post(f"{sc.http_endpoint}/v1/logs", uid_request(0, 5))
        assert status == 503
        assert int(headers["Retry-After"]) >= 1
        text = sc.metrics()
        assert 'reason="memory_hard_limit"' in text
        assert sc.stop() == 0
        assert not sink.requests


def test_unusable_queue_file_stops_startup_with_one_line(tmp_path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "collector", "run", "-c", str(REPO / "config/default.yaml"),
         "--set", "service.pipelines.logs.exporters=[otlphttp/posthog]",
         "--set", f"exporters.otlphttp/posthog.sending_queue.storage={blocker}/q.db",
         "--set", f"receivers.otlp.protocols.grpc.endpoint=127.0.0.1:{free_port()}",
         "--set", f"receivers.otlp.protocols.http.endpoint=127.0.0.1:{free_port()}",
         "--set", f"service.telemetry.metrics.address=127.0.0.1:{free_port()}",
         "--set", f"storage.directory={tmp_path / 'state'}"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if "error" in ln.lower()]
    assert any("persistent queue file" in ln and "not-a-dir" in ln for ln in errors), \
        proc.stderr
