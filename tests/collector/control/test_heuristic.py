"""The heuristic policy: kept per window grows like sqrt (or log) of the volume, errors get no
rate, a target picks the scale; without an LLM key the loop applies it through the same
guardrails."""

from __future__ import annotations

import math

import pytest

from collector.control.config import HeuristicConfig
from collector.control.heuristic import heuristic_policy
from collector.control.snapshot import Snapshot, projected_kept_bytes_per_day
from processors.policy import DEFAULT_POLICY, load_policy
from tests.collector.control.conftest import (
    CACHE,
    ERRORS,
    NOISY,
    SLOW,
    SVC,
    T0,
    control_config,
    feed,
    make_sampler,
    metric,
)
from tests.collector.control.test_guardrails import pv, snap


def test_kept_per_window_follows_the_square_root_of_volume():
    # 1, 10 and 100 records/s with a 60 s window: n = 60, 600, 6000 per window
    s = snap(pv("small", rps=1.0), pv("mid", rps=10.0), pv("big", rps=100.0))
    doc = heuristic_policy(s, DEFAULT_POLICY, HeuristicConfig())
    rates = doc["pattern_rates"]
    for pid, n in (("small", 60), ("mid", 600), ("big", 6000)):
        kept = 2 + rates[pid] * (n - 2)  # first-N plus the sampled rest
        assert kept == pytest.approx(math.sqrt(n), rel=1e-6)
    assert rates["small"] > rates["mid"] > rates["big"]
    load_policy(doc)  # a valid document
    assert doc["generated_by"] == "heuristic" and "sqrt" in doc["reasoning"]


def test_log_curve_and_severity_weights():
    s = snap(pv("info", rps=10.0), pv("warn", rps=10.0, sev={"WARN": 1.0}),
             pv("debug", rps=10.0, sev={"DEBUG": 1.0}))
    rates = heuristic_policy(s, DEFAULT_POLICY, HeuristicConfig(curve="log"))["pattern_rates"]
    assert 2 + rates["info"] * 598 == pytest.approx(math.log1p(600))
    assert rates["warn"] > rates["info"] > rates["debug"]


def test_errors_and_tiny_patterns_get_no_rate_and_other_settings_carry_over():
    current = DEFAULT_POLICY.model_copy(update={"keep_first_n": 5, "anomaly_boost": 3.0})
    s = snap(pv("errs", rps=50.0, sev={"ERROR": 1.0}), pv("tiny", rps=0.01),
             pv("busy", rps=50.0))
    doc = heuristic_policy(s, current, HeuristicConfig())
    assert set(doc["pattern_rates"]) == {"busy"}
    assert (doc["keep_first_n"], doc["anomaly_boost"]) == (5, 3.0)


def test_a_target_chooses_the_scale():
    pats = [pv(f"p{i}", rps=20.0 * (i + 1), bps=2000.0 * (i + 1)) for i in range(6)]
    free = snap(*pats)
    base = load_policy(heuristic_policy(free, DEFAULT_POLICY, HeuristicConfig()))
    target = projected_kept_bytes_per_day(base, free) / 2
    s = Snapshot("svc", free.taken_at, 300.0, free.patterns, target_kept_bytes_per_day=target)
    pol = load_policy(heuristic_policy(s, DEFAULT_POLICY, HeuristicConfig()))
    assert projected_kept_bytes_per_day(pol, free) == pytest.approx(target, rel=0.01)
    assert "target" in pol.reasoning


async def test_without_a_key_the_loop_applies_the_heuristic_through_the_guardrails(
        state, make_loop):
    sampler = make_sampler()
    feed(sampler, T0)
    loop = make_loop(sampler, state, control_config())  # no LLM client
    skipped = metric("lipservice_llm_skipped_runs_total", reason="no_api_key")
    [result] = await loop.run_once()
    assert (result.outcome, result.source, result.llm) == ("applied", "heuristic",
                                                           "no_api_key")
    assert metric("lipservice_llm_skipped_runs_total", reason="no_api_key") == skipped + 1
    pol = sampler.policy(SVC)
    assert pol.generated_by == "heuristic" and pol.version == 1
    # 3000 INFO records/min: sqrt -> ~55 kept -> p ~ 0.018, within 4x of 0.05
    assert pol.pattern_rates[NOISY] == pytest.approx((math.sqrt(3000) - 2) / 2998, rel=0.01)
    # 600 DEBUG/min at weight 0.5: 0.5 x sqrt(600) ~ 12 kept -> p ~ 0.017
    assert pol.pattern_rates[CACHE] == pytest.approx((0.5 * math.sqrt(600) - 2) / 598, rel=0.01)
    assert ERRORS not in pol.pattern_rates
    assert SLOW in pol.pattern_rates
