"""Settings of the ``control`` extension (``extensions: control:``), the policy control plane.

Shape (an OpenTelemetry Collector extension: defined under ``extensions:`` and enabled by
listing it in ``service.extensions``)::

    extensions:
      control:
        interval: 5m
        llm: {base_url: http://localhost:11434/v1, model: llama3.1, api_key: ${env:OPENAI_API_KEY}}
    service:
      extensions: [control]

=============================  ==================  ==============================================
setting                        default             meaning
=============================  ==================  ==============================================
processor                      (first sampling)    key of the sampling processor it drives
interval                       5m                  time between loop runs; 0 = no periodic runs
anomaly_trigger                [new, spike,        anomaly kinds that start an early run
                               error_surge]        ([] = none)
anomaly_delay                  10s                 wait after a new flag before the early run
min_gap                        1m                  least time between two runs (debounce)
top_k                          50                  patterns (and families) offered to the LLM
cost_per_gb                    null                price of 1 GB kept at the backend (prompt)
target_kept_bytes_per_day      null                upper bound for the kept volume ("20GB" ok)
hold                           1h                  operator/YAML policies are not replaced by the
                                                   loop for this long (refresh overrides)
history                        50                  stored policy versions per service
watch_interval                 10s                 config file mtime poll; 0 = SIGHUP only
llm.enabled                    true                false: heuristic only
llm.base_url                   null                OpenAI-compatible API base URL; null = OpenAI
llm.model                      gpt-4o-mini         model name
llm.api_key                    null                null = env OPENAI_API_KEY; "" = no key
llm.timeout                    30s                 per request
llm.max_retries                1                   the client's own retries (429, 5xx, timeouts)
llm.response_format            json_schema         json_schema (strict) | json_object
llm.temperature                null                sent only when set
llm.max_completion_tokens      4096                answer length limit
llm.max_calls_per_hour         12                  budget: LLM calls per rolling hour
llm.max_prompt_tokens          8000                budget: snapshot truncated by volume to fit
llm.fallback_after             3                   consecutive LLM failures before the
                                                   heuristic is applied instead
guardrails.min_rate            0.001               rates clamped to [min_rate, 1]
guardrails.max_decrease_factor 4                   no rate falls more than this much per step
guardrails.reject_error_sampling  true             an LLM answer sampling ERROR+ is rejected
                                                   (other sources: forced to 1)
guardrails.target_tolerance    0.1                 projected kept volume may exceed the
                                                   target by this share
heuristic.curve                sqrt                kept per window = scale x sqrt(n) or ln(1+n)
heuristic.scale                1.0                 (n = records of the pattern per window)
heuristic.max_pattern_rates    500                 patterns given an explicit rate (by volume)
api.enabled                    true                policy API on the telemetry address
api.token_env                  LIPSERVICE_API_TOKEN  env var holding the bearer token
=============================  ==================  ==============================================
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from collector.config import ByteSize, Duration, HttpUrl, StrictModel

AnomalyKind = Literal["new", "spike", "error_surge"]


class LlmConfig(StrictModel):
    """``llm:``: an OpenAI-compatible chat completions endpoint."""

    enabled: bool = True
    base_url: HttpUrl | None = None
    model: str = "gpt-4o-mini"
    api_key: str | None = None
    timeout: Duration = Field(30.0, gt=0)
    max_retries: int = Field(1, ge=0, le=10)
    response_format: Literal["json_schema", "json_object"] = "json_schema"
    temperature: float | None = Field(None, ge=0, le=2)
    max_completion_tokens: int = Field(4096, ge=64)
    max_calls_per_hour: int = Field(12, ge=0)
    max_prompt_tokens: int = Field(8000, ge=500)
    fallback_after: int = Field(3, ge=1)


class GuardrailsConfig(StrictModel):
    """``guardrails:``: checks every policy passes before it is applied (guardrails.py)."""

    min_rate: float = Field(0.001, ge=0, le=1)
    max_decrease_factor: float = Field(4.0, ge=1.0)
    reject_error_sampling: bool = True
    target_tolerance: float = Field(0.1, ge=0)


class HeuristicConfig(StrictModel):
    """``heuristic:``: the deterministic volume-based policy (heuristic.py)."""

    curve: Literal["sqrt", "log"] = "sqrt"
    scale: float = Field(1.0, gt=0)
    max_pattern_rates: int = Field(500, ge=1)


class ApiConfig(StrictModel):
    """``api:``: the policy API on the telemetry address (api.py)."""

    enabled: bool = True
    token_env: str = Field("LIPSERVICE_API_TOKEN", min_length=1)


class ControlConfig(StrictModel):
    """``extensions: control:`` (see the module docstring for the table)."""

    processor: str | None = None
    interval: Duration = 300.0
    anomaly_trigger: list[AnomalyKind] = Field(
        default_factory=lambda: ["new", "spike", "error_surge"])
    anomaly_delay: Duration = 10.0
    min_gap: Duration = 60.0
    top_k: int = Field(50, ge=1)
    cost_per_gb: float | None = Field(None, ge=0)
    target_kept_bytes_per_day: ByteSize | None = None
    hold: Duration = 3600.0
    history: int = Field(50, ge=1)
    watch_interval: Duration = 10.0
    llm: LlmConfig = Field(default_factory=LlmConfig)
    guardrails: GuardrailsConfig = Field(default_factory=GuardrailsConfig)
    heuristic: HeuristicConfig = Field(default_factory=HeuristicConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)

    def sampler_key(self, pipeline_processors: list[str]) -> str | None:
        """Key of the sampling processor this extension drives: ``processor`` when set,
        else the first processor of type ``sampling`` in the logs pipeline (None if none)."""
        if self.processor is not None:
            return self.processor
        return next((k for k in pipeline_processors if k.split("/", 1)[0] == "sampling"), None)

    def pipeline_problems(self, path: str, processors: dict[str, StrictModel],
                          pipeline_processors: list[str]) -> list[str]:
        """Config problems (``path: message``) about the processor this extension drives."""
        key = self.sampler_key(pipeline_processors)
        if key is None:
            return [f"{path}: the logs pipeline has no `sampling` processor to control"]
        if key not in pipeline_processors:
            return [f"{path}.processor: {key!r} is not a processor of the logs pipeline"]
        if key.split("/", 1)[0] != "sampling":
            return [f"{path}.processor: {key!r} is not a sampling processor"]
        return []
