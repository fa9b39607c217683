"""Loghub-2k benchmark of the signature processor, with drain3 beside it in the same run.

Usage::

    python bench/loghub.py [--data DIR] [--truth corrected|original|loghub2] [--repeat N]
                           [--stream-lines N] [--fresh-reps N] [--no-stream] [--no-drain3]
                           [--show-errors SYSTEM]

Data: every system folder under ``<repo>/../shared/data/loghub_2k/`` (or ``--data``, or env
``LIPSERVICE_LOGHUB_DIR``). Input is the ``Content`` column of
``<S>/<S>_2k.log_structured_corrected.csv`` in file order; the ``EventTemplate`` column of
the same file is the ground truth, used only for scoring (``--truth original`` and
``--truth loghub2`` score against the other two ground-truth variants shipped beside it).
One fresh processor per system, default config, no knowledge of the system.

Per system it prints:

- GA (grouping accuracy, Zhu et al. ICSE-SEIP 2019): a message counts as correct when the
  set of messages sharing its predicted pattern equals the set sharing its true template.
  Predicted pattern = the record's ``log.pattern.id`` resolved through the alias map at the
  end of the run (ids merged later count as the id they were merged into, as statistics
  and policies follow aliases). ``GA@emit`` scores the ids exactly as annotated, with no
  alias resolution (one record under an alias fails its whole group), and ``alias`` counts
  the records that were annotated with an id that was later merged.
- FGA (Jiang et al. ISSTA 2024): F1 of template-level precision and recall, where a
  predicted group is correct when it equals one true group.
- templates found vs true; lines/s through ``SignatureProcessor.pattern_of_body`` (string
  in, pattern out: what drain3's ``add_log_message`` does) and records/s through
  ``SignatureProcessor.process`` on OTLP LogBatches of 1000 records (adds the protobuf
  attribute work).
- the same GA / FGA / templates / lines/s for drain3 (PyPI) with its default config.

Then a stream of >= 1M lines (all systems concatenated, repeated) through one processor:
throughput per phase and resident memory at checkpoints (flat after warm-up or not).
Times are CPU seconds of this process (``time.process_time``), so other load on a shared
machine does not count against either miner; the code is single-threaded, so on an idle
machine this equals wall-clock time. Compare ratios from one run.
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import platform
import random
import re
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
_DIGIT_RUN = re.compile(r"\d+")


def loghub_dir(explicit: str | None = None) -> Path:
    """The Loghub-2k folder: ``explicit``, else env LIPSERVICE_LOGHUB_DIR, else
    ``<repo>/../shared/data/loghub_2k``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("LIPSERVICE_LOGHUB_DIR")
    if env:
        return Path(env)
    return REPO.parent / "shared" / "data" / "loghub_2k"


# Ground-truth variants (see ../shared/data/loghub_2k/SOURCE.md): file suffix and the
# column that names a message's group. "corrected" is the one the targets refer to.
TRUTHS = {
    "corrected": ("_structured_corrected.csv", "EventTemplate"),   # Khan et al., ICSE'22
    "original": ("_structured.csv", "EventId"),                    # Zhu et al., ICSE-SEIP'19
    "loghub2": ("_structured_loghub2.csv", "EventTemplate"),       # Jiang et al., ISSTA'24
}


def systems(data: Path, truth: str = "corrected") -> list[str]:
    """Names of the system folders that hold the structured file of ``truth``, sorted."""
    if not data.is_dir():
        return []
    suffix = TRUTHS[truth][0]
    return sorted(d.name for d in data.iterdir() if (d / f"{d.name}_2k.log{suffix}").is_file())


def load_system(data: Path, name: str, truth: str = "corrected") -> tuple[list[str], list[str]]:
    """(Content lines, ground-truth group labels) of one system, in file order."""
    suffix, column = TRUTHS[truth]
    with open(data / name / f"{name}_2k.log{suffix}", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r["Content"] for r in rows], [r[column] for r in rows]


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
    t0 = time.process_time()
    emitted = [of(line).id for line in lines]
    dt = time.process_time() - t0
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
        t0 = time.process_time()
        proc.process(batch)
        total += time.process_time() - t0
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
    t0 = time.process_time()
    ids = [str(add(line)) for line in lines]
    return ids, time.process_time() - t0


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


