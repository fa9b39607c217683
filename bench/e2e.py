"""End-to-end benchmark: the sidecar as a subprocess, a load generator and a sink in their own
processes, all on loopback (issue 9).

Usage::

    python bench/e2e.py [--duration 20] [--warmup 5] [--concurrency 4] [--variants 8]
                        [--patterns 100000] [--soak 0] [--write-docs] [--only RUNS] [--keep-tmp]

What runs, in one invocation (so that ratios are measured under the same machine load):

- ``limit``: the in-process limit, in this process on one core: ``FromString`` +
  ``SerializeToString`` of the same requests (and the same plus gzip at the exporter's level);
- ``pass-through``: ``python -m collector run -c <generated YAML>`` with no processors,
  its ``otlphttp`` exporter pointed at the sink; load over OTLP/HTTP and OTLP/gRPC;
- ``full``: the same sidecar with ``processors: [signature, sampling]`` (default config,
  default policy); OTLP/HTTP and OTLP/gRPC at the highest load the sidecar takes (closed
  loop: ``--concurrency`` requests in flight, each sent as soon as the previous answered);
- ``half``: the full pipeline over OTLP/HTTP paced at half the records/s the ``full``
  OTLP/HTTP run sustained (the p99 latency target);
- ``patterns``: the full pipeline fed ``--patterns`` distinct synthetic templates (the RSS
  target);
- ``soak`` (``--soak SECONDS``): the full pipeline at half load for that long, RSS sampled.

Load: pre-serialized ``ExportLogsServiceRequest`` bodies of 1,000 records built from the
shared Loghub lines (``<S>_2k.log``, raw lines as bodies, one ``service.name`` per system,
severity from the line's level word as ``collector.replay.severity_of`` reads it, time and
observed time set as an SDK sets them). ``--variants N`` makes N copies of the 22,000 lines,
copies after the first with every run of 2+ digits re-drawn (same length), so most bodies are
new to the sidecar, as timestamps and ids make them in real logs. One record per request is a
latency probe: severity ERROR (always kept by the sampling policy), attribute
``bench.sent_ns`` = the wall-clock send time, written into the pre-serialized bytes at send
time; the sink reads it and records ``arrival - sent``.

Columns: records/s in = log records accepted (HTTP 200 / gRPC OK) by the sidecar per second
of the measurement window (after ``--warmup``); out = records arriving at the sink per
second; p50/p99 = added latency of the probes sent in the window (send -> sink arrival, ms);
CPU s per 1M = sidecar CPU seconds (utime + stime of all its threads, /proc/<pid>/stat) in the
window per million records accepted; peak RSS = the sidecar's VmHWM at the end of the run.

Data: ``<repo>/../shared/data/loghub_2k`` or ``$LIPSERVICE_LOGHUB_DIR`` (research licence:
read in place, never copied into the repo).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import datetime as dt
import json
import math
import os
import pickle
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (  # noqa: E402
    ExportLogsServiceRequest,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue  # noqa: E402
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord  # noqa: E402

from collector.replay import severity_of  # noqa: E402

SYSTEMS = ["Android", "Apache", "BGL", "HDFS", "HPC", "Linux", "OpenSSH", "Proxifier",
           "Spark", "Windows", "Zookeeper"]
RECORDS_PER_REQUEST = 1000
PROBE_KEY = "bench.sent_ns"
PROBE_BODY = "bench latency probe"
_PLACEHOLDER = b"0" * 19
# A KeyValue{key: PROBE_KEY, value: AnyValue{string_value: <19 digits>}} serializes to this
# prefix followed by the 19 digits (field 1 len 13, field 2 len 21 holding field 1 len 19).
PROBE_MARKER = b"\x0a\x0d" + PROBE_KEY.encode() + b"\x12\x15\x0a\x13"
PROBE_RE = re.compile(re.escape(PROBE_MARKER) + rb"(\d{19})")
GRPC_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
BASE_TIME_NS = 1_700_000_000_000_000_000
CLK_TCK = os.sysconf("SC_CLK_TCK")


def data_dir() -> Path:
    env = os.environ.get("LIPSERVICE_LOGHUB_DIR")
    return Path(env) if env else ROOT.parent / "shared" / "data" / "loghub_2k"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- payloads


@dataclass
class Payload:
    """One pre-serialized request split around the probe's 19-digit send time:
    ``prefix + b"%019d" % sent_ns + suffix`` is the body; ``records`` counts the probe."""

    prefix: bytes
    suffix: bytes
    records: int

    def body(self, sent_ns: int) -> bytes:
        return self.prefix + b"%019d" % sent_ns + self.suffix


def build_request(service: str, lines: list[str], with_probe: bool = True,
                  t0: int = BASE_TIME_NS) -> ExportLogsServiceRequest:
    """An ExportLogsServiceRequest of one resource (``service.name`` = service) and one
    scope: one record per line (body = the line, severity from its level word, time and
    observed time set), then the latency probe record when ``with_probe``."""
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    for key, value in (("service.name", service), ("telemetry.sdk.language", "python"),
                       ("host.name", "bench-host")):
        rl.resource.attributes.append(KeyValue(key=key, value=AnyValue(string_value=value)))
    sl = rl.scope_logs.add()
    sl.scope.name = "bench.e2e"
    recs = sl.log_records
    for i, line in enumerate(lines):
        number, text = severity_of(line)
        recs.append(LogRecord(time_unix_nano=t0 + i * 1000, observed_time_unix_nano=t0 + i * 1000,
                              severity_number=number, severity_text=text,
                              body=AnyValue(string_value=line)))
    if with_probe:
        recs.append(LogRecord(time_unix_nano=t0, observed_time_unix_nano=t0, severity_number=17,
                              severity_text="ERROR", body=AnyValue(string_value=PROBE_BODY),
                              attributes=[KeyValue(key=PROBE_KEY, value=AnyValue(
                                  string_value=_PLACEHOLDER.decode()))]))
    return req


def to_payload(req: ExportLogsServiceRequest) -> Payload:
    """Split a request holding exactly one probe placeholder. Raises ValueError otherwise."""
    data = req.SerializeToString()
    at = data.find(PROBE_MARKER + _PLACEHOLDER)
    if at < 0 or data.find(PROBE_MARKER, at + 1) >= 0:
        raise ValueError("request must hold exactly one latency probe")
    start = at + len(PROBE_MARKER)
    n = sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)
    return Payload(data[:start], data[start + 19:], n)


_TIME_COLUMNS = ("Date", "Time", "Timestamp")


def _redraw(text: str, rng: random.Random) -> str:
    """Every run of digits not glued to a letter (``dbcr0``, ``ssh2`` stay) replaced by
    random digits of the same length; the ``0`` of a ``0x`` prefix stays."""
    def fresh(m: re.Match[str]) -> str:
        if m.group(0) == "0" and text[m.end():m.end() + 1] in ("x", "X"):
            return "0"
        return "".join(rng.choice("0123456789") for _ in m.group(0))

    return re.sub(r"(?<![A-Za-z])\d+", fresh, text)


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + "(.*?)".join(re.escape(p) for p in template.split("<*>")) + "$",
                      re.DOTALL)


def varied_lines(root: Path, name: str, variants: int, rng: random.Random) -> list[str]:
    """The system's raw lines (``<S>_2k.log``), then ``variants - 1`` copies in which what
    changes from one record of a log statement to the next in real logs gets fresh values:
    the digits of the timestamp columns (Date, Time, Timestamp) and of every parameter the
    Loghub ground truth marks ``<*>`` (``<S>_2k.log_structured_corrected.csv``); digits
    re-drawn keep their count. Constants (node names, ports, class@line) stay as they are."""
    lines = (root / name / f"{name}_2k.log").read_text(encoding="utf-8",
                                                        errors="replace").splitlines()
    out = list(lines)
    if variants <= 1:
        return out
    with open(root / name / f"{name}_2k.log_structured_corrected.csv", newline="",
              encoding="utf-8", errors="replace") as f:
        rows = list(csv.DictReader(f))
    regexes: dict[str, re.Pattern[str]] = {}
    for _ in range(1, variants):
        for line, row in zip(lines, rows, strict=False):
            content = row["Content"]
            at = line.rfind(content) if content else -1
            if at < 0:
                out.append(line)
                continue
            header = line[:at]
            for col in _TIME_COLUMNS:
                value = row.get(col)
                if value and value in header:
                    header = header.replace(value, _redraw(value, rng), 1)
            tmpl = row["EventTemplate"]
            rx = regexes.get(tmpl) or regexes.setdefault(tmpl, _template_regex(tmpl))
            m = rx.match(content)
            if m and m.groups():
                parts, pos = [], 0
                for i in range(1, len(m.groups()) + 1):
                    parts += [content[pos:m.start(i)], _redraw(m.group(i), rng)]
                    pos = m.end(i)
                content = "".join(parts) + content[pos:]
            out.append(header + content + line[at + len(row["Content"]):])
    return out


def loghub_payloads(root: Path, variants: int = 1, seed: int = 1,
                    per_request: int = RECORDS_PER_REQUEST) -> list[Payload]:
    """Requests of ``per_request`` records (``per_request - 1`` Loghub lines + the probe):
    per system, its lines ``variants`` times over (:func:`varied_lines`) cut into requests (a short tail is left out); the systems' requests
    interleaved. Raises FileNotFoundError when the data is absent."""
    rng = random.Random(seed)
    chunk = per_request - 1
    batches: list[list[Payload]] = []
    for name in SYSTEMS:
        stream = varied_lines(root, name, variants, rng)
        batches.append([to_payload(build_request(name, stream[i:i + chunk]))
                        for i in range(0, len(stream) - chunk + 1, chunk)])
    out: list[Payload] = []
    for i in range(max(map(len, batches))):
        out.extend(b[i] for b in batches if i < len(b))
    return out


_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "ta", "vo", "shi", "pe", "zu", "bra", "den",
              "fil", "gor", "hex", "jin", "kor", "lum", "mor", "nix", "orb", "pla", "qui",
              "ros", "sel", "tor", "ulm", "ver", "wyn", "yar"]


def synthetic_templates(n: int, seed: int = 7) -> list[list[str]]:
    """``n`` distinct templates of 6-11 tokens: letter-only words (constants for the
    masker) from a vocabulary of 20,000 words, with 1-3 variable slots (``{num}``,
    ``{ip}``, ``{hex}``, ``k={num}``). Two templates share few words, so the signature
    processor mines each as its own pattern."""
    rng = random.Random(seed)
    vocab: set[str] = set()
    while len(vocab) < 20_000:
        vocab.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 4))))
    words = sorted(vocab)
    seen: set[tuple[str, ...]] = set()
    out: list[list[str]] = []
    while len(out) < n:
        length = rng.randint(5, 9)
        toks = [rng.choice(words) for _ in range(length)]
        for _ in range(rng.randint(1, 3)):
            toks.insert(rng.randint(1, len(toks)), rng.choice(
                ["{num}", "{ip}", "{hex}", "id={num}"]))
        key = tuple(toks)
        if key not in seen:
            seen.add(key)
            out.append(toks)
    return out


def fill(template: list[str], rng: random.Random) -> str:
    parts = []
    for tok in template:
        if "{num}" in tok:
            tok = tok.replace("{num}", str(rng.randint(0, 99_999)))
        elif tok == "{ip}":
            tok = f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}"
        elif tok == "{hex}":
            tok = f"0x{rng.getrandbits(32):08x}"
        parts.append(tok)
    return " ".join(parts)


def pattern_payloads(n_templates: int, passes: int = 2, seed: int = 7,
                     per_request: int = RECORDS_PER_REQUEST) -> list[Payload]:
    """Requests cycling through ``n_templates`` synthetic templates (each pass every
    template once, with fresh variable values), one service; INFO severity."""
    templates = synthetic_templates(n_templates, seed)
    rng = random.Random(seed + 1)
    chunk = per_request - 1
    out: list[Payload] = []
    for _ in range(passes):
        for i in range(0, n_templates, chunk):
            req = build_request("patterns", [fill(t, rng) for t in templates[i:i + chunk]])
            for rec in req.resource_logs[0].scope_logs[0].log_records[:-1]:
                rec.severity_number, rec.severity_text = 9, "INFO"
            out.append(to_payload(req))
    return out


def payloads_from_spec(spec: str) -> list[Payload]:
    """``loghub:<variants>``, ``patterns:<n>``, or ``file:<path>`` (a :func:`save_payloads`
    file)."""
    kind, _, arg = spec.partition(":")
    if kind == "loghub":
        return loghub_payloads(data_dir(), variants=int(arg or 1))
    if kind == "patterns":
        return pattern_payloads(int(arg or 100_000))
    if kind == "file":
        with open(arg, "rb") as f:
            return [Payload(*t) for t in pickle.load(f)]
    raise ValueError(f"unknown payload spec {spec!r}")


def save_payloads(payloads: list[Payload], path: Path) -> str:
    """Write payloads for the load generator; returns the ``file:`` spec."""
    with open(path, "wb") as f:
        pickle.dump([(p.prefix, p.suffix, p.records) for p in payloads], f, protocol=5)
    return f"file:{path}"


# --------------------------------------------------------------------------- measurement


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by the nearest-rank method; NaN for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(s)))
    return s[min(rank, len(s)) - 1]


def window_sum(events: list[tuple[int, int]], start: int, end: int) -> int:
    """Sum of counts of (time_ns, count) events with start <= time < end."""
    return sum(n for t, n in events if start <= t < end)


def rate(events: list[tuple[int, int]], start: int, end: int) -> float:
    """Counts per second of the events in [start, end) (times in ns)."""
    return window_sum(events, start, end) / ((end - start) / 1e9) if end > start else math.nan


def interpolate(samples: list[tuple[int, float]], t: int) -> float:
    """Linear interpolation of a (time_ns, value) series at t (clamped at the ends)."""
    if not samples:
        return math.nan
    if t <= samples[0][0]:
        return samples[0][1]
    for (t0, v0), (t1, v1) in zip(samples, samples[1:], strict=False):
        if t0 <= t <= t1:
            return v0 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
    return samples[-1][1]


def cpu_per_million(cpu: list[tuple[int, float]], start: int, end: int, records: int) -> float:
    """CPU seconds spent in [start, end) per million records (cpu: (time_ns, cumulative
    CPU seconds) samples)."""
    if records <= 0:
        return math.nan
    return (interpolate(cpu, end) - interpolate(cpu, start)) / records * 1e6


@dataclass
class RunResult:
    name: str
    proto: str
    concurrency: int
    target_rate: float | None
    rate_in: float
    rate_out: float
    p50_ms: float
    p99_ms: float
    probes: int
    probes_lost: int
    cpu_per_m: float
    cpu_share: float  # cores used by the sidecar in the window
    rss_peak_mib: float
    refused: int
    errors: int
    load: tuple[float, float]
    extra: dict[str, Any] = field(default_factory=dict)


def summarize(name: str, proto: str, concurrency: int, target_rate: float | None,
              sends: list[tuple[int, int, int, int]], arrivals: list[tuple[int, int]],
              probes: list[tuple[int, int]], cpu: list[tuple[int, float]],
              start: int, end: int, rss_peak_kib: int,
              load: tuple[float, float]) -> RunResult:
    """The table row of one run from raw observations (all times in ns, wall clock):

    sends: (sent_ns, done_ns, records, outcome) per request, outcome 0 = accepted,
        1 = refused (429 / RESOURCE_EXHAUSTED), 2 = other error;
    arrivals: (arrival_ns, records) per request reaching the sink;
    probes: (sent_ns, arrival_ns) per probe record reaching the sink;
    cpu: (time_ns, cumulative CPU seconds of the sidecar);
    [start, end): the measurement window.
    """
    accepted = [(done, n) for _, done, n, outcome in sends if outcome == 0]
    in_window = window_sum(accepted, start, end)
    sent_ok = [s for s, d, _, outcome in sends if outcome == 0 and start <= s < end]
    lat = [(a - s) / 1e6 for s, a in probes if start <= s < end]
    seconds = (end - start) / 1e9
    cpu_used = interpolate(cpu, end) - interpolate(cpu, start)
    return RunResult(
        name=name, proto=proto, concurrency=concurrency, target_rate=target_rate,
        rate_in=in_window / seconds, rate_out=rate(arrivals, start, end),
        p50_ms=percentile(lat, 50), p99_ms=percentile(lat, 99), probes=len(lat),
        probes_lost=max(0, len(sent_ok) - len(lat)),
        cpu_per_m=cpu_per_million(cpu, start, end, in_window),
        cpu_share=cpu_used / seconds if seconds > 0 else math.nan,
        rss_peak_mib=rss_peak_kib / 1024,
        refused=sum(1 for *_, o in sends if o == 1),
        errors=sum(1 for *_, o in sends if o == 2), load=load)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (seconds)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of stat(5)


def proc_status_kib(pid: int, key: str) -> int:
    """A ``kB`` line of /proc/<pid>/status (``VmHWM``, ``VmRSS``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------- sink process


def sink_main(port: int) -> None:
    """OTLP/HTTP sink: counts records per request, reads probe send times; GET /stats
    returns and clears what it saw since the last call."""
    from aiohttp import web

    arrivals: list[tuple[int, int]] = []
    probes: list[tuple[int, int]] = []

    async def logs(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time_ns()
        if body[:2] == b"\x1f\x8b":  # gzip (the server does not decompress: see below)
            body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
        req = ExportLogsServiceRequest.FromString(body)
        n = sum(len(sl.log_records) for rl in req.resource_logs for sl in rl.scope_logs)
        arrivals.append((now, n))
        probes.extend((int(m), now) for m in PROBE_RE.findall(body))
        return web.Response(body=b"", content_type="application/x-protobuf")

    async def stats(request: web.Request) -> web.Response:
        out = {"arrivals": list(arrivals), "probes": list(probes),
               "cpu": time.process_time()}
        arrivals.clear()
        probes.clear()
        return web.json_response(out)

    app = web.Application(client_max_size=64 * 1024**2)
    app.router.add_post("/v1/logs", logs)
    app.router.add_get("/stats", stats)
    _use_uvloop()
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None,
                handle_signals=True, auto_decompress=False)


def _use_uvloop() -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass


# --------------------------------------------------------------------------- load process


class Schedule:
    """Hands out request slots: as fast as asked (rate None) or paced at ``rate``
    records/s; stops at ``end`` (monotonic seconds)."""

    def __init__(self, payloads: list[Payload], end: float, rate: float | None) -> None:
        self.payloads = payloads
        self.end = end
        self.rate = rate
        self.i = 0
        self.start = time.monotonic()
        self.next_at = self.start
        self.late = 0

    async def next(self) -> Payload | None:
        now = time.monotonic()
        if now >= self.end:
            return None
        p = self.payloads[self.i % len(self.payloads)]
        self.i += 1
        if self.rate:
            at = self.next_at
            self.next_at += p.records / self.rate
            if at > now:
                await asyncio.sleep(at - now)
            elif now - at > 0.01:
                self.late += 1
        return p


async def http_worker(port: int, sched: Schedule, out: list[tuple[int, int, int, int]]) -> None:
    """One keep-alive connection; sends while the schedule gives slots. A minimal
    HTTP/1.1 client, so that the load generator costs little CPU."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    heads: dict[int, bytes] = {}
    try:
        while (p := await sched.next()) is not None:
            length = len(p.prefix) + 19 + len(p.suffix)
            head = heads.get(length)
            if head is None:
                head = heads[length] = (
                    f"POST /v1/logs HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Content-Type: application/x-protobuf\r\nContent-Length: {length}"
                    "\r\n\r\n").encode()
            while True:
                sent = time.time_ns()
                writer.writelines((head, p.prefix, b"%019d" % sent, p.suffix))
                await writer.drain()
                status_line = await reader.readline()
                status = int(status_line.split()[1])
                raw = await reader.readuntil(b"\r\n\r\n")
                m = re.search(rb"(?i)content-length:\s*(\d+)", raw)
                if m:
                    await reader.readexactly(int(m.group(1)))
                done = time.time_ns()
                outcome = 0 if status == 200 else 1 if status == 429 else 2
                out.append((sent, done, p.records, outcome))
                if outcome == 0:
                    break
                await asyncio.sleep(0.01)  # refused: back off a little, send it again
                if time.monotonic() >= sched.end:
                    break
    finally:
        writer.close()


async def grpc_worker(channel: Any, sched: Schedule,
                      out: list[tuple[int, int, int, int]]) -> None:
    import grpc

    call = channel.unary_unary(GRPC_METHOD)  # bytes in, bytes out
    while (p := await sched.next()) is not None:
        while True:
            sent = time.time_ns()
            try:
                await call(p.body(sent))
                outcome = 0
            except grpc.aio.AioRpcError as err:
                outcome = 1 if err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else 2
            out.append((sent, time.time_ns(), p.records, outcome))
            if outcome == 0 or time.monotonic() >= sched.end:
                break
            await asyncio.sleep(0.01)


async def load_run(proto: str, port: int, payloads: list[Payload], concurrency: int,
                   seconds: float, rate_: float | None) -> dict[str, Any]:
    sched = Schedule(payloads, time.monotonic() + seconds, rate_)
    out: list[tuple[int, int, int, int]] = []
    t0 = time.time_ns()
    if proto == "http":
        await asyncio.gather(*(http_worker(port, sched, out) for _ in range(concurrency)))
    else:
        from grpc import aio

        async with aio.insecure_channel(f"127.0.0.1:{port}", options=[
                ("grpc.max_send_message_length", 64 * 1024**2)]) as channel:
            await asyncio.gather(*(grpc_worker(channel, sched, out)
                                   for _ in range(concurrency)))
    return {"t0": t0, "t1": time.time_ns(), "sends": out, "late": sched.late,
            "cpu": time.process_time()}


def load_main(args: argparse.Namespace) -> None:
    payloads = payloads_from_spec(args.payloads)
    print("ready", flush=True)
    sys.stdin.readline()  # the controller says go
    _use_uvloop()
    result = asyncio.run(load_run(args.proto, args.port, payloads, args.concurrency,
                                  args.seconds, args.rate or None))
    Path(args.out).write_text(json.dumps(result))


# --------------------------------------------------------------------------- controller


def sidecar_config(tmp: Path, sink_port: int, processors: list[str],
                   extra: dict[str, Any] | None = None) -> tuple[Path, dict[str, int]]:
    ports = {"grpc": free_port(), "http": free_port(), "metrics": free_port()}
    tree: dict[str, Any] = {
        "receivers": {"otlp": {"protocols": {
            "grpc": {"endpoint": f"127.0.0.1:{ports['grpc']}"},
            "http": {"endpoint": f"127.0.0.1:{ports['http']}"}}}},
        "processors": {p: {} for p in processors},
        "exporters": {"otlphttp/sink": {"endpoint": f"http://127.0.0.1:{sink_port}",
                                        "compression": "gzip"}},
        "service": {"pipelines": {"logs": {"receivers": ["otlp"], "processors": processors,
                                           "exporters": ["otlphttp/sink"]}},
                    "telemetry": {"metrics": {"address": f"127.0.0.1:{ports['metrics']}"},
                                  "logs": {"level": "warn"}}},
        "storage": {"directory": str(tmp / "state")},
    }
    for key, value in (extra or {}).items():
        _set_path(tree, key, value)
    import yaml

    path = tmp / "sidecar.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path, ports


def _set_path(tree: dict[str, Any], dotted: str, value: Any) -> None:
    node = tree
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value


def wait_http(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} not ready within {timeout}s")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def scrape(url: str, names: tuple[str, ...]) -> dict[str, float]:
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        for n in names:
            if line.startswith(n + " ") or line.startswith(n + "{"):
                out[n] = out.get(n, 0.0) + float(line.rsplit(" ", 1)[1])
    return out


class CpuSampler(threading.Thread):
    """Samples (time_ns, CPU seconds) and (time_ns, VmRSS KiB) of a pid every ``period``."""

    def __init__(self, pid: int, period: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.cpu: list[tuple[int, float]] = []
        self.rss: list[tuple[int, int]] = []
        self._stop_ev = threading.Event()

    def run(self) -> None:
        while not self._stop_ev.is_set():
            try:
                t = time.time_ns()
                self.cpu.append((t, proc_cpu_seconds(self.pid)))
                self.rss.append((t, proc_status_kib(self.pid, "VmRSS")))
            except (OSError, IndexError, ValueError):
                return
            self._stop_ev.wait(self.period)

    def stop(self) -> None:
        self._stop_ev.set()
        self.join(5)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="lipservice-e2e-"))
        self.sink_port = free_port()
        self.sink: subprocess.Popen[bytes] | None = None
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    def start_sink(self) -> None:
        self.sink = subprocess.Popen([sys.executable, __file__, "_sink", "--port",
                                      str(self.sink_port)], env=self.env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                get_json(f"http://127.0.0.1:{self.sink_port}/stats")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("sink did not start")

    def stop_sink(self) -> None:
        if self.sink is not None and self.sink.poll() is None:
            self.sink.send_signal(signal.SIGINT)
            try:
                self.sink.wait(10)
            except subprocess.TimeoutExpired:
                self.sink.kill()

    def sink_stats(self) -> dict[str, Any]:
        return get_json(f"http://127.0.0.1:{self.sink_port}/stats")

    def run(self, name: str, proto: str, processors: list[str], payloads: str,
            seconds: float, warmup: float, rate_: float | None = None,
            extra: dict[str, Any] | None = None, rss_every: float | None = None) -> RunResult:
        run_dir = self.tmp / f"{name}-{proto}"
        run_dir.mkdir()
        cfg, ports = sidecar_config(run_dir, self.sink_port, processors, extra)
        stderr = open(run_dir / "sidecar.stderr", "w")  # noqa: SIM115
        sidecar = subprocess.Popen([sys.executable, "-m", "collector", "run", "-c", str(cfg)],
                                   cwd=run_dir, env=self.env, stdout=subprocess.DEVNULL,
                                   stderr=stderr)
        loadgen: subprocess.Popen[str] | None = None
        try:
            wait_http(f"http://127.0.0.1:{ports['metrics']}/readyz", 30)
            out_file = run_dir / "load.json"
            cmd = [sys.executable, __file__, "_load", "--proto", proto, "--port",
                   str(ports[proto]), "--concurrency", str(self.args.concurrency),
                   "--seconds", str(warmup + seconds), "--payloads", payloads,
                   "--out", str(out_file)]
            if rate_:
                cmd += ["--rate", str(rate_)]
            loadgen = subprocess.Popen(cmd, env=self.env, stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True)
            assert loadgen.stdout is not None and loadgen.stdin is not None
            if loadgen.stdout.readline().strip() != "ready":
                raise RuntimeError("load generator failed to start")
            self.sink_stats()  # clear
            sampler = CpuSampler(sidecar.pid)
            sampler.start()
            load_start = os.getloadavg()[0]
            loadgen.stdin.write("go\n")
            loadgen.stdin.flush()
            spy = None
            if self.args.profile:
                # py-spy (pip install py-spy) samples the sidecar; it costs the sidecar some
                # CPU, so numbers of profiled runs are not for the table.
                Path(self.args.profile).mkdir(parents=True, exist_ok=True)
                spy = subprocess.Popen(
                    ["py-spy", "record", "--pid", str(sidecar.pid), "--rate", "250",
                     "--nonblocking", "--format", "raw", "--duration",
                     str(int(warmup + seconds)), "-o",
                     str(Path(self.args.profile) / f"{name.replace(' ', '_')}-{proto}.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            loadgen.wait(warmup + seconds + 120)
            if spy is not None:
                spy.wait(30)
            load_end = os.getloadavg()[0]
            result = json.loads(out_file.read_text())
            # let the queue drain into the sink (bounded)
            arrivals: list[tuple[int, int]] = []
            probes: list[tuple[int, int]] = []
            quiet_since = time.monotonic()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and time.monotonic() - quiet_since < 1.5:
                st = self.sink_stats()
                if st["arrivals"]:
                    quiet_since = time.monotonic()
                arrivals += [tuple(a) for a in st["arrivals"]]
                probes += [tuple(p) for p in st["probes"]]
                time.sleep(0.3)
            sampler.stop()
            rss_peak = proc_status_kib(sidecar.pid, "VmHWM")
            metrics = scrape(f"http://127.0.0.1:{ports['metrics']}/metrics",
                             ("lipservice_signature_patterns",
                              "lipservice_signature_patterns_created_total",
                              "otelcol_exporter_sent_log_records_total",
                              "otelcol_exporter_send_failed_log_records_total"))
        finally:
            if loadgen is not None and loadgen.poll() is None:
                loadgen.kill()
            if sidecar.poll() is None:
                sidecar.send_signal(signal.SIGTERM)
                try:
                    sidecar.wait(30)
                except subprocess.TimeoutExpired:
                    sidecar.kill()
            stderr.close()
        (run_dir / "observed.json").write_text(json.dumps(
            {"sends": result["sends"], "arrivals": arrivals, "probes": probes,
             "cpu": sampler.cpu, "rss": sampler.rss}))
        start = result["t0"] + int(warmup * 1e9)
        end = result["t1"]
        row = summarize(name, proto, self.args.concurrency, rate_,
                        [tuple(s) for s in result["sends"]], arrivals, probes, sampler.cpu,
                        start, end, rss_peak, (load_start, load_end))
        row.extra = {"late": result["late"], "metrics": metrics,
                     "rss": sampler.rss if rss_every else [],
                     "loadgen_cpu": result["cpu"]}
        print(f"  [{run_dir}]", flush=True)
        print(f"  {name:<13} {proto:<4} in {row.rate_in:>10,.0f}/s  out {row.rate_out:>9,.0f}/s"
              f"  p50 {row.p50_ms:7.1f} ms  p99 {row.p99_ms:7.1f} ms  "
              f"cpu {row.cpu_per_m:6.2f} s/M ({row.cpu_share:.2f} cores)  "
              f"rss {row.rss_peak_mib:6.1f} MiB  refused {row.refused}  "
              f"lost probes {row.probes_lost}  load {load_start:.1f}-{load_end:.1f}",
              flush=True)
        return row


def in_process_limit(payloads: list[Payload], seconds: float, gzip_level: int | None) -> float:
    """Records/s of decode + re-encode (+ gzip at ``gzip_level``) on this process's core."""
    bodies = [p.body(0) for p in payloads]
    n = 0
    started = time.process_time()
    i = 0
    while time.process_time() - started < seconds:
        req = ExportLogsServiceRequest.FromString(bodies[i % len(bodies)])
        out = req.SerializeToString()
        if gzip_level is not None:
            z = zlib.compressobj(gzip_level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            z.compress(out)
            z.flush()
        n += payloads[i % len(payloads)].records
        i += 1
    return n / (time.process_time() - started)


def machine() -> str:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model or platform.processor()}, {os.cpu_count()} vCPUs, Python "
            f"{platform.python_version()}, {_loop_name()}, {_reader_name()}")


