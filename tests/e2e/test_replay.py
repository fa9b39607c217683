"""`lipservice replay` over real Loghub files (skipped when ../shared is absent)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import REPO

LOGHUB = Path(os.environ.get("LIPSERVICE_LOGHUB_DIR", REPO.parent / "shared/data/loghub_2k"))
needs_loghub = pytest.mark.skipif(
    not LOGHUB.is_dir(), reason=f"Loghub data not found at {LOGHUB} (set LIPSERVICE_LOGHUB_DIR)")


def replay(tmp: Path, *args: str, stdin: str | None = None) -> tuple[subprocess.CompletedProcess,
                                                                      Path]:
    out = tmp / "out.jsonl"
    cfg = tmp / "replay.yaml"
    cfg.write_text(yaml.safe_dump({
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": "127.0.0.1:0"}}}},
        "processors": {"signature": {}, "sampling": {}},
        "exporters": {"file": {"path": str(out)}},
        "service": {"pipelines": {"logs": {"receivers": ["otlp"],
                                           "processors": ["signature", "sampling"],
                                           "exporters": ["file"]}}},
        "storage": {"directory": str(tmp / "state")},
    }))
    proc = subprocess.run([sys.executable, "-m", "collector", "replay", "-c", str(cfg), *args],
                          capture_output=True, text=True, timeout=300, input=stdin,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, cwd=tmp)
    return proc, out


def exported_records(out: Path) -> list[dict]:
    recs = []
    for line in out.read_text().splitlines():
        doc = json.loads(line)
        for rl in doc["resourceLogs"]:
            for sl in rl["scopeLogs"]:
                recs.extend(sl["logRecords"])
    return recs


def attr(rec: dict, key: str):
    for kv in rec.get("attributes", []):
        if kv["key"] == key:
            return next(iter(kv["value"].values()))
    return None


@needs_loghub
@pytest.mark.parametrize("system", ["HDFS", "Apache", "Linux"])
def test_keep_all_writes_every_record_in_order_with_pattern_ids(tmp_path: Path,
                                                                system: str) -> None:
    src = LOGHUB / system / f"{system}_2k.log"
    lines = [ln for ln in src.read_text(errors="replace").splitlines() if ln]
    proc, out = replay(tmp_path, "--keep-all", str(src))
    assert proc.returncode == 0, proc.stderr
    recs = exported_records(out)
    assert [r["body"]["stringValue"] for r in recs] == lines
    assert all(attr(r, "log.pattern.id") for r in recs)
    assert all(attr(r, "lipservice.sampling.decision") in ("keep", "drop") for r in recs)
    assert "records  in        2,000" in proc.stdout
    assert "pattern id" in proc.stdout


@needs_loghub
def test_report_counts_match_the_exported_file(tmp_path: Path) -> None:
    src = LOGHUB / "HDFS" / "HDFS_2k.log"
    proc, out = replay(tmp_path, "--rate", "1000", str(src))
    assert proc.returncode == 0, proc.stderr
    kept = len(exported_records(out))
    first = proc.stdout.splitlines()[0]
    assert f"out {kept:>12,}" in first
    # the severity came from the level word: WARN lines are WARN
    warn = [r for r in exported_records(out) if " WARN " in r["body"]["stringValue"]]
    assert all(r.get("severityNumber") == 13 for r in warn)


def test_stdin_and_otlp_json_lines(tmp_path: Path) -> None:
    text = "\n".join(f"2024-01-01 INFO job {i} done in {i * 3} ms" for i in range(30))
    proc, out = replay(tmp_path, "--keep-all", "--service", "jobs", "-", stdin=text)
    assert proc.returncode == 0, proc.stderr
    first = out.read_text()
    assert len(exported_records(out)) == 30
    # the file exporter's output replays as OTLP JSON lines
    again = tmp_path / "again"
    again.mkdir()
    (again / "in.jsonl").write_text(first)
    proc2, out2 = replay(again, "--keep-all", str(again / "in.jsonl"))
    assert proc2.returncode == 0, proc2.stderr
    recs = exported_records(out2)
    assert [r["body"]["stringValue"] for r in recs] == text.splitlines()
    for r in recs:  # re-annotated once, not duplicated
        keys = [kv["key"] for kv in r["attributes"]]
        assert len(keys) == len(set(keys)) and "log.pattern.id" in keys
    assert all(r["severityNumber"] == 9 for r in recs)


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    proc, _ = replay(tmp_path, str(tmp_path / "nope.log"))
    assert proc.returncode == 1
    assert "nope.log" in proc.stderr and "Traceback" not in proc.stderr


def test_default_config_replay_never_exports_to_posthog(tmp_path: Path) -> None:
    """With no -c, replay writes to its own file even when POSTHOG_API_KEY is set."""
    from tests.sinks import HttpSink

    with HttpSink() as sink:
        proc = subprocess.run(
            [sys.executable, "-m", "collector", "replay", "--service", "jobs", "-"],
            input="\n".join(f"INFO job {i} done" for i in range(200)), capture_output=True,
            text=True, timeout=120, cwd=tmp_path,
            env={**os.environ, "PYTHONPATH": str(REPO), "POSTHOG_API_KEY": "phc_test_key",
                 "POSTHOG_HOST": sink.endpoint, "LIPSERVICE_STORAGE": str(tmp_path / "st")})
        assert proc.returncode == 0, proc.stderr
        out = tmp_path / "lipservice-out" / "replay.jsonl"
        assert exported_records(out)
        assert str(out) in proc.stderr  # it says where the records went
        assert sink.requests == []


def test_bytes_in_do_not_depend_on_batching_and_rate_must_be_positive(tmp_path: Path) -> None:
    text = "\n".join(f"WARN disk {i % 7} at {i}% on node-{i % 13}" for i in range(500))
    seen = set()
    for rate in ("10", "100000"):
        d = tmp_path / rate
        d.mkdir()
        proc, _ = replay(d, "--rate", rate, "-", stdin=text)
        assert proc.returncode == 0, proc.stderr
        seen.add(proc.stdout.splitlines()[1].split("out")[0])  # "bytes    in N"
    assert len(seen) == 1, seen
    proc, _ = replay(tmp_path, "--rate", "0", "-", stdin=text)
    assert proc.returncode == 1 and "--rate must be a positive" in proc.stderr
