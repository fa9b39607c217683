"""Anomaly detection: new patterns, volume spikes (EWMA z-score + ratio), error surges."""

from __future__ import annotations

import json
import random

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from processors.anomaly import AnomalyConfig, AnomalyDetector

T0 = 1_700_000_000.0


_windows: dict[tuple[int, str], dict[str, int]] = {}


def feed(det: AnomalyDetector, service: str, now: float, counts: dict[str, int],
         errors: int = 0) -> None:
    """One batch, as the sampling processor hands it over (one endless sampling window)."""
    win = _windows.setdefault((id(det), service), {})
    st = det.state(service, now)
    if det.due(st, now):
        det.close_bucket(st, now, dict(win))
    for pid in counts:
        det.first_in_window(st, pid, now)
    for pid, n in counts.items():
        win[pid] = win.get(pid, 0) + n
    det.add_errors(st, errors)


def test_new_pattern_flagged_only_after_warmup_and_expires():
    det = AnomalyDetector(AnomalyConfig(warmup=60, new_pattern_window=120))
    feed(det, "svc", T0, {"old": 5})
    feed(det, "svc", T0 + 30, {"early": 5})  # still warming up: baseline
    feed(det, "svc", T0 + 61, {"fresh": 5})
    flags = det.flags(T0 + 61)
    assert [(f["kind"], f["pattern_id"]) for f in flags] == [("new", "fresh")]
    assert det.pattern_flags("svc", "fresh", T0 + 61) == ["new"]
    assert det.pattern_flags("svc", "old", T0 + 61) == []
    # Expires after new_pattern_window (flags are pruned when a bucket closes).
    feed(det, "svc", T0 + 200, {"fresh": 1})
    assert det.pattern_flags("svc", "fresh", T0 + 200) == []
    assert "fresh" not in det.state("svc", T0 + 200).flagged
    assert det.detected["new"] == 1


def test_volume_spike_flagged_and_steady_noise_not():
    cfg = AnomalyConfig(interval=10, warmup=0, new_pattern_window=0, min_count=50,
                        z_threshold=4, ratio_threshold=3, hold=30)
    det = AnomalyDetector(cfg)
    rng = random.Random(7)
    t = T0
    for _ in range(60):  # 10 minutes of Poisson-like noise around 100 per bucket
        feed(det, "svc", t, {"steady": rng.randint(80, 120), "spiky": rng.randint(8, 12)})
        t += 10
    assert [f for f in det.flags(t) if f["kind"] == "spike"] == []
    feed(det, "svc", t, {"steady": 100, "spiky": 200})  # 20x its baseline
    t += 10
    feed(det, "svc", t, {"steady": 100, "spiky": 10})  # closes the spiking bucket
    spikes = [f for f in det.flags(t) if f["kind"] == "spike"]
    assert [f["pattern_id"] for f in spikes] == ["spiky"]
    assert spikes[0]["count"] == 200 and spikes[0]["z"] >= 4
    assert "spiky" in det.state("svc", t).flagged
    # The flag holds for `hold` seconds after the last spiking bucket, then clears.
    for _ in range(5):
        t += 10
        feed(det, "svc", t, {"steady": 100, "spiky": 10})
    assert det.pattern_flags("svc", "spiky", t) == []
    assert det.detected["spike"] == 1


def test_counts_carry_across_sampling_windows():
    det = AnomalyDetector(AnomalyConfig(interval=10, warmup=0, new_pattern_window=0,
                                        min_count=50, hold=30))
    st = det.state("svc", T0)
    det.first_in_window(st, "p", T0)
    t = T0
    for _ in range(10):  # baseline: 10 per bucket
        det.close_bucket(st, t, {"p": 10})
        det.window_closed(st, {"p": 10})  # a sampling window per bucket, for the test
        t += 10
    # 300 records in the bucket, split over two sampling windows (200 + 100).
    det.window_closed(st, {"p": 200})
    det.close_bucket(st, t, {"p": 100})
    assert det.pattern_flags("svc", "p", t) == ["spike"]
    assert det.flags(t)[0]["count"] == 300


