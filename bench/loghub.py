"""Loghub-2k benchmark of the signature processor, with drain3 beside it in the same run.

Usage::

    python bench/loghub.py [--data DIR] [--stream-lines N] [--no-stream] [--no-drain3]
                           [--show-errors SYSTEM]

Data: every system folder under ``<repo>/../shared/data/loghub_2k/`` (or ``--data``, or env
``LIPSERVICE_LOGHUB_DIR``). Input is the ``Content`` column of
``<S>/<S>_2k.log_structured_corrected.csv`` in file order; the ``EventTemplate`` column of
the same file is the ground truth, used only for scoring. One fresh processor per system,
default config, no knowledge of the system.

Per system it prints:

- GA (grouping accuracy, Zhu et al. ICSE-SEIP 2019): a message counts as correct when the
  set of messages sharing its predicted pattern equals the set sharing its true template.
  Predicted pattern = the record's ``log.pattern.id`` resolved through the alias map at the
  end of the run (ids merged later count as the id they were merged into, as statistics
  and policies follow aliases). ``GA@emit`` scores the ids exactly as annotated, with no
  alias resolution.
- FGA (Jiang et al. ISSTA 2024): F1 of template-level precision and recall, where a
  predicted group is correct when it equals one true group.
- templates found vs true; lines/s through ``SignatureProcessor.pattern_of_body`` (string
  in, pattern out: what drain3's ``add_log_message`` does) and records/s through
  ``SignatureProcessor.process`` on OTLP LogBatches of 1000 records (adds the protobuf
  attribute work).
- the same GA / FGA / templates / lines/s for drain3 (PyPI) with its default config.

Then a stream of >= 1M lines (all systems concatenated, repeated) through one processor:
throughput per phase and resident memory at checkpoints (flat after warm-up or not).
Timing numbers are noisy on a shared machine; compare ratios from one run.
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (  # noqa: E402
    ExportLogsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue  # noqa: E402
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord  # noqa: E402

from processors.base import LogBatch  # noqa: E402
from processors.signature import Config, SignatureProcessor  # noqa: E402

BATCH = 1000


def loghub_dir(explicit: str | None = None) -> Path:
    """The Loghub-2k folder: ``explicit``, else env LIPSERVICE_LOGHUB_DIR, else
    ``<repo>/../shared/data/loghub_2k``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("LIPSERVICE_LOGHUB_DIR")
    if env:
        return Path(env)
    return REPO.parent / "shared" / "data" / "loghub_2k"


def systems(data: Path) -> list[str]:
    """Names of the system folders that hold a corrected structured file, sorted."""
    if not data.is_dir():
        return []
    return sorted(d.name for d in data.iterdir()
                  if (d / f"{d.name}_2k.log_structured_corrected.csv").is_file())


def load_system(data: Path, name: str) -> tuple[list[str], list[str]]:
    """(Content lines, EventTemplate truths) of one system, in file order."""
    path = data / name / f"{name}_2k.log_structured_corrected.csv"
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["Content"] for r in rows], [r["EventTemplate"] for r in rows]


def grouping_accuracy(pred: list[str], truth: list[str]) -> tuple[float, float]:
    """(GA, FGA) of predicted group labels against true labels (same length, > 0)."""
    if len(pred) != len(truth) or not pred:
        raise ValueError("pred and truth must be non-empty and of the same length")
    by_pred: dict[str, list[int]] = defaultdict(list)
    by_truth: dict[str, set[int]] = defaultdict(set)
    for i, (p, t) in enumerate(zip(pred, truth, strict=True)):
        by_pred[p].append(i)
        by_truth[t].add(i)
    correct_lines = correct_groups = 0
    for members in by_pred.values():
        if by_truth[truth[members[0]]] == set(members):
            correct_lines += len(members)
            correct_groups += 1
    precision = correct_groups / len(by_pred)
    recall = correct_groups / len(by_truth)
    fga = 2 * precision * recall / (precision + recall) if correct_groups else 0.0
    return correct_lines / len(pred), fga


def run_lipservice(lines: list[str], config: Config | None = None,
                   ) -> tuple[list[str], list[str], float, SignatureProcessor]:
    """(resolved ids, ids as emitted, seconds, processor) for one fresh processor over
    ``lines`` through the string path."""
    proc = SignatureProcessor(config or Config())
    of = proc.pattern_of_body
    t0 = time.perf_counter()
    emitted = [of(line).id for line in lines]
    dt = time.perf_counter() - t0
    return [proc.resolve(i) for i in emitted], emitted, dt, proc


