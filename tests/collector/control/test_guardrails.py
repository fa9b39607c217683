"""Guardrails: schema, unknown ids, ERROR+ never sampled, [min_rate, 1], anomalous patterns not
cut, bounded decrease per step, kept volume within the target; yaml trusted as written."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from collector.control.config import GuardrailsConfig
from collector.control.guardrails import check
from collector.control.snapshot import (
    PatternView,
    Snapshot,
    effective_rate,
    projected_kept_bytes_per_day,
)
from processors.policy import DEFAULT_POLICY, Policy

CFG = GuardrailsConfig()  # min_rate 0.001, max_decrease_factor 4
T = 1_700_000_000.0


def pv(pid: str, rps: float = 10.0, bps: float = 1000.0, sev: dict[str, float] | None = None,
       anomaly: list[str] | None = None, family: str = "") -> PatternView:
    return PatternView(id=pid, template=f"template {pid} <*>", family=family,
                       records_per_s=rps, bytes_per_s=bps, severity=sev or {"INFO": 1.0},
                       rate=0.05, kept_share=0.05, kept=0, dropped=0, anomaly=anomaly or [],
                       first_seen=T - 3600)


def snap(*patterns: PatternView, surge: bool = False, target: float | None = None
         ) -> Snapshot:
    return Snapshot("svc", T, 300.0, sorted(patterns, key=lambda p: p.bytes_per_s,
                                             reverse=True), surge, None, target)


def doc(**fields) -> dict:
    base = DEFAULT_POLICY.to_document()
    base.update(fields)
    return base


def test_schema_errors_reject_with_the_field_named():
    v = check({"global_rate": "lots", "pattern_rates": {"a": 2}}, DEFAULT_POLICY, None, CFG,
              "llm")
    assert v.policy is None and v.reasons == ["schema"]
    assert any(p.startswith("global_rate:") for p in v.problems)
    assert any(p.startswith("pattern_rates.a:") for p in v.problems)


def test_unknown_pattern_and_family_ids_are_ignored():
    s = snap(pv("known", family="fam"))
    v = check(doc(pattern_rates={"known": 0.5, "ghost": 0.5},
                  family_rates={"fam": 0.5, "nofam": 0.5}), DEFAULT_POLICY, s, CFG, "llm")
    assert v.policy is not None
    assert v.policy.pattern_rates == {"known": 0.5}
    assert v.policy.family_rates == {"fam": 0.5}
    assert sorted(v.ignored) == ["family_rates.nofam", "pattern_rates.ghost"]


@pytest.mark.parametrize("source", ["operator", "heuristic"])
def test_error_rates_are_forced_to_one_for_other_sources(source):
    s = snap(pv("errs", sev={"ERROR": 0.7, "FATAL": 0.3}), pv("info"))
    v = check(doc(severity_rates={"INFO": 0.05, "ERROR": 0.5, "FATAL": 0.0},
                  pattern_rates={"errs": 0.1}), DEFAULT_POLICY, s, CFG, source)
    assert v.policy is not None
    assert v.policy.severity_rates["ERROR"] == 1.0 and v.policy.severity_rates["FATAL"] == 1.0
    assert v.policy.pattern_rates["errs"] == 1.0
    assert v.adjusted["error_rate"] == 3


def test_an_llm_answer_that_samples_errors_is_rejected():
    s = snap(pv("errs", sev={"ERROR": 1.0}))
    v = check(doc(pattern_rates={"errs": 0.1}), DEFAULT_POLICY, s, CFG, "llm")
    assert v.policy is None and v.reasons == ["samples_errors"]
    assert v.problems[0].startswith("pattern_rates.errs:")
    lenient = check(doc(pattern_rates={"errs": 0.1}), DEFAULT_POLICY, s,
                    GuardrailsConfig(reject_error_sampling=False), "llm")
    assert lenient.policy is not None and lenient.policy.pattern_rates["errs"] == 1.0


def test_a_pattern_with_some_errors_may_be_sampled():
    s = snap(pv("mixed", sev={"INFO": 0.9, "ERROR": 0.1}))
    v = check(doc(pattern_rates={"mixed": 0.02}), DEFAULT_POLICY, s, CFG, "llm")
    assert v.policy is not None and v.policy.pattern_rates["mixed"] == 0.02


def test_rates_are_clamped_to_min_rate():
    s = snap(pv("p"))
    current = Policy(global_rate=0.001, severity_rates={"INFO": 0.001},
                     pattern_rates={"p": 0.001})
    v = check(doc(global_rate=0.0, severity_rates={"INFO": 0.0}, pattern_rates={"p": 0.0}),
              current, s, CFG, "operator")
    assert v.policy is not None
    assert v.policy.global_rate == 0.001
    assert v.policy.severity_rates["INFO"] == 0.001
    assert v.policy.pattern_rates["p"] == 0.001
    assert v.adjusted["min_rate"] == 3


def test_no_rate_falls_more_than_the_factor_in_one_step():
    s = snap(pv("explicit"), pv("by_severity"))
    current = Policy(global_rate=0.4, severity_rates={"INFO": 0.2},
                     pattern_rates={"explicit": 0.8})
    # the candidate cuts everything hard and drops the explicit pattern rate
    v = check(doc(global_rate=0.01, severity_rates={"INFO": 0.001}, pattern_rates={}),
              current, s, CFG, "llm")
    pol = v.policy
    assert pol is not None
    assert pol.global_rate == pytest.approx(0.1)
    assert pol.severity_rates["INFO"] == pytest.approx(0.05)
    assert effective_rate(pol, s.by_id["explicit"]) == pytest.approx(0.2)
    assert effective_rate(pol, s.by_id["by_severity"]) == pytest.approx(0.05)
    assert v.adjusted["max_decrease"] >= 3
    # raising is free
    up = check(doc(pattern_rates={"explicit": 1.0}), current, s, CFG, "llm")
    assert up.policy is not None and up.policy.pattern_rates["explicit"] == 1.0


def test_anomalous_patterns_are_not_cut_below_their_rate_in_force():
    s = snap(pv("spiking", anomaly=["spike"]), pv("quiet"))
    current = Policy(pattern_rates={"spiking": 0.3, "quiet": 0.3})
    v = check(doc(pattern_rates={"spiking": 0.1, "quiet": 0.1}), current, s, CFG, "llm")
    assert v.policy is not None
    assert v.policy.pattern_rates == {"spiking": 0.3, "quiet": 0.1}
    assert v.adjusted["anomaly"] == 1
    surge = check(doc(pattern_rates={"spiking": 0.1, "quiet": 0.1}), current,
                  snap(pv("spiking"), pv("quiet"), surge=True), CFG, "llm")
    assert surge.policy is not None
    assert surge.policy.pattern_rates == {"spiking": 0.3, "quiet": 0.3}


def test_projected_kept_volume_is_brought_within_the_target():
    pats = [pv(f"p{i}", rps=50.0 * (i + 1), bps=5000.0 * (i + 1)) for i in range(5)]
    current = Policy(severity_rates={"INFO": 0.2})
    free = snap(*pats)
    before = projected_kept_bytes_per_day(current, free)
    target = before / 3  # reachable: a 4x cut per step is allowed
    v = check(doc(severity_rates={"INFO": 0.2}), current, snap(*pats, target=target), CFG,
              "llm")
    assert v.policy is not None and v.adjusted["target"] > 0
    after = projected_kept_bytes_per_day(v.policy, free)
    assert after <= target * 1.1
    assert after >= target * 0.9  # cut to the target, not far below it
    for p in pats:  # never below the step bound
        assert effective_rate(v.policy, p) >= 0.2 / 4 - 1e-9


def test_an_unreachable_target_cuts_to_the_floors_and_says_so():
    pats = [pv("big", rps=100.0, bps=1e6)]
    current = Policy(severity_rates={"INFO": 0.2})
    v = check(doc(severity_rates={"INFO": 0.2}), current, snap(*pats, target=1.0), CFG, "llm")
    assert v.policy is not None
    assert v.policy.pattern_rates["big"] == pytest.approx(0.05)
    assert any("not reachable" in n for n in v.notes)


def test_yaml_policies_pass_as_written():
    s = snap(pv("p", anomaly=["spike"]))
    current = Policy(pattern_rates={"p": 0.9})
    v = check(doc(global_rate=0.0, pattern_rates={"p": 0.0, "later": 0.5},
                  severity_rates={"ERROR": 0.5}), current, s, CFG, "yaml")
    assert v.policy is not None
    assert v.policy.pattern_rates == {"p": 0.0, "later": 0.5}
    assert v.policy.global_rate == 0.0


rates = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@settings(max_examples=150, deadline=None)
@given(cur=st.lists(rates, min_size=3, max_size=3), new=st.lists(rates, min_size=3, max_size=3),
       sev=rates, anomalous=st.lists(st.booleans(), min_size=3, max_size=3),
       err=st.booleans(), source=st.sampled_from(["llm", "heuristic", "operator"]))
def test_every_accepted_policy_keeps_the_promises(cur, new, sev, anomalous, err, source):
    """Whatever the candidate: ERROR rates stay 1, rates stay in [min_rate, 1], no known
    pattern's rate falls more than 4x, anomalous ones do not fall at all."""
    ids = ["a", "b", "c"]
    pats = [pv(i, anomaly=["spike"] if a else None,
               sev={"ERROR": 1.0} if (err and i == "c") else {"INFO": 1.0})
            for i, a in zip(ids, anomalous, strict=True)]
    s = snap(*pats)
    current = Policy(pattern_rates=dict(zip(ids, cur, strict=True)))
    v = check(doc(severity_rates={"INFO": sev, "ERROR": 1.0},
                  pattern_rates=dict(zip(ids, new, strict=True))), current, s, CFG, source)
    if v.policy is None:
        assert source == "llm" and err and v.reasons == ["samples_errors"]
        return
    pol = v.policy
    assert pol.severity_rates.get("ERROR", 1.0) == 1.0
    rates_all = [pol.global_rate, *pol.severity_rates.values(), *pol.pattern_rates.values()]
    assert all(CFG.min_rate <= r <= 1.0 for r in rates_all)
    for p in pats:
        if p.only_errors:
            assert pol.pattern_rates.get(p.id, 1.0) == 1.0
            continue
        old = max(effective_rate(current, p), 0.0)
        got = effective_rate(pol, p)
        if p.anomaly:
            assert got >= old - 1e-6
        else:
            assert got >= min(1.0, max(CFG.min_rate, old / 4)) - 1e-6
