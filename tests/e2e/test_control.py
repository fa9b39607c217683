"""The control loop end to end: the OTel SDK sends logs to a `lipservice run` subprocess whose
control loop asks a fake OpenAI-compatible server (loopback) for a policy; the policy API
shows it, a restart keeps it, SIGHUP applies a YAML edit."""

from __future__ import annotations

import json
import logging
import signal
import time
import urllib.error
import urllib.request
from typing import Any

import yaml
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource

from tests.collector.control.fake_llm import Answer, FakeLLM
from tests.e2e.conftest import Sidecar

SERVICE = "e2e-control"
TOKEN = "e2e-token-5f4e3d2c1b"


def rate_every_shown_pattern(request: dict[str, Any]) -> str:
    """The fake model's answer: 0.5 for every pattern the prompt shows."""
    data = json.loads(request["messages"][-1]["content"])
    return json.dumps({
        "reasoning": "e2e: keep half", "global_rate": 0.1,
        "severity_rates": [{"severity": "INFO", "rate": 0.05}],
        "pattern_rates": [{"id": p["id"], "rate": 0.5} for p in data["patterns"]],
        "family_rates": []})


def config(llm_url: str, interval: str) -> dict[str, Any]:
    return {
        "processors": {"signature": {}, "sampling": {"policy": {"global_rate": 0.1}}},
        "exporters": {"debug": {}},
        "extensions": {"control": {
            "interval": interval, "anomaly_trigger": [], "watch_interval": "0s",
            "llm": {"base_url": llm_url, "model": "fake-model", "api_key": "",
                    "max_retries": 0, "timeout": "5s"}}},
        "service": {"extensions": ["control"], "pipelines": {"logs": {
            "receivers": ["otlp"], "processors": ["signature", "sampling"],
            "exporters": ["debug"]}}},
    }


def get(sc: Sidecar, path: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(sc.url(path), timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def wait_for_policy(sc: Sidecar, predicate, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    body: dict = {}
    while time.monotonic() < deadline:
        status, body = get(sc, f"/api/v1/policies/{SERVICE}")
        if status == 200 and predicate(body["policy"]):
            return body
        time.sleep(0.2)
    raise AssertionError(f"policy not reached in {timeout}s: {body}\n{sc.stderr()}")


def send_logs(sc: Sidecar, n: int) -> None:
    provider = LoggerProvider(resource=Resource.create({"service.name": SERVICE}))
    provider.add_log_record_processor(BatchLogRecordProcessor(
        OTLPLogExporter(endpoint=f"{sc.http_endpoint}/v1/logs")))
    logger = logging.getLogger("e2e.control")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    handler = LoggingHandler(level=logging.INFO, logger_provider=provider)
    logger.addHandler(handler)
    for i in range(n):
        logger.info("GET /health %d 200 in %d ms", i, i % 7)
    provider.shutdown()
    logger.removeHandler(handler)


def test_the_loop_applies_an_llm_policy_that_the_api_shows_and_a_restart_keeps(
        sidecar_factory) -> None:
    with FakeLLM(Answer(make=rate_every_shown_pattern)) as llm:
        sc = sidecar_factory(config(llm.base_url, "1s"),
                             env={"LIPSERVICE_API_TOKEN": TOKEN}).start()
        send_logs(sc, 300)
        body = wait_for_policy(sc, lambda p: p["generated_by"] == "llm")
        policy = body["policy"]
        assert body["scope"] == SERVICE
        assert policy["llm_model"] == "fake-model" and policy["reasoning"] == "e2e: keep half"
        assert policy["pattern_rates"] and set(policy["pattern_rates"].values()) == {0.5}
        assert body["stored"]["version"] == policy["version"] >= 2
        prompt = llm.prompts()[0]
        assert "records_per_s" in prompt
        assert SERVICE not in prompt and "GET /health 17" not in prompt
        metrics = sc.metrics()
        assert 'lipservice_llm_calls_total{outcome="ok"}' in metrics
        assert f'lipservice_policy_version{{service="{SERVICE}"}}' in metrics
        status, hist = get(sc, f"/api/v1/policies/{SERVICE}/history")
        assert status == 200 and hist["versions"][0]["source"] == "llm"
        assert sc.stop() == 0
        assert TOKEN not in sc.stderr()

    # a restart with the same state directory: the latest policy is back before any run
    again = Sidecar(sc.config_path.parent, config("http://127.0.0.1:9/v1", "1h")).start()
    try:
        status, body = get(again, f"/api/v1/policies/{SERVICE}")
        assert status == 200
        assert body["policy"]["version"] == policy["version"]
        assert body["policy"]["generated_by"] == "llm"
        assert body["policy"]["pattern_rates"] == policy["pattern_rates"]
    finally:
        assert again.stop() == 0


def test_sighup_applies_a_yaml_policy_edit(sidecar_factory) -> None:
    sc = sidecar_factory(config("http://127.0.0.1:9/v1", "1h")).start()
    status, body = get(sc, "/api/v1/policies/_default")
    assert status == 200 and body["policy"]["global_rate"] == 0.1
    version = body["policy"]["version"]
    tree = yaml.safe_load(sc.config_path.read_text())
    tree["processors"]["sampling"]["policy"]["global_rate"] = 0.3
    sc.config_path.write_text(yaml.safe_dump(tree))
    assert sc.proc is not None
    sc.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status, body = get(sc, "/api/v1/policies/_default")
        if body["policy"]["global_rate"] == 0.3:
            break
        time.sleep(0.1)
    assert body["policy"]["global_rate"] == 0.3, sc.stderr()
    assert body["policy"]["version"] == version + 1
    assert body["policy"]["generated_by"] == "yaml"
    assert sc.stop() == 0