def _reader_name() -> str:
    """Whether the sidecar reads records with the C extension (processors/_logscan.c)."""
    from processors.base import NATIVE_SCAN

    return "C reader of OTLP bytes" if NATIVE_SCAN else "records read through upb"


def _loop_name() -> str:
    try:
        import uvloop

        return f"uvloop {uvloop.__version__}"
    except ImportError:
        return "asyncio event loop"


def fmt(v: float, spec: str = ",.0f") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def table(rows: list[RunResult], limits: list[tuple[str, float]]) -> str:
    head = ("| run | load | records/s in | records/s out | p50 ms | p99 ms "
            "| CPU s / 1M rec | sidecar cores | peak RSS MiB | refused | load avg |")
    lines = [head, "|" + "---|" * 11]
    for label, value in limits:
        lines.append(f"| {label} | in-process, 1 core | {fmt(value)} | | | | "
                     f"{fmt(1e6 / value, '.2f')} | 1.00 | | | |")
    for r in rows:
        load = (f"{r.proto.upper()} x{r.concurrency}"
                + (f" @ {r.target_rate:,.0f}/s" if r.target_rate else " closed loop"))
        lines.append(
            f"| {r.name} | {load} | {fmt(r.rate_in)} | {fmt(r.rate_out)} | "
            f"{fmt(r.p50_ms, '.1f')} | {fmt(r.p99_ms, '.1f')} | {fmt(r.cpu_per_m, '.2f')} | "
            f"{fmt(r.cpu_share, '.2f')} | {fmt(r.rss_peak_mib, '.1f')} | {r.refused} | "
            f"{r.load[0]:.1f}–{r.load[1]:.1f} |")
    return "\n".join(lines)


