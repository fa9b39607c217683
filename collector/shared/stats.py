"""Pattern statistics summed across replicas, so the leader's control loop sees the whole
service (docs/scale.md §Statistics).

Push (every replica, every ``sync_interval``): :meth:`StatsPusher.prepare` (in a worker
thread) turns the sampler's cumulative ``pattern_stats`` rows into what changed since the
last successful push, as one JSON document per service, and :meth:`StatsPusher.push` hands
each to :data:`PUSH` (one script call per service; Redis does the HINCRBYs):

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

Read (the leader, :func:`read_rows`): :data:`READ` sums the windows that overlap the last
``lookback`` seconds in Redis and returns one JSON document; the rows are built from it in
a worker thread, shaped like ``SamplingProcessor.pattern_stats`` plus ``span`` (the
seconds the counts cover), which the control loop's RateTracker turns into rates directly
(collector/control/snapshot.py). Large documents instead of many small replies keep the
event loop free: parsing 10^5 replies in Python would hold it for a second.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterable
from typing import Any

from collector.shared.keys import Keys

PUSH = """
for field, n in pairs(cjson.decode(ARGV[1])) do
  redis.call('HINCRBY', KEYS[1], field, n)
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
for pid, doc in pairs(cjson.decode(ARGV[3])) do
  redis.call('HSET', KEYS[2], pid, doc)
end
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[5], ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[5] - ARGV[4])
return 1
"""
"""KEYS: window hash, pattern metadata hash, services zset. ARGV: increments (JSON object
field -> decimal string), window TTL s, metadata (JSON object pid -> JSON text), metadata
TTL s, now (unix s), service."""

READ = """
local totals = {}
for i = 2, #KEYS do
  local h = redis.call('HGETALL', KEYS[i])
  for j = 1, #h, 2 do
    totals[h[j]] = (totals[h[j]] or 0) + tonumber(h[j + 1])
  end
