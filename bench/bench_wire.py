"""Wire benchmark: OTLP decode/encode paths and the receivers end to end on loopback.

Prints a table of log records per second (best of ``--repeat`` runs, one process). The
records look like what the OpenTelemetry Python SDK sends from the logging handler: a
string body, a few attributes, trace and span ids. Ratios measured in one run are what to
compare; absolute numbers depend on the machine and its load.

    .venv/bin/python bench/bench_wire.py [--records 1000] [--batches 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
import grpc  # noqa: E402
from google.protobuf import json_format  # noqa: E402
from grpc import aio  # noqa: E402
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (  # noqa: E402
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

from collector.config import GrpcServerConfig, HttpServerConfig, SendingQueueConfig  # noqa: E402
from collector.pipeline import Pipeline  # noqa: E402
from collector.queue import ExportQueue  # noqa: E402
from collector.receivers import codec  # noqa: E402
from collector.receivers.otlp_grpc import OtlpGrpcReceiver  # noqa: E402
from collector.receivers.otlp_http import OtlpHttpReceiver  # noqa: E402


def sdk_like_request(n: int) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    for k, v in (("service.name", "checkout"), ("telemetry.sdk.language", "python"),
                 ("telemetry.sdk.version", "1.45.2")):
        rl.resource.attributes.add(key=k).value.string_value = v
    sl = rl.scope_logs.add()
    sl.scope.name = "app.payments"
    for i in range(n):
        rec = sl.log_records.add(time_unix_nano=1_700_000_000_000_000_000 + i,
                                 observed_time_unix_nano=1_700_000_000_000_000_100 + i,
                                 severity_number=9, severity_text="INFO",
                                 trace_id=os.urandom(16), span_id=os.urandom(8))
        rec.body.string_value = f"user {i} paid order {i * 7} in {i % 97} ms from 10.0.{i % 255}.7"
        rec.attributes.add(key="code.file.path").value.string_value = "/app/payments.py"
        rec.attributes.add(key="code.line.number").value.int_value = 120 + i % 50
        rec.attributes.add(key="order.amount").value.double_value = i * 1.25
    return req


def reference_encode(req: ExportLogsServiceRequest) -> str:
    return json.dumps(json_format.MessageToDict(req, use_integers_for_enums=True))


def best_rate(fn, records: int, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return records / best


class NullExporter:
    name = "null"

    async def start(self) -> None: ...

    async def export(self, request) -> int:
        return 0

    async def shutdown(self) -> None: ...


async def http_rate(body: bytes, n: int, batches: int, gz: bool) -> float:
    pipeline = Pipeline([], [ExportQueue(NullExporter(), SendingQueueConfig(queue_size=10**9))])
    await pipeline.start()
    rx = OtlpHttpReceiver("bench", HttpServerConfig(endpoint="127.0.0.1:0"), pipeline)
    await rx.start()
    headers = {"Content-Type": "application/x-protobuf"}
    if gz:
        body = gzip.compress(body, 6)
        headers["Content-Encoding"] = "gzip"
    url = f"http://127.0.0.1:{rx.port}/v1/logs"
    async with aiohttp.ClientSession() as session:
        t = time.perf_counter()
        for _ in range(batches):
            async with session.post(url, data=body, headers=headers) as resp:
                assert resp.status == 200, resp.status
                await resp.read()
        elapsed = time.perf_counter() - t
    await rx.stop()
    await pipeline.shutdown(10)
    return n * batches / elapsed


async def grpc_rate(req: ExportLogsServiceRequest, n: int, batches: int) -> float:
    pipeline = Pipeline([], [ExportQueue(NullExporter(), SendingQueueConfig(queue_size=10**9))])
    await pipeline.start()
    rx = OtlpGrpcReceiver("bench", GrpcServerConfig(endpoint="127.0.0.1:0"), pipeline)
    await rx.start()
    async with aio.insecure_channel(f"127.0.0.1:{rx.port}") as channel:
        call = channel.unary_unary(
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
            request_serializer=ExportLogsServiceRequest.SerializeToString,
            response_deserializer=ExportLogsServiceResponse.FromString)
        await call(req, compression=grpc.Compression.NoCompression)
        t = time.perf_counter()
        for _ in range(batches):
            await call(req)
        elapsed = time.perf_counter() - t
    await rx.stop(0)
    await pipeline.shutdown(10)
    return n * batches / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1000, help="records per batch")
    ap.add_argument("--batches", type=int, default=50, help="batches per receiver run")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    n, rep = args.records, args.repeat
    req = sdk_like_request(n)
    pb = req.SerializeToString()
    text = codec.encode_json(req)
    gz = gzip.compress(pb, 6)
    assert codec.decode_json(text) == req and codec._reference_request(json.loads(text)) == req

    rows = [
        ("protobuf decode (upb)", best_rate(lambda: codec.decode_protobuf(pb), n, rep)),
        ("protobuf encode (upb)", best_rate(req.SerializeToString, n, rep)),
        ("gzip decompress, bounded (Decompressor)",
         best_rate(lambda: codec.decompress(gz, "gzip", 64 << 20), n, rep)),
        ("OTLP/JSON decode: codec fast path", best_rate(lambda: codec.decode_json(text), n, rep)),
        ("OTLP/JSON decode: json_format reference",
         best_rate(lambda: codec._reference_request(json.loads(text)), n, rep)),
        ("OTLP/JSON encode: codec.encode_json", best_rate(lambda: codec.encode_json(req), n, rep)),
        ("OTLP/JSON encode: json_format + json.dumps",
         best_rate(lambda: reference_encode(req), n, rep)),
        ("OTLP/HTTP receiver, protobuf, loopback (client in-process)",
         asyncio.run(http_rate(pb, n, args.batches, gz=False))),
        ("OTLP/HTTP receiver, protobuf+gzip, loopback",
         asyncio.run(http_rate(pb, n, args.batches, gz=True))),
        ("OTLP/gRPC receiver, loopback (client in-process)",
         asyncio.run(grpc_rate(req, n, args.batches))),
    ]
    print(f"# {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, batch of {n} records ({len(pb)} B protobuf, "
          f"{len(text)} B JSON, {len(gz)} B gzip)")
    print(f"| {'path':<60} | {'records/s':>12} |")
    print(f"|{'-' * 62}|{'-' * 14}|")
    for name, rate in rows:
        print(f"| {name:<60} | {rate:>12,.0f} |")


if __name__ == "__main__":
    main()
