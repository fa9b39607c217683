"""The sampling processor: the three promises (ERROR+ kept, every pattern visible per window,
estimable counts), trace-consistent decisions, per-service policies, hot swap, dry run,
summaries, metrics, bounded state."""

from __future__ import annotations

import math
import random
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from prometheus_client import CollectorRegistry, generate_latest

from collector.config import ConfigError, load_config_tree
from processors.base import ATTR_ADJUSTED_COUNT, ATTR_DECISION, ATTR_PATTERN_ID, LogBatch
from processors.policy import Policy
from processors.sampling import (
    SUMMARY_EVENT,
    AnomalyConfig,
    Config,
    SamplingProcessor,
    record_severity,
)

T0 = 1_700_000_040.0  # 40 s into a minute
NO_ANOMALY = AnomalyConfig(enabled=False)


@dataclass
class Rec:
    pid: str = "p1"
    sev: int = 9
    body: str = "hello"
    text: str = ""
    tid: bytes = b""
    service: str = "svc"
    attrs: dict[str, str] = field(default_factory=dict)
    resource: dict[str, str] = field(default_factory=dict)


def make_batch(rows: list[Rec], now: float = T0) -> LogBatch:
    """One request; consecutive rows of one service share a ResourceLogs."""
    req = ExportLogsServiceRequest()
    last = None
    sl = None
    for r in rows:
        key = (r.service, tuple(sorted(r.resource.items())))
        if key != last:
            rl = req.resource_logs.add()
            rl.resource.attributes.add(key="service.name").value.string_value = r.service
            for k, v in r.resource.items():
                rl.resource.attributes.add(key=k).value.string_value = v
            sl = rl.scope_logs.add()
            last = key
        assert sl is not None
        rec = sl.log_records.add()
        rec.severity_number = r.sev  # type: ignore[assignment]
        rec.severity_text = r.text
        rec.body.string_value = r.body
        if r.tid:
            rec.trace_id = r.tid
        for k, v in r.attrs.items():
            rec.attributes.add(key=k).value.string_value = v
    batch = LogBatch(req, now)
    batch.pattern_ids = [r.pid for r in rows]
    return batch


def attr(rec, key):
    for kv in rec.attributes:
        if kv.key == key:
            v = kv.value
            return v.double_value if v.HasField("double_value") else v.string_value
    return None


def weights(batch: LogBatch) -> list[float]:
    return [attr(r, ATTR_ADJUSTED_COUNT) for r in batch.records]


def sampler(policy: Policy | None = None, **kw) -> SamplingProcessor:
    kw.setdefault("anomaly", NO_ANOMALY)
    kw.setdefault("seed", 1)
    cfg = Config(policy=policy or Policy(), **kw)
    return SamplingProcessor(cfg)


# ------------------------------------------------------------------ strategies

rates = st.floats(0.0, 1.0)
policies = st.builds(
    Policy,
    global_rate=rates,
    severity_rates=st.dictionaries(st.sampled_from(["TRACE", "DEBUG", "INFO", "WARN",
                                                    "ERROR", "FATAL"]), rates),
    pattern_rates=st.dictionaries(st.sampled_from(["p0", "p1", "p2"]), rates),
    keep_first_n=st.integers(0, 4),
    max_per_window=st.none() | st.integers(1, 3),
    anomaly_boost=st.floats(1.0, 50.0),
    window=st.sampled_from([1.0, 5.0, 60.0]),
    always_keep=st.just(()),
)


@st.composite
def records(draw, max_size=60):
    n = draw(st.integers(1, max_size))
    out = []
    for _ in range(n):
        form = draw(st.integers(0, 9))
        sev = draw(st.integers(0, 24))
        r = Rec(pid=f"p{draw(st.integers(0, 4))}", sev=sev,
                service=draw(st.sampled_from(["a", "b"])))
        if form == 0:  # no number: text says it
            r.sev, r.text = 0, draw(st.sampled_from(["ERROR", "warn", "Info", "FATAL", "E"]))
        elif form == 1:  # no number, no text: JSON body says it
            r.sev = 0
            level = draw(st.sampled_from(["error", "info", "critical", "debug"]))
            r.body = '{"msg": "x", "level": "' + level + '"}'
        if draw(st.booleans()):
            r.tid = draw(st.binary(min_size=16, max_size=16))
        out.append(r)
    return out


