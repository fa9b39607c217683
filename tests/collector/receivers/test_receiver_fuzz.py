"""Property tests of the receivers over the wire: generated bodies (random and mutated
protobuf, OTLP/JSON, gzip) sent to the real OTLP/HTTP and OTLP/gRPC receivers on loopback.

Every answer is either success, exactly when the codec accepts the same bytes, or a 4xx
(gRPC INVALID_ARGUMENT) carrying a message; never a 5xx, never a hang (each call has a
10 s timeout); the servers still serve afterwards. Small by default (``make test``); set
``LIPSERVICE_FUZZ_EXAMPLES`` for more, or run bench/fuzz.py for ≥ 100k inputs.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import os
import threading

import grpc
import pytest
from google.rpc import status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.config import GrpcServerConfig, HttpServerConfig
from collector.receivers import codec
from collector.receivers.otlp_grpc import OtlpGrpcReceiver
from collector.receivers.otlp_http import OtlpHttpReceiver
from tests.collector.receivers.test_codec_fuzz import SEEDS, TREES, mutated
from tests.collector.wire_support import (
    EXPORT_METHOD,
    RecordingExporter,
    make_pipeline,
    make_request,
)

EXAMPLES = int(os.environ.get("LIPSERVICE_FUZZ_EXAMPLES", "60"))
WIRE = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
LIMIT = 1 << 20
PROTO, JSON = "application/x-protobuf", "application/json"


class Servers:
    """A Pipeline and both receivers on an event loop in a background thread, so that
    hypothesis (synchronous) can call them with blocking clients."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._call(self._start())
        self.http = http.client.HTTPConnection("127.0.0.1", self.http_rx.port, timeout=10)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc_rx.port}",
                                             options=[("grpc.enable_retries", 0)])
        self.export = self.channel.unary_unary(EXPORT_METHOD)

    def _call(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _start(self) -> None:
        self.exporter = RecordingExporter("fuzz")
        self.pipeline = make_pipeline(self.exporter, queue_size=10**9)
        await self.pipeline.start()
        self.http_rx = OtlpHttpReceiver("otlp/fuzz", HttpServerConfig(
            endpoint="127.0.0.1:0", max_request_body_size=LIMIT), self.pipeline)
        self.grpc_rx = OtlpGrpcReceiver("otlp/fuzz", GrpcServerConfig(
            endpoint="127.0.0.1:0", max_recv_msg_size_mib=1), self.pipeline)
        await self.http_rx.start()
        await self.grpc_rx.start()

    async def _stop(self) -> None:
        await self.http_rx.stop()
        await self.grpc_rx.stop(0)
        await self.pipeline.shutdown(5)

    def close(self) -> None:
        self.http.close()
        self.channel.close()
        self._call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)

    def post(self, body: bytes, ctype: str, encoding: str = "") -> tuple[int, str, bytes]:
        headers = {"Content-Type": ctype}
        if encoding:
            headers["Content-Encoding"] = encoding
        try:
            self.http.request("POST", "/v1/logs", body=body, headers=headers)
            resp = self.http.getresponse()
        except (http.client.HTTPException, OSError):
            self.http.close()  # reconnect once: the server may close after an error answer
            self.http.request("POST", "/v1/logs", body=body, headers=headers)
            resp = self.http.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read()


@pytest.fixture(scope="module")
def servers():
    s = Servers()
    yield s
    s.close()


def accepted_by_codec(body: bytes, as_json: bool, encoding: str) -> bool:
    try:
        data = codec.decompress(body, encoding, LIMIT) if encoding else body
        (codec.decode_json if as_json else codec.decode_protobuf)(data)
        return True
    except codec.DecodeError:
        return False


def check_http(servers: Servers, body: bytes, ctype: str, encoding: str = "") -> None:
    status, answer_type, payload = servers.post(body, ctype, encoding)
    expected = accepted_by_codec(body, ctype == JSON, encoding)
    if expected:
        assert status == 200, payload[:200]
        return
    assert status in (400, 413), (status, payload[:200])
    assert answer_type == ctype
    message = (json.loads(payload)["message"] if ctype == JSON
               else status_pb2.Status.FromString(payload).message)
    assert message.strip()


def check_grpc(servers: Servers, body: bytes) -> None:
    try:
        servers.export(body, timeout=10)
        ok = True
    except grpc.RpcError as err:
        ok = False
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (err.code(), err.details())
        assert (err.details() or "").strip()
    assert ok == accepted_by_codec(body, False, "")


def assert_still_serves(servers: Servers) -> None:
    good = make_request(2).SerializeToString()
    assert servers.post(good, PROTO)[0] == 200
    servers.export(good, timeout=10)


@WIRE
@given(st.one_of(st.binary(max_size=300), mutated()))
def test_http_protobuf_bodies(servers, body):
    check_http(servers, body, PROTO)


@WIRE
@given(st.one_of(st.binary(max_size=300), TREES.map(lambda t: json.dumps(t).encode()),
                 mutated([codec.encode_json(make_request(2)).encode()])))
def test_http_json_bodies(servers, body):
    check_http(servers, body, JSON)


@WIRE
@given(st.one_of(st.binary(max_size=200), mutated([gzip.compress(s) for s in SEEDS])),
       st.sampled_from([PROTO, JSON]))
def test_http_gzip_bodies(servers, body, ctype):
    check_http(servers, body, ctype, "gzip")


@WIRE
@given(st.one_of(st.binary(max_size=300), mutated()))
def test_grpc_bodies(servers, body):
    check_grpc(servers, body)


def test_servers_still_serve_after_the_fuzzing(servers):
    assert_still_serves(servers)


def test_lone_surrogate_in_json_gets_a_400_not_a_500(servers):
    """Found by bench/fuzz.py: the error message quotes the client's value, and a lone
    surrogate cannot be encoded as UTF-8 in the google.rpc.Status answer."""
    for body in (b'{"resourceLogs": "\\ud800"}',
                 b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "\\udfff"}]}]}]}'):
        status, _, payload = servers.post(body, JSON)
        assert status == 400
        assert "\\ud" in json.loads(payload)["message"]
    assert_still_serves(servers)