def bench_systems(data: Path, names: list[str], with_drain3: bool, errors: set[str],
                  repeat: int, truth: str = "corrected") -> None:
    head = (f"{'system':<11} {'GA':>6} {'GA@emit':>7} {'alias':>5} {'FGA':>6} {'found':>6} "
            f"{'true':>5} "
            f"{'lines/s':>9} {'rec/s':>9} | {'drain3 GA':>9} {'FGA':>6} {'found':>6} "
            f"{'lines/s':>9} {'speed-up':>8}")
    print(head)
    print("-" * len(head))
    rows = []
    counts = []
    for name in names:
        lines, labels = load_system(data, name, truth)
        counts.append(len(lines))
        # runs alternate (ours, drain3, ours, ...), each on a fresh miner; the fastest run
        # of each counts, so a burst of load on the machine does not decide the ratio
        best = best_d = best_rec = float("inf")
        d_ids: list[str] = []
        for _ in range(repeat):
            gc.collect()
            pred, emitted, dt, proc = run_lipservice(lines)
            best = min(best, dt)
            if with_drain3:
                gc.collect()
                d = run_drain3(lines)
                if d is not None:
                    d_ids, d_dt = d
                    best_d = min(best_d, d_dt)
            gc.collect()
            best_rec = min(best_rec, time_batches(SignatureProcessor(Config()), lines))
        ga, fga = grouping_accuracy(pred, labels)
        ga_emit, _ = grouping_accuracy(emitted, labels)
        rate, rec_rate = len(lines) / best, len(lines) / best_rec
        if d_ids:
            d_ga, d_fga = grouping_accuracy(d_ids, labels)
            d_found, d_rate = len(set(d_ids)), len(lines) / best_d
        else:
            d_ga = d_fga = d_rate = float("nan")
            d_found = 0
        rows.append((ga, ga_emit, fga, rate, rec_rate, d_ga, d_fga, d_rate))
        aliased = sum(1 for e, p in zip(emitted, pred, strict=True) if e != p)
        print(f"{name:<11} {ga:6.3f} {ga_emit:7.3f} {aliased:5d} {fga:6.3f} {len(set(pred)):6d} "
              f"{len(set(labels)):5d} {rate:9.0f} {rec_rate:9.0f} | {d_ga:9.3f} {d_fga:6.3f} "
              f"{d_found:6d} {d_rate:9.0f} {rate / d_rate:7.1f}x")
        if name in errors:
            show_errors(lines, labels, pred, proc)
    if not rows:
        return
    n = len(rows)
    mean = [sum(r[k] for r in rows) / n for k in range(8)]
    print("-" * len(head))
    print(f"{'mean':<11} {mean[0]:6.3f} {mean[1]:7.3f} {'':5} {mean[2]:6.3f} {'':6} {'':5} "
          f"{mean[3]:9.0f} {mean[4]:9.0f} | {mean[5]:9.3f} {mean[6]:6.3f} {'':6} "
          f"{mean[7]:9.0f} {mean[3] / mean[7]:7.1f}x")
    print(f"{'min GA':<11} {min(r[0] for r in rows):6.3f}{'':55} | "
          f"{min(r[5] for r in rows):9.3f}")
    ours_s = sum(c / r[3] for c, r in zip(counts, rows, strict=True))
    drain_s = sum(c / r[7] for c, r in zip(counts, rows, strict=True))
    print(f"all {sum(counts)} lines: {sum(counts) / ours_s:.0f} lines/s vs drain3 "
          f"{sum(counts) / drain_s:.0f} lines/s = {drain_s / ours_s:.1f}x")


