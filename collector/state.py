"""Local state store: one SQLite file, ``<storage.directory>/state.db`` (DESIGN.md §State).

Holds JSON documents by key (processor snapshots: ``processor/<name>``) and is shared by
other collector parts (policy history, persistent queue) through their own tables.
Writes are atomic (one transaction each; WAL journal), so a crash leaves the previous
version or the new one, never half of either.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any


class StateError(Exception):
    """The state directory or file cannot be used (message names the path and cause)."""


class StateStore:
    """JSON documents by key in ``<directory>/state.db``.

    directory: created if missing; raises StateError if it cannot be created or written.
    """

    def __init__(self, directory: str | Path, filename: str = "state.db") -> None:
        self.path = Path(directory) / filename
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, "
                            "value TEXT NOT NULL, updated_at REAL NOT NULL)")
        except (OSError, sqlite3.Error) as err:
            raise StateError(f"cannot use state file {self.path}: {err}") from None

    def get(self, key: str) -> Any | None:
        """The document stored under ``key``, or None."""
        row = self.db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable document under ``key`` (atomic replace)."""
        text = json.dumps(value, separators=(",", ":"))
        self.db.execute("INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) "
                        "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                        "updated_at = excluded.updated_at", (key, text, time.time()))

    def close(self) -> None:
        self.db.close()
