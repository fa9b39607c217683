"""Delivery benchmark: what the persistent queue and exporter-side batching cost.

Two measurements per queue setting, batches of SDK-like records (bench_wire's shape):

- ``accept``: the receive path alone, ``Pipeline.consume(request, nbytes)`` (admission,
  observed-time fill, enqueue; with a persistent queue: serialize + one SQLite INSERT and
  commit). This is the work done before the receiver may answer 200; reported as records/s
  and the median time per request.
- ``through``: accept + drain to an exporter that only serializes what it is given (as
  otlphttp/otlp do before the network: batches as concatenated parts), so the queue's own
  work shows (batching, stored-row bookkeeping), records/s end to end in one process.
- ``HTTP``: the real OTLP/HTTP receiver on loopback with an in-process aiohttp client
  (one request in flight at a time), records/s.

Absolute numbers depend on the machine and its disk; compare rows of one run.

    .venv/bin/python bench/bench_delivery.py [--records 1000] [--requests 300] [--repeat 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp  # noqa: E402
from bench_wire import sdk_like_request  # noqa: E402

from collector.config import BatchConfig, HttpServerConfig, SendingQueueConfig  # noqa: E402
from collector.pipeline import Pipeline  # noqa: E402
from collector.queue import ExportQueue  # noqa: E402
from collector.receivers.otlp_http import OtlpHttpReceiver  # noqa: E402


class SerializingExporter:
    """Serializes each request or batch (parts concatenated), sends nothing."""

    name = "serializing"

    async def start(self) -> None: ...

    async def export(self, request) -> int:
        request.SerializeToString()
        return 0

    async def export_parts(self, parts) -> int:
        b"".join(p.SerializeToString() for p in parts)
        return 0

    async def shutdown(self) -> None: ...


SETTINGS = [
    ("memory, no batching", dict(batch=BatchConfig(enabled=False)), False, False),
    ("memory, batching (default)", {}, False, False),
    ("persistent, fsync: false (default)", dict(batch=BatchConfig(enabled=False)), True, False),
    ("persistent, fsync: false, batching", {}, True, False),
    ("persistent, fsync: true", dict(batch=BatchConfig(enabled=False)), True, True),
]


def make_pipeline(queue_kw: dict, persistent: bool, fsync: bool, tmp: str) -> Pipeline:
    storage = Path(tempfile.mkdtemp(dir=tmp)) / "q.db" if persistent else None
    cfg = SendingQueueConfig(queue_size=10**9, queue_size_bytes=0, **queue_kw)
    return Pipeline([], [ExportQueue(SerializingExporter(), cfg, None, storage, fsync)])


async def accept_and_drain(queue_kw: dict, persistent: bool, fsync: bool, records: int,
                           requests: int, tmp: str) -> tuple[float, float, float]:
    body = sdk_like_request(records).SerializeToString()
    reqs = [type(sdk_like_request(1)).FromString(body) for _ in range(requests)]
    pipe = make_pipeline(queue_kw, persistent, fsync, tmp)
    await pipe.start()
    times = []
    start = time.perf_counter()
    for req in reqs:
        t = time.perf_counter()
        pipe.consume(req, len(body))
        times.append(time.perf_counter() - t)
        await asyncio.sleep(0)  # consumers run between requests, as between HTTP requests
    await pipe.shutdown(600)
    through = time.perf_counter() - start
    total = records * requests
    return total / sum(times), total / through, statistics.median(times) * 1e6


async def http_rate(queue_kw: dict, persistent: bool, fsync: bool, records: int,
                    requests: int, tmp: str) -> float:
    body = sdk_like_request(records).SerializeToString()
    pipe = make_pipeline(queue_kw, persistent, fsync, tmp)
    await pipe.start()
    rx = OtlpHttpReceiver("bench", HttpServerConfig(endpoint="127.0.0.1:0"), pipe)
    await rx.start()
    url = f"http://127.0.0.1:{rx.port}/v1/logs"
    async with aiohttp.ClientSession() as session:
        t = time.perf_counter()
        for _ in range(requests):
            async with session.post(url, data=body, headers={
                    "Content-Type": "application/x-protobuf"}) as resp:
                assert resp.status == 200, resp.status
                await resp.read()
        elapsed = time.perf_counter() - t
    await rx.stop()
    await pipe.shutdown(600)
    return records * requests / elapsed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1000, help="records per request")
    ap.add_argument("--requests", type=int, default=300, help="requests per run")
    ap.add_argument("--repeat", type=int, default=5, help="runs per row (best is kept)")
    ap.add_argument("--dir", default=None, help="directory for the queue files (default: "
                    "a temporary directory; put it on the disk you care about)")
    args = ap.parse_args()
    tmp = args.dir or tempfile.mkdtemp(prefix="lipservice-bench-")
    size = len(sdk_like_request(args.records).SerializeToString())
    best: dict[str, list[float]] = {name: [0.0, float("inf"), 0.0, 0.0]
                                    for name, *_ in SETTINGS}
    for _ in range(args.repeat):  # settings interleaved, so load swings hit them alike
        for name, kw, persistent, fsync in SETTINGS:
            a, t, m = asyncio.run(accept_and_drain(kw, persistent, fsync, args.records,
                                                   args.requests, tmp))
            h = asyncio.run(http_rate(kw, persistent, fsync, args.records, args.requests,
                                      tmp))
            row = best[name]
            row[0], row[1] = max(row[0], a), min(row[1], m)
            row[2], row[3] = max(row[2], t), max(row[3], h)
    rows = [(name, *best[name]) for name, *_ in SETTINGS]
    print(f"# {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, {args.requests} requests of {args.records} records "
          f"({size:,} B protobuf each), queue files in {tmp}, best of {args.repeat}")
    print()
    print("| sending queue | accept, records/s | accept, median per request | "
          "accept + drain, records/s | OTLP/HTTP receiver, records/s |")
    print("|---|---:|---:|---:|---:|")
    for name, a, m, t, h in rows:
        print(f"| {name} | {a:,.0f} | {m / 1000:.2f} ms | {t:,.0f} | {h:,.0f} |")


if __name__ == "__main__":
    main()
