"""Anomaly detection for the sampling processor: new patterns, volume spikes, error surges.

While a pattern is flagged (new or spiking), or its service has an error surge, the sampling
processor multiplies the pattern's rate by the policy's ``anomaly_boost`` (DESIGN.md
§Sampling semantics, step 3). The flags are plain data for the control loop
(:meth:`AnomalyDetector.flags`) and Prometheus metrics (:meth:`AnomalyDetector.collect_metrics`).

How it decides (all times come from the batch clock, ``LogBatch.now``):

- **new pattern**: a pattern first seen at least ``warmup`` seconds after its service's first
  batch is flagged ``new`` for ``new_pattern_window`` seconds. Patterns seen during the warm-up
  are the baseline (otherwise every pattern would be "new" at start).
- **volume spike**: record counts per pattern are bucketed into ``interval``-second buckets.
  Each closed bucket count ``c`` is compared with an exponentially weighted moving average
  (EWMA, half-life ``half_life``) of past bucket counts, mean ``m`` and variance ``v``:
  ``z = (c - m) / sqrt(max(v, m, 1))`` (the ``m`` floor is the Poisson variance, so a steady
  pattern with tiny variance is not flagged for noise). A spike needs ``z >= z_threshold``,
  ``c >= ratio_threshold * m``, ``c >= min_count`` and at least ``min_intervals`` buckets of
  history; the flag then holds for ``hold`` seconds after the last spiking bucket.
- **error surge**: the same test on the service's count of ERROR+ records per bucket
  (``c >= min_errors`` instead of ``min_count``); the whole service is flagged.

Settings (``processors: sampling: anomaly:``):

====================  ========  ===========================================================
setting               default   meaning
====================  ========  ===========================================================
enabled               true      false: no flags, no boost
new_pattern_window    5m        how long a new pattern stays flagged
warmup                1m        patterns first seen this soon after start are not "new"
interval              10s       bucket length for rates
half_life             5m        EWMA half-life of the bucket counts
z_threshold           4.0       spike/surge: z-score at least this
ratio_threshold       3.0       spike/surge: bucket count at least this times the EWMA mean
min_count             50        spike: bucket count at least this many records
min_errors            10        surge: bucket count at least this many ERROR+ records
min_intervals         3         buckets of history needed before judging spikes
hold                  1m        a spike/surge flag stays this long after its last trigger
max_patterns          10000     patterns tracked per service (LRU eviction)
====================  ========  ===========================================================

State is bounded: at most ``max_patterns`` patterns per service (least recently seen evicted)
and the services the sampling processor tracks.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from pydantic import Field

from collector.config import Duration, StrictModel

KINDS = ("new", "spike", "error_surge")


class AnomalyConfig(StrictModel):
    """``processors: sampling: anomaly:`` (see the module docstring)."""

    enabled: bool = True
    new_pattern_window: Duration = 300.0
    warmup: Duration = 60.0
    interval: Duration = Field(10.0, gt=0)
    half_life: Duration = Field(300.0, gt=0)
    z_threshold: float = Field(4.0, ge=0)
    ratio_threshold: float = Field(3.0, ge=1)
    min_count: int = Field(50, ge=1)
    min_errors: int = Field(10, ge=1)
    min_intervals: int = Field(3, ge=1)
    hold: Duration = 60.0
    max_patterns: int = Field(10_000, ge=1)


class _Ewma:
    """Exponentially weighted mean and variance of bucket counts. ``last`` is the number of
    the last bucket folded in: empty buckets since then are folded in lazily (:meth:`catch_up`)
    so that a bucket close only touches the patterns seen in it."""

    __slots__ = ("mean", "var", "n", "last")

    def __init__(self, mean: float = 0.0, var: float = 0.0, n: int = 0, last: int = 0) -> None:
        self.mean = mean
        self.var = var
        self.n = n
        self.last = last

    def catch_up(self, bucket_no: int, alpha: float) -> None:
        """Fold in the empty buckets between ``last`` and ``bucket_no`` (exclusive)."""
        gap = bucket_no - self.last - 1
        if gap > 0 and self.n:
            self.decay(gap, alpha)
        self.last = max(self.last, bucket_no - 1)

    def update(self, count: float, alpha: float) -> None:
        if self.n == 0:
            self.mean = float(count)
            self.var = 0.0
        else:
            diff = count - self.mean
            incr = alpha * diff
            self.mean += incr
            self.var = (1.0 - alpha) * (self.var + diff * incr)
        self.n += 1

    def decay(self, buckets: int, alpha: float) -> None:
        """``buckets`` empty buckets in a row (exact for up to 16, then a plain decay)."""
        for _ in range(min(buckets, 16)):
            self.update(0, alpha)
        if buckets > 16:
            keep = (1.0 - alpha) ** (buckets - 16)
            self.mean *= keep
            self.var *= keep
            self.n += buckets - 16

    def z(self, count: float) -> float:
        return (count - self.mean) / math.sqrt(max(self.var, self.mean, 1.0))


class _Track:
    """One pattern of one service."""

    __slots__ = ("first_seen", "last_seen", "rate", "new_until", "spike_until",
                 "last_count", "last_z")

    def __init__(self, first_seen: float) -> None:
        self.first_seen = first_seen
        self.last_seen = first_seen
        self.rate = _Ewma()
        self.new_until = 0.0
        self.spike_until = 0.0
        self.last_count = 0
        self.last_z = 0.0


class ServiceAnomalies:
    """Per-service detector state. ``flagged`` is the live set of pattern ids the sampler
    boosts; ``surge_until`` > now means the whole service is boosted."""

    __slots__ = ("started", "bucket_start", "bucket_no", "base", "pending", "errors", "tracks",
                 "flagged", "errors_rate", "surge_until", "surge_count", "surge_z")

    def __init__(self, now: float) -> None:
        self.started = now
        self.bucket_start = now
        self.bucket_no = 0
        # Bucket counts are differences of the sampler's per-window counters (no per-record
        # work here): ``base`` = window counts at the last bucket close, ``pending`` = counts
        # carried over from windows that closed during this bucket.
        self.base: dict[str, int] = {}
        self.pending: dict[str, int] = {}
        self.errors = 0
        self.tracks: OrderedDict[str, _Track] = OrderedDict()
        self.flagged: set[str] = set()
        self.errors_rate = _Ewma()
        self.surge_until = 0.0
        self.surge_count = 0
        self.surge_z = 0.0


class AnomalyDetector:
    """Flags new patterns, volume spikes and error surges per service (module docstring).

    The sampling processor, per batch and service: :meth:`state`; when :meth:`due`,
    :meth:`close_bucket` with its window counters (records per pattern so far in its
    current window); :meth:`first_in_window` on the first record of a pattern in each of
    its windows; :meth:`add_errors`; and :meth:`window_closed` with the final counters when
    its window ends. Not thread-safe for writers; readers (:meth:`flags`,
    :meth:`collect_metrics`) take copies.
    """

    def __init__(self, config: AnomalyConfig | None = None) -> None:
        self.config = config or AnomalyConfig()
        self._services: dict[str, ServiceAnomalies] = {}
        self._alpha = 1.0 - 0.5 ** (self.config.interval / self.config.half_life)
        self.detected: dict[str, int] = dict.fromkeys(KINDS, 0)

    # ------------------------------------------------------------------ hot path

    def state(self, service: str, now: float) -> ServiceAnomalies:
        """The service's state (created on first use)."""
        st = self._services.get(service)
        if st is None:
            st = self._services[service] = ServiceAnomalies(now)
        elif st.bucket_start == -math.inf:  # restored from a snapshot
            st.bucket_start = now
        return st

    def due(self, st: ServiceAnomalies, now: float) -> bool:
        """Has the current bucket ended at ``now``?"""
        return self.config.enabled and now >= st.bucket_start + self.config.interval

    def close_bucket(self, st: ServiceAnomalies, now: float,
                     window_counts: dict[str, int]) -> None:
        """Close the ended bucket. window_counts: records per pattern so far in the
        sampler's current window (kept by this object until the next call)."""
        counts = st.pending
        base = st.base
        for pid, c in window_counts.items():
            d = c - base.get(pid, 0)
            if d:
                counts[pid] = counts.get(pid, 0) + d
        st.base = window_counts
        st.pending = {}
        self._judge(st, now, counts)

    def window_closed(self, st: ServiceAnomalies, window_counts: dict[str, int]) -> None:
        """The sampler's window ended with these counts: carry what the current bucket has
        not seen yet, and start the next window from zero."""
        pending = st.pending
        base = st.base
        for pid, c in window_counts.items():
            d = c - base.get(pid, 0)
            if d:
                pending[pid] = pending.get(pid, 0) + d
        st.base = {}

    def add_errors(self, st: ServiceAnomalies, errors: int) -> None:
        """Add a batch's count of ERROR+ records to the current bucket."""
        st.errors += errors

    def first_in_window(self, st: ServiceAnomalies, pattern_id: str, now: float) -> None:
        """Record one pattern's first record in a sampling window: registers a pattern never
        seen before (flagging it ``new`` after the warm-up) and refreshes its LRU place."""
        if not self.config.enabled:
            return
        track = st.tracks.get(pattern_id)
        if track is None:
            track = st.tracks[pattern_id] = _Track(now)
            track.rate.last = st.bucket_no - 1
            if now - st.started >= self.config.warmup:
                track.new_until = now + self.config.new_pattern_window
                st.flagged.add(pattern_id)
                self.detected["new"] += 1
            if len(st.tracks) > self.config.max_patterns:
                old, _ = st.tracks.popitem(last=False)
                st.flagged.discard(old)
        else:
            st.tracks.move_to_end(pattern_id)
        track.last_seen = now

    # ------------------------------------------------------------------ buckets

    def _judge(self, st: ServiceAnomalies, now: float, bucket: dict[str, int]) -> None:
        """Judge and fold in the bucket that ended (only the patterns seen in it; the others
        catch up lazily), then expire flags."""
        cfg = self.config
        alpha = self._alpha
        elapsed = int((now - st.bucket_start) // cfg.interval)
        bucket_end = st.bucket_start + cfg.interval
        no = st.bucket_no
        tracks = st.tracks
        min_n, min_count, ratio, z_thr = (cfg.min_intervals, cfg.min_count,
                                          cfg.ratio_threshold, cfg.z_threshold)
        keep = 1.0 - alpha
        for pid, c in bucket.items():  # inlined _Ewma.update: this runs per pattern
            track = tracks.get(pid)
            if track is None:
                continue
            rate = track.rate
            if no - rate.last > 1:
                rate.catch_up(no, alpha)
            n = rate.n
            mean = rate.mean
            if c >= min_count and n >= min_n and c >= ratio * mean:
                z = rate.z(c)
                track.last_z = z
                if z >= z_thr:
                    if track.spike_until <= bucket_end:
                        self.detected["spike"] += 1
                    track.spike_until = now + cfg.hold
                    st.flagged.add(pid)
            track.last_count = c
            if n:
                diff = c - mean
                incr = alpha * diff
                rate.mean = mean + incr
                rate.var = keep * (rate.var + diff * incr)
            else:
                rate.mean = float(c)
            rate.n = n + 1
            rate.last = no
        er = st.errors_rate
        if st.errors >= cfg.min_errors and er.n >= min_n and st.errors >= ratio * er.mean:
            z = er.z(st.errors)
            st.surge_z = z
            if z >= z_thr:
                if st.surge_until <= bucket_end:
                    self.detected["error_surge"] += 1
                st.surge_until = now + cfg.hold
        st.surge_count = st.errors
        er.update(st.errors, alpha)
        if elapsed > 1:
            er.decay(elapsed - 1, alpha)
        st.errors = 0
        st.bucket_start += elapsed * cfg.interval
        st.bucket_no += elapsed
        if st.flagged:
            st.flagged = {pid for pid in st.flagged if pid in tracks and (
                tracks[pid].new_until > now or tracks[pid].spike_until > now)}

    # ------------------------------------------------------------------ reading

    def boosted(self, st: ServiceAnomalies, now: float) -> tuple[set[str], bool]:
        """(pattern ids flagged now, whether the service has an error surge now)."""
        return st.flagged, st.surge_until > now

    def pattern_flags(self, service: str, pattern_id: str, now: float) -> list[str]:
        """Flags (``new``, ``spike``) on one pattern now; [] when unknown."""
        st = self._services.get(service)
        track = st.tracks.get(pattern_id) if st else None
        if track is None:
            return []
        return [k for k, until in (("new", track.new_until), ("spike", track.spike_until))
                if until > now]

    def pattern_info(self, service: str, pattern_id: str) -> dict[str, Any] | None:
        """first_seen, last_seen (s), EWMA rate (records/s) and last bucket z-score."""
        st = self._services.get(service)
        track = st.tracks.get(pattern_id) if st else None
        if track is None:
            return None
        assert st is not None
        idle = st.bucket_no - track.rate.last - 1  # empty buckets not yet folded in
        mean = track.rate.mean * (1.0 - self._alpha) ** max(idle, 0)
        return {"first_seen": track.first_seen, "last_seen": track.last_seen,
                "rate_per_s": mean / self.config.interval,
                "last_z": round(track.last_z, 3)}

    def flags(self, now: float) -> list[dict[str, Any]]:
        """Every active flag as plain data, for the control loop::

            {"service": str, "kind": "new"|"spike"|"error_surge", "pattern_id": str|None,
             "until": float (s since epoch), "count": int (last bucket), "baseline": float
             (EWMA mean per bucket), "z": float}
        """
        out: list[dict[str, Any]] = []
        for svc, st in list(self._services.items()):
            if st.surge_until > now:
                out.append({"service": svc, "kind": "error_surge", "pattern_id": None,
                            "until": st.surge_until, "count": st.surge_count,
                            "baseline": round(st.errors_rate.mean, 3),
                            "z": round(st.surge_z, 3)})
            for pid in list(st.flagged):
                track = st.tracks.get(pid)
                if track is None:
                    continue
                for kind, until in (("new", track.new_until), ("spike", track.spike_until)):
                    if until > now:
                        out.append({"service": svc, "kind": kind, "pattern_id": pid,
                                    "until": until, "count": track.last_count,
                                    "baseline": round(track.rate.mean, 3),
                                    "z": round(track.last_z, 3)})
        return out

    def active_counts(self, now: float) -> dict[str, int]:
        counts = dict.fromkeys(KINDS, 0)
        for f in self.flags(now):
            counts[f["kind"]] += 1
        return counts

    def forget(self, service: str) -> None:
        """Drop a service's state (when the sampler evicts the service)."""
        self._services.pop(service, None)

    def collect_metrics(self, now: float) -> Iterable[Any]:
        active = GaugeMetricFamily(
            "lipservice_sampling_anomalies",
            "Anomaly flags in force now, by kind (new/spike: patterns; error_surge: services).",
            labels=["kind"])
        for kind, n in self.active_counts(now).items():
            active.add_metric([kind], n)
        detected = CounterMetricFamily(
            "lipservice_sampling_anomalies_detected",
            "Anomalies detected since start, by kind.", labels=["kind"])
        for kind, n in self.detected.items():
            detected.add_metric([kind], n)
        return [active, detected]

    # ------------------------------------------------------------------ state

    def snapshot(self) -> dict[str, Any]:
        """Plain data: per service the start time and, per pattern, first/last seen and the
        EWMA; flags are not persisted (they are re-learnt)."""
        return {"services": {
            svc: {"started": st.started,
                  "errors": [st.errors_rate.mean, st.errors_rate.var, st.errors_rate.n],
                  "patterns": {pid: [t.first_seen, t.last_seen, t.rate.mean, t.rate.var,
                                     t.rate.n] for pid, t in st.tracks.items()}}
            for svc, st in list(self._services.items())}}

    def restore(self, state: dict[str, Any]) -> None:
        """Load :meth:`snapshot` data; raises ValueError on a malformed document."""
        try:
            services = {}
            for svc, data in state.get("services", {}).items():
                st = ServiceAnomalies(float(data["started"]))
                st.bucket_start = -math.inf  # realigned on the service's next batch
                st.errors_rate = _Ewma(*(float(x) for x in data["errors"][:2]),
                                       int(data["errors"][2]))
                for pid, (first, last, mean, var, n) in data["patterns"].items():
                    t = _Track(float(first))
                    t.last_seen = float(last)
                    t.rate = _Ewma(float(mean), float(var), int(n))
                    st.tracks[str(pid)] = t
                services[str(svc)] = st
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"bad anomaly detector snapshot: {err}") from None
        self._services = services
