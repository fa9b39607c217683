"""Control loop costs and effect on a synthetic service (no LLM; prints tables).

For N patterns with Zipf-distributed volumes (one minute of traffic, about 2,000 records/s
in all, INFO/DEBUG/WARN mix, 2% ERROR patterns) fed through the sampling processor:

1. the CPU time of one loop run's parts: ``pattern_stats`` (sampler), snapshot build,
   heuristic, guardrails, and the LLM prompt for ``top_k`` 50 (its estimated tokens);
2. the projected kept bytes/day under the policy in force after each heuristic step from
   the default policy (the step bound lets a rate fall at most 4x per run), and with a
   target of 5% of the volume.

    python bench/control.py [--patterns 1000 10000] [--steps 4]

Numbers are medians of 3 repetitions on this machine; compare ratios within one run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (  # noqa: E402
    ExportLogsServiceRequest,
)

from collector.control import guardrails  # noqa: E402
from collector.control.config import ControlConfig  # noqa: E402
from collector.control.heuristic import heuristic_policy  # noqa: E402
from collector.control.llm import build_messages  # noqa: E402
from collector.control.snapshot import RateTracker, projected_kept_bytes_per_day  # noqa: E402
from processors.anomaly import AnomalyConfig  # noqa: E402
from processors.base import LogBatch  # noqa: E402
from processors.policy import load_policy  # noqa: E402
from processors.sampling import Config as SamplingConfig  # noqa: E402
from processors.sampling import SamplingProcessor  # noqa: E402

T0 = 1_700_000_000.0
SVC = "bench"


def traffic(n: int, total: int = 120_000) -> list[tuple[str, int, str, int]]:
    """(pattern id, severity_number, template, records in one minute), Zipf s=1.1."""
    weights = [1 / (i + 1) ** 1.1 for i in range(n)]
    norm = sum(weights)
    out = []
    for i, w in enumerate(weights):
        sev = 17 if i % 50 == 7 else (13 if i % 10 == 3 else (5 if i % 3 == 1 else 9))
        out.append((f"{i:016x}", sev, f"component {i % 37} step {i} did <*> in <*> ms",
                    max(1, round(total * w / norm))))
    return out


def feed(sampler: SamplingProcessor, rows: list[tuple[str, int, str, int]]) -> None:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = SVC
    sl = rl.scope_logs.add()
    ids, templates = [], []
    for pid, sev, tmpl, count in rows:
        for j in range(count):
            rec = sl.log_records.add()
            rec.severity_number = sev  # type: ignore[assignment]
            rec.body.string_value = tmpl.replace("<*>", str(j), 1).replace("<*>", "42")
            ids.append(pid)
            templates.append(tmpl)
    batch = LogBatch(req, T0)
    batch.pattern_ids, batch.templates = ids, templates
    sampler.process(batch)


def timed(fn: Any, *args: Any) -> tuple[Any, float]:
    runs = []
    result = None
    for _ in range(3):
        t = time.perf_counter()
        result = fn(*args)
        runs.append(time.perf_counter() - t)
    return result, statistics.median(runs) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patterns", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--steps", type=int, default=4)
    args = ap.parse_args()
    cfg = ControlConfig()
    print("| patterns | pattern_stats ms | snapshot ms | heuristic ms | guardrails ms "
          "| prompt ms | prompt tokens (top 50) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    effects = []
    for n in args.patterns:
        sampler = SamplingProcessor(SamplingConfig(anomaly=AnomalyConfig(enabled=False),
                                                   seed=1))
        feed(sampler, traffic(n))
        rows, t_stats = timed(sampler.pattern_stats, SVC)
        snap, t_snap = timed(lambda r=rows: RateTracker().build(SVC, r, [], T0 + 60))
        current = sampler.policy(SVC)
        doc, t_heur = timed(heuristic_policy, snap, current, cfg.heuristic)
        verdict, t_guard = timed(guardrails.check, doc, current, snap, cfg.guardrails,
                                 "heuristic")
        prompt, t_prompt = timed(build_messages, snap, current, 50, 8000)
        print(f"| {n} | {t_stats:.0f} | {t_snap:.0f} | {t_heur:.0f} | {t_guard:.0f} "
              f"| {t_prompt:.0f} | {prompt.tokens if prompt else '-'} |")
        volume = sum(p.bytes_per_s for p in snap.patterns) * 86400
        for target in (None, 0.05 * volume):
            snap.target_kept_bytes_per_day = target
            policy = current
            kept = [projected_kept_bytes_per_day(policy, snap)]
            for _ in range(args.steps):
                v = guardrails.check(heuristic_policy(snap, policy, cfg.heuristic), policy,
                                     snap, cfg.guardrails, "heuristic")
                assert v.policy is not None
                policy = load_policy(v.policy.to_document())
                kept.append(projected_kept_bytes_per_day(policy, snap))
            effects.append((n, target, volume, kept))
    print()
    print("| patterns | target | volume GB/day | kept % by step (default policy, then "
          "heuristic steps) |")
    print("|---:|---|---:|---|")
    for n, target, volume, kept in effects:
        label = "none" if target is None else "5% of volume"
        steps = " → ".join(f"{100 * k / volume:.1f}" for k in kept)
        print(f"| {n} | {label} | {volume / 1e9:.2f} | {steps} |")


if __name__ == "__main__":
    main()
