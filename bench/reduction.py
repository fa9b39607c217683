"""Volume reduction of signature + sampling under the default policy, on the Loghub-2k lines.

Usage::

    python bench/reduction.py [--records 1000000] [--rate 1000] [--flush 1] [--batch 512]
                              [--trace-share 0] [--seed 1] [--systems HDFS,BGL,...]

Replays each shared Loghub system alone (its 2,000 lines once), then one interleaved stream:
the systems' lines repeated and interleaved to ``--records`` records, paced by a virtual
clock at ``--rate`` records/s in all (``LogBatch.now``). Each system is one service
(``service.name``) with an equal share of the rate, and exports what it logged every
``--flush`` virtual seconds in batches of at most ``--batch`` records, as an OTel SDK's
batch log record processor does (sources in a seeded random order within each tick).
Records carry the time, severity (number and text from the Level column when the system has
one; none otherwise, as a file tailer would send them), the body (the ``Content`` column),
``code.namespace`` (the Component column when present), and, for ``--trace-share`` of them,
a random trace id shared by runs of 1-8 consecutive records of a system (Loghub lines have
no trace ids; the option shows the cost of trace-consistent decisions).

Printed per run: records and bytes in and out (serialized ExportLogsServiceRequest sizes,
output after signature + sampling, with the attributes they add), volume reduction, share of
ERROR+ records kept, share of anomalous records kept (records whose pattern was flagged new
or spiking, or whose service had an error surge, when their batch was processed), share of
(service, window, pattern) triples with at least one kept record (pattern = the signature
processor's id, and also the ground-truth template of the Loghub corrected files), and the
count-weighted mean relative error of per-pattern counts estimated as the sum of
``sampling.adjusted_count`` over kept records, for patterns with >= 1,000 records. Then the
throughput of each stage, in-process (time inside ``process(batch)`` only).

Data: ``<repo>/../shared/data/loghub_2k`` or ``$LIPSERVICE_LOGHUB_DIR`` (research licence:
read in place, never copied into the repo).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import xxhash  # noqa: E402
import yaml  # noqa: E402
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (  # noqa: E402
    ExportLogsServiceRequest,
)

from processors.base import ATTR_ADJUSTED_COUNT, LogBatch  # noqa: E402
from processors.policy import DEFAULT_POLICY, Policy, load_policy  # noqa: E402
from processors.sampling import SUMMARY_EVENT, Config, SamplingProcessor  # noqa: E402
from processors.signature import SignatureProcessor  # noqa: E402

SYSTEMS = ["Android", "Apache", "BGL", "HDFS", "HPC", "Linux", "OpenSSH", "Proxifier",
           "Spark", "Windows", "Zookeeper"]

# Level column -> (severity_number, severity_text), as an OTel log bridge would map it.
LEVELS = {
    "V": 1, "D": 5, "I": 9, "W": 13, "E": 17, "F": 21,
    "TRACE": 1, "DEBUG": 5, "INFO": 9, "NOTICE": 10, "WARN": 13, "WARNING": 13,
    "ERROR": 17, "SEVERE": 17, "FAILURE": 17, "FATAL": 21, "CRITICAL": 21,
}
NO_LEVEL = {"Linux"}  # its "Level" column holds the host name


def data_dir() -> Path:
    env = os.environ.get("LIPSERVICE_LOGHUB_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "loghub_2k"


@dataclass
class Line:
    body: str
    severity: int
    level: str
    component: str
    truth: str  # ground-truth template (corrected files)


def load_system(root: Path, name: str) -> list[Line]:
    path = root / name / f"{name}_2k.log_structured_corrected.csv"
    with path.open(encoding="utf-8", errors="replace", newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        level = "" if name in NO_LEVEL else (r.get("Level") or "").strip()
        out.append(Line(body=r["Content"], severity=LEVELS.get(level.upper(), 0 if not level else 9),
                        level=level, component=(r.get("Component") or "").strip(),
                        truth=r["EventTemplate"]))
    return out


# ----------------------------------------------------------------------------------------
# TEMPORARY (bench only): until the real signature processor (issue 3) is on main, the
# stand-in there returns "" pattern ids. This crude masking (tokens with digits or hex,
# paths, IPs -> <*>; then xxh64 of the masked text) stands in so the sampler can be
# measured per pattern. The run prints which one was used; rerun once signature lands.
_MASK = re.compile(r"\S*\d\S*|0x[0-9a-fA-F]+|/\S+")


def temporary_signature(batch: LogBatch) -> None:
    ids = batch.pattern_ids
    tmpl = batch.templates
    for i, rec in enumerate(batch.records):
        t = _MASK.sub("<*>", rec.body.string_value)
        tmpl[i] = t
        ids[i] = xxhash.xxh64_hexdigest(t.encode())
# ----------------------------------------------------------------------------------------


@dataclass
class Source:
    """One system's lines, replayed in order, repeated."""

    name: str
    lines: list[Line]
    pos: int = 0
    run_left: int = 0
    tid: bytes = b""

    def take(self, n: int, rng: random.Random, trace_share: float) -> list[tuple[Line, bytes]]:
        out = []
        for _ in range(n):
            line = self.lines[self.pos % len(self.lines)]
            self.pos += 1
            if self.run_left <= 0:
                self.run_left = rng.randint(1, 8)
                self.tid = rng.randbytes(16) if rng.random() < trace_share else b""
            self.run_left -= 1
            out.append((line, self.tid))
        return out


