"""A real ``redis-server`` for tests: its own process on a free loopback port, no
persistence, in a temporary directory; stopped (and restartable on the same port) by the
test. Tests skip with a clear reason when the binary is absent (CI installs Debian's
``redis-server`` package, see .ci/run)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.sinks import free_port

BINARY = shutil.which("redis-server")
SKIP_REASON = ("redis-server is not installed (Debian: apt-get install redis-server; "
               ".ci/run installs it)")


def require_redis() -> str:
    """The redis-server path, or skip the test."""
    if BINARY is None:
        pytest.skip(SKIP_REASON)
    return BINARY


class RedisServer:
    """``redis-server --port N --bind 127.0.0.1 --save '' --appendonly no`` in ``directory``
(``--requirepass`` when ``password`` is given).

    start() waits (bounded) until it answers PING; stop() terminates it (SIGTERM, then
    SIGKILL) and waits until the port is closed; start() again reuses the port.
    """

    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.binary = require_redis()
        self.directory = directory
        self.password = password
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "redis.log"

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def _answers(self) -> bool:
        """PONG, or the NOAUTH error a password-protected server answers."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--logfile", str(self.log),
             "--daemonize", "no",
             *(["--requirepass", self.password] if self.password else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server exited {self.proc.returncode}: "
                                     f"{self.log.read_text() if self.log.exists() else ''}")
            if self._answers():
                return self
            time.sleep(0.05)
        raise AssertionError(f"redis-server not answering on {self.port} in {timeout}s")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        deadline = time.monotonic() + timeout
        while self._answers() and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture
def redis_server(tmp_path: Path):
    """A started RedisServer, stopped after the test."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.stop()