def true_severity(r: Rec) -> int:
    batch = make_batch([r])
    return record_severity(batch.records[0])


def with_templates(batch: LogBatch, rows: list[Rec]) -> LogBatch:
    """Templates as a masker makes them: the body's first token kept as a literal."""
    batch.templates = [r.body.split(" ")[0] + " <*>" for r in rows]
    return batch


# ------------------------------------------------------------------ the promises


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, batches=st.lists(records(), min_size=1, max_size=4),
       anomaly=st.booleans())
def test_no_error_or_fatal_record_is_ever_dropped(policy, batches, anomaly):
    proc = sampler(policy, anomaly=AnomalyConfig(enabled=anomaly, warmup=0))
    now = T0
    for rows in batches:
        errors_in = Counter(r.body + r.pid for r in rows if true_severity(r) >= 17)
        batch = with_templates(make_batch(rows, now), rows)
        proc.process(batch)
        errors_out = Counter(r.body.string_value + pid for r, pid in
                             zip(batch.records, batch.pattern_ids, strict=True)
                             if record_severity(r) >= 17)
        assert errors_out == errors_in
        now += 0.7


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, batches=st.lists(records(), min_size=1, max_size=6),
       step=st.floats(0.1, 3.0))
def test_each_pattern_keeps_at_least_first_n_per_window(policy, batches, step):
    proc = sampler(policy)
    seen: Counter[tuple[str, str, int]] = Counter()
    kept: Counter[tuple[str, str, int]] = Counter()
    now = T0
    for rows in batches:
        w = math.floor(now / policy.window)
        batch = make_batch(rows, now)
        seen.update((r.service, r.pid, w) for r in rows)
        proc.process(batch)
        kept.update((svc, pid, w) for svc, pid in zip(batch.services, batch.pattern_ids,
                                                      strict=True))
        now += step
    for key, n in seen.items():
        assert kept[key] >= min(n, policy.keep_first_n), key


@settings(max_examples=100, deadline=None)
@given(rate=st.floats(0.01, 0.99), tids=st.lists(st.binary(min_size=16, max_size=16),
                                                  min_size=1, max_size=20),
       seeds=st.tuples(st.integers(0, 99), st.integers(100, 199)))
def test_same_trace_id_and_rate_give_the_same_decision(rate, tids, seeds):
    policy = Policy(keep_first_n=0, global_rate=rate, severity_rates={})
    decisions: list[dict[bytes, bool]] = []
    for seed in seeds:  # two processors, different PRNG seeds
        proc = sampler(policy, seed=seed)
        rows = [Rec(pid=f"p{i % 3}", tid=t, body=f"b{i}") for i, t in enumerate(tids * 3)]
        batch = make_batch(rows)
        proc.process(batch)
        kept_bodies = {r.body.string_value for r in batch.records}
        got: dict[bytes, bool] = {}
        for row in rows:
            keep = row.body in kept_bodies
            if row.tid != bytes(16):
                assert got.setdefault(row.tid, keep) == keep  # one fate per trace
            got.setdefault(row.tid, keep)
        decisions.append(got)
    nonzero = [t for t in tids if t != bytes(16)]
    assert {t: decisions[0][t] for t in nonzero} == {t: decisions[1][t] for t in nonzero}


