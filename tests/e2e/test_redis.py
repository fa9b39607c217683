"""Three `lipservice run` processes share one real redis-server (storage.backend: redis):
exactly one holds the lease and runs the control loop (its policy reaches all); a policy
applied on one is in force on all within 2 s; the lease moves when its holder is killed; with Redis stopped they keep serving (OTLP answered,
records exported) with the last policy, and they recover when it is back."""

from __future__ import annotations

import json
import logging
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from tests.e2e.conftest import Sidecar
from tests.redis_server import RedisServer, redis_server  # noqa: F401 - fixture
from tests.sinks import HttpSink

NAMESPACE = "e2e"
SERVICE = "e2e-shared"
LOOP_SERVICE = "e2e-loop"
TOKEN = "e2e-redis-token-6a5b4c3d"
URL_ENV = "LIPSERVICE_REDIS_URL"
LEASE_TTL = 2.0
PROPAGATION_DEADLINE = 2.0  # the promise: in force on all within 2 s


def config(sink: HttpSink) -> dict[str, Any]:
    return {
        "processors": {"signature": {}, "sampling": {"policy": {"global_rate": 0.1}}},
        "exporters": {"otlphttp/sink": {"endpoint": sink.endpoint,
                                        "retry_on_failure": {"initial_interval": "100ms"}}},
        "extensions": {"control": {"interval": "2s", "min_gap": "1s", "anomaly_trigger": [],
                                   "watch_interval": "0s", "llm": {"enabled": False}}},
        "service": {"extensions": ["control"], "pipelines": {"logs": {
            "receivers": ["otlp"], "processors": ["signature", "sampling"],
            "exporters": ["otlphttp/sink"]}}},
        "storage": {"backend": "redis", "redis_url": "${env:LIPSERVICE_REDIS_URL}",
                    "redis": {"namespace": NAMESPACE, "lease_ttl": f"{LEASE_TTL}s",
                              "sync_interval": "500ms", "stats_window": "10s"}},
    }


def call(sc: Sidecar, method: str, path: str, body: dict | None = None
         ) -> tuple[int, dict]:
    req = urllib.request.Request(sc.url(path), method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Authorization": f"Bearer {TOKEN}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def in_force(sc: Sidecar, service: str = SERVICE) -> dict | None:
    status, body = call(sc, "GET", f"/api/v1/policies/{service}")
    return body["policy"] if status == 200 and body["scope"] == service else None


def loop_runs(sc: Sidecar) -> float:
    return sum(float(v) for v in re.findall(r'^lipservice_control_runs_total\{[^}]*\} (\S+)$',
                                            sc.metrics(), re.M))


def wait_until(predicate: Callable[[], Any], timeout: float, what: str,
               sidecars: list[Sidecar] = ()) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = predicate()
        if got:
            return got
        if time.monotonic() >= deadline:
            logs = "\n".join(s.stderr()[-3000:] for s in sidecars)
            raise AssertionError(f"{what}: not within {timeout}s\n{logs}")
        time.sleep(0.05)


def gauge(sc: Sidecar, name: str) -> float | None:
    m = re.search(rf'^{name}{{redis_namespace="{NAMESPACE}"}} (\S+)$', sc.metrics(), re.M)
    return float(m.group(1)) if m else None


def leaders(sidecars: list[Sidecar]) -> list[Sidecar]:
    return [s for s in sidecars if gauge(s, "lipservice_control_is_leader") == 1.0]


def lease_pid(server: RedisServer) -> int | None:
    import redis

    client = redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=2)
    try:
        token = client.get(f"{{{NAMESPACE}}}:lease")
    finally:
        client.close()
    return int(token.split(":")[1]) if token else None


def apply_everywhere(origin: Sidecar, sidecars: list[Sidecar], rate: float) -> int:
    """POST a policy on ``origin``; wait until every sidecar has it in force (bounded by
    the 2 s promise). Returns its version."""
    status, body = call(origin, "POST", f"/api/v1/policies/{SERVICE}", {"global_rate": rate})
    assert status == 200, body
    version = body["version"]
    for sc in sidecars:
        policy = wait_until(lambda sc=sc: (p := in_force(sc)) and p["version"] == version
                            and p, PROPAGATION_DEADLINE,
                            f"policy v{version} in force on :{sc.metrics_port}", sidecars)
        assert policy["global_rate"] == rate and policy["generated_by"] == "operator"
    return version


