"""Volume reduction of signature + sampling under the default policy, on the Loghub-2k lines.

Usage::

    python bench/reduction.py [--records 1000000] [--batch 512] [--rate 1000]
                              [--trace-share 0.5] [--seed 1] [--systems HDFS,BGL,...]

Replays each shared Loghub system alone (its 2,000 lines once), then one interleaved stream:
the systems' lines repeated and interleaved to ``--records`` records, in batches of
``--batch`` records from one system at a time (as an OTel SDK's batch processor sends them;
systems in a seeded random order), paced by a virtual clock at ``--rate`` records/s through
``LogBatch.now``. Each system is one service (``service.name``); records carry the time,
severity (number and text, from the Level column when the system has one; none otherwise),
the body (the ``Content`` column), ``code.namespace`` (the Component column when present),
and, for ``--trace-share`` of the records, a random trace id shared by runs of 1-8
consecutive records of a system.

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
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (  # noqa: E402
    ExportLogsServiceRequest,
)

from processors.base import ATTR_ADJUSTED_COUNT, LogBatch  # noqa: E402
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
    def __init__(self, seed: int, window: float) -> None:
        self.signature = SignatureProcessor(SignatureProcessor.Config())
        self.sampler = SamplingProcessor(Config(seed=seed))
        self.window = window
        self.use_temporary: bool | None = None

    def run_batch(self, res: Result, service: str, items: list[tuple[Line, bytes]],
                  now: float, rng: random.Random) -> None:
        req = build_request(service, items, now, rng)
        res.bytes_in += req.ByteSize()
        res.records_in += len(items)
        batch = LogBatch(req, now)
        index = {id(r): i for i, r in enumerate(batch.records)}
        t0 = time.perf_counter()
        self.signature.process(batch)
        t1 = time.perf_counter()
        if self.use_temporary is None:
            self.use_temporary = not any(batch.pattern_ids)
            res.signature = "TEMPORARY bench masking" if self.use_temporary else "signature"
        if self.use_temporary:
            temporary_signature(batch)
            t1 = time.perf_counter()
        ids_in = list(batch.pattern_ids)
        self.sampler.process(batch)
        t2 = time.perf_counter()
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


def replay_system(root: Path, name: str, args: argparse.Namespace) -> Result:
    runner = Runner(args.seed, 60.0)
    rng = random.Random(args.seed)
    src = Source(name, load_system(root, name))
    res = Result(name)
    now = 1_700_000_000.0
    left = len(src.lines)
    while left > 0:
        n = min(args.batch, left)
        runner.run_batch(res, name, src.take(n, rng, args.trace_share), now, rng)
        now += n / args.rate
        left -= n
    return res


def replay_interleaved(root: Path, systems: list[str], args: argparse.Namespace) -> Result:
    runner = Runner(args.seed, runner_window())
    rng = random.Random(args.seed)
    sources = [Source(s, load_system(root, s)) for s in systems]
    res = Result(f"interleaved ({len(systems)} systems)")
    now = 1_700_000_000.0
    done = 0
    while done < args.records:
        src = rng.choice(sources)
        n = min(args.batch, args.records - done)
        runner.run_batch(res, src.name, src.take(n, rng, args.trace_share), now, rng)
        now += n / args.rate
        done += n
    return res


def runner_window() -> float:
    return SamplingProcessor(Config()).policy().window


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
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--rate", type=float, default=1000.0, help="virtual records per second")
    ap.add_argument("--trace-share", type=float, default=0.5)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--systems", default=",".join(SYSTEMS))
    ap.add_argument("--min-records", type=int, default=1000)
    ap.add_argument("--skip-systems", action="store_true", help="only the interleaved run")
    args = ap.parse_args(argv)
    root = data_dir()
    if not (root / "HDFS").is_dir():
        print(f"Loghub data not found at {root} (set LIPSERVICE_LOGHUB_DIR)", file=sys.stderr)
        return 2
    systems = [s for s in args.systems.split(",") if s]
    pol = SamplingProcessor(Config()).policy()
    print(f"default policy: keep_first_n={pol.keep_first_n} window={pol.window:g}s "
          f"severity_rates={dict(pol.severity_rates)} global_rate={pol.global_rate} "
          f"anomaly_boost={pol.anomaly_boost}")
    results = [] if args.skip_systems else [replay_system(root, s, args) for s in systems]
    inter = replay_interleaved(root, systems, args)
    results.append(inter)
    print(f"pattern ids from: {inter.signature}; batch={args.batch} rate={args.rate:g}/s "
          f"trace_share={args.trace_share} seed={args.seed}\n")
    print_table(results, args.min_records)
    print()
    for r in results[-1:]:
        print(f"throughput ({r.name}, {r.records_in:,} records, in-process, one core):")
        print(f"  signature stage: {r.records_in / r.sig_seconds:12,.0f} records/s"
              if r.sig_seconds else "  signature stage: n/a")
        print(f"  sampling stage:  {r.records_in / r.samp_seconds:12,.0f} records/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