def test_trace_decision_is_otel_consistent_threshold():
    # R = low 56 bits; kept iff R >= (1 - p) * 2**56. At p = 0.25 the threshold is 0xC0...
    policy = Policy(keep_first_n=0, global_rate=0.25, severity_rates={})
    hi = bytes(9) + bytes([0xC0]) + bytes(6)      # R = 0xC0 << 48: exactly the threshold
    lo = bytes(9) + bytes([0xBF]) + b"\xff" * 6   # just below
    batch = make_batch([Rec(tid=hi, body="hi"), Rec(tid=lo, body="lo")])
    sampler(policy).process(batch)
    assert [r.body.string_value for r in batch.records] == ["hi"]
    assert weights(batch) == [4.0]


class SwapInTheMiddle(random.Random):
    """A PRNG that swaps the policy on its k-th draw, i.e. in the middle of a batch."""

    def __init__(self, k: int, new: Policy) -> None:
        super().__init__(3)
        self.k, self.new, self.calls = k, new, 0
        self.proc: SamplingProcessor | None = None

    def random(self) -> float:
        self.calls += 1
        if self.calls == self.k and self.proc is not None:
            self.proc.set_policy(self.new)
        return super().random()


@settings(max_examples=60, deadline=None)
@given(k=st.integers(1, 40), r1=st.sampled_from([0.5, 0.25, 0.2]),
       r2=st.sampled_from([0.1, 0.125, 0.05]), n=st.integers(20, 60))
def test_policy_swap_mid_stream_never_mixes_policies_in_a_batch(k, r1, r2, n):
    old = Policy(keep_first_n=0, global_rate=r1, severity_rates={}, version=1)
    new = Policy(keep_first_n=0, global_rate=r2, severity_rates={}, version=2)
    rng = SwapInTheMiddle(k, new)
    proc = SamplingProcessor(Config(policy=old, anomaly=NO_ANOMALY), rng=rng)
    rng.proc = proc
    per_batch = []
    for b in range(3):
        batch = make_batch([Rec(pid=f"p{i % 4}", body=str(i)) for i in range(n)], T0 + b)
        proc.process(batch)
        per_batch.append(set(weights(batch)))
    assert per_batch[0] <= {1 / r1}  # the swap happened during batch 0 or 1
    assert all(len(ws) <= 1 for ws in per_batch)
    assert per_batch[2] <= {1 / r2}
    assert proc.policy().version == 2


def test_policy_swap_from_another_thread():
    a = Policy(keep_first_n=0, global_rate=0.5, severity_rates={})
    b = Policy(keep_first_n=0, global_rate=0.25, severity_rates={})
    proc = sampler(a)
    stop = threading.Event()

    def swapper() -> None:
        i = 0
        while not stop.is_set() and i < 20_000:
            proc.set_policy(b if i % 2 else a)
            i += 1

    th = threading.Thread(target=swapper)
    th.start()
    try:
        for j in range(200):
            batch = make_batch([Rec(pid=f"p{i % 5}", body=str(i)) for i in range(200)], T0 + j)
            proc.process(batch)
            assert len(set(weights(batch))) <= 1
    finally:
        stop.set()
        th.join(timeout=10)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, rows=records())
def test_dry_run_drops_nothing_and_annotates_the_real_decision(policy, rows):
    dry = sampler(policy, dry_run=True, seed=5)
    real = sampler(policy, seed=5)
    b1, b2 = make_batch(rows), make_batch(rows)
    dry.process(b1)
    real.process(b2)
    assert len(b1) == len(rows)
    decisions = [attr(r, ATTR_DECISION) for r in b1.records]
    assert set(decisions) <= {"keep", "drop"} and None not in decisions
    kept_dry = [(r.body.string_value, attr(r, ATTR_ADJUSTED_COUNT)) for r, d in
                zip(b1.records, decisions, strict=True) if d == "keep"]
    kept_real = [(r.body.string_value, attr(r, ATTR_ADJUSTED_COUNT)) for r in b2.records]
    assert kept_dry == kept_real
    assert all(attr(r, ATTR_ADJUSTED_COUNT) is None
               for r, d in zip(b1.records, decisions, strict=True) if d == "drop")


# ------------------------------------------------------------------ estimates


