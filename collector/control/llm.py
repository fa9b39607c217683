"""Asking an LLM for a policy: the answer schema, the prompt, the client and the budget.

- :func:`answer_schema`: a strict JSON schema derived from the ``Policy`` model's rate
  fields (``reasoning``, ``global_rate``, ``severity_rates``, ``pattern_rates``,
  ``family_rates``), made strict-compatible for OpenAI structured outputs: every property
  required, ``additionalProperties: false``, and maps written as arrays of
  ``{"id"|"severity": ..., "rate": ...}`` (strict mode has no free-form maps). The other
  policy fields (first-N, window, cap, boost, always_keep rules) are not the model's to set:
  they are carried over from the policy in force.
- :func:`build_messages`: system rules plus the snapshot as JSON (ids, masked templates and
  numbers only; see snapshot.py), truncated by volume to fit ``max_prompt_tokens``.
- :func:`parse_answer`: answer text -> policy document, or :class:`LlmError`.
- :class:`LlmClient`: ``openai.AsyncOpenAI`` against any OpenAI-compatible server (OpenAI,
  vLLM, Ollama, LiteLLM), ``response_format`` ``json_schema`` (strict) or ``json_object``.
- :class:`CallBudget`: calls per rolling hour.

Errors never carry the API key, the prompt or the answer (only an outcome and a short
reason), so logging them is safe.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from collector.control.config import LlmConfig
from collector.control.snapshot import Snapshot
from processors.policy import SEVERITY_RANGES, Policy

LLM_FIELDS = ("reasoning", "global_rate", "severity_rates", "pattern_rates", "family_rates")
"""Policy fields the model sets; the others are carried over from the policy in force."""
_MAP_KEY = {"severity_rates": "severity", "pattern_rates": "id", "family_rates": "id"}
SCHEMA_NAME = "sampling_policy"


class LlmError(Exception):
    """A call that produced no usable answer. outcome: label for
    ``lipservice_llm_calls_total`` (``invalid_json``, ``invalid_schema``, ``refused``,
    ``truncated``, ``timeout``, ``rate_limited``, ``server_error``, ``client_error``,
    ``connection_error``, ``error``); message: one line, free of secrets and content;
    completion: the answer when one came (its token usage still counts)."""

    def __init__(self, outcome: str, message: str, completion: Completion | None = None
                 ) -> None:
        super().__init__(message)
        self.outcome = outcome
        self.completion = completion


# --------------------------------------------------------------------------- schema


def _strict(node: dict[str, Any], name: str) -> dict[str, Any]:
    """One Policy property's JSON schema made strict-compatible (module docstring).
    Numeric bounds move into the description: strict mode does not guarantee them, the
    validation after parsing does."""
    kind = node.get("type")
    if kind == "object":  # a map: pattern id / family id / severity -> rate
        key = _MAP_KEY[name]
        key_schema: dict[str, Any] = {"type": "string"}
        if "propertyNames" in node:
            key_schema["enum"] = list(node["propertyNames"]["enum"])
        return {"type": "array", "description": f"{node.get('title', name)}: one entry per "
                f"{key}", "items": {
                    "type": "object", "additionalProperties": False, "required": [key, "rate"],
                    "properties": {key: key_schema,
                                   "rate": _strict(node["additionalProperties"], "rate")}}}
    out: dict[str, Any] = {"type": kind}
    bounds = [f"{word} {node[k]:g}" for k, word in (("minimum", "at least"),
                                                     ("maximum", "at most")) if k in node]
    if bounds:
        out["description"] = f"{node.get('title', 'rate')}: " + " and ".join(bounds)
    return out


def answer_schema() -> dict[str, Any]:
    """The strict JSON schema of an answer (module docstring), derived from ``Policy``."""
    props = Policy.model_json_schema()["properties"]
    return {"type": "object", "additionalProperties": False, "required": list(LLM_FIELDS),
            "properties": {f: _strict(props[f], f) for f in LLM_FIELDS}}


def response_format(kind: str) -> dict[str, Any]:
    if kind == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {
        "name": SCHEMA_NAME, "strict": True, "schema": answer_schema()}}


def parse_answer(text: str, current: Policy, shown_patterns: set[str],
                 shown_families: set[str]) -> dict[str, Any]:
    """The policy document an answer describes, for guardrails.check.

    Fields the answer leaves out keep their value in force. ``pattern_rates`` /
    ``family_rates``: the answer's entries replace the rates of the patterns and families
    the prompt showed; rates of the others in force are kept. Raises LlmError
    (``invalid_json`` when the text is not a JSON object, ``invalid_schema`` when its shape
    is wrong; value ranges are checked later by the policy model).
    """
    try:
        data = json.loads(text)
    except ValueError as err:
        raise LlmError("invalid_json", f"answer is not JSON ({err.msg} at {err.pos})") from None
    except RecursionError:
        raise LlmError("invalid_json", "answer is JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise LlmError("invalid_json", "answer is not a JSON object")
    extra = sorted(set(data) - set(LLM_FIELDS))
    if extra:
        raise LlmError("invalid_schema", f"answer has unknown fields: {', '.join(extra)}")
    doc = current.to_document()
    doc.update(generated_by="llm")
    for field in ("reasoning", "global_rate"):
        if field in data:
            doc[field] = data[field]
    shown = {"pattern_rates": shown_patterns, "family_rates": shown_families,
             "severity_rates": set(SEVERITY_RANGES)}
    for field, key in _MAP_KEY.items():
        if field not in data:
            continue
        entries = data[field]
        if not isinstance(entries, list) or not all(
                isinstance(e, dict) and set(e) == {key, "rate"} and isinstance(e[key], str)
                for e in entries):
            raise LlmError("invalid_schema", f"{field}: expected an array of "
                           f'{{"{key}": string, "rate": number}}')
        kept = {k: r for k, r in doc[field].items() if k not in shown[field]}
        doc[field] = {**kept, **{e[key]: e["rate"] for e in entries}}
    return doc


# --------------------------------------------------------------------------- prompt

SYSTEM_PROMPT = """\
You tune log sampling for one service. Its log records are grouped into patterns (a \
template with variables masked as <*>; an id). Per record the sampler: keeps every ERROR \
and FATAL record; keeps the first keep_first_n records of each pattern per window; keeps \
the rest with probability p = the pattern's rate, else its family's rate, else the rate \
of its severity range, else global_rate; multiplies p by anomaly_boost while the pattern \
is flagged (new, spike) or the service has an error surge. Kept records carry weight 1/p, \
so counts stay estimable.

