"""The sidecar's own logs: leveled, structured (console or JSON lines), secrets redacted.

Every string registered with :func:`register_secret` (header values, API keys, tokens) is
replaced by ``[REDACTED]`` in every message and argument before it is written, whatever
logger wrote it. ``setup_logging`` registers the values of environment variables whose
names look secret (``*KEY*``, ``*TOKEN*``, ``*SECRET*``, ``*PASSWORD*``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time

REDACTED = "[REDACTED]"
_SECRETS: set[str] = set()
_SECRET_ENV = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|CREDENTIAL", re.IGNORECASE)


def register_secret(value: str | None) -> None:
    """Never print ``value`` (ignored when shorter than 4 characters: too common)."""
    if value and len(value) >= 4:
        _SECRETS.add(value)
        # "Bearer <token>" headers: the token alone must be hidden too.
        for part in value.split():
            if len(part) >= 8:
                _SECRETS.add(part)


def redact(text: str) -> str:
    """``text`` with every registered secret replaced by ``[REDACTED]``."""
    for s in sorted(_SECRETS, key=len, reverse=True):
        if s in text:
            text = text.replace(s, REDACTED)
    return text


class _RedactingFormatter(logging.Formatter):
    def __init__(self, encoding: str) -> None:
        super().__init__()
        self.encoding = encoding

    def format(self, record: logging.LogRecord) -> str:
        message = redact(record.getMessage())
        exc = redact(self.formatException(record.exc_info)) if record.exc_info else ""
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        ts += f".{int(record.msecs):03d}Z"
        if self.encoding == "json":
            doc = {"ts": ts, "level": record.levelname.lower(), "logger": record.name,
                   "msg": message}
            if exc:
                doc["exception"] = exc
            return json.dumps(doc, ensure_ascii=False)
        line = f"{ts} {record.levelname.lower():<7} {record.name}: {message}"
        return f"{line}\n{exc}" if exc else line


def setup_logging(level: str = "info", encoding: str = "console") -> None:
    """Configure the root logger on stderr. level: debug|info|warn|error;
    encoding: console|json."""
    for name, value in os.environ.items():
        if _SECRET_ENV.search(name):
            register_secret(value)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RedactingFormatter(encoding))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    lvl = {"warn": "WARNING"}.get(level, level.upper())
    root.setLevel(lvl)
    # Third-party chatter stays at WARNING unless we debug.
    for noisy in ("aiohttp.access", "grpc", "asyncio", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING if lvl != "DEBUG" else lvl)