@pytest.mark.parametrize("with_traces", [False, True])
def test_adjusted_counts_give_unbiased_estimates(with_traces):
    """Fixed seed. Per pattern, sum(adjusted counts of kept) vs the truth, within 4
    standard errors; and over 300 repeated small runs, the mean estimate is within 4
    standard errors of the mean (no bias)."""
    rng = random.Random(42)
    pats = {"p1": 0.01, "p2": 0.05, "p3": 0.2, "p4": 0.5}
    policy = Policy(keep_first_n=3, pattern_rates=pats, window=10)
    proc = sampler(policy, seed=42)
    truth: Counter[str] = Counter()
    est: defaultdict[str, float] = defaultdict(float)
    now = T0
    for _ in range(200):
        rows = [Rec(pid=rng.choice(list(pats)), body="x",
                    tid=rng.randbytes(16) if with_traces else b"") for _ in range(500)]
        truth.update(r.pid for r in rows)
        batch = make_batch(rows, now)
        proc.process(batch)
        for r, pid in zip(batch.records, batch.pattern_ids, strict=True):
            est[pid] += attr(r, ATTR_ADJUSTED_COUNT)
        now += 0.5
    for pid, p in pats.items():
        se = math.sqrt(truth[pid] * (1 - p) / p)
        assert abs(est[pid] - truth[pid]) <= 4 * se, (pid, est[pid], truth[pid])

    # Bias: 300 independent runs of 200 records at p = 0.1, first-N included.
    policy = Policy(keep_first_n=2, global_rate=0.1, severity_rates={})
    runs = []
    for seed in range(300):
        proc = sampler(policy, seed=seed)
        rows = [Rec(pid="p", body="x", tid=rng.randbytes(16) if with_traces else b"")
                for _ in range(200)]
        batch = make_batch(rows)
        proc.process(batch)
        runs.append(sum(weights(batch)))
    mean = sum(runs) / len(runs)
    se_mean = math.sqrt(198 * 0.9 / 0.1) / math.sqrt(len(runs))
    assert abs(mean - 200) <= 4 * se_mean, mean


# ------------------------------------------------------------------ semantics


def test_decision_order_and_adjusted_counts():
    policy = Policy(keep_first_n=2, global_rate=0.0, severity_rates={},
                    pattern_rates={"always": 1.0})
    proc = sampler(policy)
    rows = ([Rec(pid="p", body=f"p{i}") for i in range(5)]
            + [Rec(pid="p", sev=17, body="err"), Rec(pid="p", sev=21, body="fatal")]
            + [Rec(pid="always", body=f"a{i}") for i in range(4)])
    batch = make_batch(rows)
    proc.process(batch)
    got = [(r.body.string_value, attr(r, ATTR_ADJUSTED_COUNT)) for r in batch.records]
    assert got == [("p0", 1.0), ("p1", 1.0), ("err", 1.0), ("fatal", 1.0),
                   ("a0", 1.0), ("a1", 1.0), ("a2", 1.0), ("a3", 1.0)]
    assert proc.kept_by_reason == {"exempt": 2, "first_n": 4, "sampled": 2, "anomaly": 0}
    assert proc.dropped == 3
    # The pattern id attribute is the signature processor's job: not added here.
    assert all(attr(r, ATTR_PATTERN_ID) is None for r in batch.records)


def test_rate_lookup_pattern_then_family_then_severity_then_global():
    policy = Policy(keep_first_n=0, global_rate=0.5, severity_rates={"DEBUG": 0.25},
                    family_rates={"fam": 0.2}, pattern_rates={"pp": 0.1})
    proc = sampler(policy)
    rows = [Rec(pid="pp"), Rec(pid="fp"), Rec(pid="dp", sev=5), Rec(pid="ip", sev=9)] * 400
    batch = make_batch(rows)
    batch.families = ["fam" if r.pid in ("pp", "fp") else "" for r in rows]
    proc.process(batch)
    by_pid = {pid: attr(r, ATTR_ADJUSTED_COUNT) for r, pid in
              zip(batch.records, batch.pattern_ids, strict=True)}
    assert by_pid == {"pp": 10.0, "fp": 5.0, "dp": 4.0, "ip": 2.0}


