"""The policy API, served on the telemetry address (``service.telemetry.metrics.address``).

======  ===========================================  ==========================================
method  path                                         does
======  ===========================================  ==========================================
GET     /api/v1/policies                             scopes with a policy: ``_default`` and
                                                     every service with its own
GET     /api/v1/policies/{service_name}              the policy in force for the service (its
                                                     own, else the default: ``scope``)
GET     /api/v1/policies/{service_name}/history      stored versions, newest first (``?limit``)
POST    /api/v1/policies/{service_name}              operator override: a policy document
                                                     (fields left out keep their value in
                                                     force), through the guardrails; held
POST    /api/v1/policies/{service_name}/refresh      run the control loop for the service now
======  ===========================================  ==========================================

``service_name`` is a ``service.name`` value, or ``_default`` for the default policy.

Auth: ``Authorization: Bearer <token>``, the token read from the environment variable named
by ``api.token_env`` (default ``LIPSERVICE_API_TOKEN``). Required on POST; required on every
route when the telemetry address is not loopback. With the variable unset, those routes
answer 403. The token is compared in constant time and never logged or echoed.

Errors are JSON: ``{"error": {"status": 422, "message": "...", "problems": ["path: why"]}}``
with 400 (malformed request: bad JSON, not an object, bad service name, bad ``limit``),
401 (missing or wrong token), 403 (no token configured), 404 (unknown service or route),
422 (the policy fails validation or a guardrail rejects it), 503 (not started, or the
shared policy store is unreachable: ``storage.backend: redis``, nothing was stored).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import re
from typing import Any

from aiohttp import web

from collector.control.loop import ControlLoop
from collector.control.store import DEFAULT_SCOPE, StoreUnavailable

log = logging.getLogger("lipservice.control.api")

PREFIX = "/api/v1/policies"
_SERVICE_NAME = re.compile(r"^[^\x00-\x1f\x7f]{1,256}$")
MAX_HISTORY = 1000


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def error(status: int, message: str, problems: list[str] | None = None) -> web.Response:
    headers = {"WWW-Authenticate": 'Bearer realm="lipservice"'} if status == 401 else None
    return web.json_response({"error": {"status": status, "message": message,
                                        "problems": problems or []}},
                             status=status, headers=headers)


class PolicyApi:
    """Route handlers (module docstring). ``loop`` is attached when the extension starts.

    host: the telemetry listen host (decides whether reads need the token);
    token_env: name of the environment variable holding the token (read per request, so
    a rotated secret applies without restart).
    """

    def __init__(self, host: str, token_env: str) -> None:
        self.reads_need_token = not is_loopback(host)
        self.token_env = token_env
        self.loop: ControlLoop | None = None

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get(PREFIX, self.list_scopes),
            web.get(PREFIX + "/{service}", self.get_policy),
            web.get(PREFIX + "/{service}/history", self.get_history),
            web.post(PREFIX + "/{service}", self.post_policy),
            web.post(PREFIX + "/{service}/refresh", self.post_refresh),
            web.route("*", "/api/{tail:.*}", self.not_found),
        ]

    # ------------------------------------------------------------------ checks

    def _denied(self, request: web.Request, write: bool) -> web.Response | None:
        if not write and not self.reads_need_token:
            return None
        token = os.environ.get(self.token_env, "").strip()  # a secret file's final newline
        if not token:
            return error(403, f"the policy API needs a token: set the environment variable "
                              f"{self.token_env} (required on POST, and on every route when "
                              "the telemetry address is not loopback)")
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not value:
            return error(401, "missing bearer token (Authorization: Bearer <token>)")
        if not hmac.compare_digest(value.strip().encode(), token.encode()):
            return error(401, "wrong bearer token")
        return None

    def _scope(self, request: web.Request,
               write: bool) -> tuple[str, ControlLoop] | web.Response:
        """The route's service name and the loop, or the error answer: permission first
        (:meth:`_denied`), then a running loop, then a valid name."""
        if (denied := self._denied(request, write)) is not None:
            return denied
        if self.loop is None:
            return error(503, "the control loop is not running yet")
        name = request.match_info["service"]
        if not _SERVICE_NAME.match(name):
            return error(400, "service_name: 1 to 256 characters, no control characters")
        return name, self.loop

    # ------------------------------------------------------------------ routes

    async def not_found(self, request: web.Request) -> web.Response:
        return error(404, f"no such route: {request.method} {request.path}")

    async def list_scopes(self, request: web.Request) -> web.Response:
        if (denied := self._denied(request, write=False)) is not None:
            return denied
        if self.loop is None:
            return error(503, "the control loop is not running yet")
        own = self.loop.sampler.policies()
        scopes = {DEFAULT_SCOPE: self.loop.in_force(DEFAULT_SCOPE), **own}
        return web.json_response({"policies": [
            {"service": s, "version": p.version, "generated_by": p.generated_by}
            for s, p in scopes.items()]})

    async def get_policy(self, request: web.Request) -> web.Response:
        got = self._scope(request, write=False)
        if isinstance(got, web.Response):
            return got
        name, loop = got
        if not loop.known(name) and await loop.store.latest(name) is None:
            return error(404, f"unknown service {name!r}: no statistics and no policy")
        own = name == DEFAULT_SCOPE or name in loop.sampler.policies()
        scope = name if own else DEFAULT_SCOPE
        stored = await loop.store.latest(scope)
        policy = loop.in_force(name)
        body: dict[str, Any] = {"service": name, "scope": scope, "policy": policy.to_document()}
        if stored is not None and stored.version == policy.version:
            body["stored"] = {k: v for k, v in stored.to_json().items() if k != "policy"}
        return web.json_response(body)

    async def get_history(self, request: web.Request) -> web.Response:
        got = self._scope(request, write=False)
        if isinstance(got, web.Response):
            return got
        name, loop = got
        raw = request.query.get("limit", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_HISTORY:
            return error(400, f"limit: an integer from 1 to {MAX_HISTORY}")
        history = await loop.store.history(name, int(raw))
        if not history and not loop.known(name):
            return error(404, f"unknown service {name!r}: no statistics and no policy")
        return web.json_response({"service": name,
                                  "versions": [h.to_json() for h in history]})

    async def post_policy(self, request: web.Request) -> web.Response:
        got = self._scope(request, write=True)
        if isinstance(got, web.Response):
            return got
        name, loop = got
        try:
            body = await request.json()
        except ValueError:
            return error(400, "the body is not valid JSON")
        except RecursionError:
            return error(400, "the body's JSON is nested too deeply")
        if not isinstance(body, dict):
            return error(400, "the body must be a JSON object (a policy document)")
        try:
            verdict, rec = await loop.override(name, body)
        except StoreUnavailable as err:
            return error(503, str(err))
        if rec is None:
            return error(422, "policy rejected: " + ", ".join(verdict.reasons),
                         verdict.problems)
        log.info("operator policy v%d applied for %s", rec.version, name)
        return web.json_response({"service": name, "applied": True, **rec.to_json(),
                                  **verdict.to_json()})

    async def post_refresh(self, request: web.Request) -> web.Response:
        got = self._scope(request, write=True)
        if isinstance(got, web.Response):
            return got
        name, loop = got
        if name == DEFAULT_SCOPE:
            return error(400, "the loop tunes services, not the default policy: refresh a "
                              "service_name")
        if not loop.known(name):
            return error(404, f"unknown service {name!r}: no statistics to work from")
        results = await loop.run_once("api", name, force=True)
        return web.json_response(results[0].to_json())
