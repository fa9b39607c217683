"""Template sharing against a real redis-server: two replicas that mine the same lines in
opposite orders end up with the same pattern id for every template they share."""

from __future__ import annotations

import redis.asyncio as aioredis
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from collector.shared.templates import TemplateSharing
from processors.base import LogBatch
from processors.signature import Config, SignatureProcessor

LINES = [
    "session opened for user root",
    "session opened for user 1000",
    "Invalid user admin from 10.0.0.1",
    "Invalid user test from 10.0.0.2",
    "Invalid user oracle from 10.0.0.3",
    "Invalid user guest from 10.0.0.4",
    "worker 7 started in 35ms",
]
LATER = ["session opened for user daemon", "Invalid user pi from 10.9.9.9",
         "worker 99 started in 2ms", "Invalid user oracle from 10.0.0.3"]


def ids(proc: SignatureProcessor, lines: list[str]) -> list[str]:
    req = ExportLogsServiceRequest()
    sl = req.resource_logs.add().scope_logs.add()
    for line in lines:
        sl.log_records.add().body.string_value = line
    batch = LogBatch(req, 1_700_000_000.0)
    proc.process(batch)
    return list(batch.pattern_ids)


def by_template(proc: SignatureProcessor) -> dict[str, str]:
    return {t: pid for pid, t in proc.live_templates()}


async def test_replicas_seeing_lines_in_other_orders_converge_on_one_id_per_template(
        client: aioredis.Redis):
    a, b = SignatureProcessor(Config()), SignatureProcessor(Config())
    ids(a, LINES)
    ids(b, LINES[::-1])
    ta, tb = by_template(a), by_template(b)
    shared = set(ta) & set(tb)
    assert {"session opened for user <*>", "Invalid user <*> from <*>"} <= shared
    assert any(ta[t] != tb[t] for t in shared), "precondition: the orders gave other ids"
    old_b = dict(tb)

    share_a = TemplateSharing(client, "t:templates", 1000)
    share_b = TemplateSharing(client, "t:templates", 1000)
    assert await share_a.share(a) == 0  # first to register: keeps its ids
    adopted = await share_b.share(b)
    assert adopted == sum(ta[t] != old_b[t] for t in shared)

    ta, tb = by_template(a), by_template(b)
    assert all(ta[t] == tb[t] for t in shared)
    assert ids(a, LATER) == ids(b, LATER)  # new records carry the same ids on both
    for t in shared:  # b's old ids resolve to the shared ones
        assert b.resolve(old_b[t]) == ta[t]
    assert await client.hget("t:templates", "session opened for user <*>") == \
        ta["session opened for user <*>"]
    assert await share_a.share(a) == 0 and await share_b.share(b) == 0  # stable


async def test_a_full_registry_leaves_new_templates_with_their_local_ids(
        client: aioredis.Redis):
    a, b = SignatureProcessor(Config()), SignatureProcessor(Config())
    ids(a, LINES[:2])
    ids(b, LINES[1::-1])
    share_a = TemplateSharing(client, "t:templates", 1)
    share_b = TemplateSharing(client, "t:templates", 1)
    await share_a.share(a)
    ids(b, ["disk sda full"])
    assert await share_b.share(b) == 1  # the registered template is adopted
    assert await client.hlen("t:templates") == 1  # the new one was not registered
    assert by_template(a)["session opened for user <*>"] == \
        by_template(b)["session opened for user <*>"]
