"""Soak, test-suite size: 50k records through a `lipservice run` subprocess (persistent
queue on, small enough that the sidecar refuses with 429 at times; the clients retry) to a
sink failing 20% of requests at random; zero acknowledged records lost.
The ≥ 1M-record run is bench/soak.py (same driver: tests/e2e/soak.py)."""

from __future__ import annotations

from tests.e2e.soak import run_soak


def test_soak_50k_records_with_20_percent_sink_failures_loses_nothing(tmp_path) -> None:
    result = run_soak(tmp_path, records=50_000, fail_rate=0.2, queue_size=5000, timeout=90)
    assert result.acked == result.records, result  # the clients' retries got everything in
    assert result.lost == 0, result
    assert result.delivered == result.records, result
    assert result.sink_failures > 0  # failures were injected and retried through
    assert result.metrics["lipservice_exporter_retries_total"] >= result.sink_failures
    assert result.metrics.get("otelcol_exporter_send_failed_log_records_total", 0) == 0
    assert result.sidecar_exit == 0
