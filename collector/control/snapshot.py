"""The control loop's view of one service: its patterns and families by volume, plus totals.

Built from the sampling processor's ``pattern_stats(service)`` (cumulative counters) and
``anomaly_flags()``. Rates (records/s, bytes/s, kept share) are measured over the time since
the previous snapshot of the same service (:class:`RateTracker`); on a first snapshot they
are the long-run average since the pattern was first seen.

What may leave the process (:meth:`Snapshot.prompt_data`, sent to an LLM): pattern and
family ids, templates (the signature processor's masked text, scrubbed once more by
:func:`scrub_template`), numbers, anomaly kinds. Never a record body, attribute value,
service name, header or secret.

Projection (:func:`kept_fraction`): the share of a pattern's records a policy keeps, per
DESIGN.md §Sampling semantics: ERROR+ records all, the first ``keep_first_n`` per window,
then rate ``p`` (raised by ``anomaly_boost`` while flagged), at most ``max_per_window``.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from collector.logs import redact
from processors.policy import Policy

SEVERITY_NUMBER = {"TRACE": 1, "DEBUG": 5, "INFO": 9, "WARN": 13, "ERROR": 17, "FATAL": 21}
DAY = 86_400.0

# A token that still looks like a value after masking: anything with a digit, e-mail
# addresses, long opaque runs typical of ids and keys.
_VALUE_TOKEN = re.compile(
    r"""(?x)
    [\w.+-]+@[\w-]+\.[\w.-]+                       # e-mail addresses
  | (?<![\w<])[\w./+-]*\d[\w./+-]*                 # any token containing a digit
  | (?<![\w<])[A-Za-z0-9_+/=-]{24,}                # long opaque tokens (keys, base64)
    """)
_ASSIGNMENT = re.compile(r"(?i)\b(\w*(?:key|token|secret|password|passwd|auth\w*)\s*[=:]\s*)\S+")


def scrub_template(template: str, max_chars: int = 200) -> str:
    """A template made safe for a prompt: registered secrets redacted, values after
    ``token=``-like keys and tokens that still look like values replaced with ``<*>``,
    cut to ``max_chars``. The signature processor already masks variables; this is the
    second line of defence."""
    text = redact(template)
    text = _ASSIGNMENT.sub(r"\1<*>", text)
    text = _VALUE_TOKEN.sub("<*>", text)
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


@dataclass
class PatternView:
    """One pattern of one service. Rates per second; severity: share per range (sums to 1);
    kept_share: kept / records over the measured span; first_seen: s since the epoch."""

    id: str
    template: str
    family: str
    records_per_s: float
    bytes_per_s: float
    severity: dict[str, float]
    rate: float
    kept_share: float
    kept: int
    dropped: int
    anomaly: list[str]
    first_seen: float

    @property
    def error_share(self) -> float:
        return self.severity.get("ERROR", 0.0) + self.severity.get("FATAL", 0.0)

    @property
    def only_errors(self) -> bool:
        """Every record seen was ERROR or FATAL (a rate on it could only sample errors)."""
        return bool(self.severity) and self.error_share >= 0.999999


@dataclass
class FamilyView:
    id: str
    patterns: int
    records_per_s: float
    bytes_per_s: float
    template: str  # of its largest pattern
    anomaly: bool


@dataclass
class Snapshot:
    """One service's statistics at ``taken_at`` (s since the epoch), over ``span`` seconds.

    patterns: every known pattern, highest bytes/s first; error_surge: the service has
    an error surge flag; cost_per_gb / target_kept_bytes_per_day: from the config.
    """

    service: str
    taken_at: float
    span: float
    patterns: list[PatternView]
    error_surge: bool = False
    cost_per_gb: float | None = None
    target_kept_bytes_per_day: float | None = None
    families: list[FamilyView] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.families:
            self.families = _families(self.patterns)
        self.by_id = {p.id: p for p in self.patterns}

    def totals(self, policy: Policy) -> dict[str, Any]:
        """Volumes now and as ``policy`` would keep them (bytes/day projected)."""
        records = sum(p.records_per_s for p in self.patterns)
        nbytes = sum(p.bytes_per_s for p in self.patterns)
        kept_now = sum(p.bytes_per_s * p.kept_share for p in self.patterns)
        projected = projected_kept_bytes_per_day(policy, self)
        out: dict[str, Any] = {
            "patterns": len(self.patterns), "records_per_s": _r(records),
            "bytes_per_s": _r(nbytes), "kept_bytes_per_s": _r(kept_now),
            "bytes_per_day": _r(nbytes * DAY), "projected_kept_bytes_per_day": _r(projected),
        }
        if self.cost_per_gb is not None:
            out["cost_per_day_all"] = _r(nbytes * DAY / 1e9 * self.cost_per_gb)
            out["cost_per_day_kept"] = _r(projected / 1e9 * self.cost_per_gb)
        return out

    def digest(self) -> str:
        """Hex digest (16 chars) of the statistics (ids, rounded volumes, flags)."""
        data = [(p.id, round(p.records_per_s, 3), round(p.bytes_per_s), p.anomaly)
                for p in self.patterns]
        text = json.dumps([self.service, self.error_surge, data], separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def prompt_data(self, policy: Policy, top_k: int, template_chars: int = 200
                    ) -> dict[str, Any]:
        """What the LLM sees about this service: the ``top_k`` patterns and families by
        volume, the policy in force (its rates only), totals and the budget. Ids,
        scrubbed templates and numbers only (module docstring)."""
        pats = self.patterns[:top_k]
        fams = self.families[:top_k]
        shown = {p.id for p in pats}
        table = policy.severity_table()
        data: dict[str, Any] = {
            "window_s": policy.window, "keep_first_n": policy.keep_first_n,
            "anomaly_boost": policy.anomaly_boost,
            "policy_in_force": {
                "global_rate": policy.global_rate,
                "severity_rates": dict(policy.severity_rates),
                "pattern_rates": {k: v for k, v in policy.pattern_rates.items() if k in shown},
                "family_rates": {k: v for k, v in policy.family_rates.items()
                                 if k in {f.id for f in fams}},
            },
            "totals": self.totals(policy),
            "error_surge": self.error_surge,
            "patterns": [{
                "id": p.id, "template": scrub_template(p.template, template_chars),
                "family": p.family or None, "records_per_s": _r(p.records_per_s),
                "bytes_per_s": _r(p.bytes_per_s),
                "severity": {k: _r(v) for k, v in p.severity.items()},
                "rate": 1.0 if p.only_errors else _r(effective_rate(policy, p, table)),
                "kept_share": _r(p.kept_share),
                "anomaly": p.anomaly, "age_s": round(max(self.taken_at - p.first_seen, 0)),
            } for p in pats],
            "patterns_not_shown": len(self.patterns) - len(pats),
            "families": [{
                "id": f.id, "patterns": f.patterns, "records_per_s": _r(f.records_per_s),
                "bytes_per_s": _r(f.bytes_per_s),
                "template": scrub_template(f.template, template_chars),
                "rate": policy.family_rates.get(f.id), "anomaly": f.anomaly,
            } for f in fams],
        }
        if self.cost_per_gb is not None:
            data["cost_per_gb"] = self.cost_per_gb
        if self.target_kept_bytes_per_day is not None:
            data["target_kept_bytes_per_day"] = self.target_kept_bytes_per_day
        return data


def _r(x: float) -> float:
    """Round to 3 significant digits (prompt size, stable digests)."""
    if x == 0 or not math.isfinite(x):
        return 0.0
    return round(x, max(0, 2 - math.floor(math.log10(abs(x)))))


def _families(patterns: list[PatternView]) -> list[FamilyView]:
    groups: dict[str, list[PatternView]] = {}
    for p in patterns:
        if p.family:
            groups.setdefault(p.family, []).append(p)
    fams = [FamilyView(fid, len(ps), sum(p.records_per_s for p in ps),
                       sum(p.bytes_per_s for p in ps),
                       max(ps, key=lambda p: p.records_per_s).template,
                       any(p.anomaly for p in ps))
            for fid, ps in groups.items()]
    fams.sort(key=lambda f: f.records_per_s, reverse=True)
    return fams


# --------------------------------------------------------------------------- projection


def effective_rate(policy: Policy, p: PatternView, table: list[float] | None = None) -> float:
    """The policy's p for a pattern before any boost, weighted over its severity mix
    (ERROR+ records excluded: they are always kept). table: ``policy.severity_table()``
    when the caller has it (it is the costly part)."""
    if p.id in policy.pattern_rates:
        return policy.pattern_rates[p.id]
    if p.family and p.family in policy.family_rates:
        return policy.family_rates[p.family]
    if table is None:
        table = policy.severity_table()
    shares = {k: v for k, v in p.severity.items() if k not in ("ERROR", "FATAL")}
    total = sum(shares.values())
    if total <= 0:
        return table[9]
    return sum(table[SEVERITY_NUMBER.get(k, 9)] * v for k, v in shares.items()) / total


def kept_fraction(policy: Policy, p: PatternView, error_surge: bool = False,
                  rate: float | None = None, table: list[float] | None = None) -> float:
    """Expected share of the pattern's records kept under ``policy`` (module docstring);
    rate: use this p instead of the policy's; table: as for :func:`effective_rate`."""
    per_window = p.records_per_s * policy.window
    if per_window <= 0:
        return 1.0
    errors = per_window * p.error_share
    rest = per_window - errors
    if rate is None:
        rate = effective_rate(policy, p, table)
    if p.anomaly or error_surge:
        rate = min(1.0, rate * policy.anomaly_boost)
    first = min(rest, policy.keep_first_n)
    sampled = (rest - first) * rate
    if policy.max_per_window is not None:
        sampled = min(sampled, max(policy.max_per_window - first, 0))
    return min(1.0, (errors + first + sampled) / per_window)


