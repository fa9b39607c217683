"""Policy persistence: every applied policy, versioned per service, with its history.

A :class:`PolicyStore` keeps, per scope (a ``service.name``, or ``_default`` for the default
policy), each applied policy as a :class:`StoredPolicy`: version, source (``generated_by``),
reasoning, a digest of the statistics it was computed from, how long it is held against the
loop, and the policy document. A restart resumes each scope's latest version.

:class:`SqlitePolicyStore` is the local implementation: its own table in the sidecar's SQLite
state file (collector/state.py ``StateStore.db``). The interface is async so that a shared
store (Redis, DESIGN.md §State and scale) can implement it without changing its callers:
collector/shared/store.py, which keeps a copy of what it serves here (:meth:`put`).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Protocol

from processors.policy import Policy

DEFAULT_SCOPE = "_default"
"""Scope name of the default policy (the sampling processor's ``policy:``)."""


class StoreUnavailable(OSError):
    """A shared store did not answer; nothing was stored and the policy in force stays.
    The message names the cause (never a URL or credential)."""


@dataclass(frozen=True)
class StoredPolicy:
    """One applied policy version.

    scope: service name or ``_default``; version: int >= 1, per scope; source: the policy's
    ``generated_by``; stored_at / held_until: seconds since the epoch (held_until 0 = not
    held); stats_digest: hex digest of the snapshot it came from ("" for operator/yaml).
    """

    scope: str
    version: int
    source: str
    stored_at: float
    reasoning: str
    stats_digest: str
    held_until: float
    policy: Policy

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version, "source": self.source, "stored_at": self.stored_at,
                "reasoning": self.reasoning, "stats_digest": self.stats_digest,
                "held_until": self.held_until or None, "policy": self.policy.to_document()}


class PolicyStore(Protocol):
    """Where applied policies live (local SQLite now; a shared store later)."""

    async def append(self, scope: str, policy: Policy, stats_digest: str, stored_at: float,
                     held_until: float = 0.0) -> StoredPolicy:
        """Store ``policy`` as the scope's next version (``policy.version`` is replaced by
        it) and prune history; returns what was stored. Raises OSError/sqlite3.Error
        (StoreUnavailable for a shared store that does not answer)."""
        ...

    async def latest(self, scope: str) -> StoredPolicy | None: ...

    async def history(self, scope: str, limit: int = 50) -> list[StoredPolicy]:
        """Newest first."""
        ...

    async def scopes(self) -> list[str]: ...

    async def get_meta(self, key: str) -> str | None: ...

    async def set_meta(self, key: str, value: str) -> None: ...


class SqlitePolicyStore:
    """:class:`PolicyStore` in a table of an open SQLite connection.

    db: the state store's connection (autocommit mode, as ``StateStore`` opens it);
    keep: versions kept per scope (older ones are deleted in the same transaction).
    """

    def __init__(self, db: sqlite3.Connection, keep: int = 50) -> None:
        self.db = db
        self.keep = keep
        db.execute("CREATE TABLE IF NOT EXISTS policy_history ("
                   "scope TEXT NOT NULL, version INTEGER NOT NULL, source TEXT NOT NULL, "
                   "stored_at REAL NOT NULL, reasoning TEXT NOT NULL, "
                   "stats_digest TEXT NOT NULL, held_until REAL NOT NULL, "
                   "document TEXT NOT NULL, PRIMARY KEY (scope, version))")
        db.execute("CREATE TABLE IF NOT EXISTS policy_meta ("
                   "key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    async def append(self, scope: str, policy: Policy, stats_digest: str, stored_at: float,
                     held_until: float = 0.0) -> StoredPolicy:
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT MAX(version) FROM policy_history WHERE scope = ?",
                             (scope,)).fetchone()
            version = max(row[0] or 0, policy.version) + 1
            policy = policy.model_copy(update={"version": version})
            db.execute("INSERT INTO policy_history VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (scope, version, policy.generated_by, stored_at, policy.reasoning,
                        stats_digest, held_until,
                        json.dumps(policy.to_document(), separators=(",", ":"))))
            db.execute("DELETE FROM policy_history WHERE scope = ? AND version <= ?",
                       (scope, version - self.keep))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return StoredPolicy(scope, version, policy.generated_by, stored_at, policy.reasoning,
                            stats_digest, held_until, policy)

    async def put(self, rec: StoredPolicy) -> None:
        """Keep ``rec`` under its own version (a copy of a shared store's record, kept so
        a restart without the shared store resumes it) and prune history."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("INSERT OR REPLACE INTO policy_history VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                       (rec.scope, rec.version, rec.source, rec.stored_at, rec.reasoning,
                        rec.stats_digest, rec.held_until,
                        json.dumps(rec.policy.to_document(), separators=(",", ":"))))
            db.execute("DELETE FROM policy_history WHERE scope = ? AND (version <= ? OR "
                       "version > ?)", (rec.scope, rec.version - self.keep, rec.version))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    async def latest(self, scope: str) -> StoredPolicy | None:
        found = await self.history(scope, 1)
        return found[0] if found else None

    async def history(self, scope: str, limit: int = 50) -> list[StoredPolicy]:
        rows = self.db.execute(
            "SELECT scope, version, source, stored_at, reasoning, stats_digest, held_until, "
            "document FROM policy_history WHERE scope = ? ORDER BY version DESC LIMIT ?",
            (scope, limit)).fetchall()
        return [StoredPolicy(*row[:7], Policy.model_validate(json.loads(row[7])))
                for row in rows]

    async def scopes(self) -> list[str]:
        return [r[0] for r in self.db.execute(
            "SELECT DISTINCT scope FROM policy_history ORDER BY scope").fetchall()]

    async def get_meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM policy_meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    async def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT INTO policy_meta (key, value) VALUES (?, ?) ON CONFLICT(key) "
                        "DO UPDATE SET value = excluded.value", (key, value))
