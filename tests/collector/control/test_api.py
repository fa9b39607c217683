"""The policy API on a real aiohttp server on loopback: reads, history, operator override
through validation and guardrails, refresh, bearer-token auth, clear JSON errors."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from collector.control.api import PolicyApi, is_loopback
from collector.control.loop import ControlLoop
from collector.telemetry import TelemetryServer
from processors.sampling import SamplingProcessor
from tests.collector.control.conftest import (
    CACHE,
    NOISY,
    SVC,
    T0,
    control_config,
    feed,
    make_sampler,
)
from tests.sinks import free_port

TOKEN_ENV = "LIPSERVICE_TEST_API_TOKEN"
TOKEN = "tok-7Hq2Lw9Zr4Xc8Vb1Nm"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Api:
    url: str
    http: aiohttp.ClientSession
    loop: ControlLoop
    sampler: SamplingProcessor

    async def call(self, method: str, path: str, **kw) -> tuple[int, dict]:
        async with self.http.request(method, self.url + path, **kw) as r:
            return r.status, await r.json()


async def serve(listen_host: str, loop: ControlLoop) -> tuple[TelemetryServer, str]:
    """Routes of a PolicyApi configured for ``listen_host``, served on 127.0.0.1."""
    api = PolicyApi(listen_host, TOKEN_ENV)
    api.loop = loop
    port = free_port()
    server = TelemetryServer(f"127.0.0.1:{port}", [])
    server.add_routes(api.routes())
    await server.start()
    return server, f"http://127.0.0.1:{port}"


@pytest.fixture
async def api(state, make_loop, monkeypatch) -> AsyncIterator[Api]:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    sampler = make_sampler()
    feed(sampler, T0)
    loop = make_loop(sampler, state, control_config())
    await loop.apply_yaml(sampler.config, at_start=True)
    server, url = await serve("127.0.0.1", loop)
    async with aiohttp.ClientSession() as http:
        yield Api(url, http, loop, sampler)
    await server.stop()


async def test_get_policy_in_force_and_history(api):
    status, body = await api.call("GET", f"/api/v1/policies/{SVC}")
    assert status == 200
    assert (body["service"], body["scope"]) == (SVC, "_default")  # no policy of its own yet
    assert body["policy"]["version"] == 1 and body["policy"]["generated_by"] == "default"
    await api.loop.run_once()
    status, body = await api.call("GET", f"/api/v1/policies/{SVC}")
    assert (status, body["scope"], body["policy"]["generated_by"]) == (200, SVC, "heuristic")
    # versions continue from the default policy's (v1) that the service had in force
    assert body["stored"]["version"] == body["policy"]["version"] == 2
    assert len(body["stored"]["stats_digest"]) == 16
    status, hist = await api.call("GET", f"/api/v1/policies/{SVC}/history")
    assert status == 200 and [v["version"] for v in hist["versions"]] == [2]
    assert hist["versions"][0]["source"] == "heuristic"
    status, listing = await api.call("GET", "/api/v1/policies")
    assert {p["service"] for p in listing["policies"]} == {"_default", SVC}


async def test_unknown_service_and_route_are_404_json(api):
    status, body = await api.call("GET", "/api/v1/policies/nobody")
    assert status == 404 and "nobody" in body["error"]["message"]
    status, body = await api.call("GET", "/api/v1/policies/nobody/history")
    assert status == 404
    status, body = await api.call("POST", "/api/v1/policies/nobody/refresh", headers=AUTH)
    assert status == 404
    status, body = await api.call("GET", "/api/v1/nothing-here")
    assert status == 404 and body["error"]["status"] == 404


async def test_bad_requests_are_400(api):
    status, body = await api.call("GET", f"/api/v1/policies/{SVC}/history?limit=lots")
    assert status == 400 and body["error"]["message"].startswith("limit")
    status, body = await api.call("GET", "/api/v1/policies/bad%01name")
    assert status == 400 and "service_name" in body["error"]["message"]
    status, body = await api.call("POST", f"/api/v1/policies/{SVC}", headers=AUTH,
                                  data=b"{not json")
    assert status == 400 and "JSON" in body["error"]["message"]
    status, body = await api.call("POST", f"/api/v1/policies/{SVC}", headers=AUTH,
                                  json=[0.1])
    assert status == 400 and "object" in body["error"]["message"]
    status, body = await api.call("POST", "/api/v1/policies/_default/refresh", headers=AUTH)
    assert status == 400 and "service_name" in body["error"]["message"]
    # nesting deep enough to exhaust the JSON decoder's recursion is a 400, not a 500
    deep = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    status, body = await api.call("POST", f"/api/v1/policies/{SVC}", headers=AUTH, data=deep)
    assert status == 400 and "nested" in body["error"]["message"]
    assert api.sampler.policy(SVC).version == 1


async def test_post_needs_the_token(api, monkeypatch):
    path = f"/api/v1/policies/{SVC}"
    status, body = await api.call("POST", path, json={"global_rate": 0.2})
    assert status == 401 and "bearer" in body["error"]["message"]
    status, body = await api.call("POST", path, json={"global_rate": 0.2},
                                  headers={"Authorization": "Bearer wrong"})
    assert status == 401
    status, _ = await api.call("POST", path + "/refresh",
                               headers={"Authorization": f"Basic {TOKEN}"})
    assert status == 401
    monkeypatch.delenv(TOKEN_ENV)
    status, body = await api.call("POST", path, json={"global_rate": 0.2}, headers=AUTH)
    assert status == 403 and TOKEN_ENV in body["error"]["message"]
    assert api.sampler.policy(SVC).generated_by == "default"  # nothing was applied
    monkeypatch.setenv(TOKEN_ENV, TOKEN + "\n")  # a secret file's final newline
    status, _ = await api.call("POST", path, json={"global_rate": 0.2}, headers=AUTH)
    assert status == 200


async def test_operator_override_goes_through_validation_and_guardrails(api, caplog):
    caplog.set_level(logging.INFO)
    path = f"/api/v1/policies/{SVC}"
    status, body = await api.call("POST", path, headers=AUTH,
                                  json={"global_rate": 2, "pattern_rates": {NOISY: "x"}})
    assert status == 422
    assert any(p.startswith("global_rate:") for p in body["error"]["problems"])
    assert any(p.startswith(f"pattern_rates.{NOISY}:") for p in body["error"]["problems"])
    assert api.sampler.policy(SVC).generated_by == "default"
    status, body = await api.call("POST", path, headers=AUTH, json={"global_rate": True})
    assert status == 422
    assert body["error"]["problems"] == ["global_rate: expected a number, not a boolean"]
    assert api.sampler.policy(SVC).generated_by == "default"

    # the legacy shape; ERROR < 1 forced to 1, a 10x cut bounded to 4x, a ghost id ignored
    legacy = {"global_rate": 0.1, "severity_rates": {"DEBUG": 0.02, "INFO": 0.05,
                                                     "WARNING": 0.25, "ERROR": 0.5,
                                                     "CRITICAL": 1.0},
              "pattern_rates": {CACHE: 0.002, "ffffffffffffffff": 0.5},
              "anomaly_boost": 5, "reasoning": None, "generated_by": "rule-based",
              "llm_model": None, "version": 42}
    status, body = await api.call("POST", path, headers=AUTH, json=legacy)
    assert status == 200, body
    assert body["applied"] is True and body["source"] == "operator"
    assert body["version"] == 2 and body["held_until"]
    assert body["ignored"] == ["pattern_rates.ffffffffffffffff"]
    assert any(a.startswith("severity_rates.ERROR") for a in body["adjustments"])
    policy = api.sampler.policy(SVC)
    assert policy.generated_by == "operator" and policy.version == 2
    assert policy.severity_rates["ERROR"] == 1.0 and policy.anomaly_boost == 5
    assert policy.pattern_rates == {CACHE: 0.005}  # 0.02 / 4
    assert TOKEN not in caplog.text

    # a partial update merges the rate maps key by key; null removes a key
    before = dict(policy.severity_rates)
    status, body = await api.call("POST", path, headers=AUTH,
                                  json={"severity_rates": {"INFO": 0.06},
                                        "pattern_rates": {CACHE: None}})
    assert status == 200, body
    policy = api.sampler.policy(SVC)
    assert policy.severity_rates == {**before, "INFO": 0.06}
    assert policy.pattern_rates == {}
    assert policy.reasoning == "operator override"


async def test_refresh_runs_the_loop_now_even_over_a_hold(api):
    await api.call("POST", f"/api/v1/policies/{SVC}", headers=AUTH,
                   json={"global_rate": 0.2})
    status, body = await api.call("POST", f"/api/v1/policies/{SVC}/refresh", headers=AUTH)
    assert status == 200
    assert (body["outcome"], body["source"], body["trigger"]) == ("applied", "heuristic",
                                                                  "api")
    assert api.sampler.policy(SVC).version == body["version"] == 3


async def test_every_route_needs_the_token_off_loopback(state, make_loop, monkeypatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    sampler = make_sampler()
    feed(sampler, T0)
    loop = make_loop(sampler, state, control_config())
    server, url = await serve("0.0.0.0", loop)
    try:
        async with aiohttp.ClientSession() as http:
            for path in ("/api/v1/policies", f"/api/v1/policies/{SVC}",
                         f"/api/v1/policies/{SVC}/history"):
                async with http.get(url + path) as r:
                    assert r.status == 401
                    assert r.headers["WWW-Authenticate"].startswith("Bearer")
                async with http.get(url + path, headers=AUTH) as r:
                    assert r.status == 200
    finally:
        await server.stop()


def test_loopback_addresses():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "10.0.0.1", "::", "example.com"))
