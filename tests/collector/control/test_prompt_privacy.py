"""The prompt holds templates, ids and numbers only: no value that appeared only in a record
body's variable parts, no attribute value, no service name, no key."""

from __future__ import annotations

import hashlib

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from processors.base import LogBatch
from processors.signature import Config as SignatureConfig
from processors.signature import SignatureProcessor
from tests.collector.control.conftest import API_KEY, T0, control_config, make_sampler
from tests.collector.control.fake_llm import FakeLLM

SERVICE = "svc-zebra-canary-77"
# (body, template a miner gives it); the last template keeps a value, as a miner that
# missed a variable would: the prompt must still not carry it.
RECORDS = [
    ("user alice.w@corp-mail.example logged in with token tok-live-Q7f9Zx2mK4pL8sV3nB6c "
     "from 203.0.113.77", "user <*> logged in with token <*> from <*>"),
    ("user bob.k@corp-mail.example logged in with token tok-live-Hh3Jj5Kk7Ll9Mm1Nn2Bb "
     "from 198.51.100.23", "user <*> logged in with token <*> from <*>"),
    ("payment card 4111-1111-1111-1111 charged 129.99 EUR order ORD-88231-XK",
     "payment card <*> charged <*> EUR order <*>"),
    ("session opened for Zq8PxW7vRt5yU2iO3pAs4dFg",
     "session opened for Zq8PxW7vRt5yU2iO3pAs4dFg"),
    ("reset password=hunter2-correct-horse for account admin",
     "reset password=hunter2-correct-horse for account <*>"),
]
SECRETS = ["alice.w@corp-mail.example", "tok-live-Q7f9Zx2mK4pL8sV3nB6c", "203.0.113.77",
           "bob.k@corp-mail.example", "tok-live-Hh3Jj5Kk7Ll9Mm1Nn2Bb", "198.51.100.23",
           "4111-1111-1111-1111", "129.99", "ORD-88231-XK", "Zq8PxW7vRt5yU2iO3pAs4dFg",
           "hunter2", "correct-horse", "eyJhbGciOiJIUzI1NiJ9", "pod-secret-xyz", SERVICE,
           API_KEY]


def batch_with_secrets(copies: int) -> LogBatch:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.add(key="service.name").value.string_value = SERVICE
    rl.resource.attributes.add(key="k8s.pod.name").value.string_value = "pod-secret-xyz"
    sl = rl.scope_logs.add()
    for _ in range(copies):
        for body, _tmpl in RECORDS:
            rec = sl.log_records.add()
            rec.severity_number = 9  # type: ignore[assignment]
            rec.body.string_value = body
            rec.attributes.add(key="http.request.header.authorization").value.string_value = \
                "Bearer eyJhbGciOiJIUzI1NiJ9.c2VjcmV0.sig"
    return LogBatch(req, T0)


async def test_the_prompt_carries_no_record_values(state, make_loop):
    signature = SignatureProcessor(SignatureConfig())
    sampler = make_sampler()
    batch = batch_with_secrets(copies=50)
    signature.process(batch)
    if not any(batch.pattern_ids):  # the stand-in signature processor mines nothing yet
        templates = [t for _ in range(50) for _b, t in RECORDS]
        batch.templates = templates
        batch.pattern_ids = [hashlib.sha256(t.encode()).hexdigest()[:16] for t in templates]
    ids = set(batch.pattern_ids)
    sampler.process(batch)
    with FakeLLM() as llm:
        loop = make_loop(sampler, state, control_config(), llm.base_url)
        [result] = await loop.run_once()
        assert result.llm == "ok"
        [prompt] = llm.prompts()
    for secret in SECRETS:
        assert secret not in prompt, secret
    # the constant parts of the templates are there: the prompt is about these patterns
    for constant in ("logged in with token", "charged", "session opened for",
                     "for account"):
        assert constant in prompt
    assert all(pid in prompt for pid in ids)
