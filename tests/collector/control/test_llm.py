"""The LLM path of the control loop against an OpenAI-compatible server on loopback, driven by
the real `openai` client: good answers are applied and versioned; bad answers, timeouts, 429
and 500 leave the policy in force and are counted; the budget holds; the prompt fits its
token budget and carries no record values."""

from __future__ import annotations

import json

import pytest

from collector.control.llm import (
    LLM_FIELDS,
    LlmError,
    answer_schema,
    build_messages,
    estimate_tokens,
    parse_answer,
)
from collector.control.snapshot import RateTracker
from processors.policy import DEFAULT_POLICY
from tests.collector.control.conftest import (
    CACHE,
    ERRORS,
    NOISY,
    SVC,
    T0,
    Clock,
    control_config,
    feed,
    make_sampler,
    metric,
)
from tests.collector.control.fake_llm import Answer, FakeLLM, policy_answer


@pytest.fixture
def llm():
    with FakeLLM() as server:
        yield server


def _schema_paths(node, path=""):
    """Every object node of a JSON schema with its path."""
    if isinstance(node, dict):
        if node.get("type") == "object":
            yield path, node
        for k, v in node.items():
            yield from _schema_paths(v, f"{path}.{k}")


def test_answer_schema_is_strict_compatible_and_derived_from_policy():
    schema = answer_schema()
    assert set(schema["properties"]) == set(LLM_FIELDS)
    for path, node in _schema_paths(schema):
        assert node["additionalProperties"] is False, path
        assert set(node["required"]) == set(node["properties"]), path
    sev = schema["properties"]["severity_rates"]["items"]["properties"]["severity"]
    assert sev["enum"] == ["TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"]
    assert schema["properties"]["pattern_rates"]["type"] == "array"


async def test_good_answer_is_applied_and_versioned(llm, state, make_loop):
    sampler = make_sampler()
    feed(sampler, T0)
    loop = make_loop(sampler, state, control_config(), llm.base_url)
    llm.answers.append(Answer(policy_answer("health checks are noise",
                                            patterns={NOISY: 0.02, CACHE: 0.03})))
    ok = metric("lipservice_llm_calls_total", outcome="ok")
    prompt_tokens = metric("lipservice_llm_tokens_total", type="prompt")

    [result] = await loop.run_once()

    assert (result.outcome, result.source, result.version) == ("applied", "llm", 1)
    policy = sampler.policy(SVC)
    assert policy.generated_by == "llm" and policy.llm_model == "fake-model"
    assert policy.pattern_rates == {NOISY: 0.02, CACHE: 0.03}
    assert policy.reasoning == "health checks are noise"
    assert sampler.policy().version == 0  # the default policy is untouched
    [stored] = await loop.store.history(SVC)
    assert (stored.version, stored.source, stored.policy) == (1, "llm", policy)
    assert len(stored.stats_digest) == 16
    assert metric("lipservice_llm_calls_total", outcome="ok") == ok + 1
    assert metric("lipservice_llm_tokens_total", type="prompt") == prompt_tokens + 1200
    assert metric("lipservice_policy_version", service=SVC) == 1
    # what went over the wire: the model, a strict json_schema response format
    [req] = llm.requests
    assert req["model"] == "gpt-4o-mini"
    assert req["response_format"]["type"] == "json_schema"
    assert req["response_format"]["json_schema"]["strict"] is True
    assert req["response_format"]["json_schema"]["schema"] == answer_schema()
    assert llm.headers[0]["Authorization"] == "Bearer test-openai-key-do-not-leak-0123456789"

    # a second good answer is the next version
    llm.answers.append(Answer(policy_answer("less cache", patterns={NOISY: 0.02,
                                                                    CACHE: 0.01})))
    feed(sampler, T0 + 61)
    loop.clock.t = T0 + 125
    [again] = await loop.run_once()
    assert (again.outcome, again.version) == ("applied", 2)
    assert sampler.policy(SVC).pattern_rates[CACHE] == 0.01
    assert [h.version for h in await loop.store.history(SVC)] == [2, 1]


