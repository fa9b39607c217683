"""Admin API on the telemetry address (collector/telemetry.py), read-only, JSON.

``GET /api/v1/patterns[?limit=N&members=M]``::

    {"processors": {
        "<processor name>": {
            "families": [...],        # from processors with families(): the clustering
                                      # processor's families, largest first (at most N,
                                      # default 100; at most M members each, default 20)
            "pattern_stats": ...,     # from processors with pattern_stats(), as they give it
            "error": "..."            # instead, when reading that processor failed
        }, ...}}

``limit`` / ``members``: integers ≥ 1; anything else is answered with 400 and a message.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

log = logging.getLogger("lipservice.admin")

DEFAULT_LIMIT = 100
DEFAULT_MEMBERS = 20


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or int(raw) < 1:
        raise web.HTTPBadRequest(
            text=f'{{"error": "{name}: expected an integer >= 1"}}',
            content_type="application/json")
    return int(raw)


def pattern_routes(processors: list[tuple[str, Any]]) -> list[web.RouteDef]:
    """Routes for ``GET /api/v1/patterns`` over the (name, processor) pairs that have
    ``families(limit, max_members)`` and/or ``pattern_stats()``."""
    sources = [(name, proc) for name, proc in processors
               if hasattr(proc, "families") or hasattr(proc, "pattern_stats")]

    async def patterns(request: web.Request) -> web.Response:
        limit = _int_param(request, "limit", DEFAULT_LIMIT)
        members = _int_param(request, "members", DEFAULT_MEMBERS)
        out: dict[str, dict[str, Any]] = {}
        for name, proc in sources:
            entry: dict[str, Any] = {}
            try:
                if hasattr(proc, "families"):
                    # families() copies under its own lock: safe off the event loop.
                    entry["families"] = await asyncio.to_thread(proc.families, limit, members)
                if hasattr(proc, "pattern_stats"):
                    entry["pattern_stats"] = proc.pattern_stats()
            except Exception:  # noqa: BLE001 - one processor must not hide the others
                log.exception("reading patterns of processor %s failed", name)
                entry = {"error": f"reading patterns of processor {name!r} failed; "
                                  "see the sidecar's log"}
            out[name] = entry
        return web.json_response({"processors": out})

    return [web.get("/api/v1/patterns", patterns)]