def test_severity_from_text_then_json_body_then_info():
    cases = [
        (Rec(sev=0, text="WARNING"), 13), (Rec(sev=0, text="err"), 17),
        (Rec(sev=0, text="critical"), 21), (Rec(sev=0, text="E"), 17),
        (Rec(sev=0, body='{"level":"error","msg":"x"}'), 17),
        (Rec(sev=0, body='  {"severity": "FATAL"}'), 21),
        (Rec(sev=0, body='{"level":50,"msg":"pino"}'), 17),
        (Rec(sev=0, body='{"level":30}'), 9),
        (Rec(sev=0, body='{"severity":3,"msg":"syslog err"}'), 17),
        (Rec(sev=0, body='{"severity":6}'), 9),
        (Rec(sev=0, body="level=error but not json"), 9),
        (Rec(sev=0, text="gibberish"), 9), (Rec(sev=0), 9), (Rec(sev=5, text="ERROR"), 5),
    ]
    for rec, want in cases:
        assert true_severity(rec) == want, rec
    json_err = make_batch([Rec(sev=0, body='{"level":"error","id":7}')]).records[0]
    assert record_severity(json_err) == 17
    plain = make_batch([Rec(sev=0, body="disk full on /dev/sda1")]).records[0]
    assert record_severity(plain) == 9
    # A kvlist body with a level key.
    batch = make_batch([Rec(sev=0)])
    r = batch.records[0]
    r.body.Clear()
    kv = r.body.kvlist_value.values.add(key="level")
    kv.value.string_value = "error"
    assert record_severity(r) == 17


def test_always_keep_rules():
    policy = Policy(keep_first_n=0, global_rate=0.0, severity_rates={}, always_keep=[
        {"record_attribute": "http.status_code", "equals": "500"},
        {"resource_attribute": "deployment.environment", "matches": "^canary"},
        {"body_matches": "(?i)panic"},
    ])
    rows = [
        Rec(body="a", attrs={"http.status_code": "500"}),
        Rec(body="b", attrs={"http.status_code": "200"}),
        Rec(body="c", resource={"deployment.environment": "canary-eu"}),
        Rec(body="d", resource={"deployment.environment": "prod"}),
        Rec(body="kernel PANIC now"),
        Rec(body="fine"),
    ]
    batch = make_batch(rows)
    sampler(policy).process(batch)
    assert [r.body.string_value for r in batch.records] == ["a", "c", "kernel PANIC now"]
    assert weights(batch) == [1.0, 1.0, 1.0]


def test_max_per_window_caps_sampled_records_but_not_errors_or_first_n():
    policy = Policy(keep_first_n=2, global_rate=1.0, severity_rates={}, max_per_window=5,
                    window=60)
    proc = sampler(policy)
    batch = make_batch([Rec(pid="p", body=str(i)) for i in range(50)]
                       + [Rec(pid="p", sev=17, body="e")] * 3)
    proc.process(batch)
    assert Counter(record_severity(r) >= 17 for r in batch.records) == {False: 5, True: 3}
    # Next window: the cap starts over.
    batch = make_batch([Rec(pid="p", body=str(i)) for i in range(50)], T0 + 60)
    proc.process(batch)
    assert len(batch) == 5


def test_anomaly_boost_raises_the_rate_of_a_new_pattern():
    policy = Policy(keep_first_n=0, global_rate=0.01, severity_rates={}, anomaly_boost=10)
    proc = sampler(policy, anomaly=AnomalyConfig(warmup=0, new_pattern_window=300))
    proc.process(make_batch([Rec(pid="new")]))  # first sight: flags it
    batch = make_batch([Rec(pid="new", body=str(i)) for i in range(2000)], T0 + 1)
    proc.process(batch)
    assert set(weights(batch)) == {10.0}  # p = 0.01 * 10
    assert proc.kept_by_reason["anomaly"] == len(batch)
    assert any(f["kind"] == "new" for f in proc.anomaly_flags())


