"""The deterministic policy: used when there is no LLM key, the LLM keeps failing, or the
budget is spent. It goes through the same guardrails as an LLM answer.

Dynamic sampling as volume-based samplers do it (Cribl's dynamic sampling, Honeycomb's
samplers): a pattern with ``n`` records per window keeps about ``K(n)`` of them, where
``K`` grows much slower than ``n``::

    K(n) = scale x w x sqrt(n)        (curve: sqrt)      or   scale x w x ln(1 + n)   (log)
    p    = (K - keep_first_n) / (n - keep_first_n), within [0, 1]

``n`` counts the pattern's non-ERROR records per policy window (its measured records/s x
window), ``w`` weights the severity mix (TRACE 0.25, DEBUG 0.5, INFO 1, WARN 4), and the
first ``keep_first_n`` records per window are kept anyway. So 100 records/min keep ~10,
10,000/min keep ~100, 1,000,000/min keep ~1,000 (sqrt, scale 1). When
``target_kept_bytes_per_day`` is set, ``scale`` is chosen instead (bisection) so that the
projected kept volume meets the target. ERROR+ records are always kept and get no rate.
Severity, family and global rates are carried over from the policy in force.
"""

from __future__ import annotations

import math
from typing import Any

from collector.control.config import HeuristicConfig
from collector.control.snapshot import DAY, PatternView, Snapshot, kept_fraction
from processors.policy import Policy

SEVERITY_WEIGHT = {"TRACE": 0.25, "DEBUG": 0.5, "INFO": 1.0, "WARN": 4.0}

# What the heuristic carries over from the policy in force besides its own pattern rates.
CARRIED = ("global_rate", "severity_rates", "family_rates", "keep_first_n", "window",
           "max_per_window", "anomaly_boost", "always_keep")


def _weight(p: PatternView) -> float:
    shares = {k: v for k, v in p.severity.items() if k in SEVERITY_WEIGHT}
    total = sum(shares.values())
    if total <= 0:
        return 1.0
    return sum(SEVERITY_WEIGHT[k] * v for k, v in shares.items()) / total


def _rates(snap: Snapshot, current: Policy, cfg: HeuristicConfig, scale: float
           ) -> dict[str, float]:
    curve = math.sqrt if cfg.curve == "sqrt" else math.log1p
    first = current.keep_first_n
    out: dict[str, float] = {}
    for p in snap.patterns[: cfg.max_pattern_rates]:
        if p.only_errors:
            continue
        n = p.records_per_s * current.window * (1.0 - p.error_share)
        if n <= first:
            continue  # first-N keeps every record: no rate needed
        keep = scale * _weight(p) * curve(n)
        out[p.id] = min(1.0, max(0.0, (keep - first) / (n - first)))
    return out


def heuristic_policy(snap: Snapshot, current: Policy, cfg: HeuristicConfig
                     ) -> dict[str, Any]:
    """A policy document (for guardrails.check) for ``snap`` (module docstring).

    current: the policy in force (its non-pattern settings are carried over; its pattern
    rates for known patterns the heuristic does not rate are kept).
    """
    scale = cfg.scale
    target = snap.target_kept_bytes_per_day
    note = ""
    if target is not None and snap.patterns:
        scale = _scale_for_target(snap, current, cfg, target)
        note = f"; scale {scale:.3g} chosen for a target of {target / 1e9:.3g} GB/day kept"
    rates = _rates(snap, current, cfg, scale)
    for pid, r in current.pattern_rates.items():  # explicit rates it does not replace
        if pid not in rates and pid in snap.by_id:
            rates[pid] = r
    doc = {k: v for k, v in current.to_document().items() if k in CARRIED}
    doc.update({
        "pattern_rates": rates, "generated_by": "heuristic", "llm_model": None,
        "reasoning": (f"heuristic: about {scale:.3g} x {cfg.curve}(n) of each pattern's n "
                      f"records per {current.window:g}s window kept, for {len(rates)} "
                      f"patterns{note}"),
    })
    return doc


def _scale_for_target(snap: Snapshot, current: Policy, cfg: HeuristicConfig,
                      target: float) -> float:
    """The scale (bisection on its logarithm, within [e^-9, e^9]) whose policy projects
    ``target`` kept bytes per day."""

    considered = snap.patterns[: cfg.max_pattern_rates]
    table = current.severity_table()
    fixed = sum(p.bytes_per_s * kept_fraction(current, p, snap.error_surge, None, table)
                for p in snap.patterns[cfg.max_pattern_rates:])
    in_force = {p.id: kept_fraction(current, p, snap.error_surge, None, table)
                for p in considered}

    def projected(scale: float) -> float:
        rates = _rates(snap, current, cfg, scale)
        return DAY * (fixed + sum(
            p.bytes_per_s * (kept_fraction(current, p, snap.error_surge, rates[p.id])
                             if p.id in rates else in_force[p.id]) for p in considered))

    lo, hi = -9.0, 9.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if projected(math.exp(mid)) > target:
            hi = mid
        else:
            lo = mid
    return math.exp(lo)