Goal: cut the kept volume (bytes) where it is repetitive and low in information (health \
checks, polling, routine success, DEBUG/TRACE chatter) while keeping what an engineer \
needs to debug: warnings, rare patterns, state changes, security and business events, \
anything flagged anomalous. If target_kept_bytes_per_day is given, aim at or below it; \
cost_per_gb tells what a kept GB costs.

Rules: rates are numbers from 0 to 1. Never give ERROR or FATAL a rate below 1. Do not cut \
a pattern flagged anomalous. Lower a rate at most 4x per answer; raise freely. Give \
pattern_rates only for patterns that need their own rate (ids from the input); the others \
follow family, severity and global rates. Answer with one JSON object matching the schema: \
reasoning (two or three sentences), global_rate, severity_rates, pattern_rates, \
family_rates (arrays may be empty).
"""


CHARS_PER_TOKEN = 3.0
"""Prompt size estimate. English prose runs about 4 characters per token with OpenAI's
tokenizers, JSON full of numbers and ids nearer 3: the budget is an upper bound, so the
estimate errs high. (tiktoken is not used: it may fetch its tables over the network.)"""


def estimate_tokens(text: str) -> int:
    """Estimated tokens in ``text`` (``CHARS_PER_TOKEN``), rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass
class Prompt:
    """Chat messages plus what they show: shown_patterns / shown_families (ids), tokens
    (estimated), omitted (patterns left out to fit the token budget)."""

    messages: list[dict[str, str]]
    shown_patterns: set[str]
    shown_families: set[str]
    tokens: int
    omitted: int