def test_boost_is_capped_at_one():
    policy = Policy(keep_first_n=0, global_rate=0.5, severity_rates={}, anomaly_boost=10)
    proc = sampler(policy, anomaly=AnomalyConfig(warmup=0))
    proc.process(make_batch([Rec(pid="x")]))
    batch = make_batch([Rec(pid="x", body=str(i)) for i in range(50)], T0 + 1)
    proc.process(batch)
    assert len(batch) == 50 and set(weights(batch)) == {1.0}


def test_policies_windows_and_counters_are_per_service():
    strict_default = Policy(keep_first_n=1, global_rate=0.0, severity_rates={})
    proc = sampler(strict_default, policies={"vip": Policy(global_rate=1.0, severity_rates={})})
    rows = ([Rec(service="vip", pid="p", body=f"v{i}") for i in range(5)]
            + [Rec(service="other", pid="p", body=f"o{i}") for i in range(5)]
            + [Rec(service="third", pid="p", body=f"t{i}") for i in range(5)])
    batch = make_batch(rows)
    proc.process(batch)
    assert Counter(batch.services) == {"vip": 5, "other": 1, "third": 1}
    assert proc.policy("vip").global_rate == 1.0
    assert proc.policy("other") is proc.policy()
    assert proc.remove_policy("vip") and not proc.remove_policy("vip")
    assert proc.policy("vip") is proc.policy()


def test_without_pattern_ids_the_key_falls_back_to_severity():
    policy = Policy(keep_first_n=1, global_rate=0.0, severity_rates={})
    batch = make_batch([Rec(pid="", sev=9, body="i1"), Rec(pid="", sev=10, body="i2"),
                        Rec(pid="", sev=5, body="d1"), Rec(pid="", sev=13, body="w1")])
    proc = sampler(policy)
    proc.process(batch)
    assert [r.body.string_value for r in batch.records] == ["i1", "d1", "w1"]
    assert {row["pattern_id"] for row in proc.pattern_stats()} == {
        "severity.INFO", "severity.DEBUG", "severity.WARN"}


def test_summaries_report_drops_per_pattern_per_window():
    policy = Policy(keep_first_n=1, global_rate=0.0, severity_rates={}, window=60)
    proc = sampler(policy, emit_summaries=True)
    batch = make_batch([Rec(pid="p", body=str(i), sev=9 if i % 4 else 13)
                        for i in range(40)])
    batch.templates = ["user <*> logged in"] * 40
    proc.process(batch)
    assert len(batch) == 1
    nxt = make_batch([Rec(pid="q", body="next window")], T0 + 60)
    proc.process(nxt)
    summaries = [r for r in nxt.records if attr(r, "event.name") == SUMMARY_EVENT]
    assert len(summaries) == 1
    s = summaries[0]
    assert attr(s, ATTR_PATTERN_ID) == "p"
    ints = {kv.key: kv.value.int_value for kv in s.attributes if kv.value.HasField("int_value")}
    assert ints["lipservice.sampling.kept"] == 1
    assert ints["lipservice.sampling.dropped"] == 39
    assert ints["lipservice.sampling.severity.INFO"] + ints.get(
        "lipservice.sampling.severity.WARN", 0) >= 1
    assert s.body.string_value.startswith("39 similar records dropped (1 kept)")
    assert "user <*> logged in" in s.body.string_value
    assert attr(s, ATTR_ADJUSTED_COUNT) is None
    # The summary sits in the batch's side lists too, so a later processor can retain().
    assert len(nxt.records) == len(nxt.pattern_ids) == len(nxt.services) == 2
    nxt.retain([True, False])
    assert len(nxt) == 1