def make_request(lines: Iterable[str]) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    recs = req.resource_logs.add().scope_logs.add().log_records
    recs.extend(LogRecord(body=AnyValue(string_value=s)) for s in lines)
    return req


def time_batches(proc: SignatureProcessor, lines: list[str]) -> float:
    """Seconds spent in ``proc.process`` over ``lines`` in LogBatches of BATCH records
    (building the requests is not timed)."""
    total = 0.0
    for start in range(0, len(lines), BATCH):
        batch = LogBatch(make_request(lines[start:start + BATCH]), time.time())
        t0 = time.perf_counter()
        proc.process(batch)
        total += time.perf_counter() - t0
    return total


def drain3_miner() -> Callable[[str], int] | None:
    try:
        import logging

        from drain3 import TemplateMiner
        from drain3.template_miner_config import TemplateMinerConfig
    except ImportError:
        return None
    logging.getLogger("drain3").setLevel(logging.ERROR)
    miner = TemplateMiner(config=TemplateMinerConfig())
    return lambda line: miner.add_log_message(line)["cluster_id"]


def run_drain3(lines: list[str]) -> tuple[list[str], float] | None:
    add = drain3_miner()
    if add is None:
        return None
    t0 = time.perf_counter()
    ids = [str(add(line)) for line in lines]
    return ids, time.perf_counter() - t0


