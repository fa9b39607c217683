"""Sampling processor: keeps every ERROR+, every pattern in every window, and a weighted
sample of the rest, so that the dropped volume stays estimable.

Per record, in this order (DESIGN.md §Sampling semantics; the policy in processors/policy.py):

1. **exempt** (kept, weight 1): severity >= ERROR (17), or an ``always_keep`` rule matches;
2. **first_n** (kept, weight 1): the first ``keep_first_n`` records of the record's pattern in
   the current ``window`` of its service;
3. **sampled** (kept with probability p, weight 1/p): p is the policy's rate (pattern, then
   family, then severity range, then global), multiplied by ``anomaly_boost`` (capped at 1)
   while the pattern is new or spiking or its service has an error surge (reason
   ``anomaly``); then at most ``max_per_window`` records kept per pattern and window.

Severity: ``severity_number``; when unspecified (0), ``severity_text`` (TRACE, DEBUG, INFO,
NOTICE, WARN/WARNING, ERROR/ERR/SEVERE, CRITICAL/FATAL/ALERT/EMERG, and Android letters
V/D/I/W/E/F, any case); else a ``level``/``severity``/``levelname``/``log.level``/``lvl``
field of a JSON body (string names as above, syslog numbers 0-7, or pino/bunyan numbers
10-60); else INFO. The body is read only for records with neither severity_number nor
severity_text.

Randomness: when the record has a valid trace id (16 bytes, not all zero), its 56 least
significant bits ``R`` decide, as in OpenTelemetry's consistent probability sampling: kept
iff ``R >= (1 - p) * 2**56``. So at one rate a trace's logs are kept or dropped together, and
a trace kept by a head sampler at rate p' <= p keeps its logs. Otherwise a seedable
Mersenne Twister PRNG (``seed``) draws.

Kept records get ``sampling.adjusted_count`` (double, 1/p; 1 for exempt and first_n), so the
sum over kept records of a pattern estimates its true count. A record that already carries
``sampling.adjusted_count`` (sampled upstream) is not re-weighted: the attribute is appended
again; run one sampler per path. ``max_per_window`` trades that estimate away (capped
records are dropped without re-weighting the kept ones); the exact counts stay in the
dropped counters, summaries and :meth:`SamplingProcessor.pattern_stats`.

Pattern key: ``batch.pattern_ids`` from the signature processor. When a record has no
pattern id (the signature processor is not in the pipeline), the key is its severity range
(``severity.INFO`` ...): first_n then keeps the first records of each severity range per
window, so only severity ranges, not patterns, are guaranteed visible.

Policies, windows, first-N counters and statistics are per service (``service.name``); a
service with no policy of its own uses the default (``policy:``). Windows are aligned to
multiples of ``window`` on the batch clock (``LogBatch.now``) and roll on the service's next
batch (idle services are checked once per default window).

Settings (``processors: sampling:``):

=================  ===========  ===============================================================
setting            default      meaning
=================  ===========  ===============================================================
dry_run            false        decide and annotate ``lipservice.sampling.decision`` keep|drop
                                (and ``sampling.adjusted_count`` on would-be-kept), drop nothing
policy             (built-in)   the starting default policy; fields left out take the built-in
                                values (processors/policy.py); ``generated_by`` becomes ``yaml``
policies           {}           service.name -> starting policy for that service (same shape)
emit_summaries     false        per window, one summary record per pattern with drops
anomaly            (see below)  anomaly detection settings (processors/anomaly.py)
max_patterns       10000        patterns with statistics per service (LRU eviction); also
                                the most patterns counted in one window before the window's
                                counters are folded early
max_services       1000         services with state (LRU eviction)
metrics_top_k      20           patterns per service exported as per-pattern metrics
seed               null         PRNG seed (tests, benchmarks); null = from the OS
=================  ===========  ===============================================================

Summary record (``emit_summaries``): severity INFO, ``event.name`` =
``lipservice.sampling.summary``, body ``"<dropped> similar records dropped (<kept> kept) in
<window>s: <template>"``, attributes ``log.pattern.id``, ``log.record.template``,
``lipservice.sampling.kept``, ``lipservice.sampling.dropped`` (ints),
``lipservice.sampling.window_start`` (unix nanoseconds), ``lipservice.sampling.window``
(seconds), and ``lipservice.sampling.severity.<NAME>`` (int per severity range seen). Summary
records carry no adjusted count. They are added to the batch that closes the window.

Metrics (collect_metrics; counters get ``_total``):
``lipservice_sampling_kept_log_records{reason}`` (exempt, first_n, sampled, anomaly),
``lipservice_sampling_dropped_log_records``, ``lipservice_sampling_kept_bytes`` and
``lipservice_sampling_dropped_bytes`` (estimated when each window closes: records x the
pattern's mean serialized size, measured on its first records in the window),
``lipservice_sampling_pattern_log_records{service,pattern_id,decision}`` (top
``metrics_top_k`` patterns per service by volume), ``lipservice_sampling_policy_version{service}``
(``_default`` for the default policy), ``lipservice_sampling_summary_log_records``,
``lipservice_sampling_patterns`` (tracked), plus the anomaly metrics (processors/anomaly.py).

User documentation: docs/sampling.md.
"""

from __future__ import annotations

import heapq
import math
import random
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from itertools import compress, repeat
from typing import Any, NamedTuple

from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import Field, field_validator