def send_logs(sc: Sidecar, replica: str, n: int, service: str = SERVICE) -> list[str]:
    """n INFO records through the real OTel SDK exporter; the export results' names
    (``SUCCESS`` when the sidecar answered 200)."""
    results: list[Any] = []

    class Recording(OTLPLogExporter):
        def export(self, batch):  # type: ignore[no-untyped-def]
            results.append(super().export(batch))
            return results[-1]

    provider = LoggerProvider(resource=Resource.create({"service.name": service,
                                                        "replica": replica}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(
        Recording(endpoint=f"{sc.http_endpoint}/v1/logs", timeout=5)))
    logger = logging.getLogger(f"e2e.redis.{replica}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
    logger.addHandler(handler)
    try:
        for i in range(n):
            logger.info("order %d shipped to zone %d", i, i % 3)
    finally:
        provider.shutdown()
        logger.removeHandler(handler)
    return [r.name for r in results]


def exported_from(sink: HttpSink, replica: str) -> int:
    n = 0
    for req in sink.requests:
        for rl in req.resource_logs:
            attrs = {kv.key: kv.value.string_value for kv in rl.resource.attributes}
            if attrs.get("replica") == replica:
                n += sum(len(sl.log_records) for sl in rl.scope_logs)
    return n


def test_three_sidecars_share_policy_lease_and_survive_redis_outage(
        tmp_path: Path, redis_server: RedisServer) -> None:  # noqa: F811
    env = {URL_ENV: redis_server.url, "LIPSERVICE_API_TOKEN": TOKEN}
    with HttpSink() as sink:
        sidecars = [Sidecar(tmp_path / f"replica{i}", config(sink), env) for i in range(3)]
        try:
            for sc in sidecars:
                sc.start()

            # exactly one leader, and it is the process whose token the lease key holds
            leader = wait_until(lambda: (ls := leaders(sidecars)) and len(ls) == 1 and ls[0],
                                LEASE_TTL * 3, "one leader", sidecars)
            assert lease_pid(redis_server) == leader.proc.pid
            time.sleep(LEASE_TTL / 2)  # a few renewals later: still one
            assert leaders(sidecars) == [leader]

            # only the leader runs the loop, on every replica's statistics; its policy
            # reaches all of them
            for i, sc in enumerate(sidecars):
                assert set(send_logs(sc, f"loop{i}", 30, LOOP_SERVICE)) == {"SUCCESS"}
            for sc in sidecars:
                wait_until(lambda sc=sc: (p := in_force(sc, LOOP_SERVICE))
                           and p["generated_by"] == "heuristic", 30,
                           f"the leader's heuristic policy on :{sc.metrics_port}", sidecars)
            assert loop_runs(leader) > 0
            assert [loop_runs(s) for s in sidecars if s is not leader] == [0, 0]

            # a policy applied on a follower is in force on all within 2 s
            follower = next(s for s in sidecars if s is not leader)
            v1 = apply_everywhere(follower, sidecars, 0.5)

            # SIGKILL the leader: another one takes the lease once it expires
            leader.proc.kill()
            leader.proc.wait(10)
            rest = [s for s in sidecars if s is not leader]
            new_leader = wait_until(
                lambda: (ls := leaders(rest)) and len(ls) == 1 and ls[0],
                LEASE_TTL * 4 / 3 + 1.0, "the lease on another sidecar", rest)
            assert lease_pid(redis_server) == new_leader.proc.pid

            # Redis stops: the survivors keep serving with the last policy
            redis_server.stop()
            for sc in rest:
                wait_until(lambda sc=sc: gauge(sc, "lipservice_redis_up") == 0.0, 10,
                           "redis_up 0", rest)
            assert leaders(rest) == []  # no lease without Redis
            for i, sc in enumerate(rest):
                results = send_logs(sc, f"outage{i}", 20)
                assert results and set(results) == {"SUCCESS"}
                policy = in_force(sc)
                assert policy is not None and policy["version"] == v1
                assert policy["global_rate"] == 0.5
            for i in range(len(rest)):
                assert sink.wait_for(lambda i=i: exported_from(sink, f"outage{i}") > 0), \
                    "records sent during the outage were not exported"
            status, body = call(rest[0], "POST", f"/api/v1/policies/{SERVICE}",
                                {"global_rate": 0.4})
            assert status == 503 and "unreachable" in body["error"]["message"]
            assert in_force(rest[0])["version"] == v1

            # Redis is back (empty: no persistence): they reconnect, a new policy propagates
            redis_server.start()
            for sc in rest:
                wait_until(lambda sc=sc: gauge(sc, "lipservice_redis_up") == 1.0, 15,
                           "redis_up 1 after restart", rest)
            v2 = apply_everywhere(rest[1], rest, 0.3)
            assert v2 > v1
            wait_until(lambda: len(leaders(rest)) == 1, LEASE_TTL * 3, "a leader again", rest)
            for sc in rest:
                text = sc.metrics()
                assert re.search(r'lipservice_redis_reconnects_total'
                                 rf'{{redis_namespace="{NAMESPACE}"}} [1-9]', text)
                assert re.search(r'lipservice_policy_synced_total\{redis_namespace="e2e",'
                                 r'trigger="(notice|poll)"} [1-9]', text)
        finally:
            for sc in sidecars:
                if sc.proc is not None and sc.proc.poll() is None:
                    sc.stop()
        for sc in sidecars:
            assert TOKEN not in sc.stderr()


def test_the_redis_password_never_reaches_the_logs(tmp_path: Path) -> None:
    password = "hunter2-pass-0123"
    with RedisServer(tmp_path / "redis", password=password) as server, HttpSink() as sink:
        sc = Sidecar(tmp_path / "replica", config(sink), {URL_ENV: server.url})
        try:
            sc.start()
            wait_until(lambda: gauge(sc, "lipservice_control_is_leader") == 1.0, 10,
                       "the lease with a password-protected Redis", [sc])
        finally:
            sc.stop()
    logs = sc.stderr()
    assert f"redis://:***@127.0.0.1:{server.port}/0" in logs
    assert password not in logs