DOC_BEGIN = "<!-- e2e:begin (bench/e2e.py --write-docs rewrites this block) -->"
DOC_END = "<!-- e2e:end -->"


def write_docs(block: str) -> None:
    path = ROOT / "docs" / "BENCHMARKS.md"
    text = path.read_text()
    if DOC_BEGIN in text and DOC_END in text:
        head, rest = text.split(DOC_BEGIN, 1)
        _, tail = rest.split(DOC_END, 1)
        text = head + DOC_BEGIN + "\n" + block + "\n" + DOC_END + tail
    else:
        text = (text.rstrip() + "\n\n## End-to-end performance\n\n" + DOC_BEGIN + "\n" + block
                + "\n" + DOC_END + "\n")
    path.write_text(text)


def controller(args: argparse.Namespace) -> None:
    only = set(args.only.split(",")) if args.only else None

    def want(name: str) -> bool:
        return only is None or name in only

    root = data_dir()
    if not (root / "Android" / "Android_2k.log").is_file():
        raise SystemExit(f"bench/e2e.py: no Loghub data in {root}: put loghub_2k at "
                         f"<repo>/../shared/data/loghub_2k or set LIPSERVICE_LOGHUB_DIR")
    bench = Bench(args)
    try:
        _controller(args, want, bench)
    finally:
        if args.keep_tmp:
            print(f"run files kept in {bench.tmp}")
        else:
            shutil.rmtree(bench.tmp, ignore_errors=True)