from collector.config import StrictModel
from processors.anomaly import AnomalyConfig, AnomalyDetector, ServiceAnomalies
from processors.base import (
    ATTR_ADJUSTED_COUNT,
    ATTR_DECISION,
    ATTR_PATTERN_ID,
    ATTR_TEMPLATE,
    LogBatch,
)
from processors.policy import (
    DEFAULT_POLICY,
    KeepRule,
    Policy,
    load_policy,
    severity_name,
)

DEFAULT_SERVICE_LABEL = "_default"
SUMMARY_EVENT = "lipservice.sampling.summary"
REASONS = ("exempt", "first_n", "sampled", "anomaly")

_TWO56 = float(1 << 56)
_ZERO_TRACE = bytes(16)


class Config(StrictModel):
    """``processors: sampling:`` (see the module docstring for the table)."""

    dry_run: bool = False
    policy: Policy = DEFAULT_POLICY
    policies: dict[str, Policy] = Field(default_factory=dict)
    emit_summaries: bool = False
    anomaly: AnomalyConfig = Field(default_factory=AnomalyConfig)
    max_patterns: int = Field(10_000, ge=1)
    max_services: int = Field(1_000, ge=1)
    metrics_top_k: int = Field(20, ge=0)
    seed: int | None = None

    @field_validator("policy", mode="before")
    @classmethod
    def _yaml_policy(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {"generated_by": "yaml", **value}
        return value

    @field_validator("policies", mode="before")
    @classmethod
    def _yaml_policies(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: {"generated_by": "yaml", **v} if isinstance(v, dict) else v
                    for k, v in value.items()}
        return value


# --------------------------------------------------------------------------- severity

_TEXT_SEVERITY = {
    "TRACE": 1, "FINEST": 1, "VERBOSE": 1, "V": 1, "FINER": 2, "FINE": 5,
    "DEBUG": 5, "D": 5, "CONFIG": 7, "INFO": 9, "INFORMATION": 9, "I": 9, "NOTICE": 10,
    "WARN": 13, "WARNING": 13, "W": 13, "ERROR": 17, "ERR": 17, "E": 17, "SEVERE": 17,
    "FAILURE": 17, "CRITICAL": 21, "CRIT": 21, "FATAL": 21, "F": 21, "ALERT": 22,
    "EMERG": 23, "EMERGENCY": 23, "PANIC": 21,
}
_JSON_LEVEL = re.compile(
    r'"(?:level|severity|levelname|log\.level|lvl|loglevel)"\s*:\s*(?:"([A-Za-z]+)"|(\d+))',
    re.IGNORECASE)
_LEVEL_KEYS = frozenset(("level", "severity", "levelname", "log.level", "lvl", "loglevel"))


_SYSLOG_LEVEL = (23, 22, 21, 17, 13, 10, 9, 5)  # syslog 0 emerg ... 7 debug


def _numeric_level(n: int) -> int:
    """A numeric level to severity_number: syslog 0-7 (0 emerg ... 7 debug), or pino/bunyan
    10-60 (10 trace ... 60 fatal)."""
    if n < 8:
        return _SYSLOG_LEVEL[n]
    if n >= 60:
        return 21
    if n >= 50:
        return 17
    if n >= 40:
        return 13
    if n >= 30:
        return 9
    return 5 if n >= 20 else 1


def record_severity(record: LogRecord) -> int:
    """severity_number of a record (1..24; values above 24 read as 24), resolved as the
    module docstring says; 9 = INFO when nothing says otherwise.

    The body is read only when the record has neither severity_number nor severity_text.
    (The template cannot stand in for the body here: the signature processor mines the
    message *inside* a JSON body, so a JSON body's template need not start with ``{``.)
    """
    return _resolve_severity([record].__getitem__, 0, record.severity_number)


def _resolve_severity(record_at: Callable[[int], LogRecord], i: int, sn: int,
                      s: str | None = None, text: str | None = None) -> int:
    """record_severity of record ``record_at(i)`` (read only when needed), given its
    severity_number already read and, when known, its string body ``s`` ("" for a body
    that is not a string) and its severity_text ``text`` (hot path)."""
    if sn > 0:
        return sn if sn < 25 else 24
    if text is None:
        text = record_at(i).severity_text
    if text:
        return _TEXT_SEVERITY.get(text.strip().upper(), 9)
    if s is None:
        s = record_at(i).body.string_value
    if s:
        head = s[:1]
        if head == "{" or (head.isspace() and s.lstrip()[:1] == "{"):
            m = _JSON_LEVEL.search(s, 0, 4096)
            if m:
                if m.group(1):
                    return _TEXT_SEVERITY.get(m.group(1).upper(), 9)
                return _numeric_level(int(m.group(2)))
        return 9
    body = record_at(i).body
    if body.HasField("kvlist_value"):
        for kv in body.kvlist_value.values:
            if kv.key.lower() in _LEVEL_KEYS:
                v = kv.value
                if v.HasField("int_value"):
                    return _numeric_level(v.int_value)
                return _TEXT_SEVERITY.get(v.string_value.strip().upper(), 9)
    return 9


_FALLBACK_KEYS = ["severity." + severity_name(sn) for sn in range(25)]


def _fallback_key(sn: int) -> str:
    return _FALLBACK_KEYS[sn] if 0 <= sn <= 24 else "severity.FATAL"


# --------------------------------------------------------------------------- policy runtime


def _value_str(v: AnyValue) -> str | None:
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return str(v.int_value)
    if kind == "bool_value":
        return "true" if v.bool_value else "false"
    if kind == "double_value":
        return repr(v.double_value)
    return None


class _Rule:
    __slots__ = ("kind", "key", "equals", "regex")

    def __init__(self, rule: KeepRule) -> None:
        if rule.body_matches is not None:
            self.kind, self.key = "body", ""
        elif rule.record_attribute is not None:
            self.kind, self.key = "record", rule.record_attribute
        else:
            self.kind, self.key = "resource", rule.resource_attribute or ""
        self.equals = rule.equals
        self.regex = rule.pattern()

    def match_value(self, value: str | None) -> bool:
        if value is None:
            return False
        if self.equals is not None:
            return value == self.equals
        return self.regex is not None and self.regex.search(value) is not None

    def match_attrs(self, attrs: Iterable[KeyValue]) -> bool:
        for kv in attrs:
            if kv.key == self.key:
                return self.match_value(_value_str(kv.value))
        return False


class _Compiled:
    """A Policy turned into lookup tables for the hot path."""

    __slots__ = ("policy", "sev_table", "pattern_rates", "family_rates", "first_n", "window",
                 "cap", "boost", "resource_rules", "record_rules", "body_rules")

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.sev_table = policy.severity_table()
        self.pattern_rates = dict(policy.pattern_rates)
        self.family_rates = dict(policy.family_rates)
        self.first_n = policy.keep_first_n
        self.window = policy.window
        self.cap = policy.max_per_window or 0
        self.boost = policy.anomaly_boost
        rules = [_Rule(r) for r in policy.always_keep]
        self.resource_rules = [r for r in rules if r.kind == "resource"]
        self.record_rules = [r for r in rules if r.kind == "record"]
        self.body_rules = [r for r in rules if r.kind == "body"]

    def rate(self, pattern_id: str, family: str, severity_number: int) -> float:
        """The policy's p before any boost (pattern, family, severity, global)."""
        rate = self.pattern_rates.get(pattern_id)
        if rate is None and family:
            rate = self.family_rates.get(family)
        return self.sev_table[min(max(severity_number, 0), 24)] if rate is None else rate

    @property
    def has_rules(self) -> bool:
        return bool(self.resource_rules or self.record_rules or self.body_rules)


# --------------------------------------------------------------------------- state


class _PatternStats:
    """Cumulative statistics of one pattern of one service (closed windows)."""

    __slots__ = ("count", "kept", "bytes_kept", "bytes_dropped", "severity", "first_seen",
                 "last_seen", "template", "family")

    def __init__(self, now: float) -> None:
        self.count = 0
        self.kept = 0
        self.bytes_kept = 0.0
        self.bytes_dropped = 0.0
        self.severity: dict[str, int] = {}
        self.first_seen = now
        self.last_seen = now
        self.template = ""
        self.family = ""


class _Service:
    """Per-service window counters, statistics and anomaly state."""

    __slots__ = ("name", "window_len", "window_start", "window_end", "seen", "win_kept",
                 "odd_sev", "size_sum", "size_cnt", "cap_kept", "patterns", "anomaly")

    def __init__(self, name: str, anomaly: ServiceAnomalies) -> None:
        self.name = name
        self.window_len = 0.0
        self.window_start = 0.0
        self.window_end = -math.inf
        self.seen: dict[str, int] = {}  # packed, see below
        self.win_kept: dict[str, int] = {}
        # seen[pattern] packs (records this window << 5) | severity_number of its first
        # record; odd_sev counts the records whose severity differs from that first one.
        self.odd_sev: dict[tuple[str, int], int] = {}
        self.size_sum: dict[str, int] = {}  # bytes of the first records of each pattern
        self.size_cnt: dict[str, int] = {}  # how many records size_sum holds
        self.cap_kept: dict[str, int] = {}
        self.patterns: OrderedDict[str, _PatternStats] = OrderedDict()
        self.anomaly = anomaly


_Summary = tuple[ResourceLogs, list[str], list[str]]  # records, their pattern ids, templates


class _Decided(NamedTuple):
    mask: list[bool]  # keep flag per record
    kept_w: list[float]  # adjusted count per kept record, in order


class SamplingProcessor:
    """Per-pattern policy sampling (module docstring). One instance per pipeline.

    Thread use: :meth:`process` runs on one thread at a time (the pipeline's);
    :meth:`set_policy` may be called from any thread and takes effect from the next batch;
    readers (:meth:`pattern_stats`, :meth:`collect_metrics`, :meth:`snapshot`) copy what
    they read.
    """

    Config = Config

    def __init__(self, config: Config | None = None, rng: random.Random | None = None) -> None:
        self.config = config or Config()
        self._rng = rng or random.Random(self.config.seed)
        self._detector = AnomalyDetector(self.config.anomaly)
        self._swap_lock = threading.Lock()
        default = _Compiled(self.config.policy)
        per_service = {svc: _Compiled(p) for svc, p in self.config.policies.items()}
        # One tuple, replaced whole: a batch reads it once, so it never mixes two policies.
        self._table: tuple[_Compiled, dict[str, _Compiled]] = (default, per_service)
        self._services: OrderedDict[str, _Service] = OrderedDict()
        self._attr_cache: dict[float, bytes] = {}
        self._thresholds: dict[float, bytes] = {}
        drop = LogRecord()
        drop.attributes.add(key=ATTR_DECISION).value.string_value = "drop"
        self._drop_bytes = drop.SerializeToString()
        self._next_idle_check = -math.inf
        self._now = 0.0
        # Totals for metrics.
        self.kept_by_reason: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.dropped = 0
        self.bytes_kept = 0.0
        self.bytes_dropped = 0.0
        self.summaries = 0

    # ------------------------------------------------------------------ policies

    def set_policy(self, policy: Policy | dict[str, Any], service: str | None = None) -> Policy:
        """Swap in a policy for ``service`` (None = the default policy). Atomic: batches
        already running finish under the old policy, the next batch uses the new one.

        policy: a Policy, or a document for :func:`processors.policy.load_policy` (raises
        PolicyError, the current policy stays). Returns the policy now in force.
        """
        if not isinstance(policy, Policy):
            policy = load_policy(policy)
        compiled = _Compiled(policy)
        with self._swap_lock:
            default, per_service = self._table
            if service is None:
                self._table = (compiled, per_service)
            else:
                self._table = (default, {**per_service, service: compiled})
        return policy

    def remove_policy(self, service: str) -> bool:
        """Make ``service`` use the default policy again. True if it had its own."""
        with self._swap_lock:
            default, per_service = self._table
            if service not in per_service:
                return False
            rest = dict(per_service)
            del rest[service]
            self._table = (default, rest)
        return True

    def policy(self, service: str | None = None) -> Policy:
        """The policy in force for ``service`` (its own, else the default)."""
        default, per_service = self._table
        if service is None:
            return default.policy
        return per_service.get(service, default).policy

    def policies(self) -> dict[str, Policy]:
        """Services with a policy of their own -> policy."""
        return {svc: c.policy for svc, c in self._table[1].items()}

    @property
    def detector(self) -> AnomalyDetector:
        return self._detector

    # ------------------------------------------------------------------ batch

    def process(self, batch: LogBatch) -> None:
        """Decide every record of ``batch``, then remove dropped ones (``batch.retain``),
        then annotate the kept records (``batch.add_attributes``), then append any window
        summaries. On an internal error the batch is unchanged (all decisions come before
        the first mutation)."""
        now = batch.now
        self._now = now
        default, per_service = self._table  # one read: one policy set per batch
        n = len(batch)
        summaries: list[_Summary] = []
        if now >= self._next_idle_check:
            self._close_idle_windows(now, default, per_service, summaries)
        if n == 0:
            self._append_summaries(batch, summaries)
            return
        keys = batch.pattern_ids
        if "" in keys:
            keys = [k or _fallback_key(record_severity(r))
                    for k, r in zip(keys, batch.records, strict=True)]
        services = batch.services
        first = services[0]
        if services.count(first) == n:
            comp = per_service.get(first, default)
            d = self._decide(batch, first, comp, None, keys, summaries)
            mask, kept_w = d.mask, d.kept_w
        else:
            groups: dict[str, list[int]] = {}
            for i, svc in enumerate(services):
                groups.setdefault(svc, []).append(i)
            mask = [False] * n
            weights = [0.0] * n
            for svc, idx in groups.items():
                comp = per_service.get(svc, default)
                d = self._decide(batch, svc, comp, idx, [keys[i] for i in idx], summaries)
                for i, keep in zip(idx, d.mask, strict=True):
                    mask[i] = keep
                for i, w in zip(compress(idx, d.mask), d.kept_w, strict=True):
                    weights[i] = w
            kept_w = list(compress(weights, mask))
        # ---- mutate last (fail-open rule)
        if self.config.dry_run:
            self._annotate(batch, mask, kept_w)
        else:
            batch.retain(mask)
            self._annotate(batch, None, kept_w)
        self._append_summaries(batch, summaries)

    def _service(self, name: str, now: float) -> _Service:
        st = self._services.get(name)
        if st is None:
            st = self._services[name] = _Service(name, self._detector.state(name, now))
            if len(self._services) > self.config.max_services:
                old_name, old = self._services.popitem(last=False)
                self._close_window(old, None)  # fold its counts; no summaries
                self._detector.forget(old_name)
        else:
            self._services.move_to_end(name)
            st.anomaly = self._detector.state(name, now)
        return st

    def _decide(self, batch: LogBatch, name: str, comp: _Compiled, idx: list[int] | None,
                keys: list[str], summaries: list[_Summary]) -> _Decided:
        """Decide one service's records of a batch (``idx``: their positions, None = all);
        updates the counters, touches no record."""
        now = batch.now
        st = self._service(name, now)
        if now >= st.window_end or comp.window != st.window_len:
            self._roll_window(st, comp.window, now, summaries)
        records: list[LogRecord] = []  # wrapped only when needed: rules, or no columns
        if comp.has_rules or batch.severity_numbers is None or batch.trace_ids is None:
            records = batch.records if idx is None else [batch.records[i] for i in idx]
        forced = self._rule_exempt(batch, comp, idx, records) if comp.has_rules else None

        detector = self._detector
        anomaly = st.anomaly
        if detector.due(anomaly, now):
            detector.close_bucket(anomaly, now, _counts(st.seen))
        boosted, surge = detector.boosted(anomaly, now)
        boosting = surge or bool(boosted)
        first_in_window = detector.first_in_window
        seen = st.seen
        seen_get = seen.get
        size_sum = st.size_sum
        size_get = size_sum.get
        size_cnt = st.size_cnt
        first_n = comp.first_n
        slow_n = first_n if first_n > 0 else 1
        rates = self._key_rates(batch, comp, idx, keys)
        rates_get = rates.get
        sev_table = comp.sev_table
        boost = comp.boost
        cap = comp.cap
        cap_kept = st.cap_kept
        cap_get = cap_kept.get
        rnd = self._rng.random
        thresholds = self._thresholds
        threshold_get = thresholds.get
        new_keys: list[str] = []
        n_exempt = n_first = n_sampled = n_anomaly = n_err = 0
        mask: list[bool] = []
        keep_append = mask.append
        kept_w: list[float] = []
        w_append = kept_w.append
        odd = st.odd_sev
        odd_get = odd.get
        # The records' fields as columns: from the batch when it read them from the bytes
        # (LogBatch: the C reader, ~5x cheaper than upb), else one upb read per record.
        texts = _column(batch.bodies, idx)
        sns = _column(batch.severity_numbers, idx)
        if sns is None:
            sns = [rec.severity_number for rec in records]
        tids = _column(batch.trace_ids, idx)
        if tids is None:
            tids = [rec.trace_id for rec in records]
        stexts = _column(batch.severity_texts, idx)
        record_at = batch.record  # a record is wrapped only when one is read
        rows = zip(range(len(keys)) if idx is None else idx, keys,
                   repeat(False) if forced is None else forced,
                   repeat(None) if texts is None else texts, sns,
                   repeat("-") if stexts is None else stexts, tids,
                   strict=False)  # the repeat()s are endless

        for i, key, force, text, sn, stext, tid in rows:
            if not 0 < sn < 25:
                if sn == 0 and stext == "" and text and text[0] != "{" and \
                        not text[0].isspace():
                    sn = 9  # plain text body, no severity: INFO (_resolve_severity)
                else:
                    sn = _resolve_severity(record_at, i, sn, text,
                                           None if stexts is None else stext)
            v = seen_get(key, sn) + 32  # count << 5 | severity of the window's first record
            seen[key] = v
            c = v >> 5
            if sn != v & 31:
                odd[(key, sn)] = odd_get((key, sn), 0) + 1
            if c <= slow_n or sn >= 17 or force:  # 17 = ERROR (policy.ERROR_SEVERITY)
                if c <= slow_n:  # a few records per pattern and window: size sample
                    size_sum[key] = size_get(key, 0) + record_at(i).ByteSize()
                    size_cnt[key] = c
                    if c == 1:
                        new_keys.append(key)
                        first_in_window(anomaly, key, now)
                if sn >= 17 or force:
                    if sn >= 17:
                        n_err += 1
                    n_exempt += 1
                    keep_append(True)
                    w_append(1.0)
                    continue
                if c <= first_n:
                    if cap:
                        cap_kept[key] = cap_get(key, 0) + 1
                    n_first += 1
                    keep_append(True)
                    w_append(1.0)
                    continue
            if rates:
                p = rates_get(key)
                if p is None:
                    p = sev_table[sn]
            else:
                p = sev_table[sn]
            anom = boosting and (surge or key in boosted)
            if anom:
                p = min(1.0, p * boost)
            if tid and len(tid) == 16 and tid != _ZERO_TRACE:
                # OTel consistent probability sampling: R = the 56 low bits of the trace id,
                # kept iff R >= (1 - p) * 2**56; compared as 7 big-endian bytes.
                t = threshold_get(p)
                if t is None:
                    t = self._threshold(p)
                keep = tid[9:] >= t
            else:
                keep = rnd() < p
            if keep and cap:
                kc = cap_get(key, 0)
                if kc >= cap:
                    keep = False
                else:
                    cap_kept[key] = kc + 1
            if keep:
                if anom:
                    n_anomaly += 1
                else:
                    n_sampled += 1
                keep_append(True)
                w_append(1.0 / p)
            else:
                keep_append(False)

        # ---- per-batch aggregates: C-speed passes, Python only over kept records
        win_kept = st.win_kept
        wk_get = win_kept.get
        n_kept = 0
        for k in compress(keys, mask):
            win_kept[k] = wk_get(k, 0) + 1
            n_kept += 1
        if n_err:
            detector.add_errors(anomaly, n_err)
        if new_keys:
            self._remember_patterns(st, batch, idx, keys, new_keys, now)
            if len(seen) > self.config.max_patterns:
                # Too many patterns in one window (a flood of unique messages): fold the
                # counters now. First-N then starts over, which keeps more, never fewer.
                self._close_window(st, summaries)
        kr = self.kept_by_reason
        kr["exempt"] += n_exempt
        kr["first_n"] += n_first
        kr["sampled"] += n_sampled
        kr["anomaly"] += n_anomaly
        self.dropped += len(mask) - n_kept
        return _Decided(mask, kept_w)

    def _key_rates(self, batch: LogBatch, comp: _Compiled, idx: list[int] | None,
                   keys: list[str]) -> dict[str, float]:
        """Pattern id -> explicit rate (pattern_rates, else family_rates) for this batch."""
        if not comp.family_rates:
            return comp.pattern_rates
        fams = batch.families if idx is None else [batch.families[i] for i in idx]
        frates = comp.family_rates
        out = {k: frates[f] for k, f in zip(keys, fams, strict=True) if f in frates}
        out.update(comp.pattern_rates)
        return out

    def _rule_exempt(self, batch: LogBatch, comp: _Compiled, idx: list[int] | None,
                     records: list[LogRecord]) -> list[bool]:
        """Per record: does an ``always_keep`` rule match? Resource rules are evaluated once
        per resource."""
        n = len(records)
        out = [False] * n
        if comp.resource_rules:
            flags: list[bool] = []
            for rl in batch.request.resource_logs:
                hit = any(r.match_attrs(rl.resource.attributes) for r in comp.resource_rules)
                for sl in rl.scope_logs:
                    flags.extend([hit] * len(sl.log_records))
            if idx is not None:
                flags = [flags[i] for i in idx]
            out = flags[:n] + [False] * (n - len(flags))
        record_rules, body_rules = comp.record_rules, comp.body_rules
        if record_rules or body_rules:
            for i, rec in enumerate(records):
                if out[i]:
                    continue
                if record_rules and any(r.match_attrs(rec.attributes) for r in record_rules):
                    out[i] = True
                elif body_rules:
                    body = rec.body.string_value
                    out[i] = any(r.match_value(body) for r in body_rules)
        return out

    def _remember_patterns(self, st: _Service, batch: LogBatch, idx: list[int] | None,
                           keys: list[str], new_keys: list[str], now: float) -> None:
        """Template and family of patterns first seen in this window."""
        templates = batch.templates if idx is None else [batch.templates[i] for i in idx]
        families = batch.families if idx is None else [batch.families[i] for i in idx]
        tmpl = dict(zip(keys, templates, strict=True))
        fam = dict(zip(keys, families, strict=True)) if any(families) else {}
        patterns = st.patterns
        for key in new_keys:
            ps = patterns.get(key)
            if ps is None:
                ps = patterns[key] = _PatternStats(now)
                if len(patterns) > self.config.max_patterns:
                    patterns.popitem(last=False)
            else:
                patterns.move_to_end(key)
            ps.last_seen = now
            if tmpl.get(key):
                ps.template = tmpl[key]
            if fam.get(key):
                ps.family = fam[key]

    def _annotate(self, batch: LogBatch, mask: list[bool] | None,
                  kept_w: list[float]) -> None:
        """Add ``sampling.adjusted_count`` (``kept_w``: one weight per kept record, in order)
        to the kept records; ``mask`` None: every record of ``batch`` is a kept one (after
        ``retain``), else also the drop decision to the others (dry_run). Pre-serialized
        attributes, one per distinct weight (``LogBatch.add_attributes``)."""
        cache = self._attr_cache
        data = list(map(cache.get, kept_w))
        if None in data:
            data = [d if d is not None else self._attr_bytes(w)
                    for d, w in zip(data, kept_w, strict=True)]
        if mask is not None:
            drop = self._drop_bytes
            kept = iter(data)
            data = [next(kept) if keep else drop for keep in mask]
        batch.add_attributes(data)  # type: ignore[arg-type]

    def _threshold(self, p: float) -> bytes:
        """The rejection threshold ceil((1 - p) * 2**56) as 7 big-endian bytes; when that is
        2**56 (p = 0, or too small to matter) a value no 7-byte R reaches (8 bytes, compared
        lexicographically)."""
        if len(self._thresholds) >= 4096:
            self._thresholds.clear()
        v = math.ceil((1.0 - p) * _TWO56)
        t = v.to_bytes(7, "big") if v < 1 << 56 else b"\xff" * 8
        self._thresholds[p] = t
        return t

    def _attr_bytes(self, w: float) -> bytes:
        if len(self._attr_cache) >= 4096:
            self._attr_cache.clear()
        rec = LogRecord()
        rec.attributes.add(key=ATTR_ADJUSTED_COUNT).value.double_value = w
        if self.config.dry_run:
            rec.attributes.add(key=ATTR_DECISION).value.string_value = "keep"
        data = self._attr_cache[w] = rec.SerializeToString()
        return data

    # ------------------------------------------------------------------ windows

    def _roll_window(self, st: _Service, window: float, now: float,
                     summaries: list[_Summary] | None) -> None:
        """Close the service's current window (if any) and open the one holding ``now``,
        aligned to a multiple of ``window`` seconds."""
        if st.window_end != -math.inf:
            self._close_window(st, summaries)
        st.window_len = window
        st.window_start = math.floor(now / window) * window
        st.window_end = st.window_start + window

    def _close_idle_windows(self, now: float, default: _Compiled,
                            per_service: dict[str, _Compiled],
                            summaries: list[_Summary]) -> None:
        """Close the elapsed windows of services that sent nothing since (their summaries
        ride in this batch)."""
        for st in list(self._services.values()):
            if now >= st.window_end and st.seen:
                self._roll_window(st, per_service.get(st.name, default).window, now,
                                  summaries)
        self._next_idle_check = now + default.window

    def _close_window(self, st: _Service, summaries: list[_Summary] | None) -> None:
        """Fold the window's counters into the pattern statistics, estimate bytes, build
        summary records, and reset the counters (they expire with the window)."""
        mixes = _severity_mixes(st.seen, st.odd_sev)
        patterns = st.patterns
        out: list[tuple[str, _PatternStats, int, int, dict[str, int]]] = []
        emit = summaries is not None and self.config.emit_summaries
        for key, packed in st.seen.items():
            total = packed >> 5
            kept = st.win_kept.get(key, 0)
            dropped = total - kept
            ps = patterns.get(key)
            if ps is None:  # evicted mid-window
                ps = patterns[key] = _PatternStats(st.window_start)
                if len(patterns) > self.config.max_patterns:
                    patterns.popitem(last=False)
            ps.count += total
            ps.kept += kept
            cnt = st.size_cnt.get(key, 0)
            mean = st.size_sum.get(key, 0) / cnt if cnt else 0.0
            ps.bytes_kept += kept * mean
            ps.bytes_dropped += dropped * mean
            self.bytes_kept += kept * mean
            self.bytes_dropped += dropped * mean
            mix = mixes.get(key, {})
            for name, c in mix.items():
                ps.severity[name] = ps.severity.get(name, 0) + c
            if dropped and emit:
                out.append((key, ps, kept, dropped, mix))
        if out and summaries is not None:
            summaries.append(self._summary_records(st, out))
        self._detector.window_closed(st.anomaly, _counts(st.seen))
        st.seen = {}
        st.win_kept = {}
        st.odd_sev = {}
        st.size_sum = {}
        st.size_cnt = {}
        st.cap_kept = {}

    def _summary_records(self, st: _Service,
                         rows: list[tuple[str, _PatternStats, int, int, dict[str, int]]]
                         ) -> _Summary:
        rl = ResourceLogs()
        rl.resource.attributes.add(key="service.name").value.string_value = st.name
        sl = rl.scope_logs.add()
        sl.scope.name = "lipservice.sampling"
        start_ns = int(st.window_start * 1e9)
        end_ns = int(st.window_end * 1e9)
        observed_ns = int(self._now * 1e9)
        window = st.window_len
        pids: list[str] = []
        templates: list[str] = []
        for key, ps, kept, dropped, mix in rows:
            rec = sl.log_records.add()
            rec.time_unix_nano = end_ns
            rec.observed_time_unix_nano = observed_ns
            rec.severity_number = 9
            rec.severity_text = "INFO"
            what = ps.template or key
            rec.body.string_value = (f"{dropped} similar records dropped ({kept} kept) in "
                                     f"{window:g}s: {what}")
            attrs = rec.attributes
            attrs.add(key="event.name").value.string_value = SUMMARY_EVENT
            real_id = not key.startswith("severity.")
            if real_id:
                attrs.add(key=ATTR_PATTERN_ID).value.string_value = key
            if ps.template:
                attrs.add(key=ATTR_TEMPLATE).value.string_value = ps.template
            attrs.add(key="lipservice.sampling.kept").value.int_value = kept
            attrs.add(key="lipservice.sampling.dropped").value.int_value = dropped
            attrs.add(key="lipservice.sampling.window_start").value.int_value = start_ns
            attrs.add(key="lipservice.sampling.window").value.double_value = window
            for name, c in sorted(mix.items()):
                attrs.add(key=f"lipservice.sampling.severity.{name}").value.int_value = c
            pids.append(key if real_id else "")
            templates.append(ps.template)
        return rl, pids, templates

    def _append_summaries(self, batch: LogBatch, summaries: list[_Summary]) -> None:
        for rl, pids, templates in summaries:
            batch.append_resource_logs(rl, pids, templates)
            self.summaries += len(pids)

    # ------------------------------------------------------------------ reading

    def pattern_stats(self, service: str | None = None,
                      top_k: int | None = None) -> list[dict[str, Any]]:
        """Per-pattern statistics as plain data for the control loop and status page,
        highest ``count`` first (closed windows plus the current one)::

            {"service": str, "pattern_id": str, "template": str, "family": str,
             "count": int, "kept": int, "dropped": int,
             "bytes_kept": int, "bytes_dropped": int (estimated: count x mean size of the
             first records of the pattern in each window),
             "severity": {"INFO": int, ...} (records per severity range),
             "first_seen": float, "last_seen": float (s since epoch, batch clock),
             "rate": float (policy p before boost), "anomaly": ["new"|"spike", ...],
             "window": {"start": float, "count": int, "kept": int}}

        service: only this service; top_k: at most this many per service.
        """
        default, per_service = self._table
        now = self._now
        out: list[dict[str, Any]] = []
        for name, st in list(self._services.items()):
            if service is not None and name != service:
                continue
            comp = per_service.get(name, default)
            seen = _counts(st.seen)
            win_kept = dict(st.win_kept)
            size_sum, size_cnt = dict(st.size_sum), dict(st.size_cnt)
            win_mix = _severity_mixes(st.seen, st.odd_sev)
            patterns = dict(st.patterns)
            totals = {k: ps.count for k, ps in patterns.items()}
            for k, c in seen.items():
                totals[k] = totals.get(k, 0) + c
            if top_k is None:
                chosen = sorted(totals, key=totals.__getitem__, reverse=True)
            else:
                chosen = heapq.nlargest(top_k, totals, key=totals.__getitem__)
            rows = []
            for key in chosen:
                ps = patterns.get(key)
                wc, wk = seen.get(key, 0), win_kept.get(key, 0)
                cnt = size_cnt.get(key, 0)
                mean = size_sum.get(key, 0) / cnt if cnt else 0.0
                count = totals[key]
                kept = (ps.kept if ps else 0) + wk
                sev = dict(ps.severity) if ps else {}
                for nm, c in win_mix.get(key, {}).items():
                    sev[nm] = sev.get(nm, 0) + c
                family = ps.family if ps else ""
                top_sev = max(sev, key=sev.__getitem__) if sev else "INFO"
                rows.append({
                    "service": name, "pattern_id": key,
                    "template": ps.template if ps else "", "family": family,
                    "count": count, "kept": kept, "dropped": count - kept,
                    "bytes_kept": round((ps.bytes_kept if ps else 0.0) + wk * mean),
                    "bytes_dropped": round((ps.bytes_dropped if ps else 0.0) + (wc - wk) * mean),
                    "severity": sev,
                    "first_seen": ps.first_seen if ps else st.window_start,
                    "last_seen": ps.last_seen if ps else now,
                    "rate": comp.rate(key, family, _SEVERITY_NUMBER[top_sev]),
                    "anomaly": self._detector.pattern_flags(name, key, now),
                    "window": {"start": st.window_start, "count": wc, "kept": wk},
                })
            out.extend(rows)
        return out

    def anomaly_flags(self) -> list[dict[str, Any]]:
        """Active anomaly flags as plain data (see AnomalyDetector.flags)."""
        return self._detector.flags(self._now)

    def collect_metrics(self) -> Iterable[Any]:
        """Prometheus metric families, built at scrape time (module docstring lists them)."""
        kept = CounterMetricFamily("lipservice_sampling_kept_log_records",
                                   "Log records kept by the sampling processor, by reason.",
                                   labels=["reason"])
        for reason, n in list(self.kept_by_reason.items()):
            kept.add_metric([reason], n)
        dropped = CounterMetricFamily("lipservice_sampling_dropped_log_records",
                                      "Log records dropped by the sampling processor.",
                                      value=self.dropped)
        kb = CounterMetricFamily("lipservice_sampling_kept_bytes",
                                 "Estimated serialized size of kept log records (before "
                                 "annotation), added when each window closes.",
                                 value=self.bytes_kept)
        db = CounterMetricFamily("lipservice_sampling_dropped_bytes",
                                 "Estimated serialized size of dropped log records, added "
                                 "when each window closes.",
                                 value=self.bytes_dropped)
        summ = CounterMetricFamily("lipservice_sampling_summary_log_records",
                                   "Summary records emitted (emit_summaries).",
                                   value=self.summaries)
        per_pattern = CounterMetricFamily(
            "lipservice_sampling_pattern_log_records",
            f"Log records per pattern and decision, top {self.config.metrics_top_k} "
            "patterns per service by volume.", labels=["service", "pattern_id", "decision"])
        if self.config.metrics_top_k:
            for row in self.pattern_stats(top_k=self.config.metrics_top_k):
                per_pattern.add_metric([row["service"], row["pattern_id"], "kept"], row["kept"])
                per_pattern.add_metric([row["service"], row["pattern_id"], "dropped"],
                                       row["dropped"])
        version = GaugeMetricFamily("lipservice_sampling_policy_version",
                                    "Version of the sampling policy in force, per service "
                                    f"({DEFAULT_SERVICE_LABEL} = the default policy).",
                                    labels=["service"])
        default, per_service = self._table
        version.add_metric([DEFAULT_SERVICE_LABEL], default.policy.version)
        for svc, comp in per_service.items():
            version.add_metric([svc], comp.policy.version)
        tracked = GaugeMetricFamily("lipservice_sampling_patterns",
                                    "Patterns with statistics held, all services.",
                                    value=sum(len(st.patterns) for st in
                                              list(self._services.values())))
        return [kept, dropped, kb, db, summ, per_pattern, version, tracked,
                *self._detector.collect_metrics(self._now)]

    # ------------------------------------------------------------------ state

    def snapshot(self) -> dict[str, Any]:
        """Statistics and anomaly baselines as plain JSON-serialisable data. Policies are
        not included: the policy store owns them (DESIGN.md §Control loop)."""
        services = {}
        for name, st in list(self._services.items()):
            services[name] = {key: {
                "count": ps.count, "kept": ps.kept, "bytes_kept": ps.bytes_kept,
                "bytes_dropped": ps.bytes_dropped, "severity": dict(ps.severity),
                "first_seen": ps.first_seen, "last_seen": ps.last_seen,
                "template": ps.template, "family": ps.family,
            } for key, ps in list(st.patterns.items())}
        return {"version": 1, "services": services, "anomaly": self._detector.snapshot()}

    def restore(self, state: dict[str, Any]) -> None:
        """Load :meth:`snapshot` data. Raises ValueError on a malformed document (nothing
        is changed then)."""
        if not isinstance(state, dict) or state.get("version") != 1:
            raise ValueError("sampling snapshot: expected a version 1 document")
        try:
            restored: OrderedDict[str, OrderedDict[str, _PatternStats]] = OrderedDict()
            for name, pats in state["services"].items():
                od: OrderedDict[str, _PatternStats] = OrderedDict()
                for key, d in pats.items():
                    ps = _PatternStats(float(d["first_seen"]))
                    ps.count, ps.kept = int(d["count"]), int(d["kept"])
                    ps.bytes_kept = float(d["bytes_kept"])
                    ps.bytes_dropped = float(d["bytes_dropped"])
                    ps.severity = {str(k): int(v) for k, v in d["severity"].items()}
                    ps.last_seen = float(d["last_seen"])
                    ps.template, ps.family = str(d["template"]), str(d["family"])
                    od[str(key)] = ps
                restored[str(name)] = od
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"sampling snapshot: malformed ({err!r})") from None
        self._detector.restore(state.get("anomaly", {"services": {}}))
        self._services = OrderedDict()
        for name, od in restored.items():
            st = _Service(name, self._detector.state(name, self._now))
            st.patterns = od
            self._services[name] = st


