"""Shared pieces for the control loop tests: a sampler fed with pattern-labelled records,
a state store in tmp_path, a loop wired to them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from collector.control.config import ControlConfig
from collector.control.llm import LlmClient
from collector.control.loop import ControlLoop
from collector.control.store import SqlitePolicyStore
from collector.metrics import REGISTRY
from collector.state import StateStore
from processors.anomaly import AnomalyConfig
from processors.base import LogBatch
from processors.sampling import Config as SamplingConfig
from processors.sampling import SamplingProcessor

T0 = 1_700_000_040.0
SVC = "checkout"
API_KEY = "test-openai-key-do-not-leak-0123456789"

# pattern id -> (records per feed, severity_number, template)
TRAFFIC: dict[str, tuple[int, int, str]] = {
    "a1a1a1a1a1a1a1a1": (3000, 9, "GET /health <*> 200 in <*> ms"),
    "b2b2b2b2b2b2b2b2": (600, 5, "cache lookup key <*> hit"),
    "c3c3c3c3c3c3c3c3": (40, 13, "slow query <*> took <*> ms"),
    "d4d4d4d4d4d4d4d4": (25, 17, "payment <*> failed: <*>"),
}
NOISY, CACHE, SLOW, ERRORS = TRAFFIC


class Clock:
    """A settable clock (seconds)."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_batch(service: str, rows: list[tuple[str, int, str, str]], now: float) -> LogBatch:
    """rows: (pattern id, severity_number, template, body)."""
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = service
    sl = rl.scope_logs.add()
    for _pid, sev, _tmpl, body in rows:
        rec = sl.log_records.add()
        rec.severity_number = sev  # type: ignore[assignment]
        rec.body.string_value = body
    batch = LogBatch(req, now)
    batch.pattern_ids = [r[0] for r in rows]
    batch.templates = [r[2] for r in rows]
    return batch


def feed(sampler: SamplingProcessor, now: float, traffic: dict[str, tuple[int, int, str]]
         | None = None, service: str = SVC, scale: float = 1.0) -> None:
    """Send each pattern's records (bodies: the template with numbers filled in)."""
    rows = []
    for pid, (n, sev, tmpl) in (traffic or TRAFFIC).items():
        for i in range(max(1, int(n * scale))):
            rows.append((pid, sev, tmpl, tmpl.replace("<*>", str(1000 + i), 1)
                         .replace("<*>", "x" * 20)))
    sampler.process(make_batch(service, rows, now))


def make_sampler(**anomaly: Any) -> SamplingProcessor:
    an = AnomalyConfig(**anomaly) if anomaly else AnomalyConfig(enabled=False)
    return SamplingProcessor(SamplingConfig(anomaly=an, seed=7))


def control_config(**kw: Any) -> ControlConfig:
    base: dict[str, Any] = {"llm": {"max_retries": 0, "timeout": "2s"}}
    for k, v in kw.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return ControlConfig.model_validate(base)


def build_loop(sampler: SamplingProcessor, state: StateStore, cfg: ControlConfig,
               llm_url: str | None = None, clock: Clock | None = None,
               monotonic: Clock | None = None) -> ControlLoop:
    """A loop over ``sampler`` storing into ``state``; an LLM client when ``llm_url``."""
    llm = None
    if llm_url is not None:
        cfg.llm.base_url = llm_url
        llm = LlmClient(cfg.llm, API_KEY)
    extra: dict[str, Any] = {"monotonic": monotonic} if monotonic else {}
    return ControlLoop(cfg, sampler, SqlitePolicyStore(state.db, cfg.history), llm,
                       clock=clock or Clock(T0 + 60), **extra)


@pytest.fixture
async def make_loop() -> AsyncIterator[Callable[..., ControlLoop]]:
    """build_loop, with every loop stopped (its LLM client closed) at the end."""
    made: list[ControlLoop] = []

    def make(*args: Any, **kw: Any) -> ControlLoop:
        loop = build_loop(*args, **kw)
        made.append(loop)
        return loop

    yield make
    for loop in made:
        await loop.stop()


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def state(tmp_path: Path) -> Iterator[StateStore]:
    st = StateStore(tmp_path / "state")
    yield st
    st.close()