def build_request(service: str, items: list[tuple[Line, bytes]], now: float,
                  rng: random.Random) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = service
    sl = rl.scope_logs.add()
    sl.scope.name = service.lower()
    t = int(now * 1e9)
    for line, tid in items:
        r = sl.log_records.add()
        r.time_unix_nano = t
        r.observed_time_unix_nano = t
        if line.level:
            r.severity_number = line.severity  # type: ignore[assignment]
            r.severity_text = line.level
        r.body.string_value = line.body
        if line.component:
            r.attributes.add(key="code.namespace").value.string_value = line.component
        if tid:
            r.trace_id = tid
            r.span_id = rng.randbytes(8)
    return req


@dataclass
class Result:
    name: str
    records_in: int = 0
    records_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    errors_in: int = 0
    errors_kept: int = 0
    anomalous_in: int = 0
    anomalous_kept: int = 0
    sig_seconds: float = 0.0
    samp_seconds: float = 0.0
    signature: str = ""
    reasons: dict[str, int] = field(default_factory=dict)
    anomalies: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    # (service, window, key) -> kept?
    seen_id: dict[tuple[str, float, str], bool] = field(default_factory=dict)
    seen_truth: dict[tuple[str, float, str], bool] = field(default_factory=dict)
    true_count: Counter[tuple[str, str]] = field(default_factory=Counter)
    est_count: defaultdict[tuple[str, str], float] = field(
        default_factory=lambda: defaultdict(float))

    def visibility(self, table: dict[tuple[str, float, str], bool]) -> float:
        return sum(table.values()) / len(table) if table else 1.0

    def estimate_error(self, min_records: int) -> tuple[float, int]:
        big = [k for k, n in self.true_count.items() if n >= min_records]
        if not big:
            return float("nan"), 0
        err = sum(abs(self.est_count[k] - self.true_count[k]) for k in big)
        return err / sum(self.true_count[k] for k in big), len(big)


