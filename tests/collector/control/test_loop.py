"""The loop's schedule (interval, early on an anomaly), holds for operator/YAML policies,
unchanged proposals, per-service runs, YAML edits of the default policy."""

from __future__ import annotations

import asyncio
import time

from collector.control.loop import same_rates
from processors.policy import Policy
from processors.sampling import Config as SamplingConfig
from processors.sampling import SamplingProcessor
from tests.collector.control.conftest import (
    NOISY,
    SVC,
    T0,
    Clock,
    control_config,
    feed,
    make_sampler,
    metric,
)
from tests.collector.control.fake_llm import FakeLLM


async def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def test_the_schedule_runs_every_interval(state, make_loop):
    sampler = make_sampler()
    feed(sampler, T0)
    clock = Clock(T0 + 60)
    loop = make_loop(sampler, state, control_config(interval="0.2s", anomaly_trigger=[]),
                     clock=clock)
    runs = metric("lipservice_control_runs_total", trigger="interval", outcome="applied")
    await loop.start()
    assert await wait_for(lambda: sampler.policy(SVC).version == 1)
    # more traffic, ten times as much: the next scheduled run cuts further
    feed(sampler, T0 + 61, scale=10)
    clock.t = T0 + 120
    assert await wait_for(lambda: sampler.policy(SVC).version == 2)
    await loop.stop()
    assert metric("lipservice_control_runs_total", trigger="interval",
                  outcome="applied") >= runs + 2


async def test_a_new_anomaly_triggers_an_early_debounced_run(state, make_loop):
    # warmup 0: every pattern is "new" when first seen
    sampler = make_sampler(warmup=0, new_pattern_window=600)
    clock = Clock(T0)
    loop = make_loop(sampler, state, control_config(interval="1h", anomaly_delay="0.1s",
                                                    min_gap="0s"), clock=clock)
    early = metric("lipservice_control_runs_total", trigger="anomaly", outcome="applied")
    await loop.start()
    await asyncio.sleep(0.2)
    assert sampler.policy(SVC).version == 0  # nothing flagged, the interval is an hour
    feed(sampler, T0)
    clock.t = T0 + 30
    assert await wait_for(lambda: sampler.policy(SVC).version == 1)
    assert metric("lipservice_control_runs_total", trigger="anomaly",
                  outcome="applied") == early + 1
    # the same flags again do not trigger another run
    await asyncio.sleep(1.5)
    assert metric("lipservice_control_runs_total", trigger="anomaly", outcome="applied") \
        + metric("lipservice_control_runs_total", trigger="anomaly", outcome="unchanged") \
        == early + 1


async def test_operator_policies_are_held_until_a_refresh(state, make_loop):
    sampler = make_sampler()
    feed(sampler, T0)
    loop = make_loop(sampler, state, control_config())
    verdict, rec = await loop.override(SVC, {"pattern_rates": {NOISY: 0.5}})
    assert rec is not None and rec.source == "operator" and rec.held_until > 0
    [held] = await loop.run_once()
    assert held.outcome == "held"
    assert sampler.policy(SVC).generated_by == "operator"
    [forced] = await loop.run_once("api", SVC, force=True)
    assert forced.outcome == "applied"
    assert sampler.policy(SVC).generated_by == "heuristic"


async def test_a_proposal_within_ten_percent_is_not_a_new_version(state, make_loop):
    sampler = make_sampler()
    feed(sampler, T0)
    clock = Clock(T0 + 60)
    loop = make_loop(sampler, state, control_config(), clock=clock)
    [first] = await loop.run_once()
    feed(sampler, T0 + 60)  # the same traffic over the next minute
    clock.t = T0 + 120
    # the heuristic asks for the same rates again (as far as the step bound lets it)
    results = [(await loop.run_once())[0].outcome for _ in range(3)]
    assert first.outcome == "applied"
    assert "unchanged" in results


def test_same_rates_tolerance():
    a = Policy(pattern_rates={"x": 0.1})
    assert same_rates(a, Policy(pattern_rates={"x": 0.105}))
    assert not same_rates(a, Policy(pattern_rates={"x": 0.2}))
    assert not same_rates(a, Policy(pattern_rates={"y": 0.1}))
    assert not same_rates(a, Policy(pattern_rates={"x": 0.1}, keep_first_n=5))


async def test_each_service_gets_its_own_policy(state, make_loop):
    sampler = make_sampler()
    feed(sampler, T0, service="checkout")
    feed(sampler, T0, service="search", scale=0.1)
    loop = make_loop(sampler, state, control_config())
    results = await loop.run_once()
    assert [r.service for r in results] == ["checkout", "search"]  # by volume
    assert sampler.policy("checkout").version == 1 and sampler.policy("search").version == 1
    assert sampler.policy("checkout") != sampler.policy("search")
    assert sampler.policy().version == 0


async def test_an_edit_of_the_default_yaml_policy_replaces_generated_service_policies(
        state, make_loop):
    sampler = make_sampler()
    feed(sampler, T0)
    loop = make_loop(sampler, state, control_config())
    await loop.apply_yaml(sampler.config, at_start=True)
    await loop.run_once()
    assert sampler.policy(SVC).generated_by == "heuristic"
    edited = SamplingConfig.model_validate({"policy": {"severity_rates": {"INFO": 0.5}}})
    applied = await loop.apply_yaml(edited)
    assert sorted(applied) == ["_default", SVC]
    assert sampler.policy(SVC).generated_by == "yaml"
    assert sampler.policy(SVC).severity_rates["INFO"] == 0.5
    [run] = await loop.run_once()
    assert run.outcome == "held"


async def test_services_without_statistics_cost_no_llm_call(state, make_loop):
    with FakeLLM() as llm:
        sampler = SamplingProcessor(SamplingConfig())
        loop = make_loop(sampler, state, control_config(), llm.base_url)
        assert await loop.run_once() == []
        [r] = await loop.run_once("api", "ghost", force=True)
        assert r.outcome == "no_data" and llm.requests == []
