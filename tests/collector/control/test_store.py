"""Policy persistence: versions and history per scope in the SQLite state file; a restart
resumes the latest policy; YAML blocks are versioned when they change."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from collector.control.store import DEFAULT_SCOPE, SqlitePolicyStore
from collector.state import StateStore
from processors.policy import Policy
from processors.sampling import Config as SamplingConfig
from processors.sampling import SamplingProcessor
from tests.collector.control.conftest import (
    NOISY,
    SVC,
    T0,
    build_loop,
    control_config,
    feed,
    make_sampler,
)


async def test_versions_history_and_pruning(state):
    store = SqlitePolicyStore(state.db, keep=3)
    for i in range(5):
        rec = await store.append(SVC, Policy(global_rate=0.1 + i / 100, generated_by="llm",
                                             reasoning=f"r{i}"), f"digest{i}", T0 + i)
        assert rec.version == i + 1 and rec.policy.version == i + 1
    history = await store.history(SVC)
    assert [h.version for h in history] == [5, 4, 3]  # newest first, 3 kept
    assert (history[0].reasoning, history[0].stats_digest, history[0].source) == (
        "r4", "digest4", "llm")
    assert (await store.latest(SVC)).policy.global_rate == 0.14
    assert await store.latest("nobody") is None
    assert await store.scopes() == [SVC]
    other = await store.append("other", Policy(version=7), "", T0)
    assert other.version == 8  # never below the version it replaces
    await store.set_meta("k", "v")
    assert await store.get_meta("k") == "v" and await store.get_meta("x") is None


async def test_a_failed_append_leaves_history_unchanged(state):
    store = SqlitePolicyStore(state.db)
    await store.append(SVC, Policy(), "", T0)
    state.db.execute("CREATE TRIGGER boom BEFORE DELETE ON policy_history "
                     "BEGIN SELECT RAISE(ABORT, 'disk says no'); END")
    store.keep = 1  # forces a delete, which fails
    with pytest.raises(sqlite3.IntegrityError, match="disk says no"):
        await store.append(SVC, Policy(global_rate=0.5), "", T0)
    assert [h.version for h in await store.history(SVC)] == [1]


async def test_a_restart_keeps_the_latest_policy(tmp_path: Path):
    cfg = control_config()
    first = StateStore(tmp_path / "state")
    sampler = make_sampler()
    feed(sampler, T0)
    loop = build_loop(sampler, first, cfg)
    await loop.apply_yaml(sampler.config, at_start=True)
    [result] = await loop.run_once()
    assert result.outcome == "applied"
    applied = sampler.policy(SVC)
    first.close()

    second = StateStore(tmp_path / "state")
    fresh = make_sampler()
    assert fresh.policy(SVC).version == 0
    again = build_loop(fresh, second, control_config())
    await again.resume()
    await again.apply_yaml(fresh.config, at_start=True)  # unchanged YAML: nothing new
    assert fresh.policy(SVC) == applied
    assert fresh.policy(SVC).pattern_rates[NOISY] == applied.pattern_rates[NOISY]
    assert fresh.policy().version == 1  # the YAML default, stored as v1 at first start
    second.close()


async def test_yaml_blocks_are_versioned_when_they_change(tmp_path: Path):
    def sampler_with(rate: float) -> SamplingProcessor:
        return SamplingProcessor(SamplingConfig.model_validate(
            {"policy": {"global_rate": rate}, "policies": {"billing": {"global_rate": 0.5}}}))

    st = StateStore(tmp_path / "state")
    s1 = sampler_with(0.1)
    loop = build_loop(s1, st, control_config())
    assert sorted(await loop.apply_yaml(s1.config, at_start=True)) == [DEFAULT_SCOPE, "billing"]
    assert s1.policy().version == 1 and s1.policy("billing").version == 1
    assert loop._held[DEFAULT_SCOPE] == 0  # the starting policy is not held
    # same file again: nothing; edited default: a new held version
    assert await loop.apply_yaml(s1.config) == []
    s2 = sampler_with(0.2)
    loop2 = build_loop(s2, st, control_config())
    await loop2.resume()
    assert await loop2.apply_yaml(s2.config, at_start=True) == [DEFAULT_SCOPE]
    assert (s2.policy().version, s2.policy().global_rate) == (2, 0.2)
    assert s2.policy().generated_by == "yaml"
    assert (await loop2.store.latest(DEFAULT_SCOPE)).held_until > 0
    st.close()
