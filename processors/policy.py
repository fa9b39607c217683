"""The sampling policy: a versioned document that says how much of each pattern to keep.

Semantics (DESIGN.md §Sampling semantics), applied per record by processors/sampling.py:

1. exempt, weight 1: severity_number >= 17 (ERROR, FATAL), or any ``always_keep`` rule;
2. the first ``keep_first_n`` records of each pattern in each ``window``, weight 1;
3. otherwise keep with probability ``p``, the first of: ``pattern_rates[pattern id]``,
   ``family_rates[family id]``, ``severity_rates[severity range]``, ``global_rate``;
   while the pattern (or its service) is flagged by anomaly detection,
   ``p = min(1, p * anomaly_boost)``; weight ``1/p``;
4. then at most ``max_per_window`` records of a pattern kept per window (when set).

ERROR and FATAL entries in ``severity_rates`` are accepted (the legacy document carries them)
and have no effect: ERROR+ is always kept.

Fields (all optional; the defaults are the product's default policy):

=================  ==================================  ========================================
field              default                             meaning
=================  ==================================  ========================================
version            0                                   int >= 0; the control loop increments it
created_at         now (UTC)                           ISO-8601 timestamp
generated_by       ``default``                         default | yaml | heuristic | llm | operator
llm_model          None                                model name when generated_by is ``llm``
reasoning          ""                                  free text: why this policy
global_rate        0.1                                 rate in [0, 1] when nothing else matches
severity_rates     TRACE 0.01, DEBUG 0.02, INFO 0.05,  rate per OTel severity range: TRACE 1-4,
                   WARN 0.25                           DEBUG 5-8, INFO 9-12, WARN 13-16,
                                                       ERROR 17-20, FATAL 21-24; unspecified
                                                       severity (0) counts as INFO
pattern_rates      {}                                  pattern id (16 hex) -> rate
family_rates       {}                                  family id -> rate
keep_first_n       2                                   records of each pattern kept per window
window             60 (seconds; "1m", "30s" accepted)  length of the first-N / cap window (>= 1s)
max_per_window     None                                cap on records kept per pattern per
                                                       window (None = no cap)
anomaly_boost      10.0                                multiplier >= 1 on p while flagged
always_keep        []                                  list of rules (below)
=================  ==================================  ========================================

An ``always_keep`` rule is one of::

    {record_attribute: KEY, equals: "VALUE"}      # or matches: REGEX (re.search)
    {resource_attribute: KEY, matches: "^canary"}
    {body_matches: "(?i)panic|segfault"}

Attribute values are compared as strings: string values as they are, ints in decimal, bools
as ``true``/``false``, doubles as Python ``repr``.

The legacy document (the shape the replaced system served) loads unchanged through
:func:`load_policy`: ``global_rate``, ``severity_rates`` with DEBUG/INFO/WARNING/ERROR/CRITICAL
keys (WARNING is read as WARN, CRITICAL as FATAL), ``pattern_rates``, ``anomaly_boost``,
``reasoning`` (may be null), ``generated_by`` (``rule-based`` is read as ``heuristic``),
``llm_model``, ``version``. Fields it lacks take the defaults above.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from collector.config import Duration, NumbersNotBooleans, not_boolean

ERROR_SEVERITY = 17
"""severity_number at and above which a record is always kept (ERROR, FATAL)."""

SEVERITY_RANGES: dict[str, tuple[int, int]] = {
    "TRACE": (1, 4), "DEBUG": (5, 8), "INFO": (9, 12),
    "WARN": (13, 16), "ERROR": (17, 20), "FATAL": (21, 24),
}
"""OTel severity_number ranges by short name (OTel logs data model)."""

SeverityName = Literal["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"]

# Names accepted as severity_rates keys besides the OTel short names (the legacy shape).
_SEVERITY_ALIASES = {"WARNING": "WARN", "CRITICAL": "FATAL", "ERR": "ERROR", "CRIT": "FATAL"}
_GENERATED_BY_ALIASES = {"rule-based": "heuristic", "rule_based": "heuristic",
                         "rules": "heuristic", "ai": "llm"}

Rate = Annotated[float, BeforeValidator(not_boolean), Field(ge=0.0, le=1.0)]


class PolicyError(ValueError):
    """A policy document cannot be used. ``problems`` holds one line per bad field, each
    naming its path (``severity_rates.INFO: ...``); ``str(err)`` joins them."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid sampling policy: " + "; ".join(problems))