class Runner:
    def __init__(self, seed: int, policy: Policy, keep_limit: int = 0) -> None:
        self.signature = SignatureProcessor(SignatureProcessor.Config())
        self.sampler = SamplingProcessor(Config(seed=seed, policy=policy))
        self.window = policy.window
        self.use_temporary: bool | None = None
        # Batches (as they entered the sampler) kept for the throughput measurement.
        self.keep_limit = keep_limit
        self.keep_batches: list | None = [] if keep_limit else None
        self.kept_records = 0
        self.batches = 0

    def run_batch(self, res: Result, service: str, items: list[tuple[Line, bytes]],
                  now: float, rng: random.Random) -> None:
        req = build_request(service, items, now, rng)
        res.bytes_in += req.ByteSize()
        res.records_in += len(items)
        batch = LogBatch(req, now)
        index = {id(r): i for i, r in enumerate(batch.records)}
        t0 = time.process_time()
        self.signature.process(batch)
        t1 = time.process_time()
        if self.use_temporary is None:
            self.use_temporary = not any(batch.pattern_ids)
            res.signature = "TEMPORARY bench masking" if self.use_temporary else "signature"
        if self.use_temporary:
            temporary_signature(batch)
            t1 = time.process_time()
        ids_in = list(batch.pattern_ids)
        self.batches += 1
        if self.keep_batches is not None and self.kept_records < self.keep_limit:
            self.kept_records += len(ids_in)
            copy = ExportLogsServiceRequest()
            copy.CopyFrom(req)
            bodies = None if batch.bodies is None else list(batch.bodies)
            self.keep_batches.append((copy, ids_in, list(batch.templates), now, bodies))
        self.sampler.process(batch)
        t2 = time.process_time()
        res.sig_seconds += t1 - t0
        res.samp_seconds += t2 - t1
        res.bytes_out += req.ByteSize()

        window = (now // self.window) * self.window
        st = self.sampler.detector.state(service, now)
        flagged, surge = self.sampler.detector.boosted(st, now)
        for (line, _), pid in zip(items, ids_in, strict=True):
            res.true_count[(service, pid)] += 1
            res.seen_id.setdefault((service, window, pid), False)
            res.seen_truth.setdefault((service, window, line.truth), False)
            if line.severity >= 17:
                res.errors_in += 1
            if surge or pid in flagged:
                res.anomalous_in += 1
        for rec, pid in zip(batch.records, batch.pattern_ids, strict=True):
            if rec.attributes and _attr(rec, "event.name") == SUMMARY_EVENT:
                continue
            line, _ = items[index[id(rec)]]
            res.records_out += 1
            res.seen_id[(service, window, pid)] = True
            res.seen_truth[(service, window, line.truth)] = True
            res.est_count[(service, pid)] += _attr(rec, ATTR_ADJUSTED_COUNT) or 0.0
            if line.severity >= 17:
                res.errors_kept += 1
            if surge or pid in flagged:
                res.anomalous_kept += 1


def _attr(rec, key: str):  # noqa: ANN001, ANN202 - bench helper
    for kv in rec.attributes:
        if kv.key == key:
            v = kv.value
            return v.double_value if v.HasField("double_value") else v.string_value
    return None


def replay(runner: Runner, res: Result, sources: list[Source], total: int,
           args: argparse.Namespace) -> None:
    """Every ``--flush`` virtual seconds each source sends what it logged meanwhile (its
    share of ``--rate``), in batches of at most ``--batch`` records, as an OTel SDK's batch
    log processor does; sources in a seeded random order within each tick."""
    rng = random.Random(args.seed)
    per_tick = args.rate * args.flush / len(sources)
    owed = dict.fromkeys(range(len(sources)), 0.0)
    now = 1_700_000_000.0
    done = 0
    while done < total:
        batches = []
        for k in rng.sample(range(len(sources)), len(sources)):
            owed[k] += per_tick
            n = min(int(owed[k]), total - done - sum(b[1] for b in batches))
            owed[k] -= n
            while n > 0:
                m = min(n, args.batch)
                batches.append((k, m))
                n -= m
        for j, (k, m) in enumerate(batches):
            t = now + args.flush * j / max(len(batches), 1)
            runner.run_batch(res, sources[k].name, sources[k].take(m, rng, args.trace_share),
                             t, rng)
            done += m
        now += args.flush


def replay_system(root: Path, name: str, args: argparse.Namespace) -> Result:
    runner = Runner(args.seed, args.policy)
    src = Source(name, load_system(root, name))
    res = Result(name)
    replay(runner, res, [src], len(src.lines), args)
    return res


def replay_interleaved(root: Path, systems: list[str],
                       args: argparse.Namespace) -> tuple[Result, list]:
    runner = Runner(args.seed, args.policy, keep_limit=args.throughput_records)
    sources = [Source(s, load_system(root, s)) for s in systems]
    res = Result(f"interleaved ({len(systems)} systems)")
    replay(runner, res, sources, args.records, args)
    res.reasons = dict(runner.sampler.kept_by_reason)
    res.reasons["dropped"] = runner.sampler.dropped
    res.anomalies = dict(runner.sampler.detector.detected)
    res.batches = runner.batches
    return res, runner.keep_batches or []


def sampling_throughput(kept: list, seed: int, policy: Policy,
                        repeats: int = 3) -> tuple[float, float]:
    """Best-of-``repeats`` CPU time of SamplingProcessor.process over the recorded batches
    (fresh copies, a fresh processor each time). Returns (records/s, share of that time
    spent inside LogBatch.retain)."""
    spent = [0.0]
    real_retain = LogBatch.retain

    def timed_retain(self: LogBatch, keep: list[bool]) -> None:
        t = time.process_time()
        real_retain(self, keep)
        spent[0] += time.process_time() - t

    best, best_retain = float("inf"), 0.0
    n = 0
    LogBatch.retain = timed_retain  # type: ignore[method-assign]
    try:
        for _ in range(repeats):
            batches = []
            for req, ids, templates, now, bodies in kept:
                copy = ExportLogsServiceRequest()
                copy.CopyFrom(req)
                b = LogBatch(copy, now)
                b.pattern_ids, b.templates = list(ids), list(templates)
                # as in the pipeline: the signature processor hands on the bodies it read
                b.bodies = None if bodies is None else list(bodies)
                batches.append(b)
            n = sum(len(b) for b in batches)
            proc = SamplingProcessor(Config(seed=seed, policy=policy))
            spent[0] = 0.0
            t0 = time.process_time()
            for b in batches:
                proc.process(b)
            took = time.process_time() - t0
            if took < best:
                best, best_retain = took, spent[0]
    finally:
        LogBatch.retain = real_retain  # type: ignore[method-assign]
    return n / best, best_retain / best


def python_loop_ns(n: int = 2_000_000) -> float:
    """CPU ns per iteration of a trivial Python loop: a yardstick for this machine's speed
    at the time of the run (shared machines vary a lot)."""
    t = time.process_time()
    s = 0
    for i in range(n):
        s += i
    return (time.process_time() - t) / n * 1e9


def pct(x: float) -> str:
    return "  n/a " if x != x else f"{100 * x:6.2f}%"


def print_table(results: list[Result], min_records: int) -> None:
    hdr = ("run", "rec in", "rec out", "rec red.", "bytes red.", "ERROR+ kept",
           "anom. kept", "vis. id", "vis. truth", f"est.err(>={min_records})")
    print("| " + " | ".join(hdr) + " |")
    print("|" + "|".join("---" for _ in hdr) + "|")
    for r in results:
        err, nbig = r.estimate_error(min_records)
        anom = r.anomalous_kept / r.anomalous_in if r.anomalous_in else float("nan")
        errk = r.errors_kept / r.errors_in if r.errors_in else float("nan")
        print(f"| {r.name} | {r.records_in:,} | {r.records_out:,} | "
              f"{pct(1 - r.records_out / r.records_in)} | {pct(1 - r.bytes_out / r.bytes_in)} | "
              f"{pct(errk)} ({r.errors_in:,}) | {pct(anom)} ({r.anomalous_in:,}) | "
              f"{pct(r.visibility(r.seen_id))} | {pct(r.visibility(r.seen_truth))} | "
              f"{pct(err)} ({nbig}) |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=512, help="most records per batch")
    ap.add_argument("--flush", type=float, default=1.0,
                    help="virtual seconds between a source's exports (OTel SDK default 1s)")
    ap.add_argument("--rate", type=float, default=1000.0, help="virtual records per second")
    ap.add_argument("--trace-share", type=float, default=0.0,
                    help="share of records given a trace id (Loghub lines have none)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--min-records", type=int, default=1000)
    ap.add_argument("--policy-file", help="YAML/JSON policy document instead of the default")
    ap.add_argument("--skip-systems", action="store_true", help="only the interleaved run")
    ap.add_argument("--throughput-records", type=int, default=200_000,
                    help="records replayed 3 times for the sampling throughput (0 = skip)")
    args = ap.parse_args(argv)
    root = data_dir()
    if not (root / "HDFS").is_dir():
        print(f"Loghub data not found at {root} (set LIPSERVICE_LOGHUB_DIR)", file=sys.stderr)
        return 2
    systems = [s for s in args.systems.split(",") if s]
    if args.policy_file:
        args.policy = load_policy(yaml.safe_load(Path(args.policy_file).read_text()))
    else:
        args.policy = DEFAULT_POLICY
    pol = args.policy
    print(f"{'policy from ' + args.policy_file if args.policy_file else 'default policy'}: keep_first_n={pol.keep_first_n} window={pol.window:g}s "
          f"severity_rates={dict(pol.severity_rates)} global_rate={pol.global_rate} "
          f"anomaly_boost={pol.anomaly_boost}")
    results = [] if args.skip_systems else [replay_system(root, s, args) for s in systems]
    inter, kept_batches = replay_interleaved(root, systems, args)
    results.append(inter)
    print(f"pattern ids from: {inter.signature}; rate={args.rate:g} records/s, each source "
          f"exports every {args.flush:g}s (at most {args.batch} per batch; interleaved: "
          f"{inter.batches:,} batches, {inter.records_in / inter.batches:.0f} records each); "
          f"trace_share={args.trace_share} seed={args.seed}\n")
    print_table(results, args.min_records)
    print()
    r = inter
    print("interleaved, share of input records by decision: " + ", ".join(
        f"{k} {100 * v / r.records_in:.2f}%" for k, v in r.reasons.items()))
    print(f"anomalies detected (interleaved): {r.anomalies}")
    print(f"reference: a bare Python `s += i` loop takes {python_loop_ns():.0f} ns per "
          "iteration on this machine now (scale the rates below by it)\n")
    print(f"throughput, in-process CPU time on one core ({r.name}):")
    print(f"  signature stage, whole run ({r.records_in:,} records): "
          f"{r.records_in / r.sig_seconds:,.0f} records/s ({inter.signature})"
          if r.sig_seconds else "  signature stage: n/a")
    print(f"  sampling stage, whole run ({r.records_in:,} records): "
          f"{r.records_in / r.samp_seconds:,.0f} records/s")
    if kept_batches:
        rate, retain_share = sampling_throughput(kept_batches, args.seed, args.policy)
        n = sum(len(b[1]) for b in kept_batches)
        print(f"  sampling stage, best of 3 on the first {n:,} records: {rate:,.0f} records/s "
              f"({100 * retain_share:.0f}% of it inside LogBatch.retain)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