BAD_ANSWERS = {
    "malformed JSON": (Answer('{"reasoning": "oops", "global_rate": 0.1,'), "llm_failed",
                       "invalid_json", "invalid_json"),
    "JSON that breaks the schema": (Answer(json.dumps({
        "reasoning": "x", "global_rate": "lots", "severity_rates": [], "pattern_rates": [],
        "family_rates": []})), "llm_failed", "invalid_schema", "invalid_schema"),
    "a map where the schema has an array": (Answer(json.dumps({
        "reasoning": "x", "global_rate": 0.1, "severity_rates": [],
        "pattern_rates": {NOISY: 0.01}, "family_rates": []})), "llm_failed",
        "invalid_schema", "invalid_schema"),
    "a rate above 1": (Answer(policy_answer(patterns={NOISY: 7.0})), "llm_failed",
                       "invalid_schema", "invalid_schema"),
    "sampling ERROR records": (Answer(policy_answer(severity={
        "INFO": 0.05, "ERROR": 0.1})), "rejected", "ok", "samples_errors"),
    "sampling an ERROR-only pattern": (Answer(policy_answer(patterns={ERRORS: 0.2})),
                                       "rejected", "ok", "samples_errors"),
    "a truncated answer": (Answer(policy_answer(), finish_reason="length"), "llm_failed",
                           "truncated", "truncated"),
    "a timeout": (Answer(policy_answer(), delay=3.0), "llm_failed", "timeout", None),
    "429": (Answer(status=429, headers={"Retry-After": "0"}), "llm_failed", "rate_limited",
            None),
    "500": (Answer(status=500), "llm_failed", "server_error", None),
}


@pytest.mark.parametrize("case", list(BAD_ANSWERS))
async def test_bad_answers_leave_the_policy_in_force_and_are_counted(llm, state, case,
                                                                  make_loop):
    answer, outcome, llm_outcome, rejected = BAD_ANSWERS[case]
    sampler = make_sampler()
    feed(sampler, T0)
    cfg = control_config(llm={"timeout": "0.5s"})
    loop = make_loop(sampler, state, cfg, llm.base_url)
    before = sampler.policy(SVC)
    calls = metric("lipservice_llm_calls_total", outcome=llm_outcome)
    rej = metric("lipservice_policy_rejected_total", source="llm", reason=rejected or "")
    runs = metric("lipservice_control_runs_total", trigger="interval", outcome=outcome)
    llm.answers.append(answer)

    [result] = await loop.run_once()

    assert (result.outcome, result.llm) == (outcome, llm_outcome)
    assert sampler.policy(SVC) is before
    assert await loop.store.history(SVC) == []
    assert len(llm.requests) == 1  # max_retries 0: one request per call
    assert metric("lipservice_llm_calls_total", outcome=llm_outcome) == calls + 1
    assert metric("lipservice_control_runs_total", trigger="interval",
                  outcome=outcome) == runs + 1
    if rejected:
        assert metric("lipservice_policy_rejected_total", source="llm",
                      reason=rejected) == rej + 1
    if outcome == "rejected":
        assert result.reasons == ["samples_errors"]


async def test_heuristic_takes_over_after_repeated_failures_and_llm_resumes(llm, state,
                                                                           make_loop):
    sampler = make_sampler()
    feed(sampler, T0)
    loop = make_loop(sampler, state, control_config(llm={"fallback_after": 2}), llm.base_url)
    llm.answers += [Answer(status=500), Answer(status=500),
                    Answer(policy_answer(patterns={NOISY: 0.05}))]

    first = (await loop.run_once())[0]
    assert (first.outcome, sampler.policy(SVC).version) == ("llm_failed", 0)
    second = (await loop.run_once())[0]
    assert (second.outcome, second.source, second.llm) == ("applied", "heuristic",
                                                           "server_error")
    assert sampler.policy(SVC).generated_by == "heuristic"
    third = (await loop.run_once())[0]
    assert (third.outcome, third.source) == ("applied", "llm")
    assert loop.failures == 0


async def test_budget_holds_calls_per_hour(llm, state, make_loop):
    sampler = make_sampler()
    feed(sampler, T0)
    mono = Clock(1000.0)
    loop = make_loop(sampler, state, control_config(llm={"max_calls_per_hour": 2}),
                     llm.base_url, monotonic=mono)
    skipped = metric("lipservice_llm_skipped_runs_total", reason="budget")
    results = []
    for i in range(5):
        mono.t += 60
        feed(sampler, T0 + 60 * (i + 1))
        results += await loop.run_once()
    assert len(llm.requests) == 2
    assert [r.llm for r in results] == ["ok", "ok", "budget", "budget", "budget"]
    assert {r.source for r in results[2:]} == {"heuristic"}
    assert metric("lipservice_llm_skipped_runs_total", reason="budget") == skipped + 3
    mono.t += 3600  # an hour after the first calls: the budget is available again
    await loop.run_once()
    assert len(llm.requests) == 3