def build_messages(snap: Snapshot, current: Policy, top_k: int, max_tokens: int,
                   json_object: bool = False) -> Prompt | None:
    """The prompt for ``snap``: the ``top_k`` patterns by volume, fewer if needed to fit
    ``max_tokens`` (bisection on the count). None when even no pattern fits.
    json_object: append the schema to the system message (for servers without
    ``json_schema`` support)."""
    system = SYSTEM_PROMPT
    if json_object:
        system += "\nJSON schema of the answer:\n" + json.dumps(answer_schema())

    def make(k: int) -> Prompt:
        data = snap.prompt_data(current, k)
        user = json.dumps(data, separators=(",", ":"), ensure_ascii=False)
        msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
        return Prompt(msgs, {p["id"] for p in data["patterns"]},
                      {f["id"] for f in data["families"]},
                      estimate_tokens(system) + estimate_tokens(user) + 8,
                      max(0, min(top_k, len(snap.patterns)) - len(data["patterns"])))

    k_hi = min(top_k, len(snap.patterns))
    best = make(k_hi)
    if best.tokens <= max_tokens:
        return best
    lo, hi = 0, k_hi  # make(lo) may fit, make(hi) does not
    fitted = make(0)
    if fitted.tokens > max_tokens:
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        candidate = make(mid)
        if candidate.tokens <= max_tokens:
            lo, fitted = mid, candidate
        else:
            hi = mid
    return fitted


# --------------------------------------------------------------------------- client


@dataclass
class Completion:
    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int


class LlmClient:
    """One OpenAI-compatible chat completions endpoint (``LlmConfig``).

    api_key: the resolved key ("" for servers that need none: a placeholder is sent).
    The ``openai`` package is imported here, not at module import: it takes a second or
    more to import, which a sidecar without an LLM should not pay at startup.
    """

    def __init__(self, cfg: LlmConfig, api_key: str) -> None:
        import openai

        self.cfg = cfg
        self.client = openai.AsyncOpenAI(
            api_key=api_key or "not-needed", base_url=cfg.base_url or None,
            timeout=cfg.timeout, max_retries=cfg.max_retries)

    async def complete(self, messages: list[dict[str, str]]) -> Completion:
        """One call (the client retries ``max_retries`` times inside it). Raises LlmError
        with the outcome; the text is returned as is (parse_answer checks it)."""
        import openai

        cfg = self.cfg
        extra: dict[str, Any] = {}
        if cfg.temperature is not None:
            extra["temperature"] = cfg.temperature
        try:
            resp = await self.client.chat.completions.create(
                model=cfg.model, messages=messages,  # type: ignore[arg-type]
                response_format=response_format(cfg.response_format),  # type: ignore[arg-type]
                max_completion_tokens=cfg.max_completion_tokens, **extra)
        except openai.APITimeoutError:
            raise LlmError("timeout", f"no answer within {cfg.timeout:g}s") from None
        except openai.RateLimitError as err:
            raise LlmError("rate_limited", f"HTTP {err.status_code} (rate limited)") from None
        except openai.APIStatusError as err:
            kind = "server_error" if err.status_code >= 500 else "client_error"
            raise LlmError(kind, f"HTTP {err.status_code}") from None
        except openai.APIConnectionError as err:
            raise LlmError("connection_error", f"cannot connect ({type(err).__name__})") from None
        except (TimeoutError, openai.OpenAIError, ValueError) as err:
            raise LlmError("error", f"{type(err).__name__}") from None
        if not resp.choices:
            raise LlmError("invalid_json", "answer has no choices")
        choice = resp.choices[0]
        usage = resp.usage
        completion = Completion(choice.message.content or "", resp.model or cfg.model,
                                usage.prompt_tokens if usage else 0,
                                usage.completion_tokens if usage else 0)
        if getattr(choice.message, "refusal", None):
            raise LlmError("refused", "the model refused", completion)
        if choice.finish_reason == "length":
            raise LlmError("truncated", "answer cut at max_completion_tokens", completion)
        return completion

    async def close(self) -> None:
        await self.client.close()


class CallBudget:
    """At most ``per_hour`` calls in any rolling hour. clock: monotonic seconds."""

    def __init__(self, per_hour: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_hour = per_hour
        self.clock = clock
        self._calls: deque[float] = deque()

    def _trim(self) -> None:
        horizon = self.clock() - 3600.0
        while self._calls and self._calls[0] <= horizon:
            self._calls.popleft()

    def available(self) -> bool:
        self._trim()
        return len(self._calls) < self.per_hour

    def spend(self) -> None:
        self._calls.append(self.clock())

    @property
    def used(self) -> int:
        self._trim()
        return len(self._calls)