def _controller(args: argparse.Namespace, want: Any, bench: Bench) -> None:
    started = dt.datetime.now()
    print(f"machine: {machine()}; load average at start {os.getloadavg()}", flush=True)
    loghub_list = loghub_payloads(data_dir(), variants=args.variants,
                                  per_request=args.records_per_request)
    loghub = save_payloads(loghub_list, bench.tmp / "loghub.pkl")
    print(f"payloads: {len(loghub_list)} requests of {args.records_per_request} records from "
          f"the Loghub lines ({args.variants} variants)", flush=True)
    limits: list[tuple[str, float]] = []
    if want("limit"):
        payloads = loghub_list
        limits.append(("limit: decode + re-encode", in_process_limit(payloads, 3.0, None)))
        for level in (1, 6):
            limits.append((f"limit: decode + re-encode + gzip level {level}",
                           in_process_limit(payloads, 3.0, level)))
        for label, v in limits:
            print(f"  {label:<40} {v:,.0f} records/s", flush=True)
    extra: dict[str, Any] = {}
    for item in args.sets:
        key, _, value = item.partition("=")
        import yaml

        extra[key] = yaml.safe_load(value)
    rows: list[RunResult] = []
    bench.start_sink()
    try:
        full = ["signature", "sampling"]
        if want("pass-through"):
            for proto in ("http", "grpc"):
                rows.append(bench.run("pass-through", proto, [], loghub, args.duration,
                                      args.warmup, extra=extra))
        full_http = None
        if want("full"):
            for proto in ("http", "grpc"):
                r = bench.run("full", proto, full, loghub, args.duration, args.warmup,
                              extra=extra)
                rows.append(r)
                if proto == "http":
                    full_http = r
        if want("half"):
            target = (full_http.rate_in if full_http else args.half_rate) / 2
            rows.append(bench.run("full, half load", "http", full, loghub, args.duration,
                                  args.warmup, rate_=target, extra=extra))
        if want("patterns"):
            # Every record's template is one of --patterns, each seen once per pass: with
            # more templates than signature.max_patterns, every record is a new pattern, so
            # every cache and table fills to its bound (the worst case for memory).
            spec = save_payloads(pattern_payloads(args.patterns), bench.tmp / "patterns.pkl")
            label = f"full, {args.patterns // 1000}k patterns"
            closed = bench.run(label, "http", full, spec, args.pattern_seconds, args.warmup,
                               extra=extra)
            paced = bench.run(label + ", half load", "http", full, spec, args.pattern_seconds,
                              args.warmup, rate_=closed.rate_in / 2, extra=extra)
            for r in (closed, paced):
                m = r.extra["metrics"]
                r.extra["patterns"] = (m.get("lipservice_signature_patterns_created_total"),
                                       m.get("lipservice_signature_patterns"))
                print(f"    patterns created {r.extra['patterns'][0]:,.0f}, held "
                      f"{r.extra['patterns'][1]:,.0f}", flush=True)
            rows += [closed, paced]
        soak = None
        if args.soak:
            target = (full_http.rate_in if full_http else args.half_rate) / 2
            # with the control loop (heuristic, every 5 min) as in the default config
            soak_extra = {**extra, "extensions": {"control": {"llm": {"enabled": False}}},
                          "service.extensions": ["control"]}
            soak = bench.run("full, soak", "http", full, loghub, args.soak, 30,
                             rate_=target, extra=soak_extra, rss_every=5)
            rows.append(soak)
    finally:
        bench.stop_sink()
    print()
    text = table(rows, limits)
    notes = []
    by = {(r.name, r.proto): r for r in rows}
    for proto in ("http", "grpc"):
        f, p = by.get(("full", proto)), by.get(("pass-through", proto))
        if f and p:
            notes.append(f"full / pass-through over {proto.upper()}: "
                         f"{f.rate_in / p.rate_in:.0%} of the records/s")
    if limits and ("full", "http") in by:
        notes.append(f"full over HTTP / in-process decode+encode limit: "
                     f"{by[('full', 'http')].rate_in / limits[0][1]:.0%}")
    if soak is not None and soak.extra["rss"]:
        rss = soak.extra["rss"]
        t0 = rss[0][0]
        minutes = []
        for m in range(1, int((rss[-1][0] - t0) / 60e9) + 1):
            minutes.append(next(v for t, v in rss if t - t0 >= m * 60e9))
        series = ", ".join(f"{v / 1024:.0f}" for v in minutes) or "n/a"
        notes.append(f"soak {args.soak:.0f} s at {soak.target_rate:,.0f} records/s (30 s "
                     f"warm-up first, control loop on): RSS at each minute {series} MiB; "
                     f"{rss[-1][1] / 1024:.1f} MiB at the end, peak (VmHWM) "
                     f"{soak.rss_peak_mib:.1f} MiB")
    header = (f"Command: `.venv/bin/python bench/e2e.py {' '.join(sys.argv[1:])}` — "
              f"{started:%Y-%m-%d %H:%M}, {machine()}; load average "
              f"{os.getloadavg()[0]:.1f} at the end (other jobs share the machine).")
    block = "\n\n".join([header, text, "\n".join(f"- {n}" for n in notes)])
    print(block)
    if args.write_docs:
        write_docs(block)
        print(f"\nwritten to {ROOT / 'docs' / 'BENCHMARKS.md'}")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_sink":
        ap = argparse.ArgumentParser()
        ap.add_argument("_cmd")
        ap.add_argument("--port", type=int, required=True)
        sink_main(ap.parse_args().port)
        return
    if len(sys.argv) > 1 and sys.argv[1] == "_load":
        ap = argparse.ArgumentParser()
        ap.add_argument("_cmd")
        ap.add_argument("--proto", choices=["http", "grpc"], required=True)
        ap.add_argument("--port", type=int, required=True)
        ap.add_argument("--concurrency", type=int, default=4)
        ap.add_argument("--seconds", type=float, required=True)
        ap.add_argument("--rate", type=float, default=0.0)
        ap.add_argument("--payloads", required=True)
        ap.add_argument("--out", required=True)
        load_main(ap.parse_args())
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=20.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=5.0, help="unmeasured seconds first")
    ap.add_argument("--concurrency", type=int, default=4, help="requests in flight")
    ap.add_argument("--records-per-request", type=int, default=RECORDS_PER_REQUEST,
                    help="records per request of the Loghub load (the probe included)")
    ap.add_argument("--variants", type=int, default=8,
                    help="copies of the Loghub lines (digits re-drawn after the first)")
    ap.add_argument("--patterns", type=int, default=100_000)
    ap.add_argument("--pattern-seconds", type=float, default=30.0)
    ap.add_argument("--half-rate", type=float, default=100_000.0,
                    help="max rate assumed when the full run is skipped (--only)")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="sidecar config override, dotted path into the generated YAML, e.g. "
                         "--set exporters.otlphttp/sink.sending_queue.num_consumers=8")
    ap.add_argument("--soak", type=float, default=0.0, help="seconds of soak (0 = none)")
    ap.add_argument("--only", default="",
                    help="comma-separated: limit,pass-through,full,half,patterns")
    ap.add_argument("--write-docs", action="store_true")
    ap.add_argument("--keep-tmp", action="store_true",
                    help="keep the run directory (configs, sidecar stderr, payloads; ~100 MB)")
    ap.add_argument("--profile", metavar="DIR", default="",
                    help="sample the sidecar with py-spy into DIR/<run>.txt (collapsed "
                         "stacks); profiled numbers are not comparable")
    controller(ap.parse_args())


if __name__ == "__main__":
    main()
