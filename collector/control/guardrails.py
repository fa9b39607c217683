"""Guardrails: what every policy passes before it is applied (DESIGN.md §Control loop).

:func:`check` takes a candidate policy document, the policy in force and the snapshot the
candidate was made for, and returns a :class:`Verdict`: the policy to apply (possibly
adjusted), or the reasons it is rejected. In order:

==================  ===========================================================  ==========
guardrail           what it does                                                 on failure
==================  ===========================================================  ==========
schema              the document must load as a ``Policy`` (processors/policy.py) reject
                    (rates are numbers in [0, 1], known fields only)             ``schema``
unknown ids         pattern / family ids the snapshot does not know are dropped  adjust
error_rate          ERROR/FATAL severity rates, and rates of patterns whose      reject
                    records are all ERROR+, are 1. An LLM answer that sets them  ``samples_
                    lower is rejected (``reject_error_sampling``); other         errors`` /
                    sources are forced to 1                                      adjust
min_rate            every rate clamped to [``min_rate``, 1]                      adjust
max_decrease        no rate (global, per severity range, per family, and the     adjust
                    effective rate of every known pattern) falls below the rate
                    in force divided by ``max_decrease_factor``
anomaly             a pattern flagged new or spiking (every pattern during the   adjust
                    service's error surge) keeps at least its rate in force
target              when ``target_kept_bytes_per_day`` is set and the projected  adjust
                    kept volume exceeds it by more than ``target_tolerance``,
                    the rates of the largest patterns are scaled down (never
                    below the floors above) to meet it
==================  ===========================================================  ==========

Sources (``generated_by``): ``llm``, ``heuristic`` and ``operator`` policies pass all of them;
``yaml`` policies (a config file edit) pass the schema only: the file is what its author
wrote, as at startup.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from collector.control.config import GuardrailsConfig
from collector.control.snapshot import (
    DAY,
    PatternView,
    Snapshot,
    effective_rate,
    kept_fraction,
    projected_kept_bytes_per_day,
)
from processors.policy import SEVERITY_RANGES, Policy, PolicyError, load_policy

MAX_SCALED_PATTERNS = 1000  # patterns the target guardrail may give an explicit rate
_SAMPLED_RANGES = ("TRACE", "DEBUG", "INFO", "WARN")


@dataclass
class Verdict:
    """policy: what to apply (None when rejected); reasons: rejection codes (``schema``,
    ``samples_errors``); problems: one line per rejection cause; notes: one line per
    adjustment; adjusted: guardrail -> rates changed; ignored: unknown ids dropped."""

    policy: Policy | None
    reasons: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    adjusted: Counter[str] = field(default_factory=Counter)
    ignored: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return self.policy is not None

    def to_json(self) -> dict[str, Any]:
        return {"reasons": self.reasons, "problems": self.problems, "adjustments": self.notes,
                "ignored": self.ignored}


def rejected(reason: str, problems: list[str]) -> Verdict:
    return Verdict(None, [reason], problems)


def check(document: Mapping[str, Any] | Policy, current: Policy, snap: Snapshot | None,
          cfg: GuardrailsConfig, source: str) -> Verdict:
    """Run the guardrails (module docstring) over a candidate.

    document: a policy document (or Policy); current: the policy in force for the service;
    snap: its statistics (None: the per-pattern guardrails and the target are skipped);
    source: ``llm`` | ``heuristic`` | ``operator`` | ``yaml``. Never raises on bad input.
    """
    try:
        pol = document if isinstance(document, Policy) else load_policy(document)
    except PolicyError as err:
        return rejected("schema", err.problems)
    if source == "yaml":
        return Verdict(pol)
    v = Verdict(None)
    pattern_rates = dict(pol.pattern_rates)
    family_rates = dict(pol.family_rates)
    sev: dict[str, float] = dict(pol.severity_rates)
    glob = pol.global_rate

    # unknown ids
    if snap is not None:
        families = {f.id for f in snap.families}
        for pid in [k for k in pattern_rates if k not in snap.by_id]:
            del pattern_rates[pid]
            v.ignored.append(f"pattern_rates.{pid}")
        for fid in [k for k in family_rates if k not in families]:
            del family_rates[fid]
            v.ignored.append(f"family_rates.{fid}")

    # error_rate
    sampling_errors = [f"severity_rates.{n}" for n in ("ERROR", "FATAL") if sev.get(n, 1.0) < 1]
    if snap is not None:
        sampling_errors += [f"pattern_rates.{pid}" for pid, r in pattern_rates.items()
                            if r < 1 and snap.by_id[pid].only_errors]
    if sampling_errors:
        if source == "llm" and cfg.reject_error_sampling:
            return rejected("samples_errors", [
                f"{path}: ERROR and FATAL records are always kept; a rate below 1 would "
                "sample them" for path in sampling_errors])
        for path in sampling_errors:
            kind, _, key = path.partition(".")
            (sev if kind == "severity_rates" else pattern_rates)[key] = 1.0
            v.notes.append(f"{path}: set to 1 (ERROR and FATAL records are always kept)")
        v.adjusted["error_rate"] += len(sampling_errors)

    # min_rate
    lo = cfg.min_rate

    def clamp(path: str, r: float) -> float:
        if r < lo:
            v.adjusted["min_rate"] += 1
            v.notes.append(f"{path}: {r:g} raised to min_rate {lo:g}")
            return lo
        return r

    glob = clamp("global_rate", glob)
    sev = {n: clamp(f"severity_rates.{n}", r) for n, r in sev.items()}
    pattern_rates = {k: clamp(f"pattern_rates.{k}", r) for k, r in pattern_rates.items()}
    family_rates = {k: clamp(f"family_rates.{k}", r) for k, r in family_rates.items()}

    # max_decrease (global, severity ranges, families)
    factor = cfg.max_decrease_factor

    def bounded(path: str, new: float, old: float) -> float:
        floor = min(1.0, max(lo, old / factor))
        if new < floor - 1e-12:
            v.adjusted["max_decrease"] += 1
            v.notes.append(f"{path}: {new:g} raised to {floor:g} (at most a "
                           f"{factor:g}x decrease per step from {old:g})")
            return floor
        return new

    glob = bounded("global_rate", glob, current.global_rate)
    cur_table = current.severity_table()
    new_table = _with(pol, glob, sev, pattern_rates, family_rates).severity_table()
    for name in _SAMPLED_RANGES:
        first = SEVERITY_RANGES[name][0]
        if new_table[first] < cur_table[first] / factor - 1e-12:
            sev[name] = bounded(f"severity_rates.{name}", new_table[first], cur_table[first])
    for fid, r in family_rates.items():
        if fid in current.family_rates:
            family_rates[fid] = bounded(f"family_rates.{fid}", r, current.family_rates[fid])
    candidate = _with(pol, glob, sev, pattern_rates, family_rates)

    # max_decrease and anomaly per known pattern (effective rates)
    floors: dict[str, float] = {}
    if snap is not None:
        cand_table = candidate.severity_table()
        for p in snap.patterns:
            if p.only_errors:
                continue
            old = effective_rate(current, p, cur_table)
            held = bool(p.anomaly) or snap.error_surge
            floor = min(1.0, old if held else max(lo, old / factor))
            floors[p.id] = floor
            new = effective_rate(candidate, p, cand_table)
            if new < floor - 1e-12:
                pattern_rates[p.id] = floor
                kind = "anomaly" if held else "max_decrease"
                v.adjusted[kind] += 1
                v.notes.append(f"pattern_rates.{p.id}: {new:g} raised to {floor:g} ("
                               + ("flagged anomalous: not cut below its rate in force)"
                                  if held else f"at most a {factor:g}x decrease per step)"))
        candidate = _with(pol, glob, sev, pattern_rates, family_rates)

    # target
    target = snap.target_kept_bytes_per_day if snap is not None else None
    if snap is not None and target is not None:
        limit = target * (1 + cfg.target_tolerance)
        before = projected_kept_bytes_per_day(candidate, snap)
        if before > limit:
            scaled, after = _meet_target(candidate, snap, floors, target)
            for pid, r in scaled.items():
                pattern_rates[pid] = r
            v.adjusted["target"] += len(scaled)
            reach = "" if after <= limit else " (not reachable within one step's bounds)"
            v.notes.append(f"target: projected kept volume {before / 1e9:.3g} GB/day over "
                           f"the target {target / 1e9:.3g} GB/day; {len(scaled)} pattern "
                           f"rates lowered, now {after / 1e9:.3g} GB/day{reach}")
            candidate = _with(pol, glob, sev, pattern_rates, family_rates)

    v.policy = candidate
    return v


def _with(pol: Policy, glob: float, sev: dict[str, float], pattern_rates: dict[str, float],
          family_rates: dict[str, float]) -> Policy:
    return pol.model_copy(update={
        "global_rate": _round(glob), "severity_rates": {k: _round(r) for k, r in sev.items()},
        "pattern_rates": {k: _round(r) for k, r in pattern_rates.items()},
        "family_rates": {k: _round(r) for k, r in family_rates.items()}})


def _round(r: float) -> float:
    return min(1.0, max(0.0, round(r, 6)))


def _meet_target(pol: Policy, snap: Snapshot, floors: dict[str, float], target: float
                 ) -> tuple[dict[str, float], float]:
    """Scale the rates of the largest patterns by one factor s in [0, 1] (each no lower than
    its floor) so that the projected kept bytes/day meet ``target``; bisection on s.
    Returns (pattern id -> new rate for the rates that changed, projected bytes/day)."""
    movable: list[tuple[PatternView, float, float]] = []
    fixed = 0.0
    table = pol.severity_table()
    for i, p in enumerate(snap.patterns):  # highest bytes/s first
        rate = effective_rate(pol, p, table)
        floor = floors.get(p.id, 1.0)
        if i < MAX_SCALED_PATTERNS and rate > floor and not p.only_errors:
            movable.append((p, rate, floor))
        else:
            fixed += p.bytes_per_s * kept_fraction(pol, p, snap.error_surge, rate)

    def projected(s: float) -> float:
        return DAY * (fixed + sum(p.bytes_per_s * kept_fraction(
            pol, p, snap.error_surge, max(floor, rate * s)) for p, rate, floor in movable))

    lo_s, hi_s = 0.0, 1.0
    if projected(0.0) <= target:
        for _ in range(30):
            mid = (lo_s + hi_s) / 2
            if projected(mid) > target:
                hi_s = mid
            else:
                lo_s = mid
    s = lo_s
    changed = {p.id: max(floor, rate * s) for p, rate, floor in movable
               if max(floor, rate * s) < rate}
    return changed, projected(s)
