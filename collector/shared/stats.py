"""Pattern statistics summed across replicas, so the leader's control loop sees the whole
service (docs/scale.md §Statistics).

Push (every replica, every ``sync_interval``): :meth:`StatsPusher.prepare` turns the
sampler's cumulative ``pattern_stats`` rows into what changed since the last successful
push, and :meth:`StatsPusher.push` adds it to the current window's hash of each service
with one :data:`INCR_MANY` script call (HINCRBY per field, then EXPIRE):

    {ns}:stats:counts:<service>:<bucket>    bucket = floor(unix time / stats_window)
        <pid>|c   records          <pid>|k   kept
        <pid>|bk  bytes kept       <pid>|bd  bytes dropped (estimated, as the sampler does)
        <pid>|s|<SEVERITY>         records per severity range (INFO, WARN, ...)
        <pid>|a|<kind>             > 0: a replica had the anomaly flag (new, spike) active
        |surge                     > 0: a replica flagged an error surge for the service
    {ns}:stats:patterns:<service>           pid -> {"t": template, "f": family, "fs": first seen}
    {ns}:stats:services                     service -> time of its last push (zset)

A push that fails leaves the counts unsent; the next successful one carries them (in the
window it lands in). Counters that go backwards (a pattern evicted and seen again, a
restart) count from zero again. Window hashes expire ``lookback + 2 windows`` after their
last write, pattern metadata and the service list a day after the service's last push.

Read (the leader, :func:`read_rows`): the windows that overlap the last ``lookback``
seconds, summed per pattern, as rows shaped like ``SamplingProcessor.pattern_stats`` plus
``span`` (the seconds the counts cover), which the control loop's RateTracker turns into
rates directly (collector/control/snapshot.py).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from typing import Any

from collector.shared.keys import Keys

INCR_MANY = """
for i = 2, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return #ARGV
"""
"""KEYS: the window hash. ARGV: TTL seconds, then field, increment pairs."""

META_TTL = 86_400  # seconds pattern metadata and the service list outlive the last push
MAX_PAIRS = 5000  # field/increment pairs per script call
SEVERITY_NUMBER = {"TRACE": 1, "DEBUG": 5, "INFO": 9, "WARN": 13, "ERROR": 17, "FATAL": 21}

# (count, kept, bytes kept, bytes dropped, severity counts)
_Counts = tuple[int, int, int, int, dict[str, int]]


class Prepared:
    """One push, computed off the event loop: per service, the window hash's
    ``[field, increment, ...]`` list and the pattern metadata to (re)write."""

    def __init__(self) -> None:
        self.incr: dict[str, list[Any]] = {}
        self.meta: dict[str, dict[str, str]] = {}
        self.counts: dict[tuple[str, str], _Counts] = {}
        self.described: dict[tuple[str, str], tuple[str, str]] = {}


class StatsPusher:
    """One replica's side: remembers what it has pushed (module docstring)."""

    def __init__(self, keys: Keys, window: float, lookback: float) -> None:
        self.keys = keys
        self.window = window
        self.ttl = math.ceil(lookback + 2 * window)
        self._pushed: dict[tuple[str, str], _Counts] = {}
        self._described: dict[tuple[str, str], tuple[str, str]] = {}

    def forget_descriptions(self) -> None:
        """Write every pattern's metadata again at the next push (Redis may have lost
        it)."""
        self._described = {}

    def prepare(self, rows: list[dict[str, Any]], flags: list[dict[str, Any]]) -> Prepared:
        """The increments since the last successful push. Pure: safe in a worker thread."""
        out = Prepared()
        surge = {f["service"] for f in flags if f["kind"] == "error_surge"}
        for row in rows:
            svc, pid = row["service"], row["pattern_id"]
            key = (svc, pid)
            now = (int(row["count"]), int(row["kept"]), int(row["bytes_kept"]),
                   int(row["bytes_dropped"]), dict(row["severity"]))
            out.counts[key] = now
            before = self._pushed.get(key)
            if before is None or now[0] < before[0]:
                before = (0, 0, 0, 0, {})
            fields = out.incr.setdefault(svc, [])
            if now[0] > before[0]:
                for name, a, b in (("c", now[0], before[0]), ("k", now[1], before[1]),
                                   ("bk", now[2], before[2]), ("bd", now[3], before[3])):
                    if a != b:
                        fields += (f"{pid}|{name}", a - b)
                for sev, n in now[4].items():
                    d = n - before[4].get(sev, 0)
                    if d:
                        fields += (f"{pid}|s|{sev}", d)
            for kind in row.get("anomaly") or ():
                fields += (f"{pid}|a|{kind}", 1)
            described = (row["template"], row["family"])
            if described[0] and self._described.get(key) != described:
                out.meta.setdefault(svc, {})[pid] = json.dumps(
                    {"t": described[0], "f": described[1], "fs": row["first_seen"]},
                    separators=(",", ":"))
                out.described[key] = described
        for svc in surge:
            out.incr.setdefault(svc, []).extend(("|surge", 1))
        return out

    async def push(self, client: Any, script: Any, prepared: Prepared, now: float) -> int:
        """Send a prepared push; on success it becomes the base of the next one. Returns
        the number of services pushed. Raises RedisError (nothing is marked pushed)."""
        bucket = math.floor(now / self.window)
        pipe = client.pipeline(transaction=False)
        sent = 0
        for svc, fields in prepared.incr.items():
            if not fields and svc not in prepared.meta:
                continue
            key = self.keys.stats(svc, bucket)
            for i in range(0, len(fields), 2 * MAX_PAIRS):
                await script(keys=[key], args=[self.ttl, *fields[i:i + 2 * MAX_PAIRS]],
                             client=pipe)
            if svc in prepared.meta:
                pipe.hset(self.keys.patterns(svc), mapping=prepared.meta[svc])
            pipe.expire(self.keys.patterns(svc), META_TTL)
            pipe.zadd(self.keys.services, {svc: now})
            sent += 1
        if sent:
            pipe.zremrangebyscore(self.keys.services, "-inf", now - META_TTL)
            await pipe.execute()
        self._pushed = prepared.counts
        self._described = {k: v for k, v in {**self._described, **prepared.described}.items()
                           if k in prepared.counts}
        return sent


