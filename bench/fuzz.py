"""Fuzz run over the bad-input paths: ≥ 100k generated inputs (issue 7, "Bad input").

Seeded, reproducible mutations (truncate, flip, insert, delete, splice, long varints) of
valid OTLP requests, random bytes, and structurally corrupted OTLP/JSON trees, fed to:

- the decoders in-process: ``codec.decode_protobuf``, ``codec.decode_json``, and gzip
  (broken gzip, and valid gzip of mutated payloads) through ``codec.decompress`` then the
  protobuf or JSON decoder;
- the real receivers on loopback: OTLP/HTTP (protobuf, JSON, gzip) and OTLP/gRPC.

Checked for every input: a decoder returns a request or raises ``DecodeError`` with a
message (anything else is a crash); a receiver answers success exactly when the decoder
accepts the same bytes, otherwise a 4xx (gRPC INVALID_ARGUMENT) with a message, never a
5xx; no call exceeds its 10 s timeout (a hang). The receivers must still serve at the end.
Prints a table; exit status 1 on any violation.

    .venv/bin/python bench/fuzz.py [--codec 90000] [--wire 20000] [--seed 1]
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import grpc  # noqa: E402

from collector.receivers import codec  # noqa: E402
from tests.collector.receivers.test_receiver_fuzz import (  # noqa: E402
    JSON,
    LIMIT,
    PROTO,
    Servers,
    accepted_by_codec,
    check_grpc,
    check_http,
)
from tests.collector.wire_support import deep_request_bytes, make_request  # noqa: E402

KEYS = ["resourceLogs", "scopeLogs", "logRecords", "resource", "scope", "attributes", "key",
        "value", "values", "body", "stringValue", "intValue", "doubleValue", "boolValue",
        "arrayValue", "kvlistValue", "bytesValue", "timeUnixNano", "severityNumber",
        "traceId", "spanId", "flags", "droppedAttributesCount", "name", "unknown"]
SPECIAL = [b"\xff" * 10, b"\x80" * 11, b"\x0a\xff\xff\xff\xff\x0f", b"\x00", b"\xc0\x80",
           b"\xed\xa0\x80", "\u2603".encode()]


def seeds() -> tuple[list[bytes], list[bytes]]:
    protos = [make_request(n).SerializeToString() for n in (1, 3, 8)]
    protos += [deep_request_bytes(20), make_request(2, body="").SerializeToString()]
    texts = [codec.encode_json(make_request(n)).encode() for n in (1, 3)]
    return protos, texts


def mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if not b:
            b.extend(rng.randbytes(rng.randint(1, 8)))
            continue
        i = rng.randrange(len(b))
        op = rng.random()
        if op < 0.2:
            del b[i:]
        elif op < 0.45:
            b[i] = rng.randrange(256)
        elif op < 0.6:
            b[i:i] = rng.randbytes(rng.randint(1, 8))
        elif op < 0.75:
            del b[i:i + rng.randint(1, 16)]
        elif op < 0.9:
            b[i:i] = rng.choice(SPECIAL)
        else:
            j = rng.randrange(len(b))
            b[i:i] = b[j:j + rng.randint(1, 32)]
    return bytes(b)


def random_json(rng: random.Random, depth: int = 0) -> object:
    kind = rng.random()
    if depth > 4 or kind < 0.4:
        return rng.choice([None, True, False, 0, -1, 2**64, 1.5, float("1e308"), "", "x",
                           "12", "NaN", "5b8efff798038103d269b633813fc60c", "\ud800"])
    if kind < 0.7:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    return {rng.choice(KEYS): random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def corrupt_tree(rng: random.Random, text: bytes) -> bytes:
    tree = json.loads(text)
    node = tree
    for _ in range(rng.randint(0, 8)):
        if isinstance(node, dict) and node:
            key = rng.choice(sorted(node))
            if not isinstance(node[key], dict | list) or rng.random() < 0.3:
                node[key] = random_json(rng)
                break
            node = node[key]
        elif isinstance(node, list) and node:
            i = rng.randrange(len(node))
            if not isinstance(node[i], dict | list) or rng.random() < 0.3:
                node[i] = random_json(rng)
                break
            node = node[i]
        else:
            break
    return json.dumps(tree, allow_nan=True).encode("utf-8", "surrogatepass")


def generator(rng: random.Random, kind: str) -> Callable[[], bytes]:
    protos, texts = seeds()
    gz = [gzip.compress(p) for p in protos]
    if kind == "protobuf":
        return lambda: (rng.randbytes(rng.randint(0, 300)) if rng.random() < 0.3
                        else mutate(rng, rng.choice(protos)))
    if kind == "json":
        def gen() -> bytes:
            r = rng.random()
            if r < 0.15:
                return rng.randbytes(rng.randint(0, 200))
            if r < 0.5:
                return mutate(rng, rng.choice(texts))
            if r < 0.65:
                return json.dumps(random_json(rng)).encode("utf-8", "surrogatepass")
            return corrupt_tree(rng, rng.choice(texts))
        return gen
    def gen_gzip() -> bytes:
        r = rng.random()
        if r < 0.2:
            return rng.randbytes(rng.randint(0, 200))
        if r < 0.6:
            return mutate(rng, rng.choice(gz))  # broken gzip
        return gzip.compress(mutate(rng, rng.choice(protos + texts)), 1)  # valid gzip
    return gen_gzip


def decode_gzip_then_protobuf(body: bytes) -> object:
    return codec.decode_protobuf(codec.decompress(body, "gzip", LIMIT))


def decode_gzip_then_json(body: bytes) -> object:
    return codec.decode_json(codec.decompress(body, "gzip", LIMIT))


def run_codec(kind: str, count: int, rng: random.Random) -> tuple[Counter, float, list[str]]:
    gen = generator(rng, kind)
    fns = {"protobuf": codec.decode_protobuf, "json": codec.decode_json,
           "gzip": decode_gzip_then_protobuf}
    fn = fns[kind]
    outcomes: Counter = Counter()
    worst = 0.0
    failures: list[str] = []
    for i in range(count):
        body = gen()
        if kind == "gzip":
            fn = decode_gzip_then_json if i % 2 else decode_gzip_then_protobuf
        start = time.perf_counter()
        try:
            fn(body)
            outcomes["accepted"] += 1
        except codec.DecodeError as err:
            outcomes["DecodeError"] += 1
            if not str(err).strip():
                failures.append(f"{kind}: DecodeError without a message for {body[:60]!r}")
        except Exception as err:  # noqa: BLE001 - this is what the fuzz run looks for
            outcomes["crash"] += 1
            failures.append(f"{kind}: {type(err).__name__}: {err} for {body[:60]!r}")
        worst = max(worst, time.perf_counter() - start)
    return outcomes, worst, failures


def run_wire(servers: Servers, transport: str, count: int, rng: random.Random,
             ) -> tuple[Counter, float, list[str]]:
    gens = {k: generator(rng, k) for k in ("protobuf", "json", "gzip")}
    outcomes: Counter = Counter()
    worst = 0.0
    failures: list[str] = []
    for i in range(count):
        kind = ("protobuf", "json", "gzip")[i % 3] if transport == "http" else "protobuf"
        body = gens[kind]()
        start = time.perf_counter()
        try:
            if transport == "grpc":
                check_grpc(servers, body)
                ok = accepted_by_codec(body, False, "")
            else:
                ctype = JSON if kind == "json" or (kind == "gzip" and i % 2) else PROTO
                encoding = "gzip" if kind == "gzip" else ""
                check_http(servers, body, ctype, encoding)
                ok = accepted_by_codec(body, ctype == JSON, encoding)
            outcomes[f"{kind}: {'accepted' if ok else 'refused with a message'}"] += 1
        except (AssertionError, grpc.RpcError, OSError) as err:
            outcomes[f"{kind}: violation"] += 1
            failures.append(f"{transport} {kind}: {type(err).__name__}: {err} for "
                            f"{body[:60]!r}")
        worst = max(worst, time.perf_counter() - start)
    return outcomes, worst, failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--codec", type=int, default=90_000, help="decoder inputs (split 4:3:2)")
    ap.add_argument("--wire", type=int, default=20_000, help="receiver requests (half each)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    rows: list[tuple[str, int, Counter, float]] = []
    failures: list[str] = []
    started = time.monotonic()
    for kind, share in (("protobuf", 4), ("json", 3), ("gzip", 2)):
        n = args.codec * share // 9
        outcomes, worst, fails = run_codec(kind, n, rng)
        rows.append((f"decoder: {kind}", n, outcomes, worst))
        failures += fails
    servers = Servers()
    try:
        for transport in ("http", "grpc"):
            n = args.wire // 2
            outcomes, worst, fails = run_wire(servers, transport, n, rng)
            rows.append((f"receiver: OTLP/{transport.upper()}", n, outcomes, worst))
            failures += fails
        from tests.collector.receivers.test_receiver_fuzz import assert_still_serves
        assert_still_serves(servers)
        alive = "yes"
    except Exception as err:  # noqa: BLE001
        alive = f"NO: {err}"
        failures.append(f"receivers do not serve after the run: {err}")
    finally:
        servers.close()

    total = sum(r[1] for r in rows)
    print(f"# fuzz run: {total:,} inputs, seed {args.seed}, "
          f"{time.monotonic() - started:.0f} s, Python {platform.python_version()}, "
          f"{platform.machine()}")
    print()
    print("| target | inputs | outcomes | slowest call |")
    print("|---|---:|---|---:|")
    for name, n, outcomes, worst in rows:
        text = ", ".join(f"{k} {v:,}" for k, v in sorted(outcomes.items()))
        print(f"| {name} | {n:,} | {text} | {worst * 1000:.1f} ms |")
    print()
    print(f"violations (crash, 5xx, answer disagreeing with the decoder, no message, hang): "
          f"{len(failures)}; receivers still serving: {alive}")
    for line in failures[:20]:
        print("  " + line)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
