"""An OpenAI-compatible chat completions server for tests: real aiohttp on 127.0.0.1, its own
event loop in a background thread (usable from sync and async tests), scripted answers,
every request recorded."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.sinks import free_port


@dataclass
class Answer:
    """One scripted reply. content: the assistant message text (or ``make(request_json)``
    computes it); status != 200: an OpenAI-style error body; delay: seconds before replying."""

    content: str = ""
    make: Callable[[dict[str, Any]], str] | None = None
    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    finish_reason: str = "stop"
    prompt_tokens: int = 1200
    completion_tokens: int = 80


def policy_answer(reasoning: str = "test", global_rate: float = 0.1,
                  severity: dict[str, float] | None = None,
                  patterns: dict[str, float] | None = None,
                  families: dict[str, float] | None = None) -> str:
    """A schema-conforming answer text."""
    sev = severity if severity is not None else {"TRACE": 0.01, "DEBUG": 0.02, "INFO": 0.05,
                                                 "WARN": 0.25}
    return json.dumps({
        "reasoning": reasoning, "global_rate": global_rate,
        "severity_rates": [{"severity": k, "rate": v} for k, v in sev.items()],
        "pattern_rates": [{"id": k, "rate": v} for k, v in (patterns or {}).items()],
        "family_rates": [{"id": k, "rate": v} for k, v in (families or {}).items()]})


class FakeLLM:
    """``POST /v1/chat/completions``. ``answers`` are used one per request, then
    ``default``. ``requests``: the JSON bodies received; ``headers``: their headers."""

    def __init__(self, default: Answer | None = None) -> None:
        self.answers: list[Answer] = []
        self.default = default or Answer(policy_answer())
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.port = free_port()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def prompts(self) -> list[str]:
        """All message contents of every request, joined per request."""
        with self._lock:
            return ["\n".join(m["content"] for m in r["messages"]) for r in self.requests]

    def user_data(self, i: int = -1) -> dict[str, Any]:
        """The snapshot JSON of request ``i`` (the user message)."""
        with self._lock:
            return json.loads(self.requests[i]["messages"][-1]["content"])

    def __enter__(self) -> FakeLLM:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        with self._lock:
            self.requests.append(body)
            self.headers.append(dict(request.headers))
            answer = self.answers.pop(0) if self.answers else self.default
        if answer.delay:
            await asyncio.sleep(answer.delay)
        if answer.status != 200:
            return web.json_response(
                {"error": {"message": "scripted failure", "type": "server_error",
                           "code": None}}, status=answer.status, headers=answer.headers)
        content = answer.make(body) if answer.make else answer.content
        return web.json_response({
            "id": "chatcmpl-test", "object": "chat.completion", "created": 0,
            "model": "fake-model",
            "choices": [{"index": 0, "finish_reason": answer.finish_reason,
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": answer.prompt_tokens,
                      "completion_tokens": answer.completion_tokens,
                      "total_tokens": answer.prompt_tokens + answer.completion_tokens}})