async def test_prompt_is_truncated_by_volume_to_fit_max_prompt_tokens(llm, state, make_loop):
    sampler = make_sampler()
    traffic = {f"{i:016x}": (10 + 5 * i, 9, f"event kind {chr(97 + i % 26)} step <*>")
               for i in range(300)}
    feed(sampler, T0, traffic)
    cfg = control_config(top_k=300, llm={"max_prompt_tokens": 2500})
    loop = make_loop(sampler, state, cfg, llm.base_url)
    await loop.run_once()
    [req] = llm.requests
    text = "".join(m["content"] for m in req["messages"])
    assert estimate_tokens(text) <= 2500
    shown = [p["id"] for p in llm.user_data()["patterns"]]
    assert 0 < len(shown) < 300
    assert llm.user_data()["patterns_not_shown"] == 300 - len(shown)
    # the largest patterns are the ones shown
    largest = sorted(traffic, key=lambda k: traffic[k][0], reverse=True)[:len(shown)]
    assert set(shown) == set(largest)


async def test_prompt_too_large_for_any_pattern_uses_the_heuristic(llm, state, make_loop):
    sampler = make_sampler()
    feed(sampler, T0)
    cfg = control_config()
    cfg.llm.max_prompt_tokens = 300  # below the rules alone (the config's minimum is 500)
    loop = make_loop(sampler, state, cfg, llm.base_url)
    skipped = metric("lipservice_llm_skipped_runs_total", reason="prompt_too_large")
    [result] = await loop.run_once()
    assert (result.source, result.llm) == ("heuristic", "prompt_too_large")
    assert llm.requests == []
    assert metric("lipservice_llm_skipped_runs_total", reason="prompt_too_large") == \
        skipped + 1


async def test_json_object_mode_puts_the_schema_in_the_prompt(llm, state, make_loop):
    sampler = make_sampler()
    feed(sampler, T0)
    loop = make_loop(sampler, state, control_config(llm={"response_format": "json_object"}),
                     llm.base_url)
    llm.answers.append(Answer(policy_answer(patterns={NOISY: 0.04})))
    [result] = await loop.run_once()
    assert result.outcome == "applied"
    req = llm.requests[0]
    assert req["response_format"] == {"type": "json_object"}
    assert json.dumps(answer_schema()) in req["messages"][0]["content"]


def test_parse_answer_keeps_rates_of_patterns_the_prompt_did_not_show():
    current = DEFAULT_POLICY.model_copy(update={"pattern_rates": {"shown": 0.5,
                                                                  "hidden": 0.3}})
    doc = parse_answer(policy_answer(patterns={"other": 0.2}), current, {"shown", "other"},
                       set())
    assert doc["pattern_rates"] == {"hidden": 0.3, "other": 0.2}
    assert doc["generated_by"] == "llm"
    assert doc["keep_first_n"] == current.keep_first_n  # not the model's to set


def test_parse_answer_rejects_json_nested_too_deeply():
    deep = '{"global_rate":' + "[" * 100_000 + "]" * 100_000 + "}"
    with pytest.raises(LlmError) as info:
        parse_answer(deep, DEFAULT_POLICY, set(), set())
    assert info.value.outcome == "invalid_json"


def test_build_messages_carries_ids_templates_and_numbers():
    sampler = make_sampler()
    feed(sampler, T0)
    snap = RateTracker().build(SVC, sampler.pattern_stats(SVC), [], T0 + 60)
    prompt = build_messages(snap, DEFAULT_POLICY, top_k=50, max_tokens=8000)
    assert prompt is not None
    data = json.loads(prompt.messages[1]["content"])
    row = next(p for p in data["patterns"] if p["id"] == NOISY)
    assert row["template"] == "GET /health <*> <*> in <*> ms"  # scrubbed once more
    assert row["records_per_s"] == pytest.approx(50.0)  # 3000 records over 60 s
    assert row["severity"] == {"INFO": 1.0}
    assert SVC not in prompt.messages[1]["content"]  # no service name either
