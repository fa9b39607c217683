"""Soak: ≥ 1M log records through a `lipservice run` subprocess to a sink that fails 20% of
export requests at random (HTTP 503); counts acknowledged, delivered, lost and duplicated
records by a unique ``uid`` attribute. The driver is tests/e2e/soak.py (the test suite runs
it with 50k records); this prints a table for docs/BENCHMARKS.md and exits 1 if any
acknowledged record was lost.

    .venv/bin/python bench/soak.py [--records 1000000] [--fail-rate 0.2] [--queue-size N]
                                   [--memory-queue]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.soak import run_soak  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--fail-rate", type=float, default=0.2)
    ap.add_argument("--batch", type=int, default=500, help="records per client request")
    ap.add_argument("--clients", type=int, default=4, help="concurrent client tasks")
    ap.add_argument("--memory-queue", action="store_true",
                    help="in-memory sending queue instead of the persistent one")
    ap.add_argument("--queue-size", type=int, default=100_000,
                    help="sending_queue.queue_size; small values make the sidecar refuse "
                         "(429) at times, which the clients retry")
    ap.add_argument("--timeout", type=float, default=1800)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="lipservice-soak-") as tmp:
        r = run_soak(Path(tmp), args.records, args.fail_rate, args.batch, args.clients,
                     persistent=not args.memory_queue, timeout=args.timeout,
                     queue_size=args.queue_size)
    m = r.metrics
    print(f"# soak: {r.records:,} records, sink failing {args.fail_rate:.0%} of requests, "
          f"{'memory' if args.memory_queue else 'persistent'} queue of "
          f"{args.queue_size:,} records; "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}")
    print()
    print("| measure | value |")
    print("|---|---:|")
    rows = [
        ("records sent (unique uids)", f"{r.records:,}"),
        ("acknowledged by the sidecar (200)", f"{r.acked:,}"),
        ("delivered to the sink (unique)", f"{r.delivered:,}"),
        ("**acknowledged but lost**", f"**{r.lost:,}**"),
        ("duplicates at the sink", f"{r.duplicates:,}"),
        ("client refusals (retried by the client)",
         ", ".join(f"{k}: {v:,}" for k, v in sorted(r.client_refusals.items())) or "0"),
        ("sink requests / injected failures", f"{r.sink_requests:,} / {r.sink_failures:,}"),
        ("exporter retries", f"{m.get('lipservice_exporter_retries_total', 0):,.0f}"),
        ("otelcol_exporter_send_failed_log_records",
         f"{m.get('otelcol_exporter_send_failed_log_records_total', 0):,.0f}"),
        ("wall time", f"{r.seconds:.1f} s"),
        ("throughput (client → sink, all on this machine)",
         f"{r.records_per_second:,.0f} records/s"),
        ("sidecar exit code after SIGTERM", str(r.sidecar_exit)),
    ]
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0 if r.lost == 0 and r.acked == r.records and r.sidecar_exit == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