def test_idle_service_window_is_closed_by_another_services_batch():
    policy = Policy(keep_first_n=1, global_rate=0.0, severity_rates={}, window=60)
    proc = sampler(policy, emit_summaries=True)
    proc.process(make_batch([Rec(service="quiet", pid="p", body=str(i)) for i in range(5)]))
    later = make_batch([Rec(service="busy", pid="b")], T0 + 120)
    proc.process(later)
    summ = [(svc, attr(r, ATTR_PATTERN_ID)) for r, svc in
            zip(later.records, later.services, strict=True)
            if attr(r, "event.name") == SUMMARY_EVENT]
    assert summ == [("quiet", "p")]


def test_pattern_stats_metrics_and_policy_version():
    policy = Policy(keep_first_n=1, global_rate=0.5, severity_rates={}, version=4)
    proc = sampler(policy, metrics_top_k=1)
    batch = make_batch([Rec(pid="big", body=str(i)) for i in range(100)]
                       + [Rec(pid="small", sev=17)])
    batch.templates = ["big <*>"] * 100 + ["small"]
    proc.process(batch)
    proc.process(make_batch([Rec(pid="big")], T0 + 60))  # closes the window
    stats = {r["pattern_id"]: r for r in proc.pattern_stats()}
    big = stats["big"]
    assert big["count"] == 101 and big["kept"] + big["dropped"] == 101
    assert big["template"] == "big <*>" and big["severity"] == {"INFO": 101}
    assert big["bytes_kept"] > 0 and big["bytes_dropped"] > 0
    assert stats["small"]["severity"] == {"ERROR": 1}
    assert big["rate"] == 0.5 and big["first_seen"] == T0
    reg = CollectorRegistry()

    class C:
        def collect(self):
            return proc.collect_metrics()

    reg.register(C())
    text = generate_latest(reg).decode()
    assert 'lipservice_sampling_kept_log_records_total{reason="exempt"} 1.0' in text
    assert f"lipservice_sampling_dropped_log_records_total {float(proc.dropped)}" in text
    assert 'lipservice_sampling_policy_version{service="_default"} 4.0' in text
    assert 'pattern_id="big",service="svc"' in text.replace("decision=\"kept\",", "")
    assert 'pattern_id="small"' not in text  # only the top-K (1) patterns
    assert "lipservice_sampling_dropped_bytes_total" in text


def test_pattern_state_is_bounded():
    proc = sampler(Policy(keep_first_n=1, window=1), max_patterns=10, max_services=3)
    now = T0
    for i in range(50):
        proc.process(make_batch([Rec(service=f"s{i % 5}", pid=f"p{i}")], now))
        now += 1.0
    assert len(proc._services) == 3
    assert all(len(st.patterns) <= 10 for st in proc._services.values())
    assert all(len(st.seen) <= 1 for st in proc._services.values())  # expires per window


def test_snapshot_restore_round_trip():
    proc = sampler(Policy(keep_first_n=1), anomaly=AnomalyConfig(warmup=0))
    proc.process(make_batch([Rec(pid="p", body=str(i)) for i in range(20)]))
    proc.process(make_batch([Rec(pid="p")], T0 + 60))
    snap = proc.snapshot()
    again = sampler(Policy(keep_first_n=1), anomaly=AnomalyConfig(warmup=0))
    again.restore(snap)
    assert [(r["pattern_id"], r["count"]) for r in again.pattern_stats()] == [("p", 20)]
    with pytest.raises(ValueError):
        again.restore({"version": 1, "services": {"s": {"p": {"count": "x"}}}})
    with pytest.raises(ValueError):
        again.restore({"version": 99})


