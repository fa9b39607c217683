"""The sidecar serves GET /api/v1/patterns and the clustering metrics on its telemetry
address (`lipservice run` subprocess, loopback only)."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path


def test_sidecar_with_clustering_serves_patterns_api(sidecar_factory, tmp_path: Path) -> None:
    sc = sidecar_factory({
        "processors": {"signature": {}, "clustering": {}, "sampling": {"dry_run": True}},
        "exporters": {"file": {"path": str(tmp_path / "out.jsonl")}},
        "service": {"pipelines": {"logs": {
            "receivers": ["otlp"], "processors": ["signature", "clustering", "sampling"],
            "exporters": ["file"]}}},
    }).start()
    with urllib.request.urlopen(sc.url("/api/v1/patterns?limit=5"), timeout=10) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("application/json")
        body = json.loads(r.read())
    assert body["processors"]["clustering"] == {"families": []}  # nothing received yet
    assert "lipservice_clustering_families 0.0" in sc.metrics()
    assert sc.stop() == 0, sc.stderr()
