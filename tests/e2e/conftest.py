"""End-to-end helpers: the sidecar as a real subprocess (`python -m collector run -c …`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.sinks import free_port

REPO = Path(__file__).resolve().parents[2]


class Sidecar:
    """A `lipservice run` subprocess on free loopback ports.

    config: the YAML tree without receivers/telemetry (filled in here); its ``storage``
    gets ``directory: <tmp>/state``. tmp is created if missing (one per sidecar when
    several run at once).
    """

    def __init__(self, tmp: Path, config: dict[str, Any], env: dict[str, str] | None = None):
        tmp.mkdir(parents=True, exist_ok=True)
        self.grpc_port, self.http_port, self.metrics_port = free_port(), free_port(), free_port()
        tree = {
            "receivers": {"otlp": {"protocols": {
                "grpc": {"endpoint": f"127.0.0.1:{self.grpc_port}"},
                "http": {"endpoint": f"127.0.0.1:{self.http_port}"}}}},
            **config,
            "storage": {**config.get("storage", {}), "directory": str(tmp / "state")},
        }
        tree.setdefault("service", {}).setdefault("telemetry", {})["metrics"] = {
            "address": f"127.0.0.1:{self.metrics_port}"}
        self.config_path = tmp / "sidecar.yaml"
        self.config_path.write_text(yaml.safe_dump(tree))
        self.env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        self.proc: subprocess.Popen[str] | None = None
        self.stderr_path = tmp / "sidecar.stderr"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def start(self, timeout: float = 30.0) -> Sidecar:
        self._stderr = open(self.stderr_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collector", "run", "-c", str(self.config_path)],
            cwd=self.config_path.parent, env=self.env, stdout=subprocess.DEVNULL,
            stderr=self._stderr, text=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"sidecar exited {self.proc.returncode}: {self.stderr()}")
            try:
                with urllib.request.urlopen(self.url("/readyz"), timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"sidecar not ready in {timeout}s: {self.stderr()}")

    def stop(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(5)
        self._stderr.close()
        return code

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as r:
            return r.read().decode()

    def __enter__(self) -> Sidecar:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.stop()


@pytest.fixture
def sidecar_factory(tmp_path: Path):
    made: list[Sidecar] = []

    def make(config: dict[str, Any], env: dict[str, str] | None = None) -> Sidecar:
        sc = Sidecar(tmp_path, config, env)
        made.append(sc)
        return sc

    yield make
    for sc in made:
        if sc.proc is not None and sc.proc.poll() is None:
            sc.stop()
