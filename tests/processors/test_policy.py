"""The Policy model: defaults, validation errors, rate lookup order, the legacy document."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from processors.policy import (
    DEFAULT_POLICY,
    Policy,
    PolicyError,
    load_policy,
    severity_name,
)

# The document the replaced system served (GET /api/v1/policies/{service}), field for field.
LEGACY = {
    "global_rate": 1.0,
    "severity_rates": {"DEBUG": 0.1, "INFO": 0.3, "WARNING": 0.7, "ERROR": 1.0,
                       "CRITICAL": 1.0},
    "pattern_rates": {"a1b2c3d4e5f60718": 0.05},
    "anomaly_boost": 2.0,
    "reasoning": None,
    "generated_by": "default",
    "llm_model": None,
    "version": 0,
}


def test_legacy_document_loads_unchanged():
    pol = load_policy(LEGACY)
    assert pol.global_rate == 1.0
    assert pol.severity_rates == {"DEBUG": 0.1, "INFO": 0.3, "WARN": 0.7, "ERROR": 1.0,
                                  "FATAL": 1.0}
    assert pol.pattern_rates == {"a1b2c3d4e5f60718": 0.05}
    assert pol.anomaly_boost == 2.0
    assert pol.reasoning == ""
    assert pol.generated_by == "default"
    assert pol.llm_model is None
    assert pol.version == 0
    # Fields the legacy shape lacks take the product defaults.
    assert pol.keep_first_n == DEFAULT_POLICY.keep_first_n
    assert pol.window == DEFAULT_POLICY.window
    # And it means what it meant: WARNING records at 0.7, INFO at 0.3, the pattern at 0.05.
    assert pol.rate_for("ffffffffffffffff", "", 13) == 0.7
    assert pol.rate_for("ffffffffffffffff", "", 9) == 0.3
    assert pol.rate_for("a1b2c3d4e5f60718", "", 9) == 0.05


def test_legacy_document_as_json_text_and_llm_variant():
    doc = dict(LEGACY, generated_by="llm", llm_model="gpt-4o", reasoning="cut noisy INFO",
               version=7)
    pol = load_policy(json.dumps(doc))
    assert (pol.generated_by, pol.llm_model, pol.version) == ("llm", "gpt-4o", 7)
    assert pol.reasoning == "cut noisy INFO"
    assert load_policy(dict(LEGACY, generated_by="rule-based")).generated_by == "heuristic"


def test_round_trip_through_document():
    pol = Policy(version=3, generated_by="operator", family_rates={"f1": 0.2},
                 always_keep=[{"body_matches": "(?i)panic"}], max_per_window=100,
                 window="30s")
    again = load_policy(pol.to_document())
    assert again == pol
    assert again.window == 30.0


@pytest.mark.parametrize("doc, path", [
    ({"global_rate": 1.5}, "global_rate"),
    ({"severity_rates": {"INFO": -0.1}}, "severity_rates.INFO"),
    ({"severity_rates": {"LOUD": 0.5}}, "severity_rates.LOUD"),
    ({"keep_first_n": -1}, "keep_first_n"),
    ({"window": "soon"}, "window"),
    ({"anomaly_boost": 0.5}, "anomaly_boost"),
    ({"generated_by": "magic"}, "generated_by"),
    ({"always_keep": [{"body_matches": "("}]}, "always_keep.0"),
    ({"always_keep": [{"record_attribute": "k", "equals": "a", "matches": "b"}]},
     "always_keep.0"),
    ({"always_keep": [{"record_attribute": "k"}]}, "always_keep.0"),
    ({"bogus": 1}, "bogus"),
])
def test_bad_documents_raise_policy_error_naming_the_field(doc, path):
    with pytest.raises(PolicyError) as info:
        load_policy(doc)
    assert any(p.startswith(path) for p in info.value.problems), info.value.problems


@pytest.mark.parametrize("doc, path", [
    ({"global_rate": True}, "global_rate"),
    ({"severity_rates": {"INFO": True}}, "severity_rates.INFO"),
    ({"pattern_rates": {"ab12": False}}, "pattern_rates.ab12"),
    ({"keep_first_n": True}, "keep_first_n"),
    ({"max_per_window": True}, "max_per_window"),
    ({"anomaly_boost": True}, "anomaly_boost"),
])
def test_a_boolean_is_not_a_rate_or_a_count(doc, path):
    # pydantic alone takes true as 1 (a rate of 1.0: keep everything) and false as 0.
    with pytest.raises(PolicyError) as info:
        load_policy(doc)
    assert f"{path}: expected a number, not a boolean" in info.value.problems


@pytest.mark.parametrize("doc, path", [
    ({"window": 1e-300}, "window"),  # every batch then failed with OverflowError (trial)
    ({"window": 0.5}, "window"),
    ({"anomaly_boost": float("inf")}, "anomaly_boost"),
    ({"window": float("inf")}, "window"),
    ({"global_rate": float("nan")}, "global_rate"),
])
def test_windows_under_a_second_and_infinite_numbers_are_refused(doc, path):
    # An infinite value also made GET /api/v1/policies answer non-JSON ("Infinity").
    with pytest.raises(PolicyError) as info:
        load_policy(doc)
    assert any(p.startswith(f"{path}:") for p in info.value.problems), info.value.problems


def test_not_json_and_not_an_object():
    with pytest.raises(PolicyError, match="not JSON"):
        load_policy("{nope")
    with pytest.raises(PolicyError, match="expected an object"):
        load_policy("[1, 2]")


def test_errors_do_not_echo_input_values():
    secret = "sk-live-DO-NOT-LOG"
    with pytest.raises(PolicyError) as info:
        load_policy({"reasoning": 5, "llm_model": {"key": secret}})
    assert secret not in str(info.value)


def test_rate_lookup_order_pattern_family_severity_global():
    pol = Policy(global_rate=0.5, severity_rates={"DEBUG": 0.2},
                 family_rates={"fam": 0.3}, pattern_rates={"p1": 0.4})
    assert pol.rate_for("p1", "fam", 5) == 0.4
    assert pol.rate_for("p2", "fam", 5) == 0.3
    assert pol.rate_for("p2", "", 5) == 0.2
    assert pol.rate_for("p2", "", 9) == 0.5  # INFO not named: global
    assert pol.rate_for("p2", "", 0) == 0.5  # unspecified counts as INFO


def test_severity_table_follows_otel_ranges():
    pol = Policy(global_rate=0.9, severity_rates={"TRACE": 0.1, "DEBUG": 0.2, "INFO": 0.3,
                                                  "WARN": 0.4})
    table = pol.severity_table()
    assert table[1:5] == [0.1] * 4
    assert table[5:9] == [0.2] * 4
    assert table[9:13] == [0.3] * 4
    assert table[13:17] == [0.4] * 4
    assert table[17:] == [0.9] * 8
    assert table[0] == 0.3
    assert [severity_name(n) for n in (0, 1, 4, 5, 9, 13, 17, 21, 24, 30)] == [
        "INFO", "TRACE", "TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL", "FATAL", "FATAL"]


def test_policy_is_immutable():
    with pytest.raises(ValidationError):
        DEFAULT_POLICY.global_rate = 1.0  # type: ignore[misc]


def test_default_policy_keeps_every_pattern_visible():
    assert DEFAULT_POLICY.keep_first_n >= 1
    assert DEFAULT_POLICY.generated_by == "default"
    assert all(0 < r <= 1 for r in DEFAULT_POLICY.severity_rates.values())