def projected_kept_bytes_per_day(policy: Policy, snap: Snapshot) -> float:
    table = policy.severity_table()
    return DAY * sum(p.bytes_per_s * kept_fraction(policy, p, snap.error_surge, None, table)
                     for p in snap.patterns)


# --------------------------------------------------------------------------- building


class RateTracker:
    """Remembers each service's cumulative counters from its previous snapshot, so that the
    next one measures rates over the time in between."""

    def __init__(self) -> None:
        self._prev: dict[str, tuple[float, dict[str, tuple[int, int, float]]]] = {}

    def build(self, service: str, stats: list[dict[str, Any]], flags: list[dict[str, Any]],
              now: float, cost_per_gb: float | None = None,
              target: float | None = None, remember: bool = True) -> Snapshot:
        """A Snapshot from ``pattern_stats(service)`` rows and ``anomaly_flags()`` (all
        services; this one's are picked), at ``now`` (s since the epoch, batch clock).
        remember: keep these counters as the base of the next build. A row with ``span``
        (seconds; collector/shared/stats.py) holds the counts of the last ``span`` seconds
        rather than cumulative ones; ``error_surge: true`` on a row flags its service."""
        prev_at, prev = self._prev.get(service, (None, {}))
        span = now - prev_at if prev_at is not None and now > prev_at else 0.0
        surge = any(f["service"] == service and f["kind"] == "error_surge" for f in flags) \
            or any(row.get("error_surge") for row in stats if row["service"] == service)
        flagged: dict[str, list[str]] = {}
        for f in flags:
            if f["service"] == service and f["pattern_id"]:
                flagged.setdefault(f["pattern_id"], []).append(f["kind"])
        current: dict[str, tuple[int, int, float]] = {}
        views = []
        for row in stats:
            if row["service"] != service:
                continue
            pid = row["pattern_id"]
            nbytes = float(row["bytes_kept"] + row["bytes_dropped"])
            count, kept = int(row["count"]), int(row["kept"])
            current[pid] = (count, kept, nbytes)
            before = prev.get(pid)
            if "span" in row:  # counts over the last `span` seconds (shared statistics)
                d_count, d_kept, d_bytes, dt = count, kept, nbytes, float(row["span"])
            elif span > 0 and before is not None and count >= before[0]:
                d_count, d_kept = count - before[0], kept - before[1]
                d_bytes, dt = max(nbytes - before[2], 0.0), span
            else:  # first sight: the average since the pattern appeared
                d_count, d_kept, d_bytes = count, kept, nbytes
                dt = max(now - float(row["first_seen"]), 1.0)
            sev = row["severity"]
            total_sev = sum(sev.values()) or 1
            views.append(PatternView(
                id=pid, template=row["template"], family=row["family"],
                records_per_s=d_count / dt, bytes_per_s=d_bytes / dt,
                severity={k: v / total_sev for k, v in sev.items() if v},
                rate=float(row["rate"]),
                kept_share=(d_kept / d_count) if d_count else 1.0,
                kept=d_kept, dropped=d_count - d_kept,
                anomaly=sorted(set(row.get("anomaly") or []) | set(flagged.get(pid, []))),
                first_seen=float(row["first_seen"])))
        if remember:
            self._prev[service] = (now, current)
        views.sort(key=lambda v: (v.bytes_per_s, v.records_per_s), reverse=True)
        return Snapshot(service, now, span, views, surge, cost_per_gb, target)

    def forget(self, service: str) -> None:
        self._prev.pop(service, None)
