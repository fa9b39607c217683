"""Signature processor (processors/signature.py): annotation, message extraction, stable ids
across processes, snapshot round trip through the SQLite state store, the eviction bound,
metrics, fail-open, and the Loghub GA regression."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from collector.config import load_config_tree
from collector.state import StateStore
from processors.base import ATTR_PATTERN_ID, ATTR_TEMPLATE, LogBatch
from processors.masking import VAR, Masker
from processors.miner import pattern_id
from processors.signature import Config, SignatureProcessor

REPO = Path(__file__).resolve().parents[2]


def request_of(bodies: list[AnyValue | str]) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="svc")))
    recs = rl.scope_logs.add().log_records
    for b in bodies:
        body = AnyValue(string_value=b) if isinstance(b, str) else b
        recs.append(LogRecord(body=body, severity_number=9, time_unix_nano=123,
                              attributes=[KeyValue(key="k", value=AnyValue(int_value=1))]))
    return req


def run(proc: SignatureProcessor, bodies: list[AnyValue | str]) -> LogBatch:
    batch = LogBatch(request_of(bodies), now=1000.0)
    proc.process(batch)
    return batch


def attrs(rec: LogRecord) -> dict[str, str]:
    return {kv.key: kv.value.string_value for kv in rec.attributes if kv.key != "k"}


def test_every_record_gets_its_pattern_id_and_nothing_else_changes() -> None:
    proc = SignatureProcessor(Config())
    bodies = ["GET /api/users/42 took 35ms", "GET /api/users/7 took 120ms", "cache miss"]
    before = request_of(bodies)
    batch = run(proc, bodies)
    recs = batch.records
    ids = [attrs(r) for r in recs]
    assert ids[0] == ids[1] == {ATTR_PATTERN_ID: batch.pattern_ids[0]}
    assert ids[2] == {ATTR_PATTERN_ID: batch.pattern_ids[2]} != ids[0]
    assert batch.templates == ["GET <*> took <*>", "GET <*> took <*>", "cache miss"]
    assert batch.pattern_ids[2] == pattern_id("cache miss")
    # the records are what they were, plus one appended attribute each
    for old, new in zip(before.resource_logs[0].scope_logs[0].log_records, recs, strict=True):
        assert list(new.attributes)[:-1] == list(old.attributes)
        trimmed = LogRecord()
        trimmed.CopyFrom(new)
        del trimmed.attributes[-1]
        assert trimmed == old


def test_emit_template_adds_the_drainprocessor_attribute() -> None:
    proc = SignatureProcessor(Config(emit_template=True))
    batch = run(proc, ["worker 3 started", "worker 9 started"])
    for rec in batch.records:
        assert attrs(rec) == {ATTR_PATTERN_ID: batch.pattern_ids[0],
                              ATTR_TEMPLATE: "worker <*> started"}


def test_template_attribute_follows_generalisation() -> None:
    proc = SignatureProcessor(Config(emit_template=True))
    first = run(proc, ["session opened for user root"])
    second = run(proc, ["session opened for user 1000", "session opened for user root"])
    assert attrs(first.records[0])[ATTR_TEMPLATE] == "session opened for user root"
    pid = first.pattern_ids[0]
    for rec in second.records:
        assert attrs(rec) == {ATTR_PATTERN_ID: pid, ATTR_TEMPLATE: "session opened for user <*>"}


def test_json_logfmt_and_kvlist_bodies_use_the_message_field() -> None:
    proc = SignatureProcessor(Config())
    kv = AnyValue(kvlist_value=KeyValueList(values=[
        KeyValue(key="user", value=AnyValue(int_value=9)),
        KeyValue(key="event", value=AnyValue(string_value="user 45 logged in"))]))
    batch = run(proc, [
        "user 41 logged in",
        '{"level": "info", "msg": "user 42 logged in", "user": 42}',
        '  {"message": "user 43 logged in"}',
        'level=info msg="user 44 logged in" took=3ms',
        "ts=1 log=user_46 event=x",  # logfmt with bare values: the first message key
        kv,
    ])
    ids = batch.pattern_ids
    assert len(set(ids[:4])) == 1 and ids[5] == ids[0]
    assert batch.templates[0] == "user <*> logged in"
    assert batch.templates[4] == "<*>"  # log=user_46
    # the bodies themselves are untouched
    assert batch.records[1].body.string_value.startswith('{"level"')


def test_bodies_without_a_message_field() -> None:
    """A JSON object without a message field is mined as its key=value pairs, so objects
    with other keys get other patterns; other text is mined as it is."""
    proc = SignatureProcessor(Config())
    batch = run(proc, ['{"level": "info", "user": 42}', '{"level": "warn", "disk": "sda1"}',
                       '{"not json', "a=1 b=2", "uid=0 and more words", "[1, 2]"])
    assert batch.templates[:2] == ["level=<*> user=<*>", "level=<*> disk=<*>"]
    assert batch.templates[2] == '{"not json'
    assert batch.templates[3] == "a=<*> b=<*>"
    assert batch.templates[4] == "uid=<*> and more words"
    assert batch.templates[5] == "[<*>]"


def test_json_and_logfmt_can_be_turned_off() -> None:
    proc = SignatureProcessor(Config(parse_json=False, parse_logfmt=False))
    batch = run(proc, ['{"msg": "user 42 logged in"}', 'msg="user 44 logged in"',
                       "user 45 logged in"])
    assert batch.templates[2] == "user <*> logged in"
    assert batch.templates[1] == 'msg="<*>"'
    assert batch.pattern_ids[0] != batch.pattern_ids[2]


def test_other_body_types_are_text() -> None:
    proc = SignatureProcessor(Config(message_keys=["text"]))
    arr = AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="a"),
                                                  AnyValue(int_value=2)]))
    kv = AnyValue(kvlist_value=KeyValueList(values=[
        KeyValue(key="op", value=AnyValue(string_value="read")),
        KeyValue(key="n", value=AnyValue(double_value=2.5))]))
    batch = run(proc, [AnyValue(int_value=42), AnyValue(bool_value=True),
                       AnyValue(bytes_value=b"\x00\xff" * 8), arr, kv, AnyValue(), ""])
    assert batch.templates == ["<*>", "<*>", "<*>", "[a, <*>]", "op=<*> n=<*>", "", ""]
    assert all(len(p) == 16 for p in batch.pattern_ids)


def test_sdk_records_kvlist_and_string_bodies() -> None:
    """Records made by the real OpenTelemetry SDK and its OTLP encoder."""
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
    from opentelemetry.sdk.resources import Resource

    try:
        from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter as Exporter
    except ImportError:  # older SDKs
        from opentelemetry.sdk._logs.export import InMemoryLogExporter as Exporter
    exporter = Exporter()
    provider = LoggerProvider(resource=Resource.create({"service.name": "shop"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("test")
    logger.emit(body={"message": "order 17 paid in 12ms", "order": 17})
    logger.emit(body="order 18 paid in 40ms")
    logger.emit(body={"msg": "order 19 paid in 3ms"})
    batch = LogBatch(encode_logs(exporter.get_finished_logs()), now=0.0)
    SignatureProcessor(Config()).process(batch)
    assert batch.templates == ["order <*> paid in <*>"] * 3
    assert len(set(batch.pattern_ids)) == 1
    assert batch.records[0].body.kvlist_value.values[1].value.int_value == 17


def test_token_cap_limits_what_is_mined() -> None:
    proc = SignatureProcessor(Config(max_tokens=3))
    batch = run(proc, ["a b c d e", "a b c x y z"])
    assert batch.templates == ["a b c", "a b c"]


_TOKENS = ["ssh2", "ssh3", "0x1f", "0x2e", "5x1f", "blk_12", "blk_-7", "10.0.0.1:80", "v1.2",
           "e820", "35ms", "took", "user=42", "state:", "ok,", "(12)", "Jul", "24", "'a b'",
           "jk2_init()", "a1b2c3", "12:00:01", "x"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_TOKENS), min_size=1, max_size=8), st.integers(1, 9))
def test_skeleton_cache_gives_what_fresh_masking_gives(words: list[str], shift: int) -> None:
    """A message answered from the skeleton cache (same text with other digits) gets the
    pattern that its own masked text fits, as a fresh masker computes it."""
    proc = SignatureProcessor(Config())
    first = " ".join(words)
    proc.pattern_for(first)
    other = "".join(str((int(c) + shift) % 10) if c.isdigit() else c for c in first)
    got = proc.pattern_for(other)
    tokens = Masker().mask(other)
    assert len(got.tokens) == len(tokens)
    assert all(a in (VAR, b) for a, b in zip(got.tokens, tokens, strict=True)), \
        (other, got.template, tokens)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.sampled_from(_TOKENS + ["k=v", "{", "a\x00b"]), min_size=1,
                         max_size=6), min_size=1, max_size=6),
       st.lists(st.integers(1, 9), min_size=1, max_size=3))
def test_batches_give_patterns_that_fresh_masking_fits(messages: list[list[str]],
                                                      shifts: list[int]) -> None:
    """process() resolves a batch's bodies together (skeletons made for the joined bodies,
    looked up at once); every record still gets a pattern that its own masked message fits,
    in the batch that first sees a shape and in later ones answered from the caches."""
    proc = SignatureProcessor(Config())
    firsts = [" ".join(words) for words in messages]
    for shift in [0, *shifts]:
        bodies = ["".join(str((int(c) + shift) % 10) if c.isdigit() else c for c in m)
                  for m in firsts]
        batch = run(proc, bodies + bodies[:2])
        for body, template in zip(bodies + bodies[:2], batch.templates, strict=True):
            message = proc.message_of_string(body)
            got = template.split(" ") if template else []
            tokens = Masker().mask(message)
            assert len(got) == len(tokens), (body, template, tokens)
            assert all(a in (VAR, b) for a, b in zip(got, tokens, strict=True)), \
                (body, template, tokens)


_ID_SCRIPT = """
import json, sys
sys.path.insert(0, {repo!r})
from processors.signature import Config, SignatureProcessor
proc = SignatureProcessor(Config())
print(json.dumps([proc.pattern_of_body(line).id for line in json.load(sys.stdin)]))
"""


def test_same_template_same_id_in_two_separate_processes() -> None:
    lines = ["Failed password for root from 10.0.0.1 port 22 ssh2",
             "worker 7 started in 35ms", "GET /api/v1/items?id=5 200 took 3ms",
             "disk /dev/sda1 is 91% full", "user 'bob' logged out"]
    outs = []
    env = {**os.environ, "PYTHONHASHSEED": "random"}
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", _ID_SCRIPT.format(repo=str(REPO))],
                              input=json.dumps(lines), capture_output=True, text=True,
                              timeout=60, env=env, check=True)
        outs.append(json.loads(done.stdout))
    here = [SignatureProcessor(Config()).pattern_of_body(line).id for line in lines]
    assert outs[0] == outs[1] == here
    assert len(set(here)) == len(lines)


def test_snapshot_round_trip_through_the_state_store(tmp_path: Path) -> None:
    lines = ["Invalid user admin from 1.2.3.4", "Invalid user test from 1.2.3.5",
             "Invalid user oracle from 1.2.3.6", "Accepted publickey for git",
             "disk sda1 full", "backup took 35 s"]
    proc = SignatureProcessor(Config(emit_template=True))
    first = run(proc, lines)
    store = StateStore(tmp_path)
    store.put("processor/signature", proc.snapshot())
    store.close()

    reopened = StateStore(tmp_path)
    restored = SignatureProcessor(Config(emit_template=True))
    restored.restore(reopened.get("processor/signature"))
    reopened.close()
    assert restored.snapshot() == proc.snapshot()
    again = run(restored, lines)
    assert again.pattern_ids == [proc.resolve(i) for i in first.pattern_ids]
    assert again.templates == run(proc, lines).templates
    assert restored.resolve(first.pattern_ids[1]) == first.pattern_ids[0]
    assert restored.aliases == proc.aliases and first.pattern_ids[1] in proc.aliases


def test_restore_of_a_bad_snapshot_raises_and_keeps_serving() -> None:
    proc = SignatureProcessor(Config())
    before = run(proc, ["keep me 1"]).pattern_ids
    with pytest.raises(ValueError):
        proc.restore({"version": 1, "patterns": [{"id": 3}]})
    assert run(proc, ["keep me 2"]).pattern_ids == before


def test_seed_templates_give_ids_before_traffic_and_survive_restore() -> None:
    seed = "Failed password for <*> from <*> port <*> ssh2"
    proc = SignatureProcessor(Config(seed_templates=[seed]))
    batch = run(proc, ["Failed password for root from 1.2.3.4 port 22 ssh2"])
    assert batch.pattern_ids == [pattern_id(seed)]
    proc.restore({"version": 1, "patterns": []})
    assert run(proc, ["Failed password for bob from 1.2.3.5 port 2 ssh2"]).pattern_ids == \
        [pattern_id(seed)]


def test_eviction_bound_and_metrics() -> None:
    proc = SignatureProcessor(Config(max_patterns=5))
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot"]
    for a in words:
        run(proc, [f"{a} {b} happened" for b in words])
        assert len(proc.miner.patterns) <= 5
    run(proc, ["alpha alpha happened"] * 10)
    metrics = {m.name: m.samples[0].value for m in proc.collect_metrics()}
    assert metrics["lipservice_signature_patterns"] == 5
    assert metrics["lipservice_signature_patterns_created"] == proc.miner.created_total
    assert metrics["lipservice_signature_patterns_evicted"] == proc.miner.created_total - 5
    assert metrics["lipservice_signature_log_records"] == 36 + 10
    assert 0 < metrics["lipservice_signature_cache_hit_ratio"] < 1
    assert metrics["lipservice_signature_cache_misses"] == 36 + 1


def test_a_fault_mid_batch_leaves_every_record_untouched(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = SignatureProcessor(Config())
    calls = {"n": 0}
    real = proc.masker.classify

    def flaky(text: str) -> tuple[list[str], list[str]]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("bug")
        return real(text)

    monkeypatch.setattr(proc.masker, "classify", flaky)
    batch = LogBatch(request_of(["a 1", "b 2", "c 3", "d 4"]), now=0.0)
    with pytest.raises(RuntimeError):
        proc.process(batch)
    assert all(attrs(r) == {} for r in batch.records)
    assert batch.pattern_ids == [""] * 4


def test_config_from_yaml_shape() -> None:
    tree = {"receivers": {"otlp": {"protocols": {"http": {}}}}, "exporters": {"debug": {}},
            "processors": {"signature": {"emit_template": True, "max_patterns": 10,
                                         "seed_templates": ["a <*>"]}},
            "service": {"pipelines": {"logs": {"receivers": ["otlp"],
                                               "processors": ["signature"],
                                               "exporters": ["debug"]}}}}
    cfg = load_config_tree(tree)
    sig = cfg.processors["signature"]
    assert isinstance(sig, Config) and sig.emit_template and sig.max_patterns == 10
    tree["processors"]["signature"] = {"sim_treshold": 0.5}
    with pytest.raises(Exception, match="processors.signature.sim_treshold: unknown key"):
        load_config_tree(tree)


def test_loghub_grouping_accuracy_regression() -> None:
    """Mean GA over the shared Loghub-2k systems (corrected ground truth) must stay >= 0.90
    and no system below 0.80, with the default config (bench/loghub.py prints the table)."""
    from bench.loghub import grouping_accuracy, load_system, loghub_dir, run_lipservice, systems

    data = loghub_dir()
    names = systems(data)
    if not names:
        pytest.skip(f"Loghub-2k data not found at {data} (set LIPSERVICE_LOGHUB_DIR)")
    scores = {}
    for name in names:
        lines, truth = load_system(data, name)
        pred, _, _, _ = run_lipservice(lines)
        scores[name] = grouping_accuracy(pred, truth)[0]
    mean = sum(scores.values()) / len(scores)
    assert mean >= 0.90, scores
    assert min(scores.values()) >= 0.80, scores


def test_grouping_accuracy_definition() -> None:
    from bench.loghub import grouping_accuracy

    # groups {0,1} and {2} are right; {3,4} mixes two truths
    ga, fga = grouping_accuracy(["a", "a", "b", "c", "c"], ["x", "x", "y", "z", "w"])
    assert ga == pytest.approx(3 / 5)
    assert fga == pytest.approx(2 * (2 / 3) * (2 / 4) / (2 / 3 + 2 / 4))
    with pytest.raises(ValueError):
        grouping_accuracy([], [])


def test_body_cache_pauses_longer_while_bodies_never_repeat_and_results_stay_the_same() -> None:
    """Bodies that never repeat (a counter in every line) make the body cache useless: it
    stops being filled, for twice as long each time it fills up useless again (capped);
    once bodies repeat, a full cache that answered lookups resets the pause. The patterns
    found are those of a processor without a body cache."""
    proc = SignatureProcessor(Config(cache_size=20))
    plain = SignatureProcessor(Config(cache_size=0))
    pauses = []
    for k in range(400):
        bodies = [f"request {k * 10 + i} served in {i} ms" for i in range(10)]
        assert run(proc, bodies).pattern_ids == run(plain, bodies).pattern_ids
        if not proc._body_caching and (not pauses or pauses[-1] != proc._body_resume):
            pauses.append(proc._body_resume)
    gaps = [b - a for a, b in zip(pauses, pauses[1:], strict=False)]
    assert len(gaps) >= 3 and gaps[1] > gaps[0] and gaps[2] > gaps[1]  # growing pauses
    assert proc._body_pause <= 64
    repeated = [f"cache line {i}" for i in range(10)]
    for _ in range(400):  # now bodies repeat: once resumed, the cache answers them
        assert run(proc, repeated).pattern_ids == run(plain, repeated).pattern_ids
    assert proc._body_caching
    fresh = [f"fresh line {i} of a new kind" for i in range(15)]
    assert run(proc, fresh).pattern_ids == run(plain, fresh).pattern_ids  # fills it
    assert proc._body_pause == 4  # that fill had answered most lookups: pause reset