def severity_name(severity_number: int) -> str:
    """Short OTel name of a severity_number (``INFO`` for 0, negative or unknown values
    below 1; ``FATAL`` above 24)."""
    if severity_number >= 21:
        return "FATAL"
    if severity_number < 1:
        return "INFO"
    return ("TRACE", "DEBUG", "INFO", "WARN", "ERROR")[(severity_number - 1) // 4]


class KeepRule(NumbersNotBooleans):
    """One ``always_keep`` rule: a record or resource attribute that ``equals`` a string or
    ``matches`` a regex (``re.search``), or a body that ``body_matches`` a regex."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    record_attribute: str | None = None
    resource_attribute: str | None = None
    body_matches: str | None = None
    equals: str | None = None
    matches: str | None = None

    @model_validator(mode="after")
    def _check(self) -> KeepRule:
        targets = [t for t in (self.record_attribute, self.resource_attribute,
                               self.body_matches) if t is not None]
        if len(targets) != 1:
            raise ValueError("a rule names exactly one of record_attribute, "
                             "resource_attribute, body_matches")
        if self.body_matches is not None:
            if self.equals is not None or self.matches is not None:
                raise ValueError("body_matches takes no equals/matches")
            _compile(self.body_matches)
        else:
            if (self.equals is None) == (self.matches is None):
                raise ValueError("an attribute rule needs exactly one of equals, matches")
            if self.matches is not None:
                _compile(self.matches)
        return self

    def pattern(self) -> re.Pattern[str] | None:
        """The compiled regex (``matches`` or ``body_matches``), or None for ``equals``."""
        src = self.body_matches if self.body_matches is not None else self.matches
        return None if src is None else re.compile(src)


def _compile(src: str) -> None:
    try:
        re.compile(src)
    except re.error as err:
        raise ValueError(f"invalid regex {src!r}: {err}") from None


def _default_severity_rates() -> dict[str, float]:
    return {"TRACE": 0.01, "DEBUG": 0.02, "INFO": 0.05, "WARN": 0.25}


class Policy(NumbersNotBooleans):
    """A sampling policy (see the module docstring for fields, defaults and semantics).

    Immutable: a new policy is a new object, swapped in whole
    (``SamplingProcessor.set_policy``). Build one from untrusted data with
    :func:`load_policy`, which raises :class:`PolicyError`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    version: int = Field(0, ge=0)
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    generated_by: Literal["default", "yaml", "heuristic", "llm", "operator"] = "default"
    llm_model: str | None = None
    reasoning: str = ""
    global_rate: Rate = 0.1
    severity_rates: dict[SeverityName, Rate] = Field(default_factory=_default_severity_rates)
    pattern_rates: dict[str, Rate] = Field(default_factory=dict)
    family_rates: dict[str, Rate] = Field(default_factory=dict)
    keep_first_n: int = Field(2, ge=0)
    window: Duration = Field(60.0, ge=1.0)
    max_per_window: int | None = Field(None, ge=1)
    anomaly_boost: float = Field(10.0, ge=1.0)
    always_keep: tuple[KeepRule, ...] = ()

    @field_validator("severity_rates", mode="before")
    @classmethod
    def _severity_keys(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        out: dict[str, Any] = {}
        for key, rate in value.items():
            name = str(key).upper()
            out[_SEVERITY_ALIASES.get(name, name)] = rate
        return out

    @field_validator("generated_by", mode="before")
    @classmethod
    def _generated_by(cls, value: Any) -> Any:
        if isinstance(value, str):
            return _GENERATED_BY_ALIASES.get(value.lower(), value.lower())
        return value

    @field_validator("reasoning", mode="before")
    @classmethod
    def _reasoning(cls, value: Any) -> Any:
        return "" if value is None else value

    def severity_table(self) -> list[float]:
        """Rate by severity_number 0..24 (index 0 = unspecified, read as INFO), falling back
        to ``global_rate`` for ranges the policy does not name."""
        table = [self.global_rate] * 25
        for name, (lo, hi) in SEVERITY_RANGES.items():
            rate = self.severity_rates.get(name)  # type: ignore[call-overload]
            if rate is not None:
                for sn in range(lo, hi + 1):
                    table[sn] = rate
        table[0] = table[9]
        return table

    def rate_for(self, pattern_id: str, family: str = "", severity_number: int = 0) -> float:
        """The policy's p for one record before any anomaly boost: pattern, then family,
        then severity range, then global. Does not apply the ERROR+ exemption."""
        rate = self.pattern_rates.get(pattern_id)
        if rate is None and family:
            rate = self.family_rates.get(family)
        if rate is None:
            rate = self.severity_table()[min(max(severity_number, 0), 24)]
        return rate

    def to_document(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (timestamps as ISO-8601 strings)."""
        return self.model_dump(mode="json")


def load_policy(document: Mapping[str, Any] | str | bytes, **overrides: Any) -> Policy:
    """A Policy from a mapping or a JSON text (this product's shape or the legacy one).

    overrides: fields set on top of the document (for example ``generated_by="operator"``).
    Raises PolicyError naming each bad field.
    """
    if isinstance(document, str | bytes):
        try:
            document = json.loads(document)
        except ValueError as err:
            raise PolicyError([f"not JSON: {err}"]) from None
    if not isinstance(document, Mapping):
        raise PolicyError([f"expected an object, got {type(document).__name__}"])
    data = {**document, **overrides}
    try:
        return Policy.model_validate(data)
    except ValidationError as err:
        raise PolicyError(validation_problems(err)) from None


def validation_problems(err: ValidationError) -> list[str]:
    """One ``path: message`` line per pydantic error (input values left out of messages so
    that nothing a user pasted in is echoed into logs)."""
    out = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "policy"
        if e["type"] == "extra_forbidden":
            out.append(f"{path}: unknown field")
        else:
            out.append(f"{path}: {e['msg'].removeprefix('Value error, ')}")
    return out


DEFAULT_POLICY = Policy(created_at=datetime(2025, 1, 1, tzinfo=UTC),
                        reasoning="built-in default: ERROR+ always kept, first 2 records of "
                                  "every pattern kept each minute, the rest sampled by severity")
"""The built-in default policy (what runs when the YAML has no ``policy:`` block)."""