def _stream_rates(run_one: Callable[[], None], reps: int) -> tuple[float, list[float], float]:
    """(seconds in all, RSS MiB after each quarter, seconds of the first repetition)."""
    marks = {0, reps // 4, reps // 2, (3 * reps) // 4, reps - 1}
    rss: list[float] = []
    total = first = 0.0
    for r in range(reps):
        t0 = time.process_time()
        run_one()
        dt = time.process_time() - t0
        total += dt
        if r == 0:
            first = dt
        if r in marks:
            rss.append(rss_mib())
    return total, rss, first


def bench_stream(data: Path, names: list[str], target: int, with_drain3: bool,
                 fresh_reps: int = 20) -> None:
    base: list[str] = []
    for name in names:
        base.extend(load_system(data, name)[0])
    if not base:
        return
    reps = -(-target // len(base))
    total = reps * len(base)
    print(f"\nstream: the {len(names)} systems concatenated ({len(base)} lines, "
          f"{len(set(base))} distinct bodies), repeated {reps}x = {total} lines through one "
          f"processor, default config")
    marks = sorted({0, reps // 4, reps // 2, (3 * reps) // 4, reps - 1})
    at = ", ".join(f"{(r + 1) * len(base) // 1000}k" for r in marks)

    gc.collect()
    proc = SignatureProcessor(Config())
    of = proc.pattern_of_body
    dt, rss, first = _stream_rates(lambda: [of(line) for line in base], reps)
    print(f"  string path   {total / dt:10.0f} lines/s   first pass (every body new) "
          f"{len(base) / first:8.0f} lines/s   patterns at the end {len(proc.miner.patterns)}")
    print(f"    RSS MiB after {at} lines: " + ", ".join(f"{m:.1f}" for m in rss))

    gc.collect()
    proc = SignatureProcessor(Config())
    requests = [make_request(base[i:i + BATCH]) for i in range(0, len(base), BATCH)]

    def batches() -> None:
        for req in requests:
            work = ExportLogsServiceRequest()
            work.CopyFrom(req)  # a fresh copy each time, as if just decoded
            batch = LogBatch(work, 0.0)
            t0 = time.process_time()
            proc.process(batch)
            spent[0] += time.process_time() - t0

    spent = [0.0]
    _, rss, _ = _stream_rates(batches, reps)
    print(f"  OTLP batches  {total / spent[0]:10.0f} records/s in process() "
          f"(batches of {BATCH}; log.pattern.id appended to every record)")
    print(f"    RSS MiB after {at} lines: " + ", ".join(f"{m:.1f}" for m in rss))

    # new values in every repetition: each digit run is re-drawn at random (one time in
    # five with one digit more or less), so bodies with numbers almost never repeat and
    # the number shapes vary as real counters and ids do; copies are made untimed
    gc.collect()
    proc = SignatureProcessor(Config())
    of = proc.pattern_of_body
    rng = random.Random(7)

    def redraw(m: re.Match[str]) -> str:
        n = len(m.group(0))
        if rng.random() < 0.2:
            n = max(1, n + rng.choice((-1, 1)))
        return str(rng.randrange(10 ** (n - 1) if n > 1 else 0, 10 ** n))

    fresh_time = 0.0
    rss = []
    for _ in range(fresh_reps):
        copy = [_DIGIT_RUN.sub(redraw, line) for line in base]
        t0 = time.process_time()
        for line in copy:
            of(line)
        fresh_time += time.process_time() - t0
        rss.append(rss_mib())
    n_fresh = fresh_reps * len(base)
    print(f"  fresh values  {n_fresh / fresh_time:10.0f} lines/s   (every number re-drawn in "
          f"each of {fresh_reps} repetitions, {n_fresh} lines; patterns at the end "
          f"{len(proc.miner.patterns)})")
    half = rss[len(rss) // 2:]
    print(f"    RSS MiB after repetition 1: {rss[0]:.1f}; over repetitions "
          f"{len(rss) - len(half) + 1}-{len(rss)}: {min(half):.1f} to {max(half):.1f}")
    step = max(1, len(rss) // 10)
    print("    RSS MiB every " + (f"{step} repetitions" if step > 1 else "repetition") + ": "
          + ", ".join(f"{m:.1f}" for m in rss[step - 1::step]))

    if with_drain3:
        add = drain3_miner()
        if add is not None:
            t0 = time.process_time()
            for _ in range(4):
                for line in base:
                    add(line)
            print(f"  drain3        {4 * len(base) / (time.process_time() - t0):10.0f} lines/s "
                  f"(default config, the repeated stream's first {4 * len(base)} lines)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="Loghub-2k folder (default: ../shared/data/loghub_2k)")
    ap.add_argument("--stream-lines", type=int, default=1_000_000)
    ap.add_argument("--fresh-reps", type=int, default=20,
                    help="repetitions of the stream with re-drawn numbers (memory check)")
    ap.add_argument("--no-stream", action="store_true")
    ap.add_argument("--no-drain3", action="store_true")
    ap.add_argument("--show-errors", default="", help="comma-separated systems")
    ap.add_argument("--repeat", type=int, default=3, help="timed runs per system (fastest counts)")
    ap.add_argument("--truth", choices=sorted(TRUTHS), default="corrected",
                    help="ground truth to score against (default: corrected, Khan et al.)")
    args = ap.parse_args(argv)
    data = loghub_dir(args.data)
    names = systems(data, args.truth)
    if not names:
        print(f"no Loghub-2k systems under {data} (set --data or LIPSERVICE_LOGHUB_DIR)",
              file=sys.stderr)
        return 2
    print(f"Loghub-2k, ground truth {args.truth!r} ({TRUTHS[args.truth][0]}, "
          f"{TRUTHS[args.truth][1]}), {len(names)} systems from {data}")
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}\n")
    with_drain3 = not args.no_drain3
    if with_drain3 and drain3_miner() is None:
        print("drain3 is not installed (pip install drain3); its columns are left out\n")
        with_drain3 = False
    errors = {s for s in args.show_errors.split(",") if s}
    bench_systems(data, names, with_drain3, errors, max(1, args.repeat), args.truth)
    if not args.no_stream:
        bench_stream(data, names, args.stream_lines, with_drain3, max(1, args.fresh_reps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