async def read_rows(client: Any, keys: Keys, window: float, lookback: float, now: float,
                    rate_for: Callable[[str, str, str, int], float],
                    services: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Every replica's counts of the last ``lookback`` seconds, summed per pattern.

    rate_for(service, pattern_id, family, severity_number): the policy's rate in force
    (the row's ``rate``); services: these only (None: every service that pushed within
    the lookback). Rows as ``SamplingProcessor.pattern_stats`` (without ``window``) plus
    ``span``: seconds the counts cover (from the first window's start to ``now``, or from
    the pattern's first sighting when later) and ``error_surge``: a replica flagged one
    for the service. Raises RedisError.
    """
    first = math.floor((now - lookback) / window)
    last = math.floor(now / window)
    span = now - first * window
    if services is None:
        services = await client.zrangebyscore(keys.services, now - lookback - window, "+inf")
    services = list(services)
    pipe = client.pipeline(transaction=False)
    for svc in services:
        for b in range(first, last + 1):
            pipe.hgetall(keys.stats(svc, b))
    hashes = await pipe.execute()
    rows: list[dict[str, Any]] = []
    per = last - first + 1
    for i, svc in enumerate(services):
        totals: dict[str, dict[str, Any]] = {}
        surge = False
        for h in hashes[i * per:(i + 1) * per]:
            for field, value in h.items():
                pid, _, rest = field.partition("|")
                if not pid:
                    surge = surge or rest == "surge"
                    continue
                t = totals.setdefault(pid, {"c": 0, "k": 0, "bk": 0, "bd": 0, "s": {},
                                            "a": set()})
                if rest.startswith("s|"):
                    t["s"][rest[2:]] = t["s"].get(rest[2:], 0) + int(value)
                elif rest.startswith("a|"):
                    t["a"].add(rest[2:])
                else:
                    t[rest] += int(value)
        pids = [p for p, t in totals.items() if t["c"] > 0]
        meta = await client.hmget(keys.patterns(svc), pids) if pids else []
        for pid, raw in zip(pids, meta, strict=True):
            t = totals[pid]
            m = json.loads(raw) if raw else {}
            family = m.get("f", "")
            first_seen = float(m.get("fs", now - span))
            sev = {k: v for k, v in t["s"].items() if v > 0}
            top = max(sev, key=sev.__getitem__) if sev else "INFO"
            kept = min(t["k"], t["c"])
            rows.append({
                "service": svc, "pattern_id": pid, "template": m.get("t", ""),
                "family": family, "count": t["c"], "kept": kept, "dropped": t["c"] - kept,
                "bytes_kept": max(t["bk"], 0), "bytes_dropped": max(t["bd"], 0),
                "severity": sev, "first_seen": first_seen, "last_seen": now,
                "rate": rate_for(svc, pid, family, SEVERITY_NUMBER.get(top, 9)),
                "anomaly": sorted(t["a"]), "error_surge": surge,
                "span": max(min(span, now - first_seen), 1.0),
            })
    rows.sort(key=lambda r: r["count"], reverse=True)
    return rows