def _column(values: list[Any] | None, idx: list[int] | None) -> list[Any] | None:
    """A LogBatch column (None stays None) for the records at ``idx`` (None: all)."""
    if values is None or idx is None:
        return values
    return [values[i] for i in idx]


def _counts(seen: dict[str, int]) -> dict[str, int]:
    """Records per pattern from the packed window counters."""
    return {k: v >> 5 for k, v in list(seen.items())}


def _severity_mixes(seen: dict[str, int],
                    odd: dict[tuple[str, int], int]) -> dict[str, dict[str, int]]:
    """Exact severity mix per pattern for one window: pattern -> {range name: records}."""
    mixes: dict[str, dict[str, int]] = {}
    for key, packed in list(seen.items()):
        mixes[key] = {severity_name(packed & 31): packed >> 5}
    for (key, sn), c in list(odd.items()):
        mix = mixes.setdefault(key, {})
        first = next(iter(mix), None)
        if first is not None:
            mix[first] -= c
        name = severity_name(sn)
        mix[name] = mix.get(name, 0) + c
    return {k: {nm: c for nm, c in m.items() if c} for k, m in mixes.items()}


_SEVERITY_NUMBER = {"TRACE": 1, "DEBUG": 5, "INFO": 9, "WARN": 13, "ERROR": 17, "FATAL": 21}