def test_yaml_policy_block_is_the_starting_policy_and_errors_name_the_path():
    tree = yaml.safe_load("""
receivers: {otlp: {protocols: {http: {}}}}
processors:
  sampling:
    emit_summaries: true
    policy:
      keep_first_n: 5
      window: 30s
      severity_rates: {DEBUG: 0.01, WARNING: 0.5}
      always_keep: [{body_matches: "(?i)panic"}]
    policies:
      checkout: {global_rate: 1.0}
exporters: {debug: {}}
service: {pipelines: {logs: {receivers: [otlp], processors: [sampling], exporters: [debug]}}}
""")
    cfg = load_config_tree(tree)
    proc = SamplingProcessor(cfg.processors["sampling"])
    pol = proc.policy()
    assert (pol.keep_first_n, pol.window, pol.generated_by) == (5, 30.0, "yaml")
    assert pol.severity_rates == {"DEBUG": 0.01, "WARN": 0.5}
    assert proc.policy("checkout").global_rate == 1.0
    tree["processors"]["sampling"]["policy"]["global_rate"] = 2
    with pytest.raises(ConfigError, match=r"processors\.sampling\.policy\.global_rate"):
        load_config_tree(tree)


def test_set_policy_rejects_a_bad_document_and_keeps_the_current_one():
    proc = sampler(Policy(version=1))
    with pytest.raises(ValueError):
        proc.set_policy({"global_rate": "lots"})
    assert proc.policy().version == 1
    proc.set_policy({"global_rate": 0.3, "version": 2, "generated_by": "operator"})
    assert proc.policy().version == 2


class Boom(random.Random):
    def __init__(self, after: int) -> None:
        super().__init__(1)
        self.left = after

    def random(self) -> float:
        self.left -= 1
        if self.left < 0:
            raise RuntimeError("boom")
        return super().random()


def test_an_error_while_deciding_leaves_the_batch_untouched_and_the_pipeline_fails_open():
    from collector.pipeline import Pipeline

    policy = Policy(keep_first_n=1, global_rate=0.5, severity_rates={})
    proc = SamplingProcessor(Config(policy=policy, anomaly=NO_ANOMALY), rng=Boom(after=5))
    batch = make_batch([Rec(pid="p", body=str(i)) for i in range(30)])
    with pytest.raises(RuntimeError):
        proc.process(batch)
    assert len(batch) == 30
    assert all(len(r.attributes) == 0 for r in batch.records)

    proc = SamplingProcessor(Config(policy=policy, anomaly=NO_ANOMALY), rng=Boom(after=5))
    request = make_batch([Rec(pid="p", body=str(i)) for i in range(30)]).request
    out = Pipeline([("sampling", proc)], []).process(request)
    assert len(out) == 30  # passed on unsampled, nothing lost
    assert all(attr(r, ATTR_ADJUSTED_COUNT) is None for r in out.records)


def test_a_flood_of_unique_patterns_keeps_window_state_bounded_and_keeps_more_not_less():
    proc = sampler(Policy(keep_first_n=1, global_rate=0.0, severity_rates={}),
                   max_patterns=50)
    batch = make_batch([Rec(pid=f"u{i}", body=str(i)) for i in range(500)])
    proc.process(batch)
    assert len(batch) == 500  # every pattern's first record kept
    st_ = proc._services["svc"]
    assert len(st_.seen) <= 50 and len(st_.patterns) <= 50


def test_json_body_errors_are_kept_behind_the_real_signature_processor():
    """Regression: the signature processor mines the message *inside* a JSON body, so the
    template does not start with '{'; severity must still come from the body's level."""
    from processors.policy import Policy
    from processors.signature import Config as SigConfig
    from processors.signature import SignatureProcessor

    bodies = [
        '{"level":"error","msg":"db down 42"}',
        '  {"severity": "FATAL", "message": "disk gone"}',
        '{"level":50,"msg":"pino error"}',
    ]
    sig = SignatureProcessor(SigConfig())
    samp = SamplingProcessor(Config(anomaly=NO_ANOMALY), rng=random.Random(3))
    samp.set_policy(Policy(global_rate=0.0, keep_first_n=0))
    rows = [Rec(sev=0, body=b, pid="") for b in bodies for _ in range(50)]
    batch = make_batch(rows)
    sig.process(batch)
    assert all(t and t[0] != "{" for t in batch.templates)  # the trap this test is about
    samp.process(batch)
    assert len(batch) == len(rows)