end
local out = {0}
local part, n, pids = {}, 0, {}
for field, v in pairs(totals) do
  part[field] = v
  n = n + 1
  if n == 2000 then
    out[#out + 1] = cjson.encode(part)
    part, n = {}, 0
  end
  if v > 0 and string.sub(field, -2) == '|c' then
    pids[#pids + 1] = string.sub(field, 1, -3)
  end
end
if n > 0 then out[#out + 1] = cjson.encode(part) end
out[1] = #out - 1
for i = 1, #pids, 1000 do
  local chunk = {unpack(pids, i, math.min(i + 999, #pids))}
  local docs = redis.call('HMGET', KEYS[1], unpack(chunk))
  local meta, any = {}, false
  for j = 1, #chunk do
    if docs[j] then
      meta[chunk[j]] = docs[j]
      any = true
    end
  end
  if any then out[#out + 1] = cjson.encode(meta) end
end
return out
"""
"""KEYS: metadata hash, then the window hashes. Returns ``[k, sums 1..k, metadata...]``:
JSON objects of at most 2000 summed fields, then of at most 1000 patterns' metadata (small
documents, so that decoding one holds the interpreter for a millisecond, not 50)."""

META_TTL = 86_400  # seconds pattern metadata and the service list outlive the last push
SEVERITY_NUMBER = {"TRACE": 1, "DEBUG": 5, "INFO": 9, "WARN": 13, "ERROR": 17, "FATAL": 21}

# (count, kept, bytes kept, bytes dropped, severity counts)
_Counts = tuple[int, int, int, int, dict[str, int]]


class Prepared:
    """One push, computed off the event loop: per service, the increments and the
    pattern metadata to (re)write, as the JSON texts :data:`PUSH` takes."""

    def __init__(self) -> None:
        self.incr: dict[str, str] = {}
        self.meta: dict[str, str] = {}
        self.counts: dict[tuple[str, str], _Counts] = {}
        self.described: dict[tuple[str, str], tuple[str, str]] = {}


class StatsPusher:
    """One replica's side: remembers what it has pushed (module docstring).

    keys: the namespace's keys; window: seconds per bucket; lookback: seconds the leader
    reads (the windows' TTL covers it).
    """

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
        incr: dict[str, dict[str, str]] = {}
        meta: dict[str, dict[str, str]] = {}
        out = Prepared()
        for row in rows:
            svc, pid = row["service"], row["pattern_id"]
            key = (svc, pid)
            now = (int(row["count"]), int(row["kept"]), int(row["bytes_kept"]),
                   int(row["bytes_dropped"]), dict(row["severity"]))
            out.counts[key] = now
            before = self._pushed.get(key)
            if before is None or now[0] < before[0]:
                before = (0, 0, 0, 0, {})
            fields = incr.setdefault(svc, {})
            if now[0] > before[0]:
                for name, a, b in (("c", now[0], before[0]), ("k", now[1], before[1]),
                                   ("bk", now[2], before[2]), ("bd", now[3], before[3])):
                    if a != b:
                        fields[f"{pid}|{name}"] = str(a - b)
                for sev, n in now[4].items():
                    if n != before[4].get(sev, 0):
                        fields[f"{pid}|s|{sev}"] = str(n - before[4].get(sev, 0))
            for kind in row.get("anomaly") or ():
                fields[f"{pid}|a|{kind}"] = "1"
            described = (row["template"], row["family"])
            if described[0] and self._described.get(key) != described:
                meta.setdefault(svc, {})[pid] = json.dumps(
                    {"t": described[0], "f": described[1], "fs": row["first_seen"]},
                    separators=(",", ":"))
                out.described[key] = described
        for f in flags:
            if f["kind"] == "error_surge":
                incr.setdefault(f["service"], {})["|surge"] = "1"
        for svc in incr.keys() | meta.keys():
            if incr.get(svc) or meta.get(svc):
                out.incr[svc] = json.dumps(incr.get(svc) or {}, separators=(",", ":"))
                out.meta[svc] = json.dumps(meta.get(svc) or {}, separators=(",", ":"))
        return out

    async def push(self, client: Any, script: Any, prepared: Prepared, now: float) -> int:
        """Send a prepared push (``script``: :data:`PUSH` registered on ``client``); on
        success it becomes the base of the next one. Returns the number of services
        pushed. Raises RedisError (nothing is marked pushed)."""
        bucket = math.floor(now / self.window)
        if prepared.incr:
            pipe = client.pipeline(transaction=False)
            for svc, incr in prepared.incr.items():
                await script(keys=[self.keys.stats(svc, bucket), self.keys.patterns(svc),
                                   self.keys.services],
                             args=[incr, self.ttl, prepared.meta[svc], META_TTL, now, svc],
                             client=pipe)
            await pipe.execute()
        self._pushed = prepared.counts
        self._described = {k: v for k, v in {**self._described, **prepared.described}.items()
                           if k in prepared.counts}
        return len(prepared.incr)


async def read_rows(client: Any, script: Any, keys: Keys, window: float, lookback: float,
                    now: float, rate_for: Callable[[str, str, str, int], float],
                    services: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Every replica's counts of the last ``lookback`` seconds, summed per pattern.

    script: :data:`READ` registered on ``client``; rate_for(service, pattern_id, family,
    severity_number): the policy's rate in force (the row's ``rate``); services: these
    only (None: every service that pushed within the lookback). Rows as
    ``SamplingProcessor.pattern_stats`` (without ``window``), highest count first, plus
    ``span``: seconds the counts cover (from the first window's start to ``now``, or from
    the pattern's first sighting when later) and ``error_surge``: a replica flagged one
    for the service. Raises RedisError.
    """
    first = math.floor((now - lookback) / window)
    last = math.floor(now / window)
    span = now - first * window
    if services is None:
        services = await client.zrangebyscore(keys.services, now - lookback - window, "+inf")
    rows: list[dict[str, Any]] = []
    for svc in services:
        reply = await script(keys=[keys.patterns(svc), *(keys.stats(svc, b)
                                                        for b in range(first, last + 1))])
        k = int(reply[0])
        rows += await asyncio.to_thread(_rows, svc, reply[1:k + 1], reply[k + 1:], now, span,
                                        rate_for)
    rows.sort(key=lambda r: r["count"], reverse=True)
    return rows


def _rows(svc: str, sums: list[str], metas: list[str], now: float, span: float,
          rate_for: Callable[[str, str, str, int], float]) -> list[dict[str, Any]]:
    """Rows of one service from :data:`READ`'s answer."""
    totals: dict[str, dict[str, Any]] = {}
    surge = False
    fields = (item for chunk in sums for item in json.loads(chunk).items())
    for field, value in fields:
        pid, _, rest = field.partition("|")
        if not pid:
            surge = surge or rest == "surge"
            continue
        t = totals.setdefault(pid, {"c": 0, "k": 0, "bk": 0, "bd": 0, "s": {}, "a": []})
        if rest.startswith("s|"):
            t["s"][rest[2:]] = int(value)
        elif rest.startswith("a|"):
            t["a"].append(rest[2:])
        else:
            t[rest] = int(value)
    meta: dict[str, str] = {}
    for chunk in metas:
        meta.update(json.loads(chunk))
    rows = []
    for pid, t in totals.items():
        if t["c"] <= 0:
            continue
        m = json.loads(meta[pid]) if pid in meta else {}
        family = m.get("f", "")
        first_seen = float(m.get("fs", now - span))
        sev = {k: v for k, v in t["s"].items() if v > 0}
        top = max(sev, key=sev.__getitem__) if sev else "INFO"
        kept = min(max(t["k"], 0), t["c"])
        rows.append({
            "service": svc, "pattern_id": pid, "template": m.get("t", ""),
            "family": family, "count": t["c"], "kept": kept, "dropped": t["c"] - kept,
            "bytes_kept": max(t["bk"], 0), "bytes_dropped": max(t["bd"], 0),
            "severity": sev, "first_seen": first_seen, "last_seen": now,
            "rate": rate_for(svc, pid, family, SEVERITY_NUMBER.get(top, 9)),
            "anomaly": sorted(t["a"]), "error_surge": surge,
            "span": max(min(span, now - first_seen), 1.0),
        })
    return rows