def rss_mib() -> float:
    """Resident set size of this process now, MiB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return 0.0


def show_errors(lines: list[str], truth: list[str], pred: list[str],
                proc: SignatureProcessor) -> None:
    """Print each true template whose group is not predicted exactly, with the patterns
    its messages went to (for looking at mistakes; never used by the miner)."""
    by_pred: dict[str, set[int]] = defaultdict(set)
    by_truth: dict[str, set[int]] = defaultdict(set)
    for i, (p, t) in enumerate(zip(pred, truth, strict=True)):
        by_pred[p].add(i)
        by_truth[t].add(i)
    for t, members in sorted(by_truth.items(), key=lambda kv: -len(kv[1])):
        preds = {pred[i] for i in members}
        if len(preds) == 1 and by_pred[next(iter(preds))] == members:
            continue
        print(f"  true [{len(members)}] {t[:150]}")
        for p in sorted(preds, key=lambda p: -len(by_pred[p] & members)):
            pat = proc.miner.patterns.get(p)
            example = lines[min(by_pred[p] & members)]
            others = len(by_pred[p] - members)
            print(f"     {len(by_pred[p] & members):5} -> {pat.template[:110] if pat else p}"
                  f"{f'  (+{others} of other templates)' if others else ''}\n"
                  f"           e.g. {example[:120]}")


def bench_systems(data: Path, names: list[str], with_drain3: bool, errors: set[str]) -> None:
    head = (f"{'system':<11} {'GA':>6} {'GA@emit':>7} {'FGA':>6} {'found':>6} {'true':>5} "
            f"{'lines/s':>9} {'rec/s':>9} | {'drain3 GA':>9} {'FGA':>6} {'found':>6} "
            f"{'lines/s':>9} {'speed-up':>8}")
    print(head)
    print("-" * len(head))
    rows = []
    for name in names:
        lines, truth = load_system(data, name)
        gc.collect()
        pred, emitted, dt, proc = run_lipservice(lines)
        ga, fga = grouping_accuracy(pred, truth)
        ga_emit, _ = grouping_accuracy(emitted, truth)
        rec_dt = time_batches(SignatureProcessor(Config()), lines)
        found = len(set(pred))
        d = run_drain3(lines) if with_drain3 else None
        if d is not None:
            d_ga, d_fga = grouping_accuracy(d[0], truth)
            d_found, d_rate = len(set(d[0])), len(lines) / d[1]
        else:
            d_ga = d_fga = d_rate = float("nan")
            d_found = 0
        rate = len(lines) / dt
        rows.append((ga, ga_emit, fga, rate, len(lines) / rec_dt, d_ga, d_fga, d_rate))
        print(f"{name:<11} {ga:6.3f} {ga_emit:7.3f} {fga:6.3f} {found:6d} {len(set(truth)):5d} "
              f"{rate:9.0f} {len(lines) / rec_dt:9.0f} | {d_ga:9.3f} {d_fga:6.3f} {d_found:6d} "
              f"{d_rate:9.0f} {rate / d_rate:7.1f}x")
        if name in errors:
            show_errors(lines, truth, pred, proc)
    if not rows:
        return
    n = len(rows)
    mean = [sum(r[k] for r in rows) / n for k in range(8)]
    print("-" * len(head))
    print(f"{'mean':<11} {mean[0]:6.3f} {mean[1]:7.3f} {mean[2]:6.3f} {'':6} {'':5} "
          f"{mean[3]:9.0f} {mean[4]:9.0f} | {mean[5]:9.3f} {mean[6]:6.3f} {'':6} "
          f"{mean[7]:9.0f} {mean[3] / mean[7]:7.1f}x")
    print(f"{'min GA':<11} {min(r[0] for r in rows):6.3f}")


def bench_stream(data: Path, names: list[str], target: int, with_drain3: bool) -> None:
    base: list[str] = []
    for name in names:
        base.extend(load_system(data, name)[0])
    if not base:
        return
    reps = -(-target // len(base))
    total = reps * len(base)
    print(f"\nstream: {len(names)} systems concatenated ({len(base)} lines, "
          f"{len(set(base))} distinct), repeated {reps}x = {total} lines, one processor, "
          f"default config")

    # string path (pattern_of_body), whole stream
    gc.collect()
    proc = SignatureProcessor(Config())
    of = proc.pattern_of_body
    checkpoints = []
    t_all = time.perf_counter()
    t_first = 0.0
    for r in range(reps):
        t0 = time.perf_counter()
        for line in base:
            of(line)
        if r == 0:
            t_first = time.perf_counter() - t0
        if r in (0, reps // 4, reps // 2, reps - 1):
            checkpoints.append(((r + 1) * len(base), rss_mib()))
    dt = time.perf_counter() - t_all
    print(f"  string path : {total / dt:9.0f} lines/s overall; first pass (all bodies new) "
          f"{len(base) / t_first:9.0f} lines/s; patterns {len(proc.miner.patterns)}")
    print("  RSS MiB at   : " + ", ".join(f"{n:>8} lines {m:7.1f}" for n, m in checkpoints))

    # OTLP batches through process(): requests built outside the timed section
    gc.collect()
    proc = SignatureProcessor(Config())
    spent = 0.0
    checkpoints = []
    for r in range(reps):
        spent += time_batches(proc, base)
        if r in (0, reps // 4, reps // 2, reps - 1):
            checkpoints.append(((r + 1) * len(base), rss_mib()))
    print(f"  OTLP batches: {total / spent:9.0f} records/s in process() "
          f"(batches of {BATCH}, attribute log.pattern.id added)")
    print("  RSS MiB at   : " + ", ".join(f"{n:>8} lines {m:7.1f}" for n, m in checkpoints))

    # no body cache: every record is masked (a stream where no body repeats exactly)
    gc.collect()
    proc = SignatureProcessor(Config())
    pf = proc.pattern_for
    n_nc = min(total, 4 * len(base))
    t0 = time.perf_counter()
    for r in range(n_nc // len(base)):
        for line in base:
            pf(line)
    print(f"  masked path : {n_nc / (time.perf_counter() - t0):9.0f} lines/s "
          f"(body cache bypassed: every line masked, {n_nc} lines)")

    if with_drain3:
        add = drain3_miner()
        if add is not None:
            n_d = min(total, 4 * len(base))
            t0 = time.perf_counter()
            for r in range(n_d // len(base)):
                for line in base:
                    add(line)
            print(f"  drain3      : {n_d / (time.perf_counter() - t0):9.0f} lines/s "
                  f"(default config, {n_d} lines)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="Loghub-2k folder (default: ../shared/data/loghub_2k)")
    ap.add_argument("--stream-lines", type=int, default=1_000_000)
    ap.add_argument("--no-stream", action="store_true")
    ap.add_argument("--no-drain3", action="store_true")
    ap.add_argument("--show-errors", default="", help="comma-separated systems")
    args = ap.parse_args(argv)
    data = loghub_dir(args.data)
    names = systems(data)
    if not names:
        print(f"no Loghub-2k systems under {data} (set --data or LIPSERVICE_LOGHUB_DIR)",
              file=sys.stderr)
        return 2
    print(f"Loghub-2k corrected, {len(names)} systems from {data}")
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}\n")
    with_drain3 = not args.no_drain3
    if with_drain3 and drain3_miner() is None:
        print("drain3 is not installed (pip install drain3); its columns are left out\n")
        with_drain3 = False
    errors = {s for s in args.show_errors.split(",") if s}
    bench_systems(data, names, with_drain3, errors)
    if not args.no_stream:
        bench_stream(data, names, args.stream_lines, with_drain3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
