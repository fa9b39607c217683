"""The control loop: statistics → proposal (LLM or heuristic) → guardrails → new version.

Every ``interval``, and early (after ``anomaly_delay``, at most once per ``min_gap``) when
the sampling processor raises a new anomaly flag, each service the sampler has statistics
for gets one run (DESIGN.md §Control loop):

1. snapshot of its patterns (snapshot.py), rates measured since its previous run;
2. a proposal: the LLM's answer (llm.py) when a key is configured, the budget allows a call
   and the prompt fits; otherwise the heuristic (heuristic.py). A failed LLM call (bad
   JSON, wrong schema, timeout, 429, 5xx) leaves the policy in force and is counted; after
   ``fallback_after`` failures in a row the heuristic is applied instead until the LLM
   answers again;
3. guardrails (guardrails.py); a rejected policy is logged with its reasons and counted;
4. unless every rate is within 10% of the policy in force (outcome ``unchanged``): stored
   as the service's next version (store.py), then swapped into the sampler.

Operator policies (API) and YAML edits are applied through the same store, and held: the
loop leaves them in force for ``hold`` (an API refresh runs anyway). A restart resumes
each scope's latest stored version.

Runs are serialised by one lock; everything runs on the event loop (the sampler's
``set_policy`` is atomic between batches).

Shared state (``storage.backend: redis``, collector/shared/): the store is shared, the
scheduled runs happen only on the replica holding the lease (``is_leader``), snapshots read
the statistics of every replica (``stats``), and policies other replicas store are put in
force here through :meth:`ControlLoop.adopt`. API calls (override, refresh) run on
whichever replica receives them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from collector import metrics
from collector.control import guardrails
from collector.control.config import ControlConfig
from collector.control.guardrails import Verdict
from collector.control.heuristic import heuristic_policy
from collector.control.llm import CallBudget, LlmClient, LlmError, build_messages, parse_answer
from collector.control.snapshot import RateTracker, Snapshot
from collector.control.store import DEFAULT_SCOPE, PolicyStore, StoredPolicy
from processors.policy import Policy, PolicyError, load_policy
from processors.sampling import Config as SamplingConfig
from processors.sampling import SamplingProcessor

log = logging.getLogger("lipservice.control")

POLL_SECONDS = 1.0  # how often the scheduler looks at the anomaly flags
UNCHANGED_TOLERANCE = 0.1  # relative difference under which two rates are "the same"
MAX_REASONING_CHARS = 2000
# Fields a client may not set: the store and the loop own them.
META_FIELDS = ("version", "created_at", "generated_by", "llm_model")
_INVALID_ANSWER = ("invalid_json", "invalid_schema", "refused", "truncated")


@dataclass
class RunResult:
    """What one run did for one service.

    outcome: applied | unchanged | rejected | llm_failed | held | no_data | error;
    source: llm | heuristic (None when nothing was proposed); llm: the LLM call's outcome,
    or why it was skipped (no_api_key, disabled, budget, prompt_too_large);
    version: the version applied; reasons / notes: guardrail rejections / adjustments.
    """

    service: str
    trigger: str
    outcome: str
    source: str | None = None
    llm: str | None = None
    version: int | None = None
    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"service": self.service, "trigger": self.trigger, "outcome": self.outcome,
                "source": self.source, "llm": self.llm, "version": self.version,
                "reasons": self.reasons, "adjustments": self.notes}


def yaml_digest(policy: Policy) -> str:
    """Digest of a YAML policy block's content (metadata left out), to see edits."""
    doc = {k: v for k, v in policy.to_document().items() if k not in META_FIELDS}
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def same_rates(a: Policy, b: Policy, tolerance: float = UNCHANGED_TOLERANCE) -> bool:
    """True when the two policies differ by no more than ``tolerance`` (relative) in any
    rate, and not at all in their other settings."""
    def close(x: float, y: float) -> bool:
        return abs(x - y) <= tolerance * max(x, y)

    if a.pattern_rates.keys() != b.pattern_rates.keys() or \
            a.family_rates.keys() != b.family_rates.keys():
        return False
    rest = ("keep_first_n", "window", "max_per_window", "anomaly_boost", "always_keep")
    return (all(getattr(a, f) == getattr(b, f) for f in rest)
            and all(close(x, y) for x, y in zip(a.severity_table(), b.severity_table(),
                                                strict=True))
            and all(close(r, b.pattern_rates[k]) for k, r in a.pattern_rates.items())
            and all(close(r, b.family_rates[k]) for k, r in a.family_rates.items()))


