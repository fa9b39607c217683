"""Shared state through Redis (storage.backend: redis): how fast replicas agree (prints
tables).

With ``--replicas`` `lipservice run` processes on one local redis-server (both on
loopback, as tests/e2e/test_redis.py starts them):

1. policy propagation: a policy POSTed on one replica (rotating) until every replica's
   GET shows it in force (API polled every 10 ms; so +-10 ms);
2. lease failover: SIGKILL the leader, until another replica reports
   ``lipservice_control_is_leader 1`` (metrics polled every 50 ms); the killed replica is
   started again before the next round;
3. Redis restart: redis-server stopped for 3 s and started again (empty), until every
   replica reports ``lipservice_redis_up 1``, then until a new policy is in force on all;
4. in process: one statistics push (pattern_stats → increments → Redis) and the leader's
   read of the summed statistics, for N patterns in one service.

    python bench/scale.py [--replicas 3] [--policies 20] [--failovers 3] [--lease-ttl 3]
                          [--patterns 1000 10000]

Needs redis-server on PATH. Times are wall clock on this (shared) machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import redis.asyncio as aioredis  # noqa: E402
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (  # noqa: E402
    ExportLogsServiceRequest,
)

from collector.shared.keys import Keys  # noqa: E402
from collector.shared.stats import PUSH, READ, StatsPusher, read_rows  # noqa: E402
from processors.anomaly import AnomalyConfig  # noqa: E402
from processors.base import LogBatch  # noqa: E402
from processors.sampling import Config as SamplingConfig  # noqa: E402
from processors.sampling import SamplingProcessor  # noqa: E402
from tests.e2e.conftest import Sidecar  # noqa: E402
from tests.redis_server import RedisServer  # noqa: E402

SERVICE = "bench-shared"
TOKEN = "bench-token-0123456789"
NS = "bench"


def config(ttl: float) -> dict[str, Any]:
    return {
        "processors": {"signature": {}, "sampling": {}},
        "exporters": {"debug": {}},
        "extensions": {"control": {"interval": "1h", "anomaly_trigger": [],
                                   "watch_interval": "0s", "hold": "0s",
                                   "llm": {"enabled": False}}},
        "service": {"extensions": ["control"], "pipelines": {"logs": {
            "receivers": ["otlp"], "processors": ["signature", "sampling"],
            "exporters": ["debug"]}}},
        "storage": {"backend": "redis", "redis_url": "${env:LIPSERVICE_REDIS_URL}",
                    "redis": {"namespace": NS, "lease_ttl": f"{ttl}s",
                              "sync_interval": "1s"}},
    }


def call(sc: Sidecar, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(sc.url(path), method=method,
                                 data=json.dumps(body).encode() if body else None,
                                 headers={"Authorization": f"Bearer {TOKEN}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def version_of(sc: Sidecar) -> int | None:
    status, body = call(sc, "GET", f"/api/v1/policies/{SERVICE}")
    return body["policy"]["version"] if status == 200 else None


def gauge(sc: Sidecar, name: str) -> float | None:
    try:
        text = sc.metrics()
    except OSError:
        return None
    m = re.search(rf'^{name}{{redis_namespace="{NS}"}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else None


def wait(predicate, timeout: float, step: float) -> float:
    """Seconds until predicate() is true (raises after timeout)."""
    start = time.perf_counter()
    while not predicate():
        if time.perf_counter() - start > timeout:
            raise TimeoutError
        time.sleep(step)
    return time.perf_counter() - start


def propagate(origin: Sidecar, all_: list[Sidecar], rate: float) -> float:
    start = time.perf_counter()
    status, body = call(origin, "POST", f"/api/v1/policies/{SERVICE}", {"global_rate": rate})
    assert status == 200, body
    v = body["version"]
    wait(lambda: all(version_of(s) == v for s in all_), 10, 0.01)
    return time.perf_counter() - start


def leaders(scs: list[Sidecar]) -> list[Sidecar]:
    return [s for s in scs if s.proc and s.proc.poll() is None
            and gauge(s, "lipservice_control_is_leader") == 1.0]


def processes(args: argparse.Namespace, tmp: Path) -> None:
    with RedisServer(tmp / "redis") as server:
        env = {"LIPSERVICE_REDIS_URL": server.url, "LIPSERVICE_API_TOKEN": TOKEN}
        scs = [Sidecar(tmp / f"r{i}", config(args.lease_ttl), env).start()
               for i in range(args.replicas)]
        try:
            wait(lambda: len(leaders(scs)) == 1, 30, 0.05)
            times = [propagate(scs[i % len(scs)], scs, 0.1 + (i % 5) / 10)
                     for i in range(args.policies)]
            q = statistics.quantiles(times, n=20)
            print(f"\n### Policy propagation ({args.replicas} replicas, {args.policies} "
                  "policies, POST on one → in force on all)\n")
            print("| p50 ms | p95 ms | max ms |\n|---:|---:|---:|")
            print(f"| {statistics.median(times) * 1000:.0f} | {q[18] * 1000:.0f} | "
                  f"{max(times) * 1000:.0f} |")

            print(f"\n### Lease failover (lease_ttl {args.lease_ttl:g}s; SIGKILL of the "
                  "leader → another replica leads)\n")
            print("| round | seconds |\n|---:|---:|")
            fails = []
            for r in range(args.failovers):
                leader = leaders(scs)[0]
                killed_at = time.perf_counter()
                leader.proc.kill()
                leader.proc.wait(10)
                wait(lambda: len(leaders(scs)) == 1, args.lease_ttl * 3 + 10, 0.05)
                fails.append(time.perf_counter() - killed_at)
                print(f"| {r + 1} | {fails[-1]:.2f} |")
                leader.stop()
                leader.start()
            print(f"| mean | {statistics.mean(fails):.2f} |")

            server.stop()
            wait(lambda: all(gauge(s, "lipservice_redis_up") == 0.0 for s in scs), 30, 0.05)
            time.sleep(3)
            server.start()
            up = wait(lambda: all(gauge(s, "lipservice_redis_up") == 1.0 for s in scs),
                      60, 0.05)
            again = propagate(scs[0], scs, 0.25)
            print("\n### Redis restart (down 3 s, back empty)\n")
            print("| all replicas up again s | then a new policy on all ms |\n|---:|---:|")
            print(f"| {up:.2f} | {again * 1000:.0f} |")
        finally:
            for s in scs:
                s.stop()


def feed(sampler: SamplingProcessor, n: int, now: float) -> None:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = SERVICE
    sl = rl.scope_logs.add()
    pids, templates = [], []
    for i in range(n):
        for _ in range(3):
            rec = sl.log_records.add()
            rec.severity_number = 9  # type: ignore[assignment]
            rec.body.string_value = f"step {i} done"
            pids.append(f"{i:016x}")
            templates.append(f"step {i} done")
    batch = LogBatch(req, now)
    batch.pattern_ids, batch.templates = pids, templates
    sampler.process(batch)


class StallMeter:
    """The longest time the event loop went without running a 1 ms ticker (what a
    receiver's next batch would have waited)."""

    def __init__(self) -> None:
        self.worst = 0.0
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            self.worst = max(self.worst, now - last - 0.001)
            last = now

    def __enter__(self) -> StallMeter:
        self._task = asyncio.get_running_loop().create_task(self._tick())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()


async def in_process(patterns: list[int], tmp: Path) -> None:
    print("\n### Statistics push and read (one service; median of 5, ms)\n")
    print("pattern_stats and prepare run in a worker thread, push and read on the event "
          "loop; loop stall: the longest the event loop was held during push + read; idle "
          "stall: the same measured while idle for as long (the machine's noise).\n")
    print("| patterns | pattern_stats | prepare | push | leader read | loop stall | idle stall |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    with RedisServer(tmp / "redis-stats") as server:
        client = aioredis.from_url(server.url, decode_responses=True)
        script = client.register_script(PUSH)
        reader = client.register_script(READ)
        keys = Keys("stats")
        try:
            for n in patterns:
                parts: dict[str, list[float]] = {k: [] for k in ("stats", "prep", "push", "read",
                                                                  "stall", "idle")}
                sampler = SamplingProcessor(SamplingConfig(anomaly=AnomalyConfig(enabled=False),
                                                           seed=1))
                pusher = StatsPusher(keys, 60, 300)
                for rep in range(5):
                    now = time.time()
                    feed(sampler, n, now)
                    t0 = time.perf_counter()
                    rows = sampler.pattern_stats()
                    t1 = time.perf_counter()
                    prepared = pusher.prepare(rows, [])
                    t2 = time.perf_counter()
                    with StallMeter() as stall:
                        await pusher.push(client, script, prepared, now)
                        t3 = time.perf_counter()
                        got = await read_rows(client, reader, keys, 60, 300, now,
                                              lambda *a: 0.1, [SERVICE])
                        t4 = time.perf_counter()
                    parts["stall"].append(stall.worst * 1000)
                    with StallMeter() as idle:  # the machine's own noise, same duration
                        await asyncio.sleep(t4 - t2)
                    parts["idle"].append(idle.worst * 1000)
                    assert len(got) == n and got[0]["count"] == 3 * (rep + 1)
                    for k, a, b in (("stats", t0, t1), ("prep", t1, t2), ("push", t2, t3),
                                    ("read", t3, t4)):
                        parts[k].append((b - a) * 1000)
                m = {k: statistics.median(v) for k, v in parts.items()}
                print(f"| {n} | {m['stats']:.1f} | {m['prep']:.1f} | {m['push']:.1f} | "
                      f"{m['read']:.1f} | {m['stall']:.1f} | {m['idle']:.1f} |")
                await client.flushdb()
        finally:
            await client.aclose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--policies", type=int, default=20)
    ap.add_argument("--failovers", type=int, default=3)
    ap.add_argument("--lease-ttl", type=float, default=3.0)
    ap.add_argument("--patterns", type=int, nargs="+", default=[1000, 10000])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        processes(args, Path(d))
        asyncio.run(in_process(args.patterns, Path(d)))


if __name__ == "__main__":
    main()