def test_small_counts_never_spike():
    det = AnomalyDetector(AnomalyConfig(interval=10, warmup=0, new_pattern_window=0,
                                        min_count=50))
    t = T0
    for _ in range(10):
        feed(det, "svc", t, {"rare": 1})
        t += 10
    feed(det, "svc", t, {"rare": 40})  # 40x, but under min_count
    feed(det, "svc", t + 10, {"rare": 1})
    assert det.flags(t + 10) == []


def test_error_surge_flags_the_service():
    det = AnomalyDetector(AnomalyConfig(interval=10, warmup=0, new_pattern_window=0,
                                        min_errors=10))
    t = T0
    for i in range(20):
        feed(det, "api", t, {"p": 100}, errors=2 + i % 2)
        feed(det, "db", t, {"q": 100}, errors=2)
        t += 10
    feed(det, "api", t, {"p": 100}, errors=60)
    feed(det, "api", t + 10, {"p": 100}, errors=2)
    feed(det, "db", t + 10, {"q": 100}, errors=2)
    surges = [f for f in det.flags(t + 10) if f["kind"] == "error_surge"]
    assert [(f["service"], f["count"]) for f in surges] == [("api", 60)]
    _, surging = det.boosted(det.state("api", t + 10), t + 10)
    assert surging
    _, db_surging = det.boosted(det.state("db", t + 10), t + 10)
    assert not db_surging


def test_patterns_are_lru_capped_per_service():
    det = AnomalyDetector(AnomalyConfig(max_patterns=3, warmup=0))
    for i in range(10):
        feed(det, "svc", T0 + i, {f"p{i}": 1})
    st = det.state("svc", T0 + 10)
    assert list(st.tracks) == ["p7", "p8", "p9"]
    assert st.flagged <= set(st.tracks)


def test_gap_in_traffic_decays_the_baseline():
    det = AnomalyDetector(AnomalyConfig(interval=10, half_life=10))
    t = T0
    for _ in range(10):
        feed(det, "svc", t, {"p": 100})
        t += 10
    feed(det, "svc", t + 1000, {"p": 1})  # 100 idle buckets
    info = det.pattern_info("svc", "p")
    assert info is not None and info["rate_per_s"] < 0.1


def test_flags_are_plain_data_and_metrics_render():
    det = AnomalyDetector(AnomalyConfig(warmup=0))
    feed(det, "svc", T0, {"x": 1})
    json.dumps(det.flags(T0))  # JSON-serialisable for the control loop
    reg = CollectorRegistry()

    class C:
        def collect(self):
            return det.collect_metrics(T0)

    reg.register(C())
    text = generate_latest(reg).decode()
    assert 'lipservice_sampling_anomalies{kind="new"} 1.0' in text
    assert 'lipservice_sampling_anomalies_detected_total{kind="new"} 1.0' in text


def test_snapshot_restore_keeps_first_seen_and_baseline():
    det = AnomalyDetector(AnomalyConfig(warmup=0))
    t = T0
    for _ in range(5):
        feed(det, "svc", t, {"p": 50})
        t += 10
    snap = json.loads(json.dumps(det.snapshot()))
    again = AnomalyDetector(AnomalyConfig(warmup=0))
    again.restore(snap)
    assert again.pattern_info("svc", "p") == det.pattern_info("svc", "p")
    # A restored pattern is not "new" again after a restart.
    feed(again, "svc", t + 500, {"p": 50})
    assert again.pattern_flags("svc", "p", t + 500) == []
    with pytest.raises(ValueError, match="snapshot"):
        again.restore({"services": {"svc": {"started": "x"}}})


def test_disabled_detector_flags_nothing():
    det = AnomalyDetector(AnomalyConfig(enabled=False, warmup=0))
    feed(det, "svc", T0, {"x": 1000})
    feed(det, "svc", T0 + 100, {"y": 1000}, errors=1000)
    assert det.flags(T0 + 100) == []