RATE_MAPS = ("severity_rates", "pattern_rates", "family_rates")

StatsSource = Callable[[str | None], Awaitable[list[dict[str, Any]]]]
"""async (service or None for all) -> rows shaped like ``SamplingProcessor.pattern_stats``."""


class ControlLoop:
    """The loop for one sampling processor (module docstring).

    store: where policies are kept; llm: None = heuristic only (``no_api_key``);
    clock: seconds since the epoch on the sampler's batch clock; monotonic: for scheduling
    and the call budget; is_leader: scheduled runs happen only while it returns True (the
    shared lease, collector/shared/; None = always); stats: where snapshots read pattern
    statistics (None = this sampler's own).
    """

    def __init__(self, cfg: ControlConfig, sampler: SamplingProcessor, store: PolicyStore,
                 llm: LlmClient | None = None, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic,
                 is_leader: Callable[[], bool] | None = None,
                 stats: StatsSource | None = None) -> None:
        self.cfg = cfg
        self.sampler = sampler
        self.store = store
        self.llm = llm
        self.clock = clock
        self.monotonic = monotonic
        self.is_leader = is_leader or (lambda: True)
        self.stats = stats
        self.budget = CallBudget(cfg.llm.max_calls_per_hour, monotonic)
        self.tracker = RateTracker()
        self.failures = 0  # LLM failures in a row
        self._lock = asyncio.Lock()
        self._held: dict[str, float] = {}
        self._flags_seen: set[tuple[str, str, str | None]] = set()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ policies

    def in_force(self, scope: str) -> Policy:
        return self.sampler.policy(None if scope == DEFAULT_SCOPE else scope)

    def known(self, scope: str) -> bool:
        """Does the sampler know this scope (the default, a service with its own policy, or
        one with statistics)?"""
        return (scope == DEFAULT_SCOPE or scope in self.sampler.policies()
                or bool(self.sampler.pattern_stats(scope, top_k=1)))

    async def _apply(self, scope: str, policy: Policy, digest: str, held: bool = False
                     ) -> StoredPolicy:
        """Store ``policy`` as the scope's next version, then put it in force."""
        now = self.clock()
        policy = policy.model_copy(update={
            "version": self.in_force(scope).version,
            "created_at": datetime.fromtimestamp(now, UTC),
            "reasoning": policy.reasoning[:MAX_REASONING_CHARS]})
        rec = await self.store.append(scope, policy, digest, now,
                                      now + self.cfg.hold if held else 0.0)
        self.sampler.set_policy(rec.policy, None if scope == DEFAULT_SCOPE else scope)
        self._held[scope] = rec.held_until
        metrics.POLICY_VERSION.labels(scope).set(rec.version)
        metrics.POLICY_APPLIED.labels(rec.source).inc()
        log.info("policy v%d applied for %s (source %s)%s", rec.version, scope, rec.source,
                 f": {rec.reasoning[:300]}" if rec.reasoning else "")
        return rec

    def adopt(self, rec: StoredPolicy) -> None:
        """Put a stored version in force as it is (resume; a replica following the shared
        store). Its hold applies to this loop too."""
        self.sampler.set_policy(rec.policy, None if rec.scope == DEFAULT_SCOPE else rec.scope)
        self._held[rec.scope] = rec.held_until
        metrics.POLICY_VERSION.labels(rec.scope).set(rec.version)

    async def resume(self) -> None:
        """Put each stored scope's latest version in force (at start)."""
        for scope in await self.store.scopes():
            try:
                rec = await self.store.latest(scope)
            except (ValueError, TypeError) as err:  # a stored document the model rejects
                log.error("stored policy for %s cannot be loaded (%s); keeping the YAML one",
                          scope, type(err).__name__)
                continue
            if rec is None:
                continue
            self.adopt(rec)
            log.info("resumed policy v%d for %s (source %s)", rec.version, scope, rec.source)

    async def apply_yaml(self, sampling: SamplingConfig, at_start: bool = False) -> list[str]:
        """Apply the YAML ``policy:`` / ``policies:`` blocks that changed since last seen
        (by content digest) as new versions, source ``yaml``. An edit (not the first
        sight) is held; an edit of the default ``policy:`` also replaces the generated
        (heuristic/llm) policies of services that have no YAML policy of their own.
        Returns the scopes applied."""
        blocks: dict[str, Policy] = {DEFAULT_SCOPE: sampling.policy, **sampling.policies}
        applied: list[str] = []
        async with self._lock:
            for scope, policy in blocks.items():
                key = f"yaml/{scope}"
                digest = yaml_digest(policy)
                seen = await self.store.get_meta(key)
                if seen == digest:
                    continue
                if seen is None and at_start and await self.store.latest(scope) is not None:
                    await self.store.set_meta(key, digest)  # state from before yaml tracking
                    continue
                edit = seen is not None
                if policy.generated_by != "default":  # the built-in one when YAML has none
                    policy = policy.model_copy(update={"generated_by": "yaml"})
                await self._apply(scope, policy, "", held=edit)
                applied.append(scope)
                if scope == DEFAULT_SCOPE and edit:
                    for svc, own in self.sampler.policies().items():
                        if svc not in blocks and own.generated_by in ("heuristic", "llm"):
                            await self._apply(svc, policy, "", held=True)
                            applied.append(svc)
                await self.store.set_meta(key, digest)
        return applied

    async def override(self, scope: str, document: Mapping[str, Any]
                       ) -> tuple[Verdict, StoredPolicy | None]:
        """An operator's policy for ``scope`` (the API's POST): the given fields replace
        those in force (``version``, ``created_at``, ``generated_by``, ``llm_model`` are
        ignored); the rate maps (``severity_rates``, ``pattern_rates``, ``family_rates``)
        are merged key by key, a ``null`` rate removing its key. Then the guardrails;
        applied and held when accepted."""
        async with self._lock:
            current = self.in_force(scope)
            doc = current.to_document()
            for key, value in document.items():
                if key in META_FIELDS:
                    continue
                if key in RATE_MAPS and isinstance(value, Mapping) and \
                        isinstance(doc.get(key), Mapping):
                    merged = {**doc[key], **value}
                    doc[key] = {k: v for k, v in merged.items() if v is not None}
                else:
                    doc[key] = value
            if "reasoning" not in document:
                doc["reasoning"] = "operator override"
            doc["generated_by"] = "operator"
            doc["llm_model"] = None
            rows = await self._rows(scope) if scope != DEFAULT_SCOPE else None
            snap = (await asyncio.to_thread(self._snapshot, scope, False, rows)
                    if scope != DEFAULT_SCOPE else None)
            verdict = await asyncio.to_thread(guardrails.check, doc, current, snap,
                                              self.cfg.guardrails, "operator")
            if verdict.policy is None:
                self._count_rejection("operator", verdict)
                return verdict, None
            self._count_adjustments(verdict)
            rec = await self._apply(scope, verdict.policy, snap.digest() if snap else "",
                                    held=True)
            return verdict, rec

    # ------------------------------------------------------------------ runs

    async def _rows(self, service: str | None) -> list[dict[str, Any]]:
        """Pattern statistics of ``service`` (None: all) from ``stats``, else the sampler
        (in a worker thread)."""
        if self.stats is not None:
            return await self.stats(service)
        return await asyncio.to_thread(self.sampler.pattern_stats, service)

    @staticmethod
    def _by_service(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
        """Statistics grouped per service, largest service first."""
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault(row["service"], []).append(row)
        return dict(sorted(groups.items(), key=lambda kv: sum(r["count"] for r in kv[1]),
                           reverse=True))

    async def run_once(self, trigger: str = "interval", service: str | None = None,
                       force: bool = False) -> list[RunResult]:
        """One run for ``service`` (None: every service with statistics, largest first).
        force: run even when the policy in force is held. Never raises. The CPU-heavy
        parts (statistics, heuristic, guardrails) run in a worker thread so the receivers
        keep being served."""
        if service is not None:
            todo: dict[str, list[dict[str, Any]] | None] = {service: None}
        else:
            todo = dict(self._by_service(await self._rows(None)))
        results = []
        for svc, rows in todo.items():
            try:
                result = await self.run_service(svc, trigger, force, rows)
            except Exception:  # noqa: BLE001 - one bad run must not stop the loop
                log.exception("control loop run for %s failed; policy in force stays", svc)
                result = RunResult(svc, trigger, "error")
            metrics.CONTROL_RUNS.labels(trigger, result.outcome).inc()
            results.append(result)
        return results

    def _snapshot(self, service: str, remember: bool = True,
                  rows: list[dict[str, Any]] | None = None) -> Snapshot | None:
        stats = self.sampler.pattern_stats(service) if rows is None else rows
        if not stats:
            return None
        return self.tracker.build(service, stats, self.sampler.anomaly_flags(), self.clock(),
                                  self.cfg.cost_per_gb, self.cfg.target_kept_bytes_per_day,
                                  remember)

    async def run_service(self, service: str, trigger: str = "interval", force: bool = False,
                          rows: list[dict[str, Any]] | None = None) -> RunResult:
        """One run for one service (module docstring). rows: its ``pattern_stats`` rows
        when the caller has them."""
        async with self._lock:
            if not force and self._held.get(service, 0.0) > self.clock():
                return RunResult(service, trigger, "held")
            if rows is None:
                rows = await self._rows(service)
            snap = await asyncio.to_thread(self._snapshot, service, True, rows)
            if snap is None:
                return RunResult(service, trigger, "no_data")
            current = self.sampler.policy(service)
            source, doc, llm_outcome = await self._propose(snap, current)
            result = RunResult(service, trigger, "llm_failed", source, llm_outcome)
            if doc is None:
                return result
            verdict = await asyncio.to_thread(guardrails.check, doc, current, snap,
                                              self.cfg.guardrails, source)
            result.reasons, result.notes = verdict.reasons, verdict.notes
            if verdict.policy is None:
                self._count_rejection(source, verdict)
                if source == "llm":
                    self.failures += 1
                result.outcome = "rejected"
                return result
            if source == "llm":
                self.failures = 0
            if same_rates(verdict.policy, current):
                result.outcome = "unchanged"
                return result
            if not force and self._held.get(service, 0.0) > self.clock():
                # an operator policy arrived from another replica during the run
                result.outcome = "held"
                return result
            self._count_adjustments(verdict)
            rec = await self._apply(service, verdict.policy, snap.digest())
            result.outcome, result.version = "applied", rec.version
            return result

    def _llm_unavailable(self) -> str | None:
        if not self.cfg.llm.enabled:
            return "disabled"
        if self.llm is None:
            return "no_api_key"
        if not self.budget.available():
            return "budget"
        return None

    async def _propose(self, snap: Snapshot, current: Policy
                       ) -> tuple[str, dict[str, Any] | None, str]:
        """(source, policy document or None when the LLM failed, LLM outcome)."""
        skip = self._llm_unavailable()
        prompt = None
        if skip is None:
            prompt = build_messages(snap, current, self.cfg.top_k,
                                    self.cfg.llm.max_prompt_tokens,
                                    self.cfg.llm.response_format == "json_object")
            if prompt is None:
                skip = "prompt_too_large"
        if skip is not None or prompt is None or self.llm is None:
            metrics.LLM_SKIPPED.labels(skip).inc()
            return "heuristic", await self._heuristic(snap, current), str(skip)
        self.budget.spend()
        started = self.monotonic()
        try:
            completion = await self.llm.complete(prompt.messages)
            self._count_tokens(completion.prompt_tokens, completion.completion_tokens)
            doc = parse_answer(completion.text, current, prompt.shown_patterns,
                               prompt.shown_families)
            doc["llm_model"] = completion.model
            try:
                load_policy(doc)
            except PolicyError as err:
                raise LlmError("invalid_schema", "; ".join(err.problems[:5])) from None
        except LlmError as err:
            if err.completion is not None and err.outcome in ("refused", "truncated"):
                self._count_tokens(err.completion.prompt_tokens,
                                   err.completion.completion_tokens)
            metrics.LLM_CALLS.labels(err.outcome).inc()
            if err.outcome in _INVALID_ANSWER:
                metrics.POLICY_REJECTED.labels("llm", err.outcome).inc()
            self.failures += 1
            log.warning("LLM call for %s failed (%s: %s); %s", snap.service, err.outcome, err,
                        "applying the heuristic" if self.failures >= self.cfg.llm.fallback_after
                        else "the policy in force stays")
            if self.failures >= self.cfg.llm.fallback_after:
                return "heuristic", await self._heuristic(snap, current), err.outcome
            return "llm", None, err.outcome
        finally:
            metrics.LLM_DURATION.observe(self.monotonic() - started)
        metrics.LLM_CALLS.labels("ok").inc()
        return "llm", doc, "ok"

    async def _heuristic(self, snap: Snapshot, current: Policy) -> dict[str, Any]:
        return await asyncio.to_thread(heuristic_policy, snap, current, self.cfg.heuristic)

    @staticmethod
    def _count_tokens(prompt: int, completion: int) -> None:
        metrics.LLM_TOKENS.labels("prompt").inc(prompt)
        metrics.LLM_TOKENS.labels("completion").inc(completion)

    @staticmethod
    def _count_rejection(source: str, verdict: Verdict) -> None:
        for reason in verdict.reasons:
            metrics.POLICY_REJECTED.labels(source, reason).inc()
        log.warning("%s policy rejected (%s): %s; the policy in force stays", source,
                    ", ".join(verdict.reasons), "; ".join(verdict.problems[:10]))

    @staticmethod
    def _count_adjustments(verdict: Verdict) -> None:
        for guardrail, n in verdict.adjusted.items():
            metrics.POLICY_ADJUSTED.labels(guardrail).inc(n)

    # ------------------------------------------------------------------ scheduling

    async def start(self) -> None:
        """Run the schedule in the background (periodic and anomaly-triggered runs)."""
        if self._task is None and (self.cfg.interval > 0 or self.cfg.anomaly_trigger):
            self._task = asyncio.create_task(self._schedule(), name="lipservice-control")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.llm is not None:
            await self.llm.close()

    def _new_flags(self) -> bool:
        """Has an anomaly flag of a triggering kind appeared since the last look?"""
        kinds = self.cfg.anomaly_trigger
        now = {(f["service"], f["kind"], f["pattern_id"])
               for f in self.sampler.anomaly_flags() if f["kind"] in kinds}
        fresh = bool(now - self._flags_seen)
        self._flags_seen = now
        return fresh

    async def _schedule(self) -> None:
        cfg = self.cfg
        inf = float("inf")
        interval = cfg.interval if cfg.interval > 0 else inf
        next_at = self.monotonic() + interval
        early_at = inf
        last_run = -inf
        while True:
            now = self.monotonic()
            if cfg.anomaly_trigger and self._new_flags() and early_at == inf:
                early_at = max(now + cfg.anomaly_delay, last_run + cfg.min_gap)
            due = min(next_at, early_at)
            if now < due:
                await asyncio.sleep(min(due - now, POLL_SECONDS))
                continue
            trigger = "anomaly" if early_at <= next_at else "interval"
            results = await self.run_once(trigger) if self.is_leader() else []
            for r in results:
                if r.outcome not in ("unchanged", "held", "no_data"):
                    log.info("control run (%s) for %s: %s%s", trigger, r.service, r.outcome,
                             f" v{r.version}" if r.version else "")
            last_run = self.monotonic()
            next_at = last_run + interval
            early_at = inf

